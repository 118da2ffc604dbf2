import Kernels

/// A network plus its parameter store, built for a maximum number of rows per pass.
public final class Model {
    public let store: ParameterStore
    public let network: Sequential
    public let inputs: Int
    public let classes: Int
    public let maxRows: Int
    public let precision: Precision
    /// The MoE layers, in order.
    public let moeLayers: [MoE]
    /// The fast feedforward layers, in order.
    public let fffLayers: [FastFeedforward]
    /// The layers with an auxiliary loss, in forward order (found once: every pass reads them).
    let auxiliaryLosses: [any AuxiliaryLoss]
    /// Whether some layer has a hard inference mode (`HardInference`).
    public let hasHardInference: Bool
    /// For each top-level layer, the arena offset from which every gradient is final once
    /// that layer's backward has run (trainable parameters are laid out in forward order).
    let finalFrom: [Int]
    /// Brings each gathering unit's parameters in before it runs and lets them go after, when
    /// the ranks hold the synced parameters in shards (`[parallel] shard_parameters`); nil
    /// when every parameter is always here.
    public var gathering: (any ParameterGathering)? {
        didSet {
            for slot in unitSlots { slot.sequential.gathering = gathering }
        }
    }
    /// The layers gathered one at a time, in forward order (`gatheringUnits`): where each sits
    /// (numbered in its sequence's `units`) and its range.
    private lazy var unitSlots: [(sequential: Sequential, index: Int, range: Range<Int>)] = {
        let slots = Self.units(network, trainable: store.trainableCount)
        for (u, slot) in slots.enumerated() {
            if slot.sequential.units.isEmpty { slot.sequential.units = [Int?](repeating: nil, count: slot.sequential.layers.count) }
            slot.sequential.units[slot.index] = u
        }
        return slots
    }()
    /// The arena range of each gathering unit's trainable parameters, in forward order: each
    /// top-level layer, but a residual block's branch layer by layer, so a rank holding its
    /// parameters in shards gathers one matrix at a time, not a whole block.
    public var gatheringUnits: [Range<Int>] { unitSlots.map(\.range) }
    /// The top-level layers a statistics pre-pass runs (`gatherStatistics`): through the
    /// block of the last layer whose batch statistics a gradient uses.
    let statisticsDepth: Int

    /// `frozen`: parameters to keep at their initial (or loaded) values, by name or prefix
    /// (`ParameterStore.frozenPatterns`).
    /// `precision`: the number format of the matrix products (`Matmul`); parameters are fp32 either way.
    /// `ranks`, `rank`: the ranks the model trains on and this one, which decide what this
    /// process holds (`BuildContext.holdsExpert`). `trainingRows`: the most rows a training
    /// pass holds, where evaluation's chunks make `maxRows` larger (nil: `maxRows`).
    public init(_ architecture: Architecture, inputs: Int, classes: Int, maxRows: Int, seed: UInt64, frozen: [String] = [],
                precision: Precision = .fp32, ranks: Int = 1, rank: Int = 0, trainingRows: Int? = nil) {
        self.precision = precision
        self.inputs = inputs
        self.classes = classes
        self.maxRows = maxRows
        let store = ParameterStore(seed: seed, frozen: frozen)
        let build = BuildContext(store: store, maxRows: maxRows, precision: precision, ranks: ranks, rank: rank,
                                 trainingRows: trainingRows)
        let (layers, firstParameter) = Self.layers(architecture, inputs: inputs, classes: classes, in: build)
        moeLayers = Self.walk(layers, MoE.self)
        fffLayers = Self.walk(layers, FastFeedforward.self)
        network = Sequential(layers)
        auxiliaryLosses = Self.walk(layers, (any AuxiliaryLoss).self)
        hasHardInference = !Self.walk(layers, (any HardInference).self).isEmpty
        // The pre-pass runs the top-level layers through the last one holding a layer whose
        // gradients use batch statistics.
        let last = layers.lastIndex { Self.walk([$0], (any RankStatistics).self).contains { $0.gradientsUseBatchStatistics } }
        statisticsDepth = last.map { $0 + 1 } ?? 0
        // That layer's own output is not read in the pre-pass: an MoE layer there stops after its router.
        if let last { for moe in Self.walk([layers[last]], MoE.self) { moe.routesOnlyWhenGathering = true } }
        store.finalize()
        self.store = store
        // A layer without trainable parameters finalizes nothing new: it inherits the next
        // one's offset.
        var offsets = [Int](repeating: store.trainableCount, count: layers.count)
        var next = store.trainableCount
        for i in layers.indices.reversed() {
            let end = i + 1 < layers.count ? firstParameter[i + 1] : store.parameters.count
            if let first = store.parameters[firstParameter[i]..<end].first(where: { !$0.frozen && $0.resident }) { next = first.offset }
            offsets[i] = next
        }
        finalFrom = offsets
    }

