import Kernels

/// A mixture-of-experts feedforward layer: router → top-k → tokens grouped by expert → one
/// GEMM pair per expert over all its tokens → outputs mixed by the gates, plus an optional
/// shared expert. The router and its auxiliary losses (load balance, z-loss, σ-MoE entropy)
/// are in `MoERouter.swift`, the experts and their scheduling on threads in `MoEExperts.swift`.
/// On several ranks (`attach(_:)`), the grouped tokens travel to the ranks that run their
/// experts and back (`MoEExchange.swift`), through the protocols of `ExpertExchange.swift`.
///
/// Shapes: x, y `[T, d]`; router logits and probabilities `[T, E]`; assignments `[T, k]`;
/// the grouped rows `[A, d]` with A ≤ T·k, expert e's rows contiguous at `start[e]`.
public final class MoE: Layer, AuxiliaryLoss, RankStatistics, ExpertLayer {
    public let name: String
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    public let spec: MoESpec
    public let router: Parameter             // [E, d]
    public let w1: [Parameter], b1: [Parameter?]   // [H1, d], [H1]; H1 = H or 2H (GLU)
    public let w2: [Parameter], b2: [Parameter?]   // [d, H], [d]
    public let shared: Sequential?
    /// `spec.outputBias`: added to the combined output, [d].
    public let outputBias: Parameter?
    /// Distinguishes MoE layers in the expert-dropout RNG stream.
    public let site: Int
    let seed: UInt64

    /// Holds the routing (choices, drops) of the last forward pass: for finite-difference
    /// checks, where a tiny perturbation must not change which experts a token uses.
    public var holdsRouting = false
    /// Set by the model on the last layer whose statistics a pre-pass gathers: no later layer
    /// runs in the pre-pass, so this one stops after its router and statistics there.
    var routesOnlyWhenGathering = false

    // MARK: Router state (`MoERouter.swift`)

    /// The auxiliary loss of the last forward pass (coefficients applied).
    public internal(set) var auxLoss = 0.0
    /// Assignments routed to each expert in the last pass (before capacity).
    public internal(set) var routed: [Int]
    /// Assignments each expert took (after capacity).
    public internal(set) var accepted: [Int]
    /// Set by a multi-rank trainer; nil on one process.
    public var reduction: (any RankReduction)?
    /// The balance and entropy losses are over the whole batch's routing.
    public var gradientsUseBatchStatistics: Bool { spec.balanceCoefficient != 0 || spec.entropyCoefficient != 0 }
    /// [routed counts E | probability sums E | Σ lse²], summed over the ranks.
    var statistics: [Double]
    /// The same over the step's passes so far, gathered by a routing pre-pass
    /// (`BatchStatistics.gather`), and the auxiliary loss they give.
    var stepStatistics: [Double]
    var stepAux = 0.0
    /// [E] routed counts of the step's earlier passes, over all ranks: where this pass's
    /// assignments stand in the step's global order, for capacity over the step.
    var earlier: [Double]
    /// Routed counts of the ranks below this one, per expert.
    var below: [Double]
    /// ∂aux/∂p[t, e] of the terms built on the batch means, the same for every token.
    var dMean: [Float]
    /// [E] experts the token being routed may not use (expert dropout).
    var excluded: [Bool]
    /// Router statistics since the last `takeTelemetry()`.
    public internal(set) var telemetry: MoETelemetry
    /// Consecutive telemetry intervals in which each expert received nothing.
    public private(set) var idleIntervals: [Int]
    var meanProb: [Double]                              // P_e
    var share: [Double]                                 // f_e
    var lse: [Float]                                    // [T] logsumexp of each token's logits

    let d: Int, e: Int, k: Int, h: Int, h1: Int
    let pointwise: Activation?
    let gated: GatedActivation?
    let precision: Precision
    /// The build the layer was made in: `attach` sizes its buffers there (counted, in a
    /// counting build, like the rest).
    let build: BuildContext
    /// Rebuilt by `attach(_:)` for the rows other ranks may send.
    private(set) var products: MoEProducts

