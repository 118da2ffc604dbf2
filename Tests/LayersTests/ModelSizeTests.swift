import Kernels
import XCTest
@testable import Layers

/// `ModelSize`, counted from an architecture alone, against what building the model really
/// makes: its parameters, and every float its tensors hold (the store's values and gradients,
/// and each layer's buffers).
final class ModelSizeTests: XCTestCase {
    func check(_ architecture: Architecture, ranks: Int = 1, threads: Int = 1, updates: Bool = false, moves: Bool = true,
               frozen: [String] = [], trainingRows: Int? = nil, file: StaticString = #filePath, line: UInt = #line) {
        let (inputs, classes, rows) = (12, 5, 7)
        // Each path this CPU has; the bf16 ones hold the same values (2 or 4 bytes each).
        for precision in [Precision.fp32] + (OneDNN.supportsBFloat16 ? [.bf16, .bf16Emulated] : [.bf16Emulated]) {
            let size = architecture.size(inputs: inputs, classes: classes, maxRows: rows, precision: precision, ranks: ranks,
                                         threads: threads, movesExperts: moves, updatesExpertsInBackward: updates, frozen: frozen,
                                         trainingRows: trainingRows)
            let (floatsBefore, bf16Before) = (Tensor.floatsMade, BFloat16Buffer.valuesMade)
            // The rank the count is for: the one that owns the most experts.
            let rank = architecture.busiestRank(ranks: ranks)
            let model = Model(architecture, inputs: inputs, classes: classes, maxRows: rows, seed: 1, frozen: frozen,
                              precision: precision, ranks: ranks, rank: rank, trainingRows: trainingRows)
            for moe in model.moeLayers {
                if ranks > 1 { moe.attach(CountingExchange(ranks: ranks, rank: rank, experts: moe.spec.experts, movesExperts: moves)) }
                if updates { moe.attach(updates: NoUpdates(), threads: threads) }
            }
            let made = Tensor.floatsMade - floatsBefore
            let what = "\(architecture) in \(precision) on \(ranks) ranks"
            XCTAssertEqual(size.parameters, Double(model.store.declaredCount), "parameters of \(what)", file: file, line: line)
            XCTAssertEqual(size.held, Double(model.store.count), "parameters held by rank \(rank) of \(what)", file: file, line: line)
            XCTAssertEqual(size.frozen, Double(model.store.count - model.store.trainableCount), "frozen of \(what)",
                           file: file, line: line)
            XCTAssertEqual(size.storeFloats + size.buffers, Double(made), "floats made for \(what)", file: file, line: line)
            XCTAssertEqual(size.bf16Values, Double(BFloat16Buffer.valuesMade - bf16Before), "bf16 values made for \(what)",
                           file: file, line: line)
            // The units a rank gathers one at a time with the parameters in shards: every layer
            // of a residual branch on its own (not the whole block, which is the fallback when
            // some layer's parameters are not found), tiling the trainable arena.
            let units = model.gatheringUnits
            XCTAssertEqual(units.count, Model.unitLayers(model.network.layers, in: nil).count, "gathering units of \(what)",
                           file: file, line: line)
            let tiles = units.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
            XCTAssertEqual(tiles.first?.lowerBound ?? 0, 0, file: file, line: line)
            XCTAssertEqual(tiles.last?.upperBound ?? 0, model.store.trainableCount, file: file, line: line)
            XCTAssertTrue(zip(tiles, tiles.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound }, "\(units)", file: file, line: line)
            withExtendedLifetime(model) {}
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
        check(.moe(Trunk(width: 8, depth: 2, norm: .layerNorm), moe), ranks: 3)
        // Evaluation's chunks larger than a training pass: backward's rows are the pass's.
        check(.moe(Trunk(width: 8, depth: 2, norm: .layerNorm), moe), ranks: 4, trainingRows: 3)
        check(.moe(Trunk(width: 8, depth: 1, norm: .layerNorm), moe), ranks: 2, moves: false)
        check(.moe(Trunk(width: 8, depth: 1, norm: .layerNorm), moe), ranks: 6, threads: 2, updates: true)
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
        check(.residual(Trunk(width: 8, depth: 2), .mlp(MLPSpec(hidden: 16, activation: .pointwise(.relu), dropout: 0.1, keep: 4))))
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
        // A shared expert is part of its MoE layer: not freezable either.
        var shared = MoESpec(experts: 2, topK: 1, hidden: 4, activation: .pointwise(.relu))
        shared.sharedHidden = 3
        let withShared = Architecture.moe(Trunk(width: 8, depth: 1), shared)
            .size(inputs: 3, classes: 2, maxRows: 1, frozen: ["blocks.0.moe.shared", "blocks.0.moe.shared.fc2.weight"])
        XCTAssertEqual(withShared.unfreezable, ["blocks.0.moe.shared", "blocks.0.moe.shared.fc2.weight"])
        XCTAssertEqual(withShared.frozen, 0)
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

    /// The largest model a job may declare (every dimension at `Architecture.largestDimension`,
    /// the most blocks) is counted, in Double and in little time, never an overflow.
    func testTheLargestDeclarableModelIsCounted() {
        let n = Architecture.largestDimension
        let clock = ContinuousClock(), start = clock.now
        let s = Architecture.residual(Trunk(width: n, depth: 10_000), .mlp(MLPSpec(hidden: n)))
            .size(inputs: n, classes: 10, maxRows: n)
        XCTAssertEqual(s.parameters, 10_000 * (2 * Double(n) * Double(n) + Double(n) + 3 * Double(n))
                       + Double(n) * Double(n) + Double(n) + 2 * Double(n) + 10 * Double(n) + 10)
        XCTAssertTrue(s.buffers.isFinite && s.buffers > 1e18, "buffers \(s.buffers)")
        var moe = MoESpec(experts: 1 << 16, topK: 1 << 16, hidden: n, activation: .gated(.silu))
        moe.sharedHidden = n
        let e = Architecture.moe(Trunk(width: n, depth: 2), moe).size(inputs: n, classes: 10, maxRows: n, precision: .bf16Emulated,
                                                                   ranks: 4096, threads: 1024, updatesExpertsInBackward: true)
        XCTAssertGreaterThan(e.buffers, 1e23)
        XCTAssertGreaterThan(e.bf16Values, 1e23)
        XCTAssertLessThan(clock.now - start, .seconds(30), "counting took \(clock.now - start)")
    }
}
