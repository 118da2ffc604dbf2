import CDNNL
import Synchronization

/// A buffer of bfloat16 values (the upper half of an IEEE float), for the inputs of bf16
/// products: made once with a layer, written in place. Zeroed and 64-byte aligned.
public final class BFloat16Buffer {
    public let count: Int
    public let data: UnsafeMutablePointer<UInt16>
    /// Splits a large rounding over the worker pool (elementwise: the same bits however split).
    private let rounding = Rounding()

    public init(count: Int) {
        self.count = count
        data = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 2, alignment: 64)
            .bindMemory(to: UInt16.self, capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
        Self.made.wrappingAdd(count, ordering: .relaxed)
    }

    /// Values of every bf16 buffer made so far in this process (for the test that checks
    /// `ModelSize.bf16Values` against what the layers really hold).
    public static var valuesMade: Int { made.load(ordering: .relaxed) }
    private static let made = Atomic<Int>(0)

    deinit { data.deallocate() }

    /// Rounds `count` floats to bf16 (nearest even; denormals to zero, as the CPU's own
    /// conversion does) into this buffer from element `offset` on; returns where they start.
    /// `onPool`: split a large rounding over the worker pool (only from the thread that owns
    /// the pool, never from a task running on it).
    @discardableResult
    public func round(_ x: UnsafePointer<Float>, count n: Int, at offset: Int = 0, onPool: Bool = false) -> UnsafePointer<UInt16> {
        if n < 0 || offset < 0 || offset + n > count { fatalError("\(n) values at \(offset) for a bf16 buffer of \(count)") }
        if !onPool || n < Rounding.parallelFrom {
            sb_to_bf16(x, data + offset, n)
        } else {
            rounding.x = x
            rounding.y = data + offset
            WorkerPool.shared.run(rounding, count: n, align: 64, minimum: Rounding.parallelFrom)
        }
        return UnsafePointer(data + offset)
    }
}

/// A rounding as work for the worker pool.
private final class Rounding: RangeTask {
    /// Below this many values one thread does it all (a weight matrix or a batch of
    /// activations is well above it).
    static let parallelFrom = 1 << 16
    var x: UnsafePointer<Float>?
    var y: UnsafeMutablePointer<UInt16>?
    func run(_ range: Range<Int>) { sb_to_bf16(x! + range.lowerBound, y! + range.lowerBound, range.count) }
}

/// `x` rounded to bf16 and back, on the portable path (`native` false) or the CPU's
/// instruction where it has one: for tests and references.
public func roundedToBFloat16(_ x: [Float], native: Bool = true) -> [Float] {
    var y = [UInt16](repeating: 0, count: x.count)
    sb_to_bf16_isa(x, &y, x.count, native ? 1 : 0)
    return y.map { Float(bitPattern: UInt32($0) << 16) }
}
