import TestSupport
import XCTest
import Kernels
import Layers
@testable import Training

/// The SIMD optimizers against scalar references of the published update rules, in Double.
final class OptimizerTests: XCTestCase {
    func makeStore(_ n: Int) -> (ParameterStore, Parameter, Parameter) {
        let store = ParameterStore(seed: 1)
        let w = store.register("w", shape: [n], role: .weight, initializer: .uniform(bound: 1))
        let b = store.register("b", shape: [5], role: .bias, initializer: .uniform(bound: 1))
        store.finalize()
        return (store, w, b)
    }

    func gradient(_ step: Int, _ i: Int) -> Float { sin(Float(i * 7 + step * 3)) * 0.5 }

    /// Weight decay applies to weights, to biases and norms only when asked, and never to a
    /// mixing coefficient (an FFF's master-leaf blend): with zero gradients, only decay moves
    /// a parameter.
    func testDecayNeverTouchesACoefficient() {
        let store = ParameterStore(seed: 1)
        let w = store.register("w", shape: [3], role: .weight, initializer: .ones)
        let b = store.register("b", shape: [3], role: .bias, initializer: .ones)
        let k = store.register("k", shape: [1], role: .coefficient, initializer: .constant(0.5))
        store.finalize()
        for optimizer in [AdamW(count: store.count, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, decayBiasesAndNorms: true),
                          SGD(count: store.count, momentum: 0, nesterov: false, weightDecay: 0.1, decayBiasesAndNorms: true)] as [any Optimizer] {
            store.initialize()
            store.zeroGrads()
            optimizer.step(store, lr: 0.1, gradScale: 1)
            XCTAssertLessThan(w.value[0], 1, "\(optimizer.name): weights decay")
            XCTAssertLessThan(b.value[0], 1, "\(optimizer.name): biases decay when asked")
            XCTAssertEqual(k.value[0], 0.5, "\(optimizer.name): a coefficient never decays")
        }
    }

    func testAdamWMatchesReference() {
        let (store, w, _) = makeStore(37)
        let (lr, b1, b2, eps, wd) = (0.01, 0.9, 0.999, 1e-8, 0.1)
        let opt = AdamW(count: store.count, beta1: Float(b1), beta2: Float(b2), eps: Float(eps),
                        weightDecay: Float(wd), decayBiasesAndNorms: false)
        var p = store.values.array.map(Double.init)
        var m = [Double](repeating: 0, count: p.count), v = m
        for t in 1...5 {
            for i in 0..<store.count { store.grads[i] = gradient(t, i) }
            opt.step(store, lr: Float(lr), gradScale: 0.5)
            for i in 0..<p.count {
                let g = Double(gradient(t, i)) * 0.5
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                let decay = i < w.count ? wd : 0   // biases exempt
                p[i] *= 1 - lr * decay
                p[i] -= lr * (m[i] / (1 - pow(b1, Double(t)))) / ((v[i] / (1 - pow(b2, Double(t)))).squareRoot() + eps)
            }
            XCTAssertTrue(store.grads.array.allSatisfy { $0 == 0 }, "gradients are zeroed by the step")
        }
        let worst = zip(store.values.array, p).map { abs(Double($0) - $1) }.max()!
        XCTAssertLessThan(worst, 1e-5, "AdamW max |fast − reference| = \(worst)")
    }

    /// The C kernel's AVX-512, AVX and SSE paths and its scalar tail all give, bit for bit, the update
    /// written out in Swift one float operation at a time (so results do not depend on the CPU
    /// or on where a range starts), and zero the gradient.
    func testAdamWKernelIsBitwiseTheScalarFormulaOnEveryPath() {
        let rng = Philox(seed: 7)
        let step = AdamWStep(beta1: 0.9, beta2: 0.999, eps: 1e-8 * 0.0632, shrink: 1 - 1e-3 * 0.01,
                             stepSize: 1e-3 * 0.0632 / 0.271, gradScale: 0.73)
        for n in Array(0...19) + [1000, 1003] {
            func random(_ stream: UInt64, scale: Float) -> [Float] {
                (0..<n).map { rng.uniform(stream: stream, index: UInt64($0)) * scale - scale / 2 }
            }
            let p0 = random(1, scale: 2), g0 = random(2, scale: 0.1), m0 = random(3, scale: 0.01)
            let v0 = random(4, scale: 1e-4).map(abs)
            // The formula as the kernel documents it, one float operation at a time.
            var p = p0, m = m0, v = v0
            for i in 0..<n {
                let gv = g0[i] * step.gradScale
                m[i] = step.beta1 * m0[i] + (1 - step.beta1) * gv
                v[i] = step.beta2 * v0[i] + (1 - step.beta2) * gv * gv
                p[i] = p0[i] * step.shrink - step.stepSize * m[i] / (v[i].squareRoot() + step.eps)
            }
            for isa in [0, 1, 2] {
                var pk = p0, gk = g0, mk = m0, vk = v0
                adamw(&pk, &gk, &mk, &vk, count: n, step, isa: isa)
                assertBitwiseEqual(pk, p, "p, n \(n), isa \(isa)")
                assertBitwiseEqual(mk, m, "m, n \(n), isa \(isa)")
                assertBitwiseEqual(vk, v, "v, n \(n), isa \(isa)")
                XCTAssertTrue(gk.allSatisfy { $0 == 0 }, "g zeroed, n \(n), isa \(isa)")
            }
        }
    }

