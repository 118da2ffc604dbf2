import Kernels
import XCTest
@testable import Layers

/// `ModelSize`, counted from an architecture alone, against what building the model really
/// makes: its parameters, and every float its tensors hold (the store's values and gradients,
/// and each layer's buffers).
final class ModelSizeTests: XCTestCase {
    func check(_ architecture: Architecture, ranks: Int = 1, threads: Int = 1, updates: Bool = false,
               file: StaticString = #filePath, line: UInt = #line) {
        let (inputs, classes, rows) = (12, 5, 7)
        let size = architecture.size(inputs: inputs, classes: classes, maxRows: rows, ranks: ranks, threads: threads,
                                     updatesExpertsInBackward: updates)
        let before = Tensor.floatsMade
        let model = Model(architecture, inputs: inputs, classes: classes, maxRows: rows, seed: 1)
        if updates, let moe = model.moeLayers.first {
            for layer in model.moeLayers { layer.attach(updates: NoUpdates(), threads: threads) }
            _ = moe
        }
        let made = Tensor.floatsMade - before
        XCTAssertEqual(size.parameters, Double(model.store.count), "parameters of \(architecture)", file: file, line: line)
        XCTAssertEqual(2 * size.parameters + size.buffers, Double(made), "floats made for \(architecture)", file: file, line: line)
    }

    final class NoUpdates: UpdateInBackward {
        func update(_ parameter: Parameter, from grads: UnsafeMutablePointer<Float>) {}
    }

    func testEveryArchitectureIsCountedExactly() {
        check(.stack(hidden: [16, 8], activation: .relu))
        check(.stack(hidden: [], activation: .gelu))
        check(.residual(width: 8, depth: 2, expansion: 3, norm: .layerNorm, mlp: .pointwise(.gelu), dropout: 0))
        check(.residual(width: 8, depth: 1, expansion: 2, norm: .rmsNorm, mlp: .gated(.silu), dropout: 0.1))
        let moe = MoESpec(experts: 4, topK: 2, hidden: 6, activation: .pointwise(.gelu))
        check(.moe(width: 8, depth: 2, norm: .layerNorm, spec: moe))
        var gated = MoESpec(experts: 3, topK: 1, hidden: 4, activation: .gated(.silu), bias: false)
        gated.sharedHidden = 5
        check(.moe(width: 8, depth: 1, norm: .rmsNorm, spec: gated), threads: 3, updates: true)
        var shared = moe
        shared.sharedHidden = 6
        check(.moe(width: 8, depth: 1, norm: .layerNorm, spec: shared), threads: 2, updates: true)
    }

    /// Any config value gives a number, never an overflow or a long loop.
    func testAbsurdSizesGiveNumbers() {
        let s = Architecture.residual(width: Int.max / 2, depth: 10_000, expansion: Int.max / 3, norm: .layerNorm,
                                      mlp: .pointwise(.gelu), dropout: 0).size(inputs: Int.max, classes: 10, maxRows: Int.max)
        XCTAssertGreaterThan(s.parameters, 1e30)
        XCTAssertTrue(s.parameters.isFinite && s.buffers.isFinite)
    }
}
