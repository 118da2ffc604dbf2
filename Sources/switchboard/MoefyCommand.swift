import ArgumentParser
import Cluster
import Errors
import Foundation
import Kernels
import Layers
import Storage
import Training

/// `switchboard moefy`: a dense model's MLP blocks split into mixtures of experts (`Moefication`).
struct MoefyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moefy",
        abstract: "Split a dense model's MLP blocks into mixtures of experts (MoEfication); write an MoE checkpoint.",
        discussion: """
            Runs the dense model on a sample of its training data and, in each block, splits the \
            hidden units into E groups of equal size by co-activation (balanced k-means over each \
            unit's activations); each group becomes an expert (its slice of W1, b1 and W2). The \
            router of each block is fitted by least squares to predict, from the block's normalized \
            input, each group's summed activation. Each chosen expert's output counts whole and the \
            dense layer's second bias is added once, so with all E experts the MoE computes the \
            dense model. OUT is a step-0 checkpoint of that MoE job: `switchboard evaluate OUT \
            --top-k K` evaluates it with K experts per token.
            """)

    @Argument(help: "A checkpoint of a dense residual MLP model.") var checkpoint: String
    @Option(help: "Experts per block (must divide the blocks' hidden width).") var experts: Int
    @Option(help: "The checkpoint folder to write (must not exist).") var out: String
    @Option(help: "Training samples the activations are taken on.") var samples = 4096
    @OptionGroup var threads: ThreadsOption

    func run() throws {
        // `out/` names the same folder; the partial checkpoint goes beside it.
        var out = self.out
        while out.count > 1 && out.hasSuffix("/") { out.removeLast() }
        let reader = try openCheckpoint(checkpoint)
        let source = "\(reader.mainPath) (its config)"
        let config = try JobConfig.parse(reader.manifest.config, source: source)
        guard case .residual(_, .mlp(let mlp)) = config.model, case .pointwise(let activation) = mlp.activation, mlp.rank == 0 else {
            throw ConfigError("moefy splits the dense MLP blocks of a residual model (pointwise activation, full rank); "
                              + "the model of \(reader.folder) is \(Self.describe(config.model))")
        }
        guard experts >= 1, mlp.hidden % experts == 0 else {
            throw ConfigError("--experts \(experts) does not divide the hidden width \(mlp.hidden) of the model of \(reader.folder)")
        }
        guard samples >= 1 else { throw ConfigError("--samples \(samples): must be at least 1") }
        guard !FileManager.default.fileExists(atPath: out) else {
            throw ConfigError("\(out) exists; moefy writes a new checkpoint folder")
        }
        try checkOutputFolder(out)
        let comm = try CommandStart.world("moefy", alone: true)
        let threads = try CommandStart.threads(threads.threads, comm: comm)
        let (train, test) = try config.data.load()

        // The dense model's blocks on a seeded sample of the training set: each block's
        // normalized input (the router's input) and its hidden activations.
        let dense = try Evaluator(config: config, comm: comm, inputs: train.width, maxRows: 512)
        try dense.load(reader)
        let n = min(samples, train.count)
        let order = Philox(seed: config.run.seed).permutation(train.count, stream: 0x4D4F_4546)
        let blocks = dense.model.network.layers.compactMap { ($0 as? Residual)?.branch.layers[1] as? Linear }
        let d = blocks.first?.inputWidth ?? 0, h = mlp.hidden
        let inputs = blocks.map { _ in Tensor(shape: [n, d]) }, hidden = blocks.map { _ in Tensor(shape: [n, h]) }
        let x = Tensor(shape: [512, train.width])
        var labels = [Int32](repeating: 0, count: 512)
        for start in stride(from: 0, to: n, by: 512) {
            let rows = min(512, n - start)
            try order.withUnsafeBufferPointer { o in
                try labels.withUnsafeMutableBufferPointer { y in
                    try train.gather(UnsafeBufferPointer(rebasing: o[start..<(start + rows)]), into: x.data, labels: y.baseAddress!)
                }
            }
            _ = dense.model.forward(x.data, rows: rows, context: ForwardContext(training: false))
            for (b, fc1) in blocks.enumerated() {
                (inputs[b].data + start * d).update(from: fc1.lastInput!, count: rows * d)
                (hidden[b].data + start * h).update(from: fc1.lastOutput, count: rows * h)
            }
        }

        let moeText = try Moefication.moeJob(fromDense: reader.manifest.config, source: source, experts: experts,
                                             hidden: h / experts, activation: activation.rawValue)
        let moeConfig = try JobConfig.parse(moeText, source: "the MoE job made from \(source)")
        let trainer = try Trainer(config: moeConfig, comm: comm, train: train, test: test)
        let store = trainer.model.store, denseStore = dense.model.store
        for p in store.parameters {
            guard let q = denseStore[p.name] else { continue }
            p.value.update(from: q.value, count: p.count)
        }
        for (b, moe) in trainer.model.moeLayers.enumerated() {
            let groups = Moefication.clusters(hidden[b].data, samples: n, units: h, experts: experts, seed: config.run.seed &+ UInt64(b))
            let w1 = denseStore["blocks.\(b).fc1.weight"]!, b1 = denseStore["blocks.\(b).fc1.bias"]!
            let w2 = denseStore["blocks.\(b).fc2.weight"]!, b2 = denseStore["blocks.\(b).fc2.bias"]!
            let targets = Tensor(shape: [n, experts])
            for (e, units) in groups.enumerated() {
                for (j, unit) in units.enumerated() {
                    (moe.w1[e].value + j * d).update(from: w1.value + unit * d, count: d)
                    moe.b1[e]!.value[j] = b1.value[unit]
                    for o in 0..<d { moe.w2[e].value[o * units.count + j] = w2.value[o * h + unit] }
                    for r in 0..<n { targets[r * experts + e] += hidden[b][r * h + unit] }
                }
                moe.b2[e]!.value.update(repeating: 0, count: d)
            }
            moe.outputBias!.value.update(from: b2.value, count: d)
            let router = Moefication.router(inputs: inputs[b].data, samples: n, width: d, targets: targets.data, experts: experts)
            moe.router.value.update(from: router, count: router.count)
        }

        // A step-0 checkpoint of the MoE job, committed under OUT.
        let partial = out + ".partial"
        try DurableFiles.remove(partial)
        guard let written = try trainer.saveCheckpoint(in: partial, keepLast: 0, threads: threads) else {
            throw DiskError(out, "the checkpoint was not written")
        }
        try DurableFiles.rename(written, out)
        try DurableFiles.remove(partial)
        print("wrote \(out): \(moeConfig.model.moeLayerCount) MoE blocks of \(experts) experts of \(h / experts) units from "
              + "\(reader.folder), clustered on \(n) training samples; evaluate with: switchboard evaluate \(out) --top-k K")
    }

    static func describe(_ model: Architecture) -> String {
        switch model {
        case .stack: "a stack"
        case .moe: "already a mixture of experts"
        case .residual(_, .fff): "a fast feedforward model"
        case .residual(_, .mlp(let m)): m.rank > 0 ? "a low-rank MLP" : "an MLP with a gated activation"
        }
    }
}

extension Architecture {
    var moeLayerCount: Int {
        if case .moe(let trunk, _) = self { return trunk.depth }
        return 0
    }
}
