import CKernels
import Foundation
import XCTest
@testable import Kernels

/// Vector approximations against libm over a dense grid.
final class FastMathTests: XCTestCase {
    func maxError(_ lo: Float, _ hi: Float, relative: Bool,
                  _ fast: (Float8) -> Float8, _ exact: (Double) -> Double) -> (Double, Float) {
        var worst = 0.0, at: Float = 0
        var x = lo
        let step = (hi - lo) / 100_000
        while x <= hi {
            let got = Double(fast(Float8(repeating: x))[3])
            let want = exact(Double(x))
            let err = relative ? abs(got - want) / max(abs(want), 1e-30) : abs(got - want)
            if err > worst { worst = err; at = x }
            x += step
        }
        return (worst, at)
    }

    func testExpRelativeError() {
        let (e, at) = maxError(-87, 88, relative: true, exp8, Foundation.exp)
        XCTAssertLessThan(e, 2e-7, "exp8 max relative error \(e) at x = \(at)")
    }

    func testExpClampsInsteadOfOverflowing() {
        let v = exp8(Float8(repeating: 1000))[0], w = exp8(Float8(repeating: -1000))[0]
        XCTAssertTrue(v.isFinite && v > 1e38, "exp8(1000) = \(v)")
        XCTAssertTrue(w >= 0 && w < 1e-37, "exp8(-1000) = \(w)")
    }

    func testErfAbsoluteError() {
        let (e, at) = maxError(-6, 6, relative: false, erf8, Foundation.erf)
        XCTAssertLessThan(e, 5e-7, "erf8 max absolute error \(e) at x = \(at)")
    }

    func testTanhAbsoluteError() {
        let (e, at) = maxError(-20, 20, relative: false, tanh8, Foundation.tanh)
        XCTAssertLessThan(e, 3e-7, "tanh8 max absolute error \(e) at x = \(at)")
    }

    func testSigmoidAbsoluteError() {
        let (e, at) = maxError(-30, 30, relative: false, sigmoid8, { 1 / (1 + Foundation.exp(-$0)) })
        XCTAssertLessThan(e, 2e-7, "sigmoid8 max absolute error \(e) at x = \(at)")
    }
}

/// Each activation and its derivative against a Double reference and its central difference.
final class ActivationTests: XCTestCase {
    static func reference(_ a: Activation, _ x: Double) -> Double {
        switch a {
        case .identity: x
        case .relu: max(x, 0)
        case .gelu: 0.5 * x * (1 + erf(x / 2.0.squareRoot()))
        case .geluTanh: 0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
        case .silu: x / (1 + exp(-x))
        case .sigmoid: 1 / (1 + exp(-x))
        }
    }

    func testValuesAndDerivatives() {
        let h = 1e-5
        for a in Activation.allCases {
            var worstF = 0.0, worstD = 0.0, at = 0.0
            for i in 0...2000 {
                let x = -8 + 16 * Double(i) / 2000
                if a == .relu && abs(x) < 1e-3 { continue }   // the kink
                let f = Double(a(Float(x)))
                let d = Double(a.derivative(Float(x)))
                let fd = (Self.reference(a, x + h) - Self.reference(a, x - h)) / (2 * h)
                worstF = max(worstF, abs(f - Self.reference(a, x)))
                if abs(d - fd) > worstD { worstD = abs(d - fd); at = x }
            }
            XCTAssertLessThan(worstF, 1e-6, "\(a) value: max abs error \(worstF)")
            XCTAssertLessThan(worstD, 2e-6, "\(a) derivative: max abs error \(worstD) at x = \(at)")
        }
    }

    func testFusedBiasActivationMatchesScalarPath() {
        // cols = 13 exercises both the 8-lane body and the tail.
        let rows = 3, cols = 13
        let z = Tensor(shape: [rows, cols]), y = Tensor(shape: [rows, cols]), b = Tensor(shape: [cols])
        for i in 0..<z.count { z[i] = Float(i % 7) * 0.37 - 1.1 }
        for j in 0..<cols { b[j] = Float(j) * 0.05 - 0.3 }
        let before = z.array
        Activation.gelu.forward(z: z.data, bias: b.data, y: y.data, rows: rows, cols: cols)
        for r in 0..<rows {
            for j in 0..<cols {
                let pre = before[r * cols + j] + b[j]
                XCTAssertEqual(z[r * cols + j], pre, accuracy: 1e-6)
                XCTAssertEqual(Double(y[r * cols + j]), Self.reference(.gelu, Double(pre)), accuracy: 1e-6)
            }
        }
    }

    /// The C GELU that layers run (AVX when the CPU has it) is the Swift `GELUKernel` bit for
    /// bit, on both instruction-set paths: values and derivatives over [−10, 10] and beyond
    /// the clamps, with a bias, and on a length that leaves a tail.
    func testTheCGELUIsTheSwiftKernelBitForBit() {
        let rows = 7, cols = 1013, n = rows * cols   // 1013 = 126·8 + 5
        let x = Tensor(shape: [rows, cols]), bias = Tensor(shape: [cols]), dy = Tensor(shape: [rows, cols])
        for i in 0..<n { x[i] = -10 + 20 * Float(i) / Float(n) }
        x[0] = -200; x[1] = 200; x[2] = 0; x[3] = -0.0
        for j in 0..<cols { bias[j] = Float(j % 11) * 0.01 - 0.05 }
        for i in 0..<n { dy[i] = Float(i % 13) * 0.25 - 1.5 }
        // The Swift kernel, lane by lane.
        func swift(_ f: (Float8) -> Float8, _ v: Float) -> Float { f(Float8(repeating: v))[0] }
        for avx: Int32 in [0, 1] {
            let z = Tensor(shape: [rows, cols]), y = Tensor(shape: [rows, cols]), dz = Tensor(shape: [rows, cols])
            z.data.update(from: x.data, count: n)
            sb_gelu_forward_isa(z.data, bias.data, y.data, rows, cols, avx)
            sb_gelu_backward_isa(z.data, dy.data, dz.data, n, avx)
            var differ = 0
            for i in 0..<n {
                let pre = x[i] + bias[i % cols]
                if z[i].bitPattern != pre.bitPattern { differ += 1 }
                if y[i].bitPattern != swift(GELUKernel.f, pre).bitPattern { differ += 1 }
                if dz[i].bitPattern != (dy[i] * swift(GELUKernel.df, pre)).bitPattern { differ += 1 }
            }
            XCTAssertEqual(differ, 0, "avx \(avx): \(differ) of \(3 * n) values differ from the Swift kernel")
        }
    }
}
