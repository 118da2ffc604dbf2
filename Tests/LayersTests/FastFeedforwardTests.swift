import XCTest
import Kernels
import TestSupport
@testable import Layers

/// The fast feedforward layer: its soft backward against finite differences (tree, leaves,
/// hardening and balance terms, master leaf), and its hard inference against a plain
/// per-sample descent.
final class FastFeedforwardTests: XCTestCase {
    let rows = 6

    func layer(_ spec: FFFSpec, width: Int = 10, seed: UInt64 = 7, maxRows: Int? = nil) -> (FastFeedforward, ParameterStore) {
        let store = ParameterStore(seed: seed)
        let fff = FastFeedforward("fff", width: width, spec: spec, in: BuildContext(store: store, maxRows: maxRows ?? rows))
        store.finalize()
        return (fff, store)
    }

    func testSoftGradientsOfTreeAndLeaves() {
        for depth in [1, 3] {
            let (fff, store) = layer(FFFSpec(depth: depth, leafWidth: 4, activation: .gelu))
            GradientCheck(fff, store: store, rows: rows).run()
        }
    }

    func testHardeningAndBalanceTermsWithAndWithoutMasterLeaf() {
        for master in [false, true] {
            let spec = FFFSpec(depth: 2, leafWidth: 3, activation: .silu, hardening: 0.7, balance: 0.4, masterLeaf: master)
            let (fff, store) = layer(spec)
            // Logits away from 0, so no row's hard descent (the balance term's counts) flips
            // within a finite-difference step.
            for i in 0..<fff.nodes.weight.count { fff.nodes.weight.value[i] *= 3 }
            let check = GradientCheck(fff, store: store, rows: rows, extraLoss: { fff.auxLoss })
            _ = check.loss()
            XCTAssertGreaterThan(fff.auxLoss, 0, "the terms are on")
            check.run()
        }
    }

    /// Hard inference equals descending the tree and evaluating one leaf, sample by sample,
    /// written out with scalar loops over the stored parameters.
    func testHardInferenceEqualsPerSampleReference() {
        for master in [false, true] {
            let spec = FFFSpec(depth: 4, leafWidth: 5, activation: .relu, masterLeaf: master)
            let d = 12, n = 40
            let (fff, store) = layer(spec, width: d, seed: 3, maxRows: n)
            let x = Tensor(shape: [n, d])
            let rng = Philox(seed: 5)
            for i in 0..<x.count { x[i] = rng.uniform(stream: 0, index: UInt64(i)) * 4 - 2 }
            let y = fff.forward(x.data, rows: n, context: .init(training: false, hardDecisions: true))
            var leavesUsed = Set<Int>()
            let l = spec.leaves, lw = spec.leafWidth, nodes = spec.nodes
            for r in 0..<n {
                let xr = (0..<d).map { x[r * d + $0] }
                var i = 0
                while i < nodes {
                    var a = fff.nodes.bias!.value[i]
                    for j in 0..<d { a += fff.nodes.weight.value[i * d + j] * xr[j] }
                    i = a > 0 ? 2 * i + 2 : 2 * i + 1
                }
                let leaf = i - nodes
                leavesUsed.insert(leaf)
                var h = [Float](repeating: 0, count: lw)
                for u in 0..<lw {
                    var z = fff.fc1.bias!.value[leaf * lw + u]
                    for j in 0..<d { z += fff.fc1.weight.value[(leaf * lw + u) * d + j] * xr[j] }
                    h[u] = max(z, 0)
                }
                var out = (0..<d).map { o -> Float in
                    var s = fff.leafBias.value[leaf * d + o]
                    for u in 0..<lw { s += fff.fc2.weight.value[o * l * lw + leaf * lw + u] * h[u] }
                    return s
                }
                if let m = fff.master {
                    let k = m.mix.value[0]
                    let hm = (0..<lw).map { u -> Float in
                        var z = m.fc1.bias!.value[u]
                        for j in 0..<d { z += m.fc1.weight.value[u * d + j] * xr[j] }
                        return max(z, 0)
                    }
                    for o in 0..<d {
                        var s = m.fc2.bias!.value[o]
                        for u in 0..<lw { s += m.fc2.weight.value[o * lw + u] * hm[u] }
                        out[o] = (1 - k) * out[o] + k * s
                    }
                }
                for o in 0..<d {
                    XCTAssertEqual(y[r * d + o], out[o], accuracy: 1e-4 * max(1, abs(out[o])), "row \(r) leaf \(leaf) output \(o)")
                }
            }
            XCTAssertGreaterThan(leavesUsed.count, 3, "the inputs reach several leaves")
            withExtendedLifetime(store) {}
        }
    }

