import Foundation
import Kernels

/// Times matrix products alone on given shapes at the current thread count: OpenBLAS's
/// `cblas_sgemm`, or oneDNN matmul primitives (fp32 or bf16) prepared as the layers prepare theirs.
enum GEMMProbe {
    /// Best-of-3 GFLOP/s of one shape, each trial running ≥ 0.1 s.
    static func rate(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, library: MatmulLibrary = .openBLAS,
                     precision: Precision = .fp32) -> Double {
        rate(of: [(ta, tb, m, n, k)], library: library, precision: precision)
    }

    /// GFLOP/s over a list of shapes: total FLOPs over total time, so each shape weighs as
    /// much as it does in a training step.
    static func rate(of shapes: [(Transpose, Transpose, Int, Int, Int)], library: MatmulLibrary = .openBLAS,
                     precision: Precision = .fp32) -> Double {
        let size = shapes.map { max($0.2 * $0.4, $0.4 * $0.3, $0.2 * $0.3) }.max()!
        let a = Tensor(shape: [size]), b = Tensor(shape: [size]), c = Tensor(shape: [size])
        for i in 0..<size { a[i] = Float(i % 7) * 0.1; b[i] = Float(i % 5) * 0.1 }
        let a16 = precision.roundsToBFloat16 ? BFloat16Buffer(count: size, precision: precision) : nil
        let b16 = precision.roundsToBFloat16 ? BFloat16Buffer(count: size, precision: precision) : nil
        a16?.round(a.data, count: size)
        b16?.round(b.data, count: size)
        let products = shapes.map { (ta, tb, m, n, k) in
            Matmul(ta, tb, m: m, n: n, k: k, lda: ta == .none ? k : m, ldb: tb == .none ? n : k, ldc: n, rows: .m,
                   accumulate: false, precision: precision, library: library)
        }
        let flops = shapes.reduce(0.0) { $0 + 2 * Double($1.2 * $1.3 * $1.4) }
        var best = 0.0
        for _ in 0..<3 {
            var reps = 0
            let t0 = ContinuousClock.now
            var seconds = 0.0
            while seconds < 0.1 {
                for (p, shape) in zip(products, shapes) {
                    if let a16, let b16 {
                        p(rows: shape.2, a: a16.data, b: b16.data, c: c.data)
                    } else {
                        p(rows: shape.2, a: a.data, b: b.data, c: c.data)
                    }
                }
                reps += 1
                seconds = (ContinuousClock.now - t0).seconds
            }
            best = max(best, flops * Double(reps) / seconds / 1e9)
        }
        return best
    }
}
