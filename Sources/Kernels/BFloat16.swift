import CDNNL
import Synchronization

/// Where a product's bf16 inputs are: bf16 values (the upper half of an IEEE float) for
/// oneDNN's bf16 matmul, or, on the emulated path, the same values widened to the fp32
/// numbers they equal, for the fp32 library (`Precision.bf16Emulated`).
public struct BFloat16Pointer {
    public let address: UnsafeRawPointer
    /// Whether the values are held as fp32 (the emulated path) rather than as bf16.
    public let widened: Bool

    public init(_ values: UnsafePointer<UInt16>) { (address, widened) = (UnsafeRawPointer(values), false) }
    public init(widened values: UnsafePointer<Float>) { (address, widened) = (UnsafeRawPointer(values), true) }

    /// The values from element `offset` on.
    public static func + (p: BFloat16Pointer, offset: Int) -> BFloat16Pointer {
        p.widened ? BFloat16Pointer(widened: p.address.assumingMemoryBound(to: Float.self) + offset)
            : BFloat16Pointer(p.address.assumingMemoryBound(to: UInt16.self) + offset)
    }
}

/// A buffer of values rounded to bf16, for the inputs of bf16 products: made once with a
/// layer, written in place. Held as bf16 (`Precision.bf16`, 2 bytes a value) or as the fp32
/// numbers they equal (`.bf16Emulated`, 4 bytes). Zeroed and 64-byte aligned.
public final class BFloat16Buffer {
    public let count: Int
    /// Whether the values are held as fp32 (the emulated path).
    public let widened: Bool
    private let storage: UnsafeMutableRawPointer
    /// False for a placeholder, whose storage is not memory of its own.
    private let owns: Bool
    /// Splits a large rounding over the worker pool (elementwise: the same bits however split).
    private let rounding: Rounding

    /// `precision`: `.bf16` or `.bf16Emulated`, the precision of the products that read it.
    public init(count: Int, precision: Precision) {
        guard precision.roundsToBFloat16 else { fatalError("a bf16 buffer for \(precision) products") }
        self.count = count
        widened = precision == .bf16Emulated
        let bytes = max(count, 1) * (widened ? 4 : 2)
        storage = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        rounding = Rounding(storage, widened: widened)
        owns = true
        Self.made.wrappingAdd(count, ordering: .relaxed)
    }

    /// A buffer of `count` values whose storage is the inaccessible `Placeholder` (a model
    /// that is only counted). Not counted in `valuesMade`.
    public init(placeholder count: Int, precision: Precision) {
        guard precision.roundsToBFloat16 else { fatalError("a bf16 buffer for \(precision) products") }
        self.count = count
        widened = precision == .bf16Emulated
        storage = Placeholder.address
        rounding = Rounding(storage, widened: widened)
        owns = false
    }

    /// Values of every bf16 buffer made so far in this process (for the test that checks
    /// `ModelSize.bf16Values` against what the layers really hold).
    public static var valuesMade: Int { made.load(ordering: .relaxed) }
    private static let made = Atomic<Int>(0)

    deinit { if owns { storage.deallocate() } }

    /// The buffer's values from the start.
    public var data: BFloat16Pointer {
        widened ? BFloat16Pointer(widened: storage.assumingMemoryBound(to: Float.self))
            : BFloat16Pointer(storage.assumingMemoryBound(to: UInt16.self))
    }

    /// Rounds `count` floats to bf16 (nearest even; denormals to zero, as the CPU's own
    /// conversion does) into this buffer from element `offset` on; returns where they start.
    /// `onPool`: split a large rounding over the worker pool (only from the thread that owns
    /// the pool, never from a task running on it).
    @discardableResult
    public func round(_ x: UnsafePointer<Float>, count n: Int, at offset: Int = 0, onPool: Bool = false) -> BFloat16Pointer {
        if n < 0 || offset < 0 || offset + n > count { fatalError("\(n) values at \(offset) for a bf16 buffer of \(count)") }
        if !onPool || n < Rounding.parallelFrom {
            rounding.run(x, at: offset, count: n)
        } else {
            rounding.x = x
            rounding.offset = offset
            WorkerPool.shared.run(rounding, count: n, align: 64, minimum: Rounding.parallelFrom)
        }
        return data + offset
    }
}

/// A rounding as work for the worker pool.
private final class Rounding: RangeTask {
    /// Below this many values one thread does it all (a weight matrix or a batch of
    /// activations is well above it).
    static let parallelFrom = 1 << 16
    let storage: UnsafeMutableRawPointer
    let widened: Bool
    var x: UnsafePointer<Float>?
    var offset = 0

    init(_ storage: UnsafeMutableRawPointer, widened: Bool) { (self.storage, self.widened) = (storage, widened) }

    /// x[0..<n] rounded into the buffer from element `at` on.
    func run(_ x: UnsafePointer<Float>, at: Int, count n: Int) {
        if widened {
            sb_round_bf16(x, storage.assumingMemoryBound(to: Float.self) + at, n)
        } else {
            sb_to_bf16(x, storage.assumingMemoryBound(to: UInt16.self) + at, n)
        }
    }

    func run(_ range: Range<Int>) { run(x! + range.lowerBound, at: offset + range.lowerBound, count: range.count) }
}

/// Whether bf16 rounding runs the CPU's AVX512-BF16 instruction here: where the CPU has it and
/// oneDNN, capped or not, runs bf16 natively.
public var bf16RoundingIsNative: Bool { sb_bf16_native_rounding() != 0 }

/// `x` rounded to bf16 and back, for tests and references: as bf16 values (`widened` false),
/// on the portable loop (`simd` false) or the AVX512-BF16 instruction where it is used
/// (`bf16RoundingIsNative`); or written as fp32 (`widened` true), the emulated path's
/// rounding, on the portable loop or AVX2.
public func roundedToBFloat16(_ x: [Float], simd: Bool = true, widened: Bool = false) -> [Float] {
    if widened {
        var y = [Float](repeating: 0, count: x.count)
        sb_round_bf16_isa(x, &y, x.count, simd ? 1 : 0)
        return y
    }
    var y = [UInt16](repeating: 0, count: x.count)
    sb_to_bf16_isa(x, &y, x.count, simd ? 1 : 0)
    return y.map { Float(bitPattern: UInt32($0) << 16) }
}
