import XCTest
import Kernels
@testable import Layers

/// The MoE layer: backward against central finite differences with the routing held fixed
/// (both routers, with and without capacity, GLU experts, a shared expert, auxiliary losses),
/// and forward against a plain per-token reference.
final class MoETests: XCTestCase {
    func make(_ spec: MoESpec, rows: Int = 9, width: Int = 6) -> (MoE, ParameterStore) {
        let store = ParameterStore(seed: 3)
        let moe = MoE("moe", width: width, spec: spec, site: 0, in: BuildContext(store: store, maxRows: rows))
        store.finalize()
        return (moe, store)
    }

    func check(_ spec: MoESpec, rows: Int = 9, context: ForwardContext = .init(training: true),
               file: StaticString = #filePath, line: UInt = #line) {
        let (moe, store) = make(spec, rows: rows)
        let check = GradientCheck(moe, store: store, rows: rows, context: context, extraLoss: { moe.auxLoss })
        _ = check.loss()
        moe.holdsRouting = true
        check.run(samples: 48, file: file, line: line)
    }

    func testSoftmaxTop2WithBalanceAndZLoss() {
        check(MoESpec(experts: 4, topK: 2, hidden: 5, activation: .pointwise(.gelu),
                      balanceCoefficient: 0.1, zLossCoefficient: 0.05))
    }

    func testSoftmaxTop1WithoutRenormalizingAndWithCapacity() {
        // GELU (tanh form) rather than ReLU: a finite difference across ReLU's kink is wrong.
        let spec = MoESpec(experts: 3, topK: 1, hidden: 4, activation: .pointwise(.geluTanh),
                           router: .softmax(renormalize: false), balanceCoefficient: 0.2, capacityFactor: 0.7)
        check(spec)
        let (moe, _) = make(spec)
        let x = Tensor(shape: [9, 6])
        for i in 0..<x.count { x[i] = sin(Float(i)) }
        _ = moe.forward(x.data, rows: 9, context: .init(training: true))
        // Capacity ⌈0.7 · 9 / 3⌉ = 3 per expert.
        XCTAssertTrue(moe.accepted.allSatisfy { $0 <= 3 }, "\(moe.accepted)")
        XCTAssertEqual(moe.routed.reduce(0, +), 9)
    }

    func testSigmoidRouterWithEntropyExpertDropoutAndCapacity() {
        check(MoESpec(experts: 5, topK: 2, hidden: 4, activation: .pointwise(.silu), router: .sigmoid,
                      entropyCoefficient: 0.3, capacityFactor: 1.0, expertDropout: 0.3),
              context: .init(training: true, step: 4))
    }

    func testGatedExpertsWithSharedExpertAndNoBias() {
        check(MoESpec(experts: 3, topK: 2, hidden: 3, activation: .gated(.silu), bias: false,
                      balanceCoefficient: 0.05, sharedHidden: 4))
    }

    /// MoEfication's layer: each chosen expert counts whole (the router learns only from the
    /// auxiliary losses) and one output bias is added once.
    func testUnitGatesAndOutputBias() {
        let spec = MoESpec(experts: 4, topK: 2, hidden: 3, activation: .pointwise(.gelu), balanceCoefficient: 0.1,
                           unitGates: true, outputBias: true)
        check(spec)
        let (moe, store) = make(spec)
        for i in 0..<6 { moe.outputBias!.value[i] = Float(i) }
        let x = Tensor(shape: [9, 6])
        for i in 0..<x.count { x[i] = sin(Float(i)) }
        let y = moe.forward(x.data, rows: 9, context: .init(training: false))
        XCTAssertEqual((0..<(9 * 2)).map { moe.gate[$0] }, [Float](repeating: 1, count: 18), "every chosen expert's gate is 1")
        // y = Σ over the two chosen experts of their FFN + the bias: zero the experts, and y is the bias.
        for e in 0..<4 { moe.w2[e].value.update(repeating: 0, count: moe.w2[e].count); moe.b2[e]!.value.update(repeating: 0, count: 6) }
        let only = moe.forward(x.data, rows: 9, context: .init(training: false))
        for r in 0..<9 { for j in 0..<6 { XCTAssertEqual(only[r * 6 + j], Float(j)) } }
        _ = y
        withExtendedLifetime(store) {}
    }

    /// With k = E and renormalized softmax gates, every token uses every expert:
    /// y = Σ_e p_e · FFN_e(x), computed here one token and one expert at a time.
    func testForwardMatchesPerTokenReference() {
        let (moe, store) = make(MoESpec(experts: 3, topK: 3, hidden: 4, activation: .pointwise(.gelu)), rows: 5)
        _ = store
        let x = Tensor(shape: [5, 6])
        for i in 0..<x.count { x[i] = cos(Float(i) * 0.7) }
        let y = moe.forward(x.data, rows: 5, context: .init(training: false))
        var worst = 0.0
        for t in 0..<5 {
            var z = [Double](repeating: 0, count: 3)
            for e in 0..<3 { for j in 0..<6 { z[e] += Double(moe.router.value[e * 6 + j]) * Double(x[t * 6 + j]) } }
            let m = z.max()!
            let p = z.map { Foundation.exp($0 - m) }
            let sum = p.reduce(0, +)
            for o in 0..<6 {
                var out = 0.0
                for e in 0..<3 {
                    var acc = Double(moe.b2[e]!.value[o])
                    for u in 0..<4 {
                        var pre = Double(moe.b1[e]!.value[u])
                        for j in 0..<6 { pre += Double(moe.w1[e].value[u * 6 + j]) * Double(x[t * 6 + j]) }
                        let g = 0.5 * pre * (1 + erf(pre / 2.0.squareRoot()))
                        acc += Double(moe.w2[e].value[o * 4 + u]) * g
                    }
                    out += p[e] / sum * acc
                }
                worst = max(worst, abs(out - Double(y[t * 6 + o])))
            }
        }
        XCTAssertLessThan(worst, 1e-5, "max |MoE − reference| = \(worst)")
    }

