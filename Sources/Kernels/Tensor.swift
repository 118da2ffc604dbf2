#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A contiguous, row-major buffer of `Float` with a fixed shape.
///
/// Tensors are allocated once (when a model or workspace is built) and then written in
/// place: the training step never creates one. Memory is zeroed and 64-byte aligned (2 MiB
/// from `hugePagesFrom` on).
public final class Tensor {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>
    /// False for a placeholder, whose `data` is not memory of its own.
    private let owns: Bool

    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        #if os(Linux)
        if bytes >= Self.hugePagesFrom {
            // A mapping of its own, zero without being touched: a page takes memory when it is
            // first written, and `release` gives it back.
            let mapped = bytes + (1 << 21)
            guard let region = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  region != MAP_FAILED else { fatalError("out of memory: a tensor of \(bytes) bytes (\(shape))") }
            let start = (Int(bitPattern: region) + (1 << 21) - 1) & ~((1 << 21) - 1)
            let raw = UnsafeMutableRawPointer(bitPattern: start)!
            _ = madvise(raw, bytes, MADV_HUGEPAGE)
            data = raw.bindMemory(to: Float.self, capacity: count)
            mapping = (region, mapped)
            pageBytes = 4 * Self.pageFloats
            owns = true
            Self.made.wrappingAdd(count, ordering: .relaxed)
            return
        }
        #endif
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
        owns = true
        Self.made.wrappingAdd(count, ordering: .relaxed)
    }

    /// A tensor of `shape` whose data is the inaccessible `Placeholder` (a model that is only
    /// counted): reading or writing it traps. Not counted in `floatsMade`.
    public init(placeholder shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        count = Placeholder.count(shape)
        data = Placeholder.address.assumingMemoryBound(to: Float.self)
        owns = false
    }

    /// Floats of every tensor made so far in this process (for tests that check a size
    /// counted in advance, `ModelSize`, against what the tensors really hold).
    public static var floatsMade: Int { made.load(ordering: .relaxed) }
    private static let made = Atomic<Int>(0)

    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit {
        #if os(Linux)
        if let mapping { munmap(mapping.start, mapping.bytes); return }
        #endif
        if owns { data.deallocate() }
    }

    /// Floats in a huge page (2 MiB), the unit `release` gives back in a mapped tensor.
    public static let pageFloats = (1 << 21) / 4

    /// The mapping of a tensor from `hugePagesFrom` on: its start and length.
    private var mapping: (start: UnsafeMutableRawPointer, bytes: Int)?
    /// The pages `release` gives back whole: 2 MiB (a transparent huge page, which stays
    /// whole) in a mapping of its own.
    private var pageBytes = 0

    /// Whether `release` gives pages back: a tensor from `hugePagesFrom` on, a mapping of its own.
    public var releasesPages: Bool { pageBytes > 0 }

    /// Gives the memory of the whole pages inside `range` (floats) back to the system: they
    /// read as zeros until written again, which takes memory again. Only a tensor from
    /// `hugePagesFrom` on has pages of its own; the call does nothing on others.
    public func release(_ range: Range<Int>) {
        #if os(Linux)
        guard pageBytes > 0, !range.isEmpty else { return }
        let base = Int(bitPattern: data)
        let lo = (base + range.lowerBound * 4 + pageBytes - 1) & ~(pageBytes - 1)
        let hi = (base + range.upperBound * 4) & ~(pageBytes - 1)
        if hi > lo { _ = madvise(UnsafeMutableRawPointer(bitPattern: lo), hi - lo, MADV_DONTNEED) }
        #endif
    }

    /// Tensors from this size on (the parameter arenas, optimizer state, datasets) are mappings
    /// of their own, start on a 2 MiB boundary and ask Linux for transparent huge pages, which Debian gives only on
    /// request (`madvise` mode). OpenMPI's shared-memory transfers pin the pages they copy one
    /// by one: with 4 KiB pages the pinning cost more than the copy (`bench W3`'s gradient
    /// sync; docs/BENCHMARKS.md).
    static let hugePagesFrom = 4 << 20

    /// The first dimension (rows of a matrix, batch of activations).
    public var rows: Int { shape.first ?? 1 }
    /// Elements per row: the product of all dimensions but the first.
    public var cols: Int { shape.count <= 1 ? 1 : count / max(shape[0], 1) }

    public subscript(i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: data, count: count) }
    public var array: [Float] { Array(buffer) }

    public func fill(_ value: Float) { data.update(repeating: value, count: count) }
    public func zero() { fill(0) }
}
