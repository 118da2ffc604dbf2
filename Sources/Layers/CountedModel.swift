import Kernels

/// What a model of an architecture will hold and compute, counted by declaring it in a
/// counting build (`BuildContext.counting`): the same layers as the model that trains, with
/// placeholders for their tensors and no parameter allocated, so a job can be checked against
/// the machine's memory before anything is allocated, and the numbers cannot drift from the
/// layers (a test builds architectures and compares with what their tensors hold).
public struct ModelSize: Sendable, Equatable {
    /// Parameters (each has a value; the trainable ones a gradient too).
    public var parameters: Double = 0
    /// Of those, the frozen ones: no gradient.
    public var frozen: Double = 0
    /// Floats of the layers' own buffers (activations, their gradients, routing), for
    /// `maxRows` rows per pass.
    public var buffers: Double = 0
    /// bf16 values a model with bf16 products adds (`BFloat16Buffer`: the rounded inputs of
    /// its products, 2 bytes each, or 4 emulated); none in fp32.
    public var bf16Values: Double = 0
    /// Floating-point operations of the matrix products for one sample: a training step's
    /// forward and backward (the soft tree of an FFF; every selected expert of an MoE,
    /// without capacity drops), and an inference forward pass (the hard descent of an FFF).
    /// Elementwise work (norms, activations, the optimizer) is not counted.
    public var trainingFlops: Double = 0
    public var inferenceFlops: Double = 0
    /// The `frozen` patterns that named a parameter, and those that named a parameter that
    /// cannot be frozen (an MoE layer's): what `Model.frozenProblems` reports, known before
    /// building.
    public var frozenMatched: Set<String> = []
    public var unfreezable: [String] = []

    /// Trainable parameters the busiest rank updates, and so holds optimizer state for (ZeRO-1):
    /// its share of the synced parameters and, with one owner per expert (E ≥ P), the experts
    /// it owns. All of them on one rank.
    public var updatedPerRank: Double = 0
    /// The largest trainable parameter the ranks hold the optimizer state of in shards, which
    /// a checkpoint gathers on its writer (and a load reads whole); 0 on one rank.
    public var largestShardedParameter: Double = 0

    /// Floats the parameter store allocates: every value and the trainable gradients.
    public var storeFloats: Double { 2 * parameters - frozen }
}

extension Architecture {
    /// The size of `Model(self, inputs:classes:maxRows:frozen:precision:)` on one of `ranks`
    /// ranks with `threads` threads: an MoE layer there is attached to an exchange over the
    /// ranks (its experts moving where `movesExperts` allows) and, with
    /// `updatesExpertsInBackward`, to the updates inside backward, as the trainer does.
    /// FLOPs are those of the model alone, whatever the ranks.
    public func size(inputs: Int, classes: Int, maxRows: Int, precision: Precision = .fp32, ranks: Int = 1, threads: Int = 1,
                     movesExperts: Bool = true, updatesExpertsInBackward: Bool = false, frozen: [String] = []) -> ModelSize {
        let store = ParameterStore(seed: 0, frozen: frozen)
        let build = BuildContext(store: store, maxRows: maxRows, precision: precision, counting: true)
        let (layers, _) = Model.layers(self, inputs: inputs, classes: classes, in: build)
        let flops = build.count
        for moe in Model.walk(layers, MoE.self) {
            if ranks > 1 { moe.attach(CountingExchange(ranks: ranks, experts: moe.spec.experts, movesExperts: movesExperts)) }
            if updatesExpertsInBackward { moe.attach(updates: NoUpdates(), threads: threads) }
        }
        var s = ModelSize()
        for p in store.parameters {
            s.parameters += Double(p.count)
            if p.frozen { s.frozen += Double(p.count) }
        }
        // With E ≥ P every expert has one owner, which alone updates it; the owners' blocks of
        // experts differ by at most one.
        var ownerOnly: Set<ObjectIdentifier> = []
        var experts = 0.0, ownedMost = 0.0
        for moe in Model.walk(layers, MoE.self) where ranks > 1 && moe.spec.experts >= ranks {
            let all = (moe.w1 + moe.w2 + moe.b1.compactMap { $0 } + moe.b2.compactMap { $0 })
            for p in all { ownerOnly.insert(ObjectIdentifier(p)) }
            let floats = all.reduce(0.0) { $0 + Double($1.count) }
            experts += floats
            ownedMost += floats / Double(moe.spec.experts) * (Double(moe.spec.experts) / Double(ranks)).rounded(.up)
        }
        s.updatedPerRank = ((s.parameters - s.frozen - experts) / Double(ranks)).rounded(.up) + ownedMost
        if ranks > 1 {
            for p in store.parameters where !p.frozen && !ownerOnly.contains(ObjectIdentifier(p)) {
                s.largestShardedParameter = max(s.largestShardedParameter, Double(p.count))
            }
        }
        s.buffers = build.count.buffers
        s.bf16Values = build.count.bf16Values
        s.trainingFlops = flops.trainingFLOPs
        s.inferenceFlops = flops.inferenceFLOPs
        s.frozenMatched = Set(frozen).subtracting(store.unmatchedFrozenPatterns)
        s.unfreezable = frozen.filter { f in store.unfreezable.contains { ParameterStore.matches(f, $0) } }
        return s
    }
}

/// The updates inside backward of a counted model: never called.
private final class NoUpdates: UpdateInBackward {
    func update(_ parameter: Parameter, from grads: UnsafeMutablePointer<Float>) {
        fatalError("a counted model updated \(parameter.name)")
    }
}
