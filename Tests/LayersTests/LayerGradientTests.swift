import XCTest
import Kernels
@testable import Layers

/// Every layer's backward against central finite differences (GradientCheck).
final class LayerGradientTests: XCTestCase {
    let rows = 5

    func testLinearWithEachActivation() {
        for a in Activation.allCases where a != .relu {
            let store = ParameterStore(seed: 1)
            let layer = Linear("fc", inputs: 12, outputs: 9, activation: a, in: BuildContext(store: store, maxRows: rows))
            store.finalize()
            GradientCheck(layer, store: store, rows: rows).run()
        }
    }

    func testLinearReLUAwayFromTheKink() {
        // Inputs and weights chosen so pre-activations stay away from 0 by more than the step.
        let store = ParameterStore(seed: 1)
        let layer = Linear("fc", inputs: 1, outputs: 6, activation: .relu, in: BuildContext(store: store, maxRows: rows))
        store.finalize()
        for j in 0..<6 { layer.weight.value[j] = j % 2 == 0 ? 1 : -1; layer.bias!.value[j] = 0 }
        GradientCheck(layer, store: store, rows: rows, input: { Float($0 + 1) * 0.5 }).run()
    }

    func testLinearWithoutBiasOrInputGradient() {
        let store = ParameterStore(seed: 2)
        let layer = Linear("fc", inputs: 10, outputs: 3, bias: false, computesInputGradient: false,
                           in: BuildContext(store: store, maxRows: rows))
        store.finalize()
        XCTAssertNil(layer.bias)
        GradientCheck(layer, store: store, rows: rows).run()
    }

    func testNormsWithNonTrivialGain() {
        for kind in NormKind.allCases {
            let store = ParameterStore(seed: 3)
            let layer = makeNorm(kind, "norm", width: 19, in: BuildContext(store: store, maxRows: rows))
            store.finalize()
            // Move the gain and shift off 1 and 0 so their gradients matter in dx.
            for p in store.parameters { for i in 0..<p.count { p.value[i] += Float(i % 5) * 0.1 - 0.2 } }
            GradientCheck(layer, store: store, rows: rows).run()
        }
    }

    func testStandalonePointwiseActivations() {
        for a in [Activation.gelu, .geluTanh, .silu, .sigmoid] {
            let store = ParameterStore(seed: 4)
            let layer = ActivationLayer(a, width: 11, in: BuildContext(seed: 1, maxRows: rows))
            store.finalize()
            GradientCheck(layer, store: store, rows: rows, input: { Float($0 % 13) * 0.4 - 2.5 }).run()
        }
    }

    func testGatedLinearUnits() {
        for gate in [Activation.silu, .gelu, .sigmoid] {
            let store = ParameterStore(seed: 5)
            let layer = GLULayer(gate: gate, hidden: 9, in: BuildContext(seed: 1, maxRows: rows))
            store.finalize()
            GradientCheck(layer, store: store, rows: rows, input: { Float($0 % 17) * 0.3 - 2.4 }).run()
        }
    }