    let logits: Tensor, probs: Tensor, scores: Tensor   // [T, E]
    let dprobs: Tensor, dlogits: Tensor                 // [T, E]
    var choice: [Int32]                                 // [T, k] expert, −1 for none
    var position: [Int32]                               // [T, k] grouped row, −1 if dropped
    let gate: Tensor, dgate: Tensor                     // [T, k]

    // MARK: Grouped rows and the experts (`MoEExperts.swift`)

    var rowToken: [Int32]                               // [T·k] token of each grouped row
    /// This rank's accepted assignments grouped by expert, and (expert parallelism) the rows
    /// other ranks sent to the experts run here; `work` is the set the experts run on.
    let local: ExpertRows
    var owner: ExpertRows?
    var work: ExpertRows
    var start: UnsafeMutablePointer<Int> { local.start }
    /// The experts of the current pass, in the order the worker threads take them, and the
    /// two passes over them as work for the worker pool.
    let queue: ExpertQueue
    private(set) var forwardPass: ExpertForwardPass!
    private(set) var backwardPass: ExpertBackwardPass!
    /// Set by `attach(updates:threads:)`: the experts this rank owns and runs are updated as soon as
    /// their backward is done (`UpdateInBackward`), each from a per-thread gradient buffer.
    public private(set) var updateInBackward: (any UpdateInBackward)?
    /// One per worker thread: the gradient of one expert parameter at a time (the largest is
    /// W1, H1·d floats: 512 KiB in W2, so it stays in the core's L2 between the GEMM that
    /// writes it and the update that reads it).
    private(set) var gradientBuffers: [Tensor] = []

    /// Set by `attach(_:)` under expert parallelism.
    var exchange: ExchangeBuffers?
    /// The experts this rank holds: its own with one owner per expert, else all.
    let held: Range<Int>
    let maxRows: Int
    let y: Tensor, dx: Tensor                           // [T, d]
    var x: UnsafePointer<Float>?
    /// This rank's rows in the pass; rows of the global batch, and of the pass, over all ranks.
    var tokens = 0, globalTokens = 1, passTokens = 1