    func testSGDMomentumAndNesterovMatchReference() {
        for nesterov in [false, true] {
            let (store, _, _) = makeStore(11)
            let (lr, mu, wd) = (0.1, 0.9, 0.01)
            let opt = SGD(count: store.count, momentum: Float(mu), nesterov: nesterov, weightDecay: Float(wd), decayBiasesAndNorms: true)
            var p = store.values.array.map(Double.init)
            var buf = [Double](repeating: 0, count: p.count)
            for t in 1...4 {
                for i in 0..<store.count { store.grads[i] = gradient(t, i) }
                opt.step(store, lr: Float(lr), gradScale: 1)
                for i in 0..<p.count {
                    let g = Double(gradient(t, i)) + wd * p[i]
                    buf[i] = t == 1 ? g : mu * buf[i] + g
                    p[i] -= lr * (nesterov ? g + mu * buf[i] : buf[i])
                }
            }
            let worst = zip(store.values.array, p).map { abs(Double($0) - $1) }.max()!
            XCTAssertLessThan(worst, 1e-5, "SGD (nesterov \(nesterov)) max |fast − reference| = \(worst)")
        }
    }

    /// The update is elementwise, so splitting it over worker threads changes nothing.
    func testAdamWIsBitwiseIndependentOfWorkerThreads() {
        var results: [[Float]] = []
        for threads in [1, 2, 3] {
            BLAS.setThreads(threads)
            let (store, _, _) = makeStore(200_003)
            let opt = AdamW(count: store.count, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, decayBiasesAndNorms: true)
            for t in 1...3 {
                for i in 0..<store.count { store.grads[i] = gradient(t, i) }
                opt.step(store, lr: 1e-3, gradScale: 1)
            }
            results.append(store.values.array)
        }
        BLAS.setThreads(1)
        XCTAssertEqual(results[0], results[1])
        XCTAssertEqual(results[0], results[2])
    }

    /// A rank updates only its shard of the arena (ranges that may cut through parameters) and
    /// holds optimizer state for that shard alone (ZeRO-1): optimizers over the shards of a
    /// partition, each with its own state, give the bits of one optimizer over the whole arena.
    func testOptimizersOverShardsEqualOneOverTheWholeArena() {
        // 42 floats: w is [0, 37), b is [37, 42); the shards cut through both, one shard is two
        // ranges (a rank's chunks of two buckets), given in the sync's order (the arena's end first).
        let shards: [[Range<Int>]] = [[30..<42], [20..<30, 0..<7], [7..<20]]
        func train(_ shards: [[Range<Int>]], sgd: Bool) -> [Float] {
            let (store, _, _) = makeStore(37)
            let optimizers: [any Optimizer] = shards.map { ranges -> any Optimizer in
                sgd ? SGD(layout: StateLayout(ranges), momentum: 0.9, nesterov: true, weightDecay: 0.01, decayBiasesAndNorms: false) as any Optimizer
                    : AdamW(layout: StateLayout(ranges), beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1, decayBiasesAndNorms: false)
            }
            for (ranges, o) in zip(shards, optimizers) {
                XCTAssertEqual(o.state[0].values.count, ranges.reduce(0) { $0 + $1.count }, "state for the shard only")
            }
            for t in 1...3 {
                for i in 0..<store.count { store.grads[i] = gradient(t, i) }
                for o in optimizers { o.step(store, lr: 0.01, gradScale: 0.7) }
                XCTAssertTrue(store.grads.array.allSatisfy { $0 == 0 })
            }
            return store.values.array
        }
        for sgd in [false, true] {
            XCTAssertEqual(train(shards, sgd: sgd), train([[0..<42]], sgd: sgd), sgd ? "SGD" : "AdamW")
        }
    }

    /// A layout finds every offset it holds at its place in the state, laid end to end in
    /// arena order, and nothing it does not hold.
    func testStateLayoutPlacesRangesEndToEnd() {
        let layout = StateLayout([40..<50, 0..<5, 20..<20, 10..<12])
        XCTAssertEqual(layout.ranges, [0..<5, 10..<12, 40..<50])
        XCTAssertEqual(layout.count, 17)
        let expected: [Int: Int] = [0: 0, 4: 4, 10: 5, 11: 6, 40: 7, 49: 16]
        for offset in -1..<52 { XCTAssertEqual(layout.index(of: offset), expected[offset] ?? (offset > 40 && offset < 49 ? offset - 33 : (offset > 0 && offset < 4 ? offset : nil)), "offset \(offset)") }
        XCTAssertEqual(layout.pieces(of: 3..<45).map(\.arena), [3..<5, 10..<12, 40..<45])
        XCTAssertEqual(layout.pieces(of: 3..<45).map(\.at), [3, 5, 7])
        XCTAssertTrue(layout.pieces(of: 5..<10).isEmpty)
        // Held whole, in one run of the state; across a gap of the arena or partly held, not.
        XCTAssertEqual(layout.run(of: 41..<45), 8)
        XCTAssertEqual(layout.run(of: 0..<5), 0)
        XCTAssertNil(layout.run(of: 3..<11))
        XCTAssertNil(layout.run(of: 4..<6))
        XCTAssertNil(layout.run(of: 48..<51))
    }
}