    /// An expert nobody chooses does no work and gets zero gradient; the layer still runs.
    func testAllTokensOnOneExpert() {
        let (moe, store) = make(MoESpec(experts: 4, topK: 1, hidden: 3, activation: .pointwise(.relu)))
        // Make expert 2 win every token: a large router row for it, zero elsewhere.
        for i in 0..<moe.router.count { moe.router.value[i] = 0 }
        for j in 0..<6 { moe.router.value[2 * 6 + j] = 5 }
        let x = Tensor(shape: [9, 6])
        for i in 0..<x.count { x[i] = 1 + 0.01 * Float(i) }
        store.zeroGrads()
        _ = moe.forward(x.data, rows: 9, context: .init(training: true))
        XCTAssertEqual(moe.routed, [0, 0, 9, 0])
        let dy = Tensor(shape: [9, 6])
        for i in 0..<dy.count { dy[i] = 1 }
        _ = moe.backward(dy.data, rows: 9)
        for e in [0, 1, 3] {
            XCTAssertTrue((0..<moe.w1[e].count).allSatisfy { moe.w1[e].grad[$0] == 0 }, "expert \(e) got a gradient")
        }
        XCTAssertTrue((0..<moe.w1[2].count).contains { moe.w1[2].grad[$0] != 0 })
    }

    /// Experts run side by side on the worker threads; each touches only its own rows and
    /// gradients, so outputs and gradients are bitwise the same on 1, 2 and 3 threads.
    func testExpertsOnSeveralThreadsGiveTheSameBits() {
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            BLAS.setThreads(threads)
            let (moe, store) = make(MoESpec(experts: 7, topK: 2, hidden: 16, activation: .pointwise(.gelu), balanceCoefficient: 0.01),
                                    rows: 40, width: 12)
            let x = Tensor(shape: [40, 12]), dy = Tensor(shape: [40, 12])
            for i in 0..<x.count { x[i] = sin(Float(i) * 0.37); dy[i] = cos(Float(i) * 0.11) }
            store.zeroGrads()
            let y = moe.forward(x.data, rows: 40, context: .init(training: true))
            var out = (0..<x.count).map { y[$0] }
            let dx = moe.backward(dy.data, rows: 40)!
            out += (0..<x.count).map { dx[$0] } + store.grads.array
            results.append(out)
        }
        BLAS.setThreads(1)
        XCTAssertEqual(results[0], results[1])
        XCTAssertEqual(results[0], results[2])
    }
}

/// Router statistics over a logging interval.
final class MoETelemetryTests: XCTestCase {
    func testBalanceDroppedShareAndBusiestExpert() {
        var t = MoETelemetry(experts: 4)
        t.routed = [10, 10, 10, 10]
        t.accepted = [10, 10, 8, 10]
        XCTAssertEqual(t.balance, 1, accuracy: 1e-12)
        XCTAssertEqual(t.droppedFraction, 2.0 / 40, accuracy: 1e-12)
        t.routed = [0, 40, 0, 0]
        XCTAssertEqual(t.balance, 0, accuracy: 1e-12)
        XCTAssertEqual(t.busiest.expert, 1)
        XCTAssertEqual(t.busiest.share, 1, accuracy: 1e-12)
    }

    /// Intervals add up training passes only, `takeTelemetry` starts a new one, and an
    /// expert's idle count grows while it gets nothing.
    func testIntervalsAndIdleExperts() {
        let store = ParameterStore(seed: 1)
        let moe = MoE("m", width: 4, spec: MoESpec(experts: 3, topK: 1, hidden: 2, activation: .pointwise(.relu)),
                      site: 0, in: BuildContext(store: store, maxRows: 5))
        store.finalize()
        // Zero router: every logit ties and the lowest index wins, so expert 0 takes all.
        moe.router.value.update(repeating: 0, count: moe.router.count)
        let x = Tensor(shape: [5, 4])
        for i in 0..<x.count { x[i] = Float(i % 3) }
        _ = moe.forward(x.data, rows: 5, context: .init(training: true))
        _ = moe.forward(x.data, rows: 5, context: .init(training: true))
        _ = moe.forward(x.data, rows: 5, context: .init(training: false))
        let t = moe.takeTelemetry()
        XCTAssertEqual(t.routed, [10, 0, 0])
        XCTAssertEqual(t.passes, 2)
        XCTAssertEqual(moe.idleIntervals, [0, 1, 1])
        XCTAssertEqual(moe.telemetry.routed, [0, 0, 0])
    }
}
