import XCTest
@testable import Kernels

/// Prepared products (`Matmul`) on both libraries and every precision (fp32, bf16 on oneDNN
/// where oneDNN has a bf16 matmul, emulated bf16 on every CPU) against a Double loop, with
/// padded row strides, rows below the bound, and accumulation.
final class MatmulTests: XCTestCase {
    /// op(A)[m, k] · op(B)[k, n] (+ C) in Double.
    func reference(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, a: [Float], lda: Int, b: [Float], ldb: Int,
                   c: [Float], ldc: Int, accumulate: Bool) -> [Double] {
        var out = [Double](repeating: 0, count: m * ldc)
        for i in 0..<m {
            for j in 0..<n {
                var s = accumulate ? Double(c[i * ldc + j]) : 0
                for p in 0..<k {
                    let av = ta == .none ? a[i * lda + p] : a[p * lda + i]
                    let bv = tb == .none ? b[p * ldb + j] : b[j * ldb + p]
                    s += Double(av) * Double(bv)
                }
                out[i * ldc + j] = s
            }
        }
        return out
    }

    /// In fp32 the error is the fp32 summation's, k·2⁻²⁴·Σ|a·b| at worst; in bf16 the inputs
    /// are rounded first (the reference multiplies the rounded values), and a product of two
    /// bf16 values is exact in fp32, so the bound is the same, native or emulated.
    func testEveryLayoutLibraryAndPrecision() {
        // bf16 on oneDNN from AVX-512 on (oneDNN 2.6 has no bf16 matmul below it), emulated otherwise.
        XCTAssertEqual(Precision.bf16.onThisCPU, OneDNN.isa.hasPrefix("avx512") ? .bf16 : .bf16Emulated, "oneDNN runs \(OneDNN.isa)")
        let bound = 40, n = 19, fixed = 23
        for precision in Precision.allCases where precision != .bf16 || OneDNN.supportsBFloat16 {
            for library in [MatmulLibrary.openBLAS, .oneDNN] where precision != .bf16 || library == .oneDNN {
                for ta in [Transpose.none, .transpose] {
                    for tb in [Transpose.none, .transpose] {
                        for rowsAre in [Matmul.Rows.m, .k] {
                            for accumulate in [false, true] {
                                let (m, k) = rowsAre == .m ? (bound, fixed) : (fixed, bound)
                                let lda = (ta == .none ? k : m) + 3, ldb = (tb == .none ? n : k) + 2, ldc = n + 5
                                let product = Matmul(ta, tb, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, rows: rowsAre,
                                                     accumulate: accumulate, precision: precision, library: library)
                                for rows in [17, 0, bound] {
                                    let (rm, rk) = rowsAre == .m ? (rows, k) : (m, rows)
                                    check(product, "\(precision) \(library) \(ta),\(tb) rows \(rowsAre) = \(rows) accumulate \(accumulate)",
                                          m: rm, n: n, k: rk, bound: rowsAre == .m ? bound : m)
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `bound`: the rows of C as allocated (those past m must stay as they were).
    func check(_ p: Matmul, _ what: String, m: Int, n: Int, k: Int, bound: Int) {
        let rows = p.rowsAre == .m ? m : k
        let aRows = p.ta == .none ? m : k, bRows = p.tb == .none ? k : n
        var a = (0..<(max(aRows, 1) * p.lda)).map { Float(sin(Double($0) * 0.37)) }
        var b = (0..<(max(bRows, 1) * p.ldb)).map { Float(cos(Double($0) * 0.53)) }
        let c0 = (0..<(bound * p.ldc)).map { Float($0 % 7) - 3 }
        var c = c0
        if p.precision == .bf16 {
            a = roundedToBFloat16(a)
            b = roundedToBFloat16(b)
            let a16 = a.map { UInt16($0.bitPattern >> 16) }, b16 = b.map { UInt16($0.bitPattern >> 16) }
            a16.withUnsafeBufferPointer { a16 in
                b16.withUnsafeBufferPointer { p(rows: rows, a: BFloat16Pointer(a16.baseAddress!), b: BFloat16Pointer($0.baseAddress!), c: &c) }
            }
        } else if p.precision == .bf16Emulated {
            a = roundedToBFloat16(a, widened: true)
            b = roundedToBFloat16(b, widened: true)
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { p(rows: rows, a: BFloat16Pointer(widened: a.baseAddress!), b: BFloat16Pointer(widened: $0.baseAddress!), c: &c) }
            }
        } else {
            p(rows: rows, a: a, b: b, c: &c)
        }
        let want = reference(p.ta, p.tb, m: m, n: n, k: k, a: a, lda: p.lda, b: b, ldb: p.ldb, c: c0, ldc: p.ldc,
                             accumulate: p.accumulate)
        var worst = 0.0
        for i in 0..<m { for j in 0..<n { worst = max(worst, abs(Double(c[i * p.ldc + j]) - want[i * p.ldc + j])) } }
        // Σ|a·b| ≤ k here (|a|, |b| ≤ 1), plus |C| ≤ 3 when accumulating.
        XCTAssertLessThanOrEqual(worst, Double(k + 3) * Double(k) * 0x1p-24, "\(what) (\(p.implementation)): max error \(worst)")
        // Columns past n and rows past m are not written.
        for i in 0..<bound {
            for j in (i < m ? n : 0)..<p.ldc where c[i * p.ldc + j] != c0[i * p.ldc + j] {
                XCTFail("\(what): wrote [\(i), \(j)]")
                return
            }
        }
    }

    /// Every rounding path (bf16 values on the portable loop and on AVX512-BF16 where it is
    /// used; the emulated path's fp32 values on the portable loop and on AVX2) rounds to the
    /// same bits.
    func testRoundingToBFloat16() {
        // Nearest, ties to even: 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷ and goes to 1;
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶ and goes to the even 1 + 2⁻⁶.
        let x: [Float] = [1 + 0x1p-8, 1 + 3 * 0x1p-8, 1 + 0x1p-8 + 0x1p-20, -2.5, 0x1p-130, -0x1p-140, .infinity,
                          -.infinity, .greatestFiniteMagnitude, 0, -0.0]
        let want: [Float] = [1, 1 + 0x1p-6, 1 + 0x1p-7, -2.5, 0, -0.0, .infinity, -.infinity, .infinity, 0, -0.0]
        for widened in [false, true] {
            for simd in [false, true] {
                let got = roundedToBFloat16(x, simd: simd, widened: widened)
                for i in x.indices {
                    XCTAssertEqual(got[i].bitPattern, want[i].bitPattern,
                                   "widened \(widened), simd \(simd): \(x[i]) → \(got[i]), want \(want[i])")
                }
                let nan = roundedToBFloat16([.nan, -.nan], simd: simd, widened: widened)
                XCTAssertTrue(nan.allSatisfy { $0.isNaN && $0.bitPattern & 0xffff == 0 }, "widened \(widened), simd \(simd): \(nan)")
            }
        }
        // The AVX512-BF16 instruction is used exactly where oneDNN multiplies bf16 natively
        // (a cap on oneDNN's instruction set caps it too).
        XCTAssertEqual(bf16RoundingIsNative, OneDNN.nativeBFloat16, "oneDNN runs \(OneDNN.isa)")
        // All paths agree on every length (the vector loops' tails) and on random bits (NaNs:
        // all NaN; their payloads are not promised).
        let rng = Philox(seed: 11)
        let bits = (0..<1000).map { Float(bitPattern: rng.words(stream: 0, block: UInt64($0))[0]) }
        for count in [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 1000] {
            let x = Array(bits.prefix(count))
            let reference = roundedToBFloat16(x, simd: false)
            for (simd, widened) in [(true, false), (false, true), (true, true)] {
                let got = roundedToBFloat16(x, simd: simd, widened: widened)
                for i in 0..<count where !(reference[i].isNaN && got[i].isNaN) && reference[i].bitPattern != got[i].bitPattern {
                    XCTFail("length \(count), element \(i) (\(bits[i])): simd \(simd), widened \(widened) gave \(got[i]), "
                            + "the portable loop \(reference[i])")
                    break
                }
            }
        }
    }
}