    public init(_ name: String, width d: Int, spec: MoESpec, site: Int, in build: BuildContext) {
        precondition(spec.topK >= 1 && spec.topK <= spec.experts)
        let store = build.store, maxRows = build.maxRows, precision = build.precision
        self.name = name
        self.precision = precision
        self.build = build
        self.maxRows = maxRows
        inputWidth = d
        self.spec = spec
        self.site = site
        seed = build.seed
        self.d = d
        e = spec.experts
        k = spec.topK
        h = spec.hidden
        switch spec.activation {
        case .pointwise(let f): pointwise = f; gated = nil; h1 = h
        case .gated(let f): pointwise = nil; gated = GatedActivation(gate: f); h1 = 2 * h
        }
        let rootD = Float(d).squareRoot()
        let routerInit: Initializer = spec.zeroRouterInit ? .zeros
            : spec.sigmaInit ? .normal(std: 1 / rootD, equalRows: true) : .uniform(bound: 1 / rootD)
        router = store.register("\(name).router.weight", shape: [e, d], role: .weight, initializer: routerInit)
        // Each expert as a layer of its own, or (σ-MoE) as its slice of the dense layer of width E·H.
        let i1: Initializer = spec.sigmaInit ? .normal(std: 1 / rootD) : .uniform(bound: 1 / rootD)
        let i2: Initializer = spec.sigmaInit ? .normal(std: 1 / Float(e * h).squareRoot()) : .uniform(bound: 1 / Float(h).squareRoot())
        let biasInit1: Initializer = spec.sigmaInit ? .zeros : i1, biasInit2: Initializer = spec.sigmaInit ? .zeros : i2
        var w1: [Parameter] = [], b1: [Parameter?] = [], w2: [Parameter] = [], b2: [Parameter?] = []
        for i in 0..<e {
            // An expert another rank owns is declared here but not held.
            let p = "\(name).experts.\(i)", held = build.holdsExpert(i, of: e)
            w1.append(store.register("\(p).w1", shape: [h1, d], role: .weight, initializer: i1, resident: held))
            b1.append(spec.bias ? store.register("\(p).b1", shape: [h1], role: .bias, initializer: biasInit1, resident: held) : nil)
            w2.append(store.register("\(p).w2", shape: [d, h], role: .weight, initializer: i2, resident: held))
            b2.append(spec.bias ? store.register("\(p).b2", shape: [d], role: .bias, initializer: biasInit2, resident: held) : nil)
        }
        self.w1 = w1
        self.b1 = b1
        self.w2 = w2
        self.b2 = b2
        if spec.sharedHidden > 0 {
            // The shared expert is part of the layer: as frozen as the rest can be (not at all).
            let freezable = build.freezable
            build.freezable = false
            defer { build.freezable = freezable }
            let sh = spec.sharedHidden
            var layers: [any Layer] = []
            switch spec.activation {
            case .pointwise(let f):
                layers.append(Linear("\(name).shared.fc1", inputs: d, outputs: sh, bias: spec.bias, activation: f, in: build))
            case .gated(let f):
                layers.append(Linear("\(name).shared.fc1", inputs: d, outputs: 2 * sh, bias: spec.bias, in: build))
                layers.append(GLULayer(gate: f, hidden: sh, in: build))
            }
            layers.append(Linear("\(name).shared.fc2", inputs: sh, outputs: d, bias: spec.bias, in: build))
            shared = Sequential(layers)
        } else {
            shared = nil
        }
        outputBias = spec.outputBias ? store.register("\(name).bias", shape: [d], role: .bias, initializer: .zeros) : nil
        let a = maxRows * k
        logits = build.tensor([maxRows, e])
        probs = build.tensor([maxRows, e])
        scores = build.tensor([maxRows, e])
        dprobs = build.tensor([maxRows, e])
        dlogits = build.tensor([maxRows, e])
        choice = build.scratch(repeating: Int32(-1), count: a)
        position = build.scratch(repeating: Int32(-1), count: a)
        gate = build.tensor([a])
        dgate = build.tensor([a])
        rowToken = build.scratch(repeating: Int32(0), count: a)
        local = ExpertRows(rows: a, backwardRows: build.trainingRows * k, width: d, hidden: h, firstWidth: h1, experts: e, in: build)
        held = BuildContext.expertsOwnerOnly(experts: e, ranks: build.ranks)
            ? ExpertPlacement(experts: e, ranks: build.ranks).experts(on: build.rank) : 0..<e
        products = MoEProducts(tokens: maxRows, rows: a, width: d, hidden: h, firstWidth: h1, experts: e, copies: held.count, in: build)
        work = local
        queue = ExpertQueue(experts: e)
        y = build.tensor([maxRows, d])
        dx = build.tensor([maxRows, d])
        meanProb = [Double](repeating: 0, count: e)
        share = [Double](repeating: 0, count: e)
        lse = build.scratch(repeating: Float(0), count: maxRows)
        routed = [Int](repeating: 0, count: e)
        accepted = [Int](repeating: 0, count: e)
        telemetry = MoETelemetry(experts: e)
        statistics = [Double](repeating: 0, count: 2 * e + 1)
        stepStatistics = statistics
        earlier = [Double](repeating: 0, count: e)
        below = [Double](repeating: 0, count: e)
        dMean = [Float](repeating: 0, count: e)
        excluded = [Bool](repeating: false, count: e)
        idleIntervals = [Int](repeating: 0, count: e)
        forwardPass = ExpertForwardPass(self)
        backwardPass = ExpertBackwardPass(self)
    }