    /// The top-k activation keeps exactly k units of each row, the largest (of equal values
    /// the first), and its gradient flows through them only. Each row's values are 0.1 apart,
    /// so the finite differences do not change which are kept.
    func testTopKActivationKeepsTheLargestAndPassesTheirGradient() {
        let width = 23, k = 5
        let store = ParameterStore(seed: 7)
        let layer = TopKActivation(width: width, keep: k, in: BuildContext(seed: 1, maxRows: rows))
        store.finalize()
        let input: (Int) -> Float = { i in Float((i * 7 + i / width * 5) % width) * 0.1 - 1.1 }
        GradientCheck(layer, store: store, rows: rows, input: input).run()
        let x = Tensor(shape: [rows, width])
        for i in 0..<x.count { x[i] = input(i) }
        // The last row: all equal but one above them; the first k − 1 of the equal ones stay.
        for j in 0..<width { x[(rows - 1) * width + j] = j == 9 ? 2 : 0.5 }
        let y = layer.forward(x.data, rows: rows, context: .init(training: false))
        for r in 0..<rows {
            let row = (0..<width).map { x[r * width + $0] }
            let expected = Set(row.indices.sorted { row[$0] != row[$1] ? row[$0] > row[$1] : $0 < $1 }.prefix(k))
            let kept = Set((0..<width).filter { layer.mask[r * width + $0] == 1 })
            XCTAssertEqual(kept, expected, "row \(r): kept \(kept.sorted()) of \(row)")
            for j in 0..<width { XCTAssertEqual(y[r * width + j], kept.contains(j) ? row[j] : 0, "row \(r), unit \(j)") }
        }
        XCTAssertEqual(Set((0..<width).filter { layer.mask[(rows - 1) * width + $0] == 1 }), [0, 1, 2, 3, 9])
    }

    func testDropoutMaskIsFixedPerStepAndScaled() {
        let store = ParameterStore(seed: 6)
        let layer = Dropout(probability: 0.3, width: 64, site: 0, in: BuildContext(seed: 6, maxRows: rows))
        store.finalize()
        GradientCheck(layer, store: store, rows: rows, context: .init(training: true, step: 3)).run()
        // Kept elements are scaled by 1/(1−p); about p of them are dropped.
        let x = Tensor(shape: [rows, 64])
        x.fill(1)
        let y = layer.forward(x.data, rows: rows, context: .init(training: true, step: 3))
        let values = Set((0..<x.count).map { y[$0] })
        XCTAssertEqual(values, [0, 1 / 0.7])
        let dropped = (0..<x.count).filter { y[$0] == 0 }.count
        XCTAssertEqual(Double(dropped) / Double(x.count), 0.3, accuracy: 0.08)
        // Evaluation is the identity.
        let e = layer.forward(x.data, rows: rows, context: .init(training: false))
        XCTAssertEqual((0..<x.count).map { e[$0] }, x.array)
    }

    func testDropoutMaskDependsOnGlobalRowNotOnWhichProcessHoldsIt() {
        let full = Dropout(probability: 0.5, width: 10, site: 1, in: BuildContext(seed: 9, maxRows: 4))
        let part = Dropout(probability: 0.5, width: 10, site: 1, in: BuildContext(seed: 9, maxRows: 2))
        let x = Tensor(shape: [4, 10])
        x.fill(1)
        let a = full.forward(x.data, rows: 4, context: .init(training: true, step: 7, rowOffset: 0))
        let whole = (0..<40).map { a[$0] }
        let b = part.forward(x.data, rows: 2, context: .init(training: true, step: 7, rowOffset: 2))
        XCTAssertEqual((0..<20).map { b[$0] }, Array(whole[20..<40]))
    }

    func testResidualMLPBlocks() {
        for mlp in [BlockActivation.pointwise(.gelu), .gated(.silu)] {
            for norm in NormKind.allCases {
                let store = ParameterStore(seed: 7)
                let build = BuildContext(store: store, maxRows: rows)
                let branch = Sequential([
                    makeNorm(norm, "b.norm", width: 8, in: build),
                    { () -> any Layer in
                        if case .gated = mlp { return Linear("b.fc1", inputs: 8, outputs: 32, in: build) }
                        return Linear("b.fc1", inputs: 8, outputs: 16, activation: .gelu, in: build)
                    }(),
                ] + (mlp == .gated(.silu) ? [GLULayer(gate: .silu, hidden: 16, in: build)] : [])
                  + [Dropout(probability: 0.2, width: 16, site: 0, in: build),
                     Linear("b.fc2", inputs: 16, outputs: 8, in: build)])
                let block = Residual(branch, in: build)
                store.finalize()
                GradientCheck(block, store: store, rows: rows).run()
            }
        }
    }
}
