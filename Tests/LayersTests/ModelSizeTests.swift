import Kernels
import XCTest
@testable import Layers

/// `ModelSize`, counted from an architecture alone, against what building the model really
/// makes: its parameters, and every float its tensors hold (the store's values and gradients,
/// and each layer's buffers).
final class ModelSizeTests: XCTestCase {
    func check(_ architecture: Architecture, ranks: Int = 1, threads: Int = 1, updates: Bool = false, frozen: [String] = [],
               file: StaticString = #filePath, line: UInt = #line) {
        let (inputs, classes, rows) = (12, 5, 7)
        let size = architecture.size(inputs: inputs, classes: classes, maxRows: rows, ranks: ranks, threads: threads,
                                     updatesExpertsInBackward: updates, frozen: frozen)
        let before = Tensor.floatsMade
        let model = Model(architecture, inputs: inputs, classes: classes, maxRows: rows, seed: 1, frozen: frozen)
        if updates, let moe = model.moeLayers.first {
            for layer in model.moeLayers { layer.attach(updates: NoUpdates(), threads: threads) }
            _ = moe
        }
        let made = Tensor.floatsMade - before
        XCTAssertEqual(size.parameters, Double(model.store.count), "parameters of \(architecture)", file: file, line: line)
        XCTAssertEqual(size.frozen, Double(model.store.count - model.store.trainableCount), "frozen of \(architecture)",
                       file: file, line: line)
        XCTAssertEqual(size.storeFloats + size.buffers, Double(made), "floats made for \(architecture)", file: file, line: line)
        // Each bf16 path this CPU has holds the same values (2 or 4 bytes each).
        for precision in OneDNN.supportsBFloat16 ? [Precision.bf16, .bf16Emulated] : [.bf16Emulated] {
            let bf16Before = BFloat16Buffer.valuesMade
            let bf16 = Model(architecture, inputs: inputs, classes: classes, maxRows: rows, seed: 1, frozen: frozen, precision: precision)
            XCTAssertEqual(size.bf16Values, Double(BFloat16Buffer.valuesMade - bf16Before), "\(precision) values made for \(architecture)",
                           file: file, line: line)
            withExtendedLifetime(bf16) {}
        }
    }

    final class NoUpdates: UpdateInBackward {
        func update(_ parameter: Parameter, from grads: UnsafeMutablePointer<Float>) {}
    }

    func testEveryArchitectureIsCountedExactly() {
        check(.stack(hidden: [16, 8], activation: .relu))
        check(.stack(hidden: [], activation: .gelu))
        check(.residual(Trunk(width: 8, depth: 2, norm: .layerNorm), .mlp(MLPSpec(hidden: 24, activation: .pointwise(.gelu), dropout: 0))))
        check(.residual(Trunk(width: 8, depth: 1, norm: .rmsNorm), .mlp(MLPSpec(hidden: 16, activation: .gated(.silu), dropout: 0.1))))
        let moe = MoESpec(experts: 4, topK: 2, hidden: 6, activation: .pointwise(.gelu))
        check(.moe(Trunk(width: 8, depth: 2, norm: .layerNorm), moe))
        var gated = MoESpec(experts: 3, topK: 1, hidden: 4, activation: .gated(.silu), bias: false)
        gated.sharedHidden = 5
        check(.moe(Trunk(width: 8, depth: 1, norm: .rmsNorm), gated), threads: 3, updates: true)
        var shared = moe
        shared.sharedHidden = 6
        check(.moe(Trunk(width: 8, depth: 1, norm: .layerNorm), shared), threads: 2, updates: true)
        check(.moe(Trunk(width: 8, depth: 2, depthScaledNorm: true), moe), frozen: ["embed.weight", "norm"])
        check(.residual(Trunk(width: 8, depth: 2), .mlp(MLPSpec(hidden: 6, activation: .gated(.gelu), rank: 3))))
        check(.residual(Trunk(width: 8, depth: 2), .mlp(MLPSpec(hidden: 4))), frozen: ["embed", "blocks.1.norm.bias"])
        check(.residual(Trunk(width: 8, depth: 1), .fff(FFFSpec(depth: 3, leafWidth: 2))))
        check(.residual(Trunk(width: 8, depth: 2, norm: .rmsNorm), .fff(FFFSpec(depth: 2, leafWidth: 3, masterLeaf: true))),
              frozen: ["blocks.0.fff.nodes", "blocks.1.norm"])
    }

