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
    @Option(parsing: .unconditional, help: "Experts per block (must divide the blocks' hidden width).") var experts: Int
    @Option(help: "The checkpoint folder to write (must not exist).") var out: String
    @Option(parsing: .unconditional, help: "Training samples the activations are taken on.") var samples = 4096
    @OptionGroup var threads: ThreadsOption

    func validate() throws {
        guard experts >= 1 else { throw ValidationError("--experts \(experts): must be at least 1") }
        guard samples >= 1 else { throw ValidationError("--samples \(samples): must be at least 1") }
    }

    func run() throws {
        // `out/` names the same folder; the partial checkpoint goes beside it.
        var out = self.out
        while out.count > 1 && out.hasSuffix("/") { out.removeLast() }
        let reader = try openCheckpoint(checkpoint)
        let source = "\(reader.mainPath) (its config)"
        let config = try JobConfig.parse(reader.manifest.config, source: source)
        guard case .residual(_, .mlp(let mlp)) = config.model, case .pointwise(let activation) = mlp.activation, mlp.rank == 0, mlp.keep == 0 else {
            throw ConfigError("moefy splits the dense MLP blocks of a residual model (pointwise activation, full rank, every unit kept); "
                              + "the model of \(reader.folder) is \(Self.describe(config.model))")
        }
        guard mlp.hidden % experts == 0 else {
            throw ConfigError("--experts \(experts) does not divide the hidden width \(mlp.hidden) of the model of \(reader.folder)")
        }
        guard !FileManager.default.fileExists(atPath: out) else {
            throw ConfigError("\(out) exists; moefy writes a new checkpoint folder")
        }
        try checkOutputFolder(out)
        let comm = try CommandStart.world("moefy", alone: true)
        let threads = try CommandStart.threads(threads.threads, comm: comm).threads
        let (train, test) = try config.data.load()

        let dense = try Evaluator(config: config, comm: comm, inputs: train.width, maxRows: 512)
        try dense.load(reader)
        let (trainer, moeConfig, n) = try Moefication.convert(dense, denseText: reader.manifest.config, source: source,
                                                             activation: activation, hidden: mlp.hidden, experts: experts, samples: samples,
                                                             train: train, test: test, comm: comm)

        // A step-0 checkpoint of the MoE job, committed under OUT.
        let partial = out + ".partial"
        try DurableFiles.remove(partial)
        guard let written = try trainer.saveCheckpoint(in: partial, keepLast: 0, threads: threads) else {
            throw DiskError(out, "the checkpoint was not written")
        }
        try DurableFiles.rename(written, out)
        try DurableFiles.remove(partial)
        print("wrote \(out): \(moeConfig.model.moeLayerCount) MoE blocks of \(experts) experts of \(mlp.hidden / experts) units from "
              + "\(reader.folder), clustered on \(n) training samples; evaluate with: switchboard evaluate \(out) --top-k K")
    }

    static func describe(_ model: Architecture) -> String {
        switch model {
        case .stack: "a stack"
        case .moe: "already a mixture of experts"
        case .residual(_, .fff): "a fast feedforward model"
        case .residual(_, .mlp(let m)): m.rank > 0 ? "a low-rank MLP" : m.keep > 0 ? "a top-k activation MLP" : "an MLP with a gated activation"
        }
    }
}

extension Architecture {
    var moeLayerCount: Int {
        if case .moe(let trunk, _) = self { return trunk.depth }
        return 0
    }
}
