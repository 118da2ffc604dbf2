import CBLAS
import CDNNL
import CKernels

public enum Transpose: Sendable {
    case none, transpose
    var cblas: CBLAS_TRANSPOSE { self == .none ? CblasNoTrans : CblasTrans }
}

/// `C[m, n] = alpha · op(A) · op(B) + beta · C`, all row-major, one `cblas_sgemm` call.
///
/// `op(A)` is `[m, k]` and `op(B)` is `[k, n]`; `lda`, `ldb`, `ldc` are the row strides of
/// the matrices as stored (before `op`). Zero-sized products are a no-op except for the
/// `beta` scaling, which BLAS skips when k is 0, so it is done here.
@inline(__always)
public func gemm(
    _ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int,
    alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    guard m > 0, n > 0 else { return }
    if k == 0 {
        for i in 0..<m { scale(c + i * ldc, count: n, by: beta) }
        return
    }
    // OpenBLAS allocates inside some calls (threaded, and its AVX-512 small-matrix kernels):
    // the allocation test counts those apart from ours.
    sb_inside_library(1)
    cblas_sgemm(
        CblasRowMajor, ta.cblas, tb.cblas, Int32(m), Int32(n), Int32(k),
        alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    sb_inside_library(0)
}

/// `c[m, n] = a · bᵀ` for an MoE expert's products: `a` is the expert's rows (a few dozen),
/// `b` a weight stored `[n, k]`. A kernel that reads the weight once, in place, where this
/// CPU and shape allow (`sb_gemm_nt`: AVX2 and FMA, m ≤ 1024, n a multiple of 4, k of 8); BLAS
/// otherwise. Deterministic either way; the two round differently.
@inline(__always)
public func gemmExpert(
    m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int
) {
    if m > 0 && sb_gemm_nt(m, n, k, a, lda, b, ldb, c, ldc) == 1 { return }
    gemm(.none, .transpose, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: 0, c: c, ldc: ldc)
}

/// Whether `gemmExpert` runs its own kernel on this CPU (AVX2 and FMA) rather than BLAS.
public var gemmExpertHasOwnKernel: Bool { sb_gemm_nt_usable() != 0 }

/// BLAS threading and identity.
public enum BLAS {
    /// Sets the number of OpenBLAS threads for every later call in this process, and oneDNN's
    /// OpenMP threads and the threads of the elementwise worker pool to match. Only one of the
    /// three runs at a time (the calling thread waits for each), and neither OpenBLAS's nor the
    /// pool's idle threads spin, so n threads of each share n cores without oversubscribing them.
    public static func setThreads(_ n: Int) {
        openblas_set_num_threads(Int32(n))
        sb_omp_set_threads(Int32(n))
        WorkerPool.shared.setThreads(n)
    }
    /// Runs `body` with every BLAS call single-threaded, for work that runs several small
    /// GEMMs side by side on the worker pool (one MoE expert per thread): OpenBLAS's own
    /// threads do not pay on a 32-row product.
    public static func singleThreaded(_ body: () -> Void) {
        let n = openblas_get_num_threads()
        if n > 1 { openblas_set_num_threads(1); sb_omp_set_threads(1) }
        body()
        if n > 1 { openblas_set_num_threads(n); sb_omp_set_threads(n) }
    }

    /// The kernel family OpenBLAS picked for this CPU ("Haswell", "Zen", …).
    public static var coreName: String { String(cString: openblas_get_corename()) }
    public static var config: String { String(cString: openblas_get_config()) }
}