    /// Where every node decision of a row is certain, soft and hard agree on it: the soft
    /// mixture is then one leaf's output.
    func testSoftEqualsHardWhenDecisionsAreCertain() {
        let spec = FFFSpec(depth: 3, leafWidth: 4, activation: .gelu)
        let d = 8, n = 20
        let (fff, store) = layer(spec, width: d, seed: 9, maxRows: n)
        for i in 0..<fff.nodes.weight.count { fff.nodes.weight.value[i] *= 10_000 }
        let x = Tensor(shape: [n, d])
        for i in 0..<x.count { x[i] = Philox(seed: 1).uniform(stream: 0, index: UInt64(i)) * 2 - 1 }
        let soft = Array(UnsafeBufferPointer(start: fff.forward(x.data, rows: n, context: .init(training: false)), count: n * d))
        let heap = 2 * spec.leaves - 1
        let certain = (0..<n).filter { r in (0..<spec.leaves).contains { fff.reach[r * heap + spec.nodes + $0] > 1 - 1e-6 } }
        XCTAssertGreaterThan(certain.count, n / 2, "most rows' decisions are certain")
        let hard = fff.forward(x.data, rows: n, context: .init(training: false, hardDecisions: true))
        for r in certain {
            for o in 0..<d { XCTAssertEqual(soft[r * d + o], hard[r * d + o], accuracy: 1e-4, "row \(r) output \(o)") }
        }
        withExtendedLifetime(store) {}
    }

    func testLowRankLinearAndScaledNorms() {
        let store = ParameterStore(seed: 4)
        let lowRank = LowRankLinear("fc", inputs: 11, outputs: 9, rank: 3, activation: .gelu, in: BuildContext(store: store, maxRows: rows))
        store.finalize()
        XCTAssertEqual(store.parameters.map(\.name), ["fc.v.weight", "fc.u.weight", "fc.u.bias"])
        GradientCheck(lowRank, store: store, rows: rows).run()
        for kind in NormKind.allCases {
            let store = ParameterStore(seed: 3)
            let norm = makeNorm(kind, "norm", width: 13, scale: 1 / Float(3).squareRoot(), in: BuildContext(store: store, maxRows: rows))
            store.finalize()
            for p in store.parameters { for i in 0..<p.count { p.value[i] += Float(i % 5) * 0.1 - 0.2 } }
            GradientCheck(norm, store: store, rows: rows).run()
        }
    }

    /// A frozen parameter has no gradient and no place in the gradient arena; the layer's
    /// other gradients (and its input gradient) are unchanged by the freezing.
    func testFrozenLinearSkipsItsWeightGradient() {
        let free = ParameterStore(seed: 2), held = ParameterStore(seed: 2, frozen: ["fc.weight"])
        let a = Linear("fc", inputs: 7, outputs: 5, activation: .gelu, in: BuildContext(store: free, maxRows: rows))
        let b = Linear("fc", inputs: 7, outputs: 5, activation: .gelu, in: BuildContext(store: held, maxRows: rows))
        free.finalize()
        held.finalize()
        XCTAssertTrue(b.weight.frozen)
        XCTAssertNil(b.weight.grad)
        XCTAssertEqual(held.trainableCount, 5)
        XCTAssertEqual(held.parameters.map(\.offset), [5, 0], "the frozen weight lies after the trainable bias")
        for (p, q) in zip(free.parameters, held.parameters) { XCTAssertEqual(Array(UnsafeBufferPointer(start: p.value, count: p.count)),
                                                                             Array(UnsafeBufferPointer(start: q.value, count: q.count))) }
        let x = Tensor(shape: [rows, 7]), dy = Tensor(shape: [rows, 5])
        for i in 0..<x.count { x[i] = Float(i % 9) * 0.2 - 0.8 }
        for i in 0..<dy.count { dy[i] = Float(i % 4) * 0.3 - 0.5 }
        free.zeroGrads()
        held.zeroGrads()
        _ = a.forward(x.data, rows: rows, context: .init(training: true))
        _ = b.forward(x.data, rows: rows, context: .init(training: true))
        let dxa = a.backward(dy.data, rows: rows)!, dxb = b.backward(dy.data, rows: rows)!
        XCTAssertEqual((0..<x.count).map { dxa[$0] }, (0..<x.count).map { dxb[$0] })
        XCTAssertEqual((0..<5).map { a.bias!.grad[$0] }, (0..<5).map { b.bias!.grad[$0] })
    }
}
