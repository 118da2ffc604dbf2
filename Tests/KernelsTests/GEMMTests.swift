import CKernels
import XCTest
@testable import Kernels

final class GEMMTests: XCTestCase {
    func testAllTransposeCasesAgainstNaiveLoop() {
        let m = 7, n = 5, k = 9
        for ta in [Transpose.none, .transpose] {
            for tb in [Transpose.none, .transpose] {
                let a = Tensor(shape: ta == .none ? [m, k] : [k, m])
                let b = Tensor(shape: tb == .none ? [k, n] : [n, k])
                let c = Tensor(shape: [m, n])
                for i in 0..<a.count { a[i] = Float((i * 7) % 11) - 5 }
                for i in 0..<b.count { b[i] = Float((i * 5) % 13) - 6 }
                for i in 0..<c.count { c[i] = Float(i) }
                let c0 = c.array
                gemm(ta, tb, m: m, n: n, k: k, alpha: 2, a: a.data, lda: a.shape[1],
                     b: b.data, ldb: b.shape[1], beta: 0.5, c: c.data, ldc: n)
                for i in 0..<m {
                    for j in 0..<n {
                        var s: Float = 0
                        for p in 0..<k {
                            let av = ta == .none ? a[i * k + p] : a[p * m + i]
                            let bv = tb == .none ? b[p * n + j] : b[j * k + p]
                            s += av * bv
                        }
                        XCTAssertEqual(c[i * n + j], 2 * s + 0.5 * c0[i * n + j], accuracy: 1e-3,
                                       "\(ta),\(tb) at [\(i),\(j)]")
                    }
                }
            }
        }
    }

    func testEmptyInnerDimensionScalesC() {
        let c = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        let dummy = Tensor(shape: [1])
        gemm(.none, .none, m: 2, n: 3, k: 0, a: dummy.data, lda: 1, b: dummy.data, ldb: 3,
             beta: 0.5, c: c.data, ldc: 3)
        XCTAssertEqual(c.array, [0.5, 1, 1.5, 2, 2.5, 3])
    }

    /// The experts' forward kernel `sb_gemm_nt` (y = x·wᵀ, w stored by rows) against a Double
    /// loop: every count of leftover rows of its 3-row tiles, row strides wider than the rows,
    /// shapes wide enough for its prefetch; shapes it does not take are left to BLAS untouched,
    /// and `gemmExpert` gives the product either way.
    func testExpertKernelAgainstDoubleLoop() {
        let rng = Philox(seed: 3)
        var tried = 0
        for (n, m, k) in [(1, 4, 8), (2, 8, 16), (3, 12, 8), (4, 4, 24), (5, 20, 32), (7, 64, 40), (32, 512, 256), (33, 256, 512)] {
            let ldx = k + 3, ldy = m + 5
            let x = Tensor(shape: [n, ldx]), w = Tensor(shape: [m, k]), y = Tensor(shape: [n, ldy])
            rng.fillUniform(x.data, count: x.count, stream: 1, lo: -1, hi: 1)
            rng.fillUniform(w.data, count: w.count, stream: 2, lo: -1, hi: 1)
            y.fill(7)
            guard sb_gemm_nt(n, m, k, x.data, ldx, w.data, k, y.data, ldy) == 1 else { continue }
            tried += 1
            var worst = 0.0
            for r in 0..<n {
                for j in 0..<m {
                    var s = 0.0
                    for p in 0..<k { s += Double(x[r * ldx + p]) * Double(w[j * k + p]) }
                    worst = max(worst, abs(Double(y[r * ldy + j]) - s))
                }
                // Past the row's m outputs, y is untouched.
                for j in m..<ldy { XCTAssertEqual(y[r * ldy + j], 7, "n \(n), m \(m), k \(k): wrote past column \(m)") }
            }
            XCTAssertLessThan(worst, 1e-5 * Double(k), "n \(n), m \(m), k \(k): max |error| \(worst)")
        }
        if sb_gemm_nt_usable() != 0 { XCTAssertEqual(tried, 8, "every shape runs the kernel on a CPU with AVX2 and FMA") }
        // Shapes the kernel refuses (m not a multiple of 4, k not of 8, over 1024 rows) are
        // left alone, and gemmExpert gives them to BLAS.
        for (n, m, k) in [(2, 6, 8), (2, 4, 12), (1025, 4, 8)] {
            let x = Tensor(shape: [n, k]), w = Tensor(shape: [m, k]), y = Tensor(shape: [n, m])
            for i in 0..<x.count { x[i] = Float(i % 5) - 2 }
            for i in 0..<w.count { w[i] = Float(i % 3) - 1 }
            y.fill(7)
            XCTAssertEqual(sb_gemm_nt(n, m, k, x.data, k, w.data, k, y.data, m), 0)
            XCTAssertEqual(y.array, [Float](repeating: 7, count: y.count))
            gemmExpert(m: n, n: m, k: k, a: x.data, lda: k, b: w.data, ldb: k, c: y.data, ldc: m)
            for r in 0..<n {
                for j in 0..<m {
                    var s: Float = 0
                    for p in 0..<k { s += x[r * k + p] * w[j * k + p] }
                    XCTAssertEqual(y[r * m + j], s, accuracy: 1e-4)
                }
            }
        }
    }
}

final class ReductionTests: XCTestCase {
    func testColumnSumsAndSumOfSquares() {
        let rows = 5, cols = 11
        let x = Tensor(shape: [rows, cols])
        for i in 0..<x.count { x[i] = Float(i % 9) - 4 }
        let out = Tensor(shape: [cols])
        out.fill(1)
        addColumnSums(x.data, rows: rows, cols: cols, into: out.data)
        for j in 0..<cols {
            var s: Float = 1
            for r in 0..<rows { s += x[r * cols + j] }
            XCTAssertEqual(out[j], s, "column \(j)")
        }
        let big = Tensor(shape: [10_001])
        for i in 0..<big.count { big[i] = Float(i % 3) * 0.5 }
        let want = (0..<big.count).reduce(0.0) { $0 + Double(big[$1] * big[$1]) }
        XCTAssertEqual(sumOfSquares(big.data, count: big.count), want, accuracy: want * 1e-6)
    }
}
