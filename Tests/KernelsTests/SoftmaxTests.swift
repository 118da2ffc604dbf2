import Foundation
import XCTest
@testable import Kernels

final class SoftmaxTests: XCTestCase {
    func testSoftmaxAndLogSoftmaxAgainstDouble() {
        let rows = 3, cols = 10
        let x = Tensor(shape: [rows, cols]), p = Tensor(shape: [rows, cols]), lp = Tensor(shape: [rows, cols])
        for i in 0..<x.count { x[i] = Float(i % 7) * 1.3 - 4 + Float(i / cols) * 20 }
        softmaxRows(x.data, p.data, rows: rows, cols: cols)
        logSoftmaxRows(x.data, lp.data, rows: rows, cols: cols)
        for r in 0..<rows {
            let row = (0..<cols).map { Double(x[r * cols + $0]) }
            let m = row.max()!
            let lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
            for j in 0..<cols {
                XCTAssertEqual(Double(p[r * cols + j]), exp(row[j] - lse), accuracy: 1e-6)
                XCTAssertEqual(Double(lp[r * cols + j]), row[j] - lse, accuracy: 1e-5)
            }
        }
    }

    /// Loss value against a Double reference; gradient against central differences.
    func testCrossEntropyWithLabelSmoothing() {
        let rows = 4, classes = 10, eps: Float = 0.1
        let z = Tensor(shape: [rows, classes]), d = Tensor(shape: [rows, classes])
        for i in 0..<z.count { z[i] = sin(Float(i) * 0.7) * 3 }
        var labels: [Int32] = [3, 0, 9, 5]
        func referenceLoss(_ z: [Double]) -> Double {
            var total = 0.0
            for r in 0..<rows {
                let row = Array(z[r * classes..<(r + 1) * classes])
                let m = row.max()!
                let lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
                for j in 0..<classes {
                    let q = Double(eps) / Double(classes) + (j == Int(labels[r]) ? Double(1 - eps) : 0)
                    total -= q * (row[j] - lse)
                }
            }
            return total / Double(rows)
        }
        let out = labels.withUnsafeMutableBufferPointer {
            softmaxCrossEntropy(logits: z.data, labels: $0.baseAddress!, rows: rows, classes: classes,
                                smoothing: eps, gradScale: 1 / Float(rows), dlogits: d.data)
        }
        let base = z.array.map(Double.init)
        XCTAssertEqual(out.lossSum / Double(rows), referenceLoss(base), accuracy: 1e-5)
        var maxDiff = 0.0
        for i in 0..<z.count {
            var plus = base, minus = base
            plus[i] += 1e-4
            minus[i] -= 1e-4
            let fd = (referenceLoss(plus) - referenceLoss(minus)) / 2e-4
            maxDiff = max(maxDiff, abs(fd - Double(d[i])))
        }
        XCTAssertLessThan(maxDiff, 1e-5, "cross-entropy gradient: max |analytic − numeric| = \(maxDiff)")
        let argmaxCorrect = (0..<rows).filter { r in
            (0..<classes).max { z[r * classes + $0] < z[r * classes + $1] }! == Int(labels[r])
        }.count
        XCTAssertEqual(out.correct, argmaxCorrect)
    }
}

final class PhiloxTests: XCTestCase {
    /// Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32 10).
    func testKnownAnswers() {
        XCTAssertEqual(Philox(seed: 0).block(0, 0, 0, 0), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8])
        XCTAssertEqual(Philox(seed: .max).block(.max, .max, .max, .max),
                       [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd])
    }

    func testUniformRangeMeanAndStreamIndependence() {
        let rng = Philox(seed: 42)
        var sum = 0.0
        for i in 0..<100_000 {
            let u = rng.uniform(stream: 1, index: UInt64(i))
            XCTAssertTrue(u >= 0 && u < 1)
            sum += Double(u)
        }
        XCTAssertEqual(sum / 100_000, 0.5, accuracy: 0.005)
        XCTAssertNotEqual(rng.uniform(stream: 1, index: 5), rng.uniform(stream: 2, index: 5))
        XCTAssertEqual(rng.uniform(stream: 1, index: 5), Philox(seed: 42).uniform(stream: 1, index: 5))
    }

    func testNormalHasUnitMoments() {
        let rng = Philox(seed: 11)
        let xs = (0..<100_000).map { Double(rng.normal(stream: 3, index: UInt64($0))) }
        let mean = xs.reduce(0, +) / Double(xs.count)
        let variance = xs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(xs.count)
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(variance, 1, accuracy: 0.02)
        XCTAssertEqual(xs.filter { abs($0) > 3 }.count, 270, accuracy: 60, "tail mass of a standard normal")
    }

    func testPermutationIsAPermutationAndKeyed() {
        let rng = Philox(seed: 7)
        let p = rng.permutation(1000, stream: RNGStream.shuffle(epoch: 0))
        XCTAssertEqual(Set(p).count, 1000)
        XCTAssertEqual(p.min(), 0)
        XCTAssertEqual(p.max(), 999)
        XCTAssertEqual(p, Philox(seed: 7).permutation(1000, stream: RNGStream.shuffle(epoch: 0)))
        XCTAssertNotEqual(p, rng.permutation(1000, stream: RNGStream.shuffle(epoch: 1)))
        XCTAssertNotEqual(p, Array(0..<1000))
    }
}