    /// Runs this layer's experts across ranks from now on: tokens go to the rank that runs
    /// their expert and come back (`MoEExchange.swift`). Sizes the buffers for the worst case,
    /// every token of every rank on experts run here.
    public func attach(_ exchange: any ExpertExchange) {
        let rows = exchange.ranks * maxRows * k
        owner = ExpertRows(rows: rows, backwardRows: exchange.ranks * build.trainingRows * k, width: d, hidden: h, firstWidth: h1,
                           experts: e, in: build)
        // The rounded weights of the experts held here, and of the visiting slots.
        let slots = exchange.movesExperts ? ExchangeBuffers.visitingSlots(experts: e, ranks: exchange.ranks) : 0
        products = MoEProducts(tokens: maxRows, rows: rows, width: d, hidden: h, firstWidth: h1, experts: e, copies: held.count + slots, in: build,
                               reusing: products)
        // The experts held here, each one span of values and one of gradients.
        let spans = (0..<e).map { i -> ExpertSpan? in
            guard w1[i].resident else { return nil }
            let last = expertParameters(i).last!
            precondition(build.counting || last.offset + last.count - w1[i].offset == expertFloats,
                         "expert \(i)'s parameters are not one span")
            return ExpertSpan(values: build.values(of: w1[i]), grads: build.grads(of: w1[i]))
        }
        self.exchange = ExchangeBuffers(exchange, experts: e, rows: rows, width: d, spans: spans, expertFloats: expertFloats, in: build)
    }

    /// Updates the experts this rank owns and runs inside backward from now on, with one
    /// gradient buffer for each of `threads` worker threads (more threads than that share them
    /// out: an expert pass then uses at most `threads` of them).
    public func attach(updates: any UpdateInBackward, threads: Int) {
        updateInBackward = updates
        gradientBuffers = (0..<max(threads, 1)).map { _ in build.tensor([max(h1 * d, d * h)]) }
    }

    public var experts: Int { e }
    public var expertsPerRow: Int { k }

    /// Expert i's parameters in the order they are registered (one span in the store).
    public func expertParameters(_ i: Int) -> [Parameter] { [w1[i], b1[i], w2[i], b2[i]].compactMap { $0 } }

    /// The floats of one expert's parameters (every expert the same).
    var expertFloats: Int { h1 * d + d * h + (spec.bias ? h1 + d : 0) }

    public func parameterSpan(_ experts: Range<Int>) -> Range<Int> {
        precondition(experts.allSatisfy { w1[$0].resident }, "\(name): experts \(experts) are not all held here")
        let last = b2[experts.upperBound - 1] ?? w2[experts.upperBound - 1]
        return w1[experts.lowerBound].offset..<(last.offset + last.count)
    }

    /// The statistics of the interval that ends now; a new interval starts.
    public func takeTelemetry() -> MoETelemetry {
        let t = telemetry
        for i in 0..<e { idleIntervals[i] = t.routed[i] == 0 ? idleIntervals[i] + 1 : 0 }
        for i in 0..<e { telemetry.routed[i] = 0; telemetry.accepted[i] = 0 }
        telemetry.auxSum = 0
        telemetry.steps = 0
        telemetry.passes = 0
        telemetry.moved = 0
        return t
    }

    // MARK: - Forward and backward

    public func forward(_ x: UnsafePointer<Float>, rows t: Int, context: ForwardContext) -> UnsafePointer<Float> {
        self.x = x
        tokens = t
        globalTokens = max(context.globalRows > 0 ? context.globalRows : t, 1)
        passTokens = context.passRows > 0 ? context.passRows : globalTokens
        if context.microBatch == 0 { for i in 0..<e { earlier[i] = 0 } }
        routerForward(x, context: context)
        if routesOnlyWhenGathering && context.statistics == .gather {
            computeAuxLoss(context)
            return UnsafePointer(y.data)   // not read
        }
        dispatch()
        if let exchange { exchangeForward(exchange) } else { runExperts() }
        combine()
        if let shared {
            let s = shared.forward(x, rows: t, context: context)
            add(UnsafePointer(y.data), s, into: y.data, count: t * d)
        }
        if let outputBias {
            for r in 0..<t { add(UnsafePointer(y.data + r * d), outputBias.value, into: y.data + r * d, count: d) }
        }
        computeAuxLoss(context)
        if context.training && context.statistics != .gather { recordTelemetry(context) }
        if context.capacityOverStep { for i in 0..<e { earlier[i] += statistics[i] } }
        return UnsafePointer(y.data)
    }