    /// The top-level layers of `architecture`, declared in `build` (allocated or counted), and
    /// the index of the first parameter each registers.
    static func layers(_ architecture: Architecture, inputs: Int, classes: Int,
                       in build: BuildContext) -> (layers: [any Layer], firstParameter: [Int]) {
        let store = build.store
        var layers: [any Layer] = []
        // The index of the first parameter each top-level layer registers.
        var firstParameter: [Int] = []
        func append(_ layer: @autoclosure () -> any Layer) {
            firstParameter.append(store.parameters.count)
            layers.append(layer())
        }
        switch architecture {
        case .stack(let hidden, let activation):
            var width = inputs
            for (i, h) in hidden.enumerated() {
                append(Linear("layers.\(i)", inputs: width, outputs: h, activation: activation, computesInputGradient: i > 0, in: build))
                width = h
            }
            append(Linear("head", inputs: width, outputs: classes, computesInputGradient: !hidden.isEmpty, in: build))
        case .residual(let trunk, let ffn):
            let d = trunk.width
            append(Linear("embed", inputs: inputs, outputs: d, computesInputGradient: false, in: build))
            for i in 0..<trunk.depth {
                let name = "blocks.\(i)"
                let norm = makeNorm(trunk.norm, "\(name).norm", width: d, scale: trunk.normScale(block: i), in: build)
                append(Residual(Sequential([norm] + ffn.layers(name, width: d, site: i, in: build)), in: build))
            }
            append(makeNorm(trunk.norm, "norm", width: d, in: build))
            append(Linear("head", inputs: d, outputs: classes, in: build))
        case .moe(let trunk, let spec):
            let d = trunk.width
            append(Linear("embed", inputs: inputs, outputs: d, computesInputGradient: false, in: build))
            for i in 0..<trunk.depth {
                let name = "blocks.\(i)"
                // The layer registers its parameters before its norm does (the arena's order,
                // which checkpoints and the gradient buckets follow).
                let moe = MoE("\(name).moe", width: d, spec: spec, site: i, in: build)
                append(Residual(Sequential([makeNorm(trunk.norm, "\(name).norm", width: d, scale: trunk.normScale(block: i), in: build),
                                            moe]), in: build))
            }
            append(makeNorm(trunk.norm, "norm", width: d, in: build))
            append(Linear("head", inputs: d, outputs: classes, in: build))
        }
        return (layers, firstParameter)
    }

    /// Whether some layer's gradient depends on means over the whole batch (the MoE balance
    /// and entropy losses, the FFF leaf balance): a step of several passes with statistics
    /// over the batch then needs a pre-pass to gather them (`BatchStatistics`).
    public var gradientsUseBatchStatistics: Bool { statisticsDepth > 0 }

    /// A pre-pass's forward over `x` (context `.gather`): only as far as the statistics need.
    public func gatherStatistics(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) {
        precondition(rows <= maxRows, "\(rows) rows for a model built for \(maxRows)")
        run(x, rows: rows, context: context, through: statisticsDepth)
    }

    /// The top-level layers `[0, end)` over `x`.
    func run(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext, through end: Int) -> UnsafePointer<Float> {
        var h = x
        for i in 0..<end { h = network.forward(i, h, rows: rows, context: context) }
        return h
    }

    /// The gathering units of `network` (see `gatheringUnits`), each with the hull of its
    /// trainable parameters' offsets (empty for a layer without any). Should the hulls not
    /// tile `[0, trainable)` (a layer keeping parameters where `parameters(of:)` does not
    /// look), the units are the top-level layers, whose parameters always lie end to end.
    static func units(_ network: Sequential, trainable: Int) -> [(sequential: Sequential, index: Int, range: Range<Int>)] {
        let slots = unitLayers(network.layers, in: network)
        func hull(_ layer: any Layer) -> Range<Int> {
            let held = parameters(of: layer).filter { $0.resident && !$0.frozen }
            guard let lo = held.map(\.offset).min(), let hi = held.map({ $0.offset + $0.count }).max() else { return 0..<0 }
            return lo..<hi
        }
        var units = slots.map { ($0.0!, $0.1, hull($0.2)) }
        let sorted = units.map(\.2).filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        let tiles = sorted.reduce(0) { $0 + $1.count } == trainable && zip(sorted, sorted.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound }
        if !tiles {
            units = network.layers.indices.map { k in (network, k, hull(network.layers[k])) }
        }
        return units
    }

    /// The gathering units of top-level `layers` (of `network`): each layer, or a residual
    /// block's branch layers, with the sequence each sits in.
    static func unitLayers(_ layers: [any Layer], in network: Sequential?) -> [(Sequential?, Int, any Layer)] {
        var slots: [(Sequential?, Int, any Layer)] = []
        for (k, layer) in layers.enumerated() {
            if let residual = layer as? Residual {
                for (j, inner) in residual.branch.layers.enumerated() { slots.append((residual.branch, j, inner)) }
            } else {
                slots.append((network, k, layer))
            }
        }
        return slots
    }

