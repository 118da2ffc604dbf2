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
