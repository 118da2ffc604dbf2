import Kernels

/// What every layer is built with, in one place: the parameter store it registers its
/// parameters in, the most rows a pass holds (its buffers' size), the number format of its
/// products, and the run's seed (the store's: initialization, dropout and routing keys). A
/// layer takes its buffers, bf16 copies and prepared products from here, so how the model is
/// built is decided once, not threaded through every initializer.
public final class BuildContext {
    public let store: ParameterStore
    public let maxRows: Int
    public let precision: Precision
    public var seed: UInt64 { store.seed }

    public init(store: ParameterStore, maxRows: Int, precision: Precision = .fp32) {
        self.store = store
        self.maxRows = maxRows
        self.precision = precision
    }

    /// A build with a store of its own (for layers without parameters, and tests).
    public convenience init(seed: UInt64, maxRows: Int, precision: Precision = .fp32) {
        self.init(store: ParameterStore(seed: seed), maxRows: maxRows, precision: precision)
    }

    /// A buffer of the layer's own (zeroed; see `Tensor`).
    public func tensor(_ shape: [Int]) -> Tensor { Tensor(shape: shape) }

    /// A bf16 copy of `count` values of a product's input where the products round to bf16
    /// (`precision`); nil in fp32.
    public func bf16(_ count: Int) -> BFloat16Buffer? {
        precision.roundsToBFloat16 ? BFloat16Buffer(count: count, precision: precision) : nil
    }

    /// A product prepared for this build (`Matmul`), in the build's precision unless the
    /// layer keeps it fp32 (`precision`).
    public func product(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int,
                        rows: Matmul.Rows, accumulate: Bool, precision: Precision? = nil) -> Matmul {
        Matmul(ta, tb, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, rows: rows, accumulate: accumulate,
               precision: precision ?? self.precision)
    }
}