    /// The parameters a layer keeps in its stored properties: `Parameter`s, alone or in
    /// optionals, tuples and arrays, and those of the layers it holds (walked as mlx's
    /// `Module` walks its children).
    static func parameters(of layer: any Layer) -> [Parameter] {
        var found: [Parameter] = []
        func visit(_ value: Any, root: Bool) {
            if let p = value as? Parameter { found.append(p); return }
            let mirror = Mirror(reflecting: value)
            let isLayer = value is any Layer
            guard root || isLayer || [.optional, .tuple, .collection].contains(mirror.displayStyle) else { return }
            for child in mirror.children { visit(child.value, root: false) }
        }
        visit(layer, root: true)
        return found
    }

    /// The layers' auxiliary losses from the last forward pass (coefficients applied).
    public var auxLoss: Double { auxiliaryLosses.reduce(0) { $0 + $1.auxLoss } }

    /// Every layer of the network that is a `T` (a capability, `Capabilities.swift`), depth
    /// first in forward order, inside residual branches too.
    public func layers<T>(_ type: T.Type) -> [T] { Self.walk(network.layers, type) }

    static func walk<T>(_ layers: [any Layer], _ type: T.Type) -> [T] {
        layers.flatMap { layer -> [T] in
            let inner: [any Layer] = (layer as? Sequential)?.layers ?? (layer as? Residual).map { [$0.branch] } ?? []
            return ((layer as? T).map { [$0] } ?? []) + walk(inner, type)
        }
    }

    /// Frozen patterns that name no parameter, and parameters named by one whose layer cannot
    /// keep them frozen (MoE layers): each a reason the model is not what the
    /// job asked for.
    public var frozenProblems: [String] {
        store.unmatchedFrozenPatterns.map { "\"\($0)\" names no parameter of this model" }
            + store.unfreezable.map { "\($0) is an MoE parameter, which cannot be frozen" }
    }

    /// Logits `[rows, classes]` for inputs `[rows, inputs]`.
    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        precondition(rows <= maxRows, "\(rows) rows for a model built for \(maxRows)")
        return run(x, rows: rows, context: context, through: network.layers.count)
    }

    /// Accumulates parameter gradients for `dlogits`. With `gradientsFinal`: after each top-level layer,
    /// `gradientsFinal(offset)` says that every gradient at `[offset, store.trainableCount)` is
    /// complete (the data-parallel trainer starts sending those).
    public func backward(_ dlogits: UnsafePointer<Float>, rows: Int) {
        backward(dlogits, rows: rows) { _ in }
    }

    public func backward(_ dlogits: UnsafePointer<Float>, rows: Int, gradientsFinal: (Int) throws -> Void) rethrows {
        var g: UnsafePointer<Float>? = dlogits
        let layers = network.layers
        for i in layers.indices.reversed() {
            guard let gi = g else { preconditionFailure("a layer before the first returned no input gradient") }
            g = network.backward(i, gi, rows: rows)
            try gradientsFinal(finalFrom[i])
        }
    }
}

extension FeedForward {
    /// The layers of one block of this kind on a stream of `width` (its norm and residual
    /// aside), declared in `build` under `name`; `site` tells the block's dropout apart.
    public func layers(_ name: String, width d: Int, site: Int, in build: BuildContext) -> [any Layer] {
        /// A block matrix, dense or factored.
        func matrix(_ name: String, _ i: Int, _ o: Int, _ f: Activation = .identity, rank: Int) -> any Layer {
            rank > 0 ? LowRankLinear(name, inputs: i, outputs: o, rank: rank, activation: f, in: build)
                : Linear(name, inputs: i, outputs: o, activation: f, in: build)
        }
        switch self {
        case .mlp(let m):
            var layers: [any Layer] = []
            switch m.activation {
            case .pointwise(let f):
                layers.append(matrix("\(name).fc1", d, m.hidden, f, rank: m.rank))
            case .gated(let gate):
                layers.append(matrix("\(name).fc1", d, 2 * m.hidden, rank: m.rank))
                layers.append(GLULayer(gate: gate, hidden: m.hidden, in: build))
            }
            if m.keep > 0 { layers.append(TopKActivation(width: m.hidden, keep: m.keep, in: build)) }
            if m.dropout > 0 { layers.append(Dropout(probability: m.dropout, width: m.hidden, site: site, in: build)) }
            layers.append(matrix("\(name).fc2", m.hidden, d, rank: m.rank))
            return layers
        case .fff(let spec):
            return [FastFeedforward("\(name).fff", width: d, spec: spec, in: build)]
        }
    }
}

/// Where a model's parameters are held in shards over the ranks (ZeRO stage 3): called around
/// every gathering unit's forward and backward (`Model.gatheringUnits`), in the same order on
/// every rank, so it can run collectives there. `willRun` makes the unit's parameters whole
/// here (and may start fetching the next unit's); `didRun` may let them go. A failure is kept
/// and thrown by whoever drives the passes (forward and backward do not throw).
public protocol ParameterGathering: AnyObject {
    func willRun(_ unit: Int, backward: Bool)
    func didRun(_ unit: Int, backward: Bool)
}