    public func backward(_ dy: UnsafePointer<Float>, rows t: Int) -> UnsafePointer<Float>? {
        guard let x else { preconditionFailure("MoE.backward before forward") }
        dx.data.update(repeating: 0, count: t * d)
        if let outputBias { addColumnSums(dy, rows: t, cols: d, into: outputBias.grad) }
        if let shared, let ds = shared.backward(dy, rows: t) {
            add(UnsafePointer(dx.data), ds, into: dx.data, count: t * d)
        }
        combineBackward(dy)
        if let exchange { exchangeBackward(exchange) } else { expertsBackward() }
        // The grouped rows' input gradients go back to their tokens.
        for p in 0..<start[e] {
            let r = Int(rowToken[p])
            add(UnsafePointer(dx.data + r * d), UnsafePointer(local.dx.data + p * d), into: dx.data + r * d, count: d)
        }
        routerBackward(dy, x: x)
        return UnsafePointer(dx.data)
    }

    /// Calls `body(row, expert)` for each assignment of the last pass that capacity dropped:
    /// the token's row in the pass and the expert it chose.
    public func forEachDroppedAssignment(_ body: (_ row: Int, _ expert: Int) -> Void) {
        for a in 0..<(tokens * k) where choice[a] >= 0 && position[a] < 0 { body(a / k, Int(choice[a])) }
    }

    /// Copies each accepted assignment's token row to its place in the grouped rows.
    func dispatch() {
        for a in 0..<(tokens * k) {
            let p = Int(position[a])
            guard p >= 0 else { continue }
            let r = a / k
            rowToken[p] = Int32(r)
            (local.x.data + p * d).update(from: x! + r * d, count: d)
        }
    }

    /// y[t] = Σ_slots gate · ys[position]; a dropped assignment adds nothing.
    func combine() {
        y.data.update(repeating: 0, count: tokens * d)
        for a in 0..<(tokens * k) {
            let p = Int(position[a])
            guard p >= 0 else { continue }
            axpy(gate[a], local.y.data + p * d, y.data + (a / k) * d, d)
        }
    }

    /// The combine's backward: dys[p] = gate · dy[t], dgate = dy[t] · ys[p].
    func combineBackward(_ dy: UnsafePointer<Float>) {
        for a in 0..<(tokens * k) {
            let p = Int(position[a])
            guard p >= 0 else { dgate[a] = 0; continue }
            let dyr = dy + (a / k) * d
            dgate[a] = dot(dyr, local.y.data + p * d, d)
            scaleCopy(gate[a], dyr, local.dy.data + p * d, d)
        }
    }

    /// Adds this training pass's global counts to the telemetry interval (every rank reports
    /// the same interval).
    func recordTelemetry(_ context: ForwardContext) {
        let capacity = spec.capacityFactor > 0 ? spec.capacity(tokens: context.capacityOverStep ? globalTokens : passTokens) : Int.max
        for i in 0..<e {
            let all = Int(statistics[i]), before = context.capacityOverStep ? Int(earlier[i]) : 0
            telemetry.routed[i] += all
            telemetry.accepted[i] += Swift.min(before + all, capacity) - Swift.min(before, capacity)
        }
        telemetry.auxSum += auxLoss
        if context.microBatch == 0 { telemetry.steps += 1 }
        telemetry.passes += 1
        telemetry.moved += exchange?.moved ?? 0
    }
}
