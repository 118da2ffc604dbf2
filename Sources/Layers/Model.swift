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
    /// Brings each top-level layer's parameters in before it runs and lets them go after, when
    /// the ranks hold the synced parameters in shards (`[parallel] shard_parameters`); nil
    /// when every parameter is always here.
    public var gathering: (any ParameterGathering)?
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

    /// The top-level layers `[0, end)` over `x`, each between the gathering's calls.
    func run(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext, through end: Int) -> UnsafePointer<Float> {
        var h = x
        let layers = network.layers
        for i in 0..<end {
            gathering?.willRun(i, backward: false)
            h = layers[i].forward(h, rows: rows, context: context)
            gathering?.didRun(i, backward: false)
        }
        return h
    }

    /// The arena range of each top-level layer's trainable parameters, in forward order (empty
    /// for a layer without any); the ranges lie end to end over `[0, store.trainableCount)`.
    public var layerRanges: [Range<Int>] {
        finalFrom.indices.map { finalFrom[$0]..<($0 + 1 < finalFrom.count ? finalFrom[$0 + 1] : store.trainableCount) }
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
            gathering?.willRun(i, backward: true)
            g = layers[i].backward(gi, rows: rows)
            gathering?.didRun(i, backward: true)
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
/// every top-level layer's forward and backward, in the same order on every rank, so it can
/// run collectives there. `willRun` makes layer `i`'s parameters whole here (and may start
/// fetching the next layer's); `didRun` may let them go. A failure is kept and thrown by
/// whoever drives the passes (forward and backward do not throw).
public protocol ParameterGathering: AnyObject {
    func willRun(_ layer: Int, backward: Bool)
    func didRun(_ layer: Int, backward: Bool)
}