    /// Frozen patterns that name nothing, or an MoE layer, are found without building.
    func testFrozenPatternsAreMatchedByName() {
        let moe = Architecture.moe(Trunk(width: 8, depth: 1), MoESpec(experts: 2, topK: 1, hidden: 4, activation: .pointwise(.relu)))
        let s = moe.size(inputs: 3, classes: 2, maxRows: 1, frozen: ["embed", "blocks.0.moe.router", "blocks", "nothing",
                                                                      "blocks.0.moe.experts.9", "blocks.0.moe.experts.1.w2"])
        XCTAssertEqual(s.frozenMatched, ["embed", "blocks.0.moe.router", "blocks", "blocks.0.moe.experts.1.w2"],
                       "expert 9 of 2 names nothing")
        XCTAssertEqual(s.unfreezable, ["blocks.0.moe.router", "blocks", "blocks.0.moe.experts.1.w2"])
        let model = Model(moe, inputs: 3, classes: 2, maxRows: 1, seed: 1, frozen: ["blocks.0.moe.router", "nothing"])
        XCTAssertEqual(model.frozenProblems, ["\"nothing\" names no parameter of this model",
                                              "blocks.0.moe.router.weight is an MoE parameter, which cannot be frozen"])
    }

    /// The FLOP counts follow the shapes: an FFF's hard inference is `depth` node dots and one
    /// leaf, its soft training every leaf; a low-rank matrix costs r·(in + out).
    func testFLOPCounts() {
        let d = 384.0, lw = 16.0, depth = 6.0, leaves = 64.0
        let fff = Architecture.residual(Trunk(width: 384, depth: 1), .fff(FFFSpec(depth: 6, leafWidth: 16)))
            .size(inputs: 10, classes: 10, maxRows: 1)
        let lift: Double = 2 * 10 * d, head: Double = 2 * d * 10
        let descent: Double = 2 * d * depth, oneLeaf: Double = 4 * d * lw
        XCTAssertEqual(fff.inferenceFlops, lift + descent + oneLeaf + head)
        let nodes: Double = 2 * d * (leaves - 1), leafProducts: Double = 4 * d * leaves * lw, bias: Double = 2 * leaves * d
        let soft: Double = nodes + leafProducts + bias + head
        XCTAssertEqual(fff.trainingFlops, 2 * lift + 3 * soft)
        let lowRank = Architecture.residual(Trunk(width: 64, depth: 1), .mlp(MLPSpec(hidden: 256, rank: 8)))
            .size(inputs: 10, classes: 10, maxRows: 1)
        let factors: Double = 2 * 8 * (64 + 256) * 2
        XCTAssertEqual(lowRank.inferenceFlops, 2 * 10 * 64 + factors + 2 * 64 * 10)
    }

    /// Any config value gives a number, never an overflow or a long loop.
    func testAbsurdSizesGiveNumbers() {
        let s = Architecture.residual(Trunk(width: Int.max / 2, depth: 10_000, norm: .layerNorm), .mlp(MLPSpec(hidden: Int.max / 3, activation: .pointwise(.gelu), dropout: 0))).size(inputs: Int.max, classes: 10, maxRows: Int.max)
        XCTAssertGreaterThan(s.parameters, 1e30)
        XCTAssertTrue(s.parameters.isFinite && s.buffers.isFinite)
    }
}
