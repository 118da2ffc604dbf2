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

    /// Trainable parameters every rank holds and syncs (all but the frozen ones and the
    /// experts with one owner each), and the most of them in one gathering unit
    /// (`Model.gatheringUnits`): with the parameters in shards, a rank keeps 1/P of the first
    /// and gathers up to two of the second.
    public var synced: Double = 0
    public var largestSyncedLayer: Double = 0

    /// Of the parameters, those the rank counted holds (every one but the experts other ranks
    /// own), and of those the frozen ones.
    public var held: Double = 0
    public var heldFrozen: Double = 0

    /// Floats the rank's parameter store allocates: every value it holds and the trainable
    /// gradients.
    public var storeFloats: Double { 2 * held - heldFrozen }
}

extension Architecture {
    /// The rank that owns the most experts on `ranks` ranks (all own the same without MoE).
    func busiestRank(ranks: Int) -> Int {
        guard case .moe(_, let spec) = self, spec.experts >= ranks else { return 0 }
        let placement = ExpertPlacement(experts: spec.experts, ranks: ranks)
        return (0..<ranks).max { placement.experts(on: $0).count < placement.experts(on: $1).count }!
    }
}

extension Architecture {
    /// The size of `Model(self, inputs:classes:maxRows:frozen:precision:)` on one of `ranks`
    /// ranks with `threads` threads: an MoE layer there is attached to an exchange over the
    /// ranks (its experts moving where `movesExperts` allows) and, with
    /// `updatesExpertsInBackward`, to the updates inside backward, as the trainer does.
    /// FLOPs are those of the model alone, whatever the ranks.
    public func size(inputs: Int, classes: Int, maxRows: Int, precision: Precision = .fp32, ranks: Int = 1, threads: Int = 1,
                     movesExperts: Bool = true, updatesExpertsInBackward: Bool = false, frozen: [String] = [],
                     trainingRows: Int? = nil) -> ModelSize {
        // The rank counted is the one that owns the most experts: with E ≥ P every expert has
        // one owner, the only rank that holds it, and the owners' blocks differ by at most one.
        let store = ParameterStore(seed: 0, frozen: frozen)
        let build = BuildContext(store: store, maxRows: maxRows, precision: precision, counting: true, ranks: ranks,
                                 rank: busiestRank(ranks: ranks), trainingRows: trainingRows)
        let (layers, _) = Model.layers(self, inputs: inputs, classes: classes, in: build)
        let flops = build.count
        for moe in Model.walk(layers, MoE.self) {
            if ranks > 1 {
                moe.attach(CountingExchange(ranks: ranks, rank: build.rank, experts: moe.spec.experts, movesExperts: movesExperts))
            }
            if updatesExpertsInBackward { moe.attach(updates: NoUpdates(), threads: threads) }
        }
        var s = ModelSize()
        var ownExperts = 0.0, ownerOnly: Set<ObjectIdentifier> = []
        for moe in Model.walk(layers, MoE.self) where BuildContext.expertsOwnerOnly(experts: moe.spec.experts, ranks: ranks) {
            for i in 0..<moe.spec.experts {
                for p in moe.expertParameters(i) {
                    ownerOnly.insert(ObjectIdentifier(p))
                    if p.resident { ownExperts += Double(p.count) }
                }
            }
        }
        for p in store.parameters {
            s.parameters += Double(p.count)
            if p.frozen { s.frozen += Double(p.count) }
            if p.resident { s.held += Double(p.count); if p.frozen { s.heldFrozen += Double(p.count) } }
        }
        // The rest of the trainable parameters are synced, each rank updating 1/P of them.
        let synced = s.held - s.heldFrozen - ownExperts
        s.synced = synced
        s.updatedPerRank = (synced / Double(ranks)).rounded(.up) + ownExperts
        for (_, _, unit) in Model.unitLayers(layers, in: nil) {
            let synced = Model.parameters(of: unit).filter { !$0.frozen && $0.resident && !ownerOnly.contains(ObjectIdentifier($0)) }
            s.largestSyncedLayer = max(s.largestSyncedLayer, Double(synced.reduce(0) { $0 + $1.count }))
        }
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
