import Kernels
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Sums over the ranks that share a global batch, for an MoE layer under data parallelism:
/// capacity is applied in global token order and the auxiliary losses are over the global
/// batch, so P ranks route exactly as one process would. Training passes only (evaluation
/// is dropless and needs no statistics, so ranks may evaluate different numbers of chunks).
public protocol RankReduction: AnyObject {
    /// In-place sum over the ranks.
    func sum(_ data: UnsafeMutablePointer<Double>, count: Int)
    /// In place: the sum over the ranks below this one (zeros on rank 0).
    func sumBelow(_ data: UnsafeMutablePointer<Double>, count: Int)
}

/// A mixture-of-experts feedforward layer: router → top-k → tokens grouped by expert → one
/// GEMM pair per expert over all its tokens → outputs mixed by the gates, plus an optional
/// shared expert. On several ranks (`attach`), the grouped tokens travel to the ranks that run
/// their experts and back (`ExpertExchange.swift`). Auxiliary losses (load balance, z-loss, σ-MoE entropy) are
/// computed in forward (`auxLoss`) and their gradients added in backward.
///
/// Shapes: x, y `[T, d]`; router logits and probabilities `[T, E]`; assignments `[T, k]`;
/// the grouped rows `[A, d]` with A ≤ T·k, expert e's rows contiguous at `start[e]`.
public final class MoE: Layer, RangeTask {
    public let name: String
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    public let spec: MoESpec
    public let router: Parameter             // [E, d]
    public let w1: [Parameter], b1: [Parameter?]   // [H1, d], [H1]; H1 = H or 2H (GLU)
    public let w2: [Parameter], b2: [Parameter?]   // [d, H], [d]
    public let shared: Sequential?
    /// Distinguishes MoE layers in the expert-dropout RNG stream.
    public let site: Int
    let seed: UInt64

    /// Holds the routing (choices, drops) of the last forward pass: for finite-difference
    /// checks, where a tiny perturbation must not change which experts a token uses.
    public var holdsRouting = false

    /// The auxiliary loss of the last forward pass (coefficients applied).
    public private(set) var auxLoss = 0.0
    /// Assignments routed to each expert in the last pass (before capacity).
    public private(set) var routed: [Int]
    /// Assignments each expert took (after capacity).
    public private(set) var accepted: [Int]
    /// Set by a multi-rank trainer; nil on one process.
    public var reduction: (any RankReduction)?
    /// [routed counts E | probability sums E | Σ lse²], summed over the ranks.
    var statistics: [Double]
    /// Routed counts of the ranks below this one, per expert.
    var below: [Double]
    /// ∂aux/∂p[t, e] of the terms built on the batch means, the same for every token.
    var dMean: [Float]
    /// [E] experts the token being routed may not use (expert dropout).
    var excluded: [Bool]
    /// Router statistics since the last `takeTelemetry()`.
    public private(set) var telemetry: MoETelemetry
    /// Consecutive telemetry intervals in which each expert received nothing.
    public private(set) var idleIntervals: [Int]

    let d: Int, e: Int, k: Int, h: Int, h1: Int
    let pointwise: Activation?
    let gated: GatedActivation?

    let logits: Tensor, probs: Tensor, scores: Tensor   // [T, E]
    let dprobs: Tensor, dlogits: Tensor                 // [T, E]
    var choice: [Int32]                                 // [T, k] expert, −1 for none
    var position: [Int32]                               // [T, k] grouped row, −1 if dropped
    let gate: Tensor, dgate: Tensor                     // [T, k]
    var rowToken: [Int32]                               // [T·k] token of each grouped row
    /// This rank's accepted assignments grouped by expert, and (expert parallelism) the rows
    /// other ranks sent to the experts run here; `work` is the set the experts run on.
    let local: ExpertRows
    var owner: ExpertRows?
    var work: ExpertRows
    var start: UnsafeMutablePointer<Int> { local.start }
    /// Set by `attach` under expert parallelism.
    var exchange: ExchangeBuffers?
    let maxRows: Int
    let y: Tensor, dx: Tensor                           // [T, d]
    var meanProb: [Double]                              // P_e
    var share: [Double]                                 // f_e
    var lse: [Float]                                    // [T] logsumexp of each token's logits
    var x: UnsafePointer<Float>?
    var tokens = 0, globalTokens = 1

    public init(_ name: String, width d: Int, spec: MoESpec, site: Int, seed: UInt64, maxRows: Int, store: ParameterStore) {
        precondition(spec.topK >= 1 && spec.topK <= spec.experts)
        self.name = name
        self.maxRows = maxRows
        inputWidth = d
        self.spec = spec
        self.site = site
        self.seed = seed
        self.d = d
        e = spec.experts
        k = spec.topK
        h = spec.hidden
        switch spec.activation {
        case .pointwise(let f): pointwise = f; gated = nil; h1 = h
        case .gated(let f): pointwise = nil; gated = GatedActivation(gate: f); h1 = 2 * h
        }
        router = store.register("\(name).router.weight", shape: [e, d], role: .weight,
                                initializer: spec.zeroRouterInit ? .zeros : .uniform(bound: 1 / Float(d).squareRoot()))
        var w1: [Parameter] = [], b1: [Parameter?] = [], w2: [Parameter] = [], b2: [Parameter?] = []
        for i in 0..<e {
            let p = "\(name).experts.\(i)"
            let in1 = 1 / Float(d).squareRoot(), in2 = 1 / Float(h).squareRoot()
            w1.append(store.register("\(p).w1", shape: [h1, d], role: .weight, initializer: .uniform(bound: in1)))
            b1.append(spec.bias ? store.register("\(p).b1", shape: [h1], role: .bias, initializer: .uniform(bound: in1)) : nil)
            w2.append(store.register("\(p).w2", shape: [d, h], role: .weight, initializer: .uniform(bound: in2)))
            b2.append(spec.bias ? store.register("\(p).b2", shape: [d], role: .bias, initializer: .uniform(bound: in2)) : nil)
        }
        self.w1 = w1
        self.b1 = b1
        self.w2 = w2
        self.b2 = b2
        if spec.sharedHidden > 0 {
            let sh = spec.sharedHidden
            var layers: [any Layer] = []
            switch spec.activation {
            case .pointwise(let f):
                layers.append(Linear("\(name).shared.fc1", inputs: d, outputs: sh, bias: spec.bias, activation: f, maxRows: maxRows, store: store))
            case .gated(let f):
                layers.append(Linear("\(name).shared.fc1", inputs: d, outputs: 2 * sh, bias: spec.bias, maxRows: maxRows, store: store))
                layers.append(GLULayer(gate: f, hidden: sh, maxRows: maxRows))
            }
            layers.append(Linear("\(name).shared.fc2", inputs: sh, outputs: d, bias: spec.bias, maxRows: maxRows, store: store))
            shared = Sequential(layers)
        } else {
            shared = nil
        }
        let a = maxRows * k
        logits = Tensor(shape: [maxRows, e])
        probs = Tensor(shape: [maxRows, e])
        scores = Tensor(shape: [maxRows, e])
        dprobs = Tensor(shape: [maxRows, e])
        dlogits = Tensor(shape: [maxRows, e])
        choice = [Int32](repeating: -1, count: a)
        position = [Int32](repeating: -1, count: a)
        gate = Tensor(shape: [a])
        dgate = Tensor(shape: [a])
        rowToken = [Int32](repeating: 0, count: a)
        local = ExpertRows(rows: a, width: d, hidden: h, firstWidth: h1, experts: e)
        work = local
        y = Tensor(shape: [maxRows, d])
        dx = Tensor(shape: [maxRows, d])
        meanProb = [Double](repeating: 0, count: e)
        share = [Double](repeating: 0, count: e)
        lse = [Float](repeating: 0, count: maxRows)
        routed = [Int](repeating: 0, count: e)
        accepted = [Int](repeating: 0, count: e)
        telemetry = MoETelemetry(experts: e)
        statistics = [Double](repeating: 0, count: 2 * e + 1)
        below = [Double](repeating: 0, count: e)
        dMean = [Float](repeating: 0, count: e)
        excluded = [Bool](repeating: false, count: e)
        expertOrder = [Int](repeating: 0, count: e)
        idleIntervals = [Int](repeating: 0, count: e)
    }

    /// Set by the trainer when the gradients of the experts this rank runs are final in
    /// backward (`UpdateInBackward`): each expert's parameters are then updated as soon as its
    /// backward is done, from a per-thread gradient buffer.
    public var updateInBackward: (any UpdateInBackward)?
    /// One per worker thread, made by the first backward that needs it: the gradient of one
    /// expert parameter at a time (the largest is W1, H1·d floats: 512 KiB in W2, so it stays
    /// in the core's L2 between the GEMM that writes it and the update that reads it).
    var gradientBuffers: [Tensor] = []

    /// Runs this layer's experts across ranks from now on: tokens go to the rank that runs
    /// their expert and come back (`MoEExchange.swift`). Sizes the buffers for the worst case,
    /// every token of every rank on experts run here.
    public func attach(_ exchange: any ExpertExchange) {
        let rows = exchange.ranks * maxRows * k
        owner = ExpertRows(rows: rows, width: d, hidden: h, firstWidth: h1, experts: e)
        let spans = (0..<e).map { i in
            let parts = [w1[i], b1[i], w2[i], b2[i]].compactMap { $0 }
            let count = parts.reduce(0) { $0 + $1.count }
            precondition(parts.last!.offset + parts.last!.count - w1[i].offset == count, "expert \(i)'s parameters are not one span")
            return ExpertSpan(values: w1[i].value, grads: w1[i].grad, count: count)
        }
        self.exchange = ExchangeBuffers(exchange, experts: e, rows: rows, width: d, spans: spans)
    }

    /// The statistics of the interval that ends now; a new interval starts.
    public func takeTelemetry() -> MoETelemetry {
        let t = telemetry
        for i in 0..<e { idleIntervals[i] = t.routed[i] == 0 ? idleIntervals[i] + 1 : 0 }
        for i in 0..<e { telemetry.routed[i] = 0; telemetry.accepted[i] = 0 }
        telemetry.auxSum = 0
        telemetry.passes = 0
        telemetry.moved = 0
        return t
    }

    // MARK: - Forward

    public func forward(_ x: UnsafePointer<Float>, rows t: Int, context: ForwardContext) -> UnsafePointer<Float> {
        self.x = x
        tokens = t
        globalTokens = max(context.globalRows > 0 ? context.globalRows : t, 1)
        // logits[T, E] = x · Wrᵀ
        gemm(.none, .transpose, m: t, n: e, k: d, a: x, lda: d, b: router.value, ldb: d, beta: 0, c: logits.data, ldc: e)
        softmaxRows(logits.data, probs.data, rows: t, cols: e)
        let selection: UnsafePointer<Float>
        switch spec.router {
        case .softmax: selection = UnsafePointer(probs.data)
        case .sigmoid:
            scores.data.update(from: logits.data, count: t * e)
            Activation.sigmoid.forward(z: scores.data, bias: nil, y: scores.data, rows: t, cols: e)
            selection = UnsafePointer(scores.data)
        }
        if !holdsRouting { route(selection, context: context) }
        computeGates()
        dispatch()
        if let exchange { exchangeForward(exchange) } else { runExperts() }
        combine()
        if let shared {
            let s = shared.forward(x, rows: t, context: context)
            add(UnsafePointer(y.data), s, into: y.data, count: t * d)
        }
        computeAuxLoss(training: context.training)
        if context.training {
            // Global counts: every rank reports the same interval.
            let capacity = spec.capacityFactor > 0 ? spec.capacity(tokens: globalTokens) : Int.max
            for i in 0..<e {
                let all = Int(statistics[i])
                telemetry.routed[i] += all
                telemetry.accepted[i] += Swift.min(all, capacity)
            }
            telemetry.auxSum += auxLoss
            telemetry.passes += 1
            telemetry.moved += exchange?.moved ?? 0
        }
        return UnsafePointer(y.data)
    }

    /// Chooses each token's k experts (highest selection score first, lower index on ties,
    /// skipping experts dropped by expert dropout), then applies the capacity in global token
    /// order: this rank's assignments to expert e come after those of the ranks below it.
    func route(_ selection: UnsafePointer<Float>, context: ForwardContext) {
        let t = tokens
        let dropping = context.training && spec.expertDropout > 0
        let rng = Philox(seed: seed)
        let stream = RNGStream.expertDropout(site: site, step: context.step)
        for i in 0..<e { routed[i] = 0; accepted[i] = 0 }
        for r in 0..<t {
            let row = selection + r * e
            let global = UInt64(context.rowOffset + r)
            // Which experts this token may not use (drawn once per token and expert).
            for j in 0..<e {
                excluded[j] = dropping && rng.uniform(stream: stream, index: global * UInt64(e) + UInt64(j)) < spec.expertDropout
            }
            for slot in 0..<k {
                var best = -1
                var bestScore = -Float.infinity
                for j in 0..<e {
                    if excluded[j] { continue }
                    var taken = false
                    for s in 0..<slot where choice[r * k + s] == Int32(j) { taken = true }
                    if taken { continue }
                    if row[j] > bestScore || best < 0 { best = j; bestScore = row[j] }
                }
                choice[r * k + slot] = Int32(best)
                if best >= 0 { routed[best] += 1 }
            }
        }
        // Capacity in global order (training passes of a data-parallel run ask the ranks below).
        let limited = spec.capacityFactor > 0 && context.training
        let capacity = limited ? spec.capacity(tokens: globalTokens) : Int.max
        if limited, let reduction {
            for i in 0..<e { below[i] = Double(routed[i]) }
            below.withUnsafeMutableBufferPointer { reduction.sumBelow($0.baseAddress!, count: e) }
        } else {
            for i in 0..<e { below[i] = 0 }
        }
        for a in 0..<(t * k) {
            let c = Int(choice[a])
            guard c >= 0 else { position[a] = -1; continue }
            // Position within the expert for now; made absolute once counts are known.
            if Int(below[c]) + accepted[c] < capacity {
                position[a] = Int32(accepted[c])
                accepted[c] += 1
            } else {
                position[a] = -1   // and so is every later one: the count only grows
            }
        }
        start[0] = 0
        for i in 0..<e { start[i + 1] = start[i] + accepted[i] }
        for a in 0..<(t * k) where position[a] >= 0 {
            position[a] += Int32(start[Int(choice[a])])
        }
    }

    /// Gates from the current probabilities or scores for the held or new choices.
    func computeGates() {
        for r in 0..<tokens {
            var total: Float = 0
            for slot in 0..<k {
                let c = Int(choice[r * k + slot])
                let g: Float
                switch spec.router {
                case .softmax: g = c >= 0 ? probs[r * e + c] : 0
                case .sigmoid: g = c >= 0 ? scores[r * e + c] : 0
                }
                gate[r * k + slot] = g
                total += g
            }
            if case .softmax(true) = spec.router, total > 0 {
                for slot in 0..<k { gate[r * k + slot] /= total }
            }
        }
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

    /// Experts run side by side on the worker pool, one single-threaded GEMM pair each: at
    /// T·k/E rows (32 in W2) OpenBLAS's own threading costs more than it gains. Each expert
    /// touches only its own rows and gradients, so which thread runs it changes no result.
    var inBackward = false
    /// The experts with rows, most rows first; each thread takes the next one from `next`
    /// until none is left. An expert costs its rows plus a fixed part about as large as 35
    /// rows in W2 (OpenBLAS packs its weights on every call); a static split by rows left one
    /// thread up to 40% longer than the other there, and a dynamic one also absorbs a thread
    /// that the machine preempts.
    var expertOrder: [Int]
    var expertCount = 0
    let next = Atomic<Int>(0)

    func runExperts() {
        inBackward = false
        forEachExpertInParallel()
    }

    /// The experts with rows, most rows first, and in backward also those this rank updates
    /// that got none (last: their zero-gradient update fills the gaps at the end).
    func forEachExpertInParallel() {
        let start = work.start
        expertCount = 0
        for i in 0..<e where start[i + 1] > start[i] || (inBackward && updater(of: i) != nil) {
            // Insertion by rows, descending; ties keep index order.
            var j = expertCount
            let rows = start[i + 1] - start[i]
            while j > 0 && start[expertOrder[j - 1] + 1] - start[expertOrder[j - 1]] < rows {
                expertOrder[j] = expertOrder[j - 1]
                j -= 1
            }
            expertOrder[j] = i
            expertCount += 1
        }
        next.store(0, ordering: .relaxed)
        let parts = min(WorkerPool.shared.threads, expertCount)
        if inBackward && updateInBackward != nil {
            while gradientBuffers.count < parts { gradientBuffers.append(Tensor(shape: [max(h1 * d, d * h)])) }
        }
        BLAS.singleThreaded { WorkerPool.shared.run(self, count: parts, align: 1, minimum: 2) }
    }

    /// One thread's share (`range` is one part number): the next expert in `expertOrder`
    /// until none is left.
    public func run(_ range: Range<Int>) {
        while true {
            let n = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard n < expertCount else { return }
            inBackward ? expertBackward(expertOrder[n], part: range.lowerBound) : expertForward(expertOrder[n])
        }
    }

    /// Expert i: h = f(xs·W1ᵀ + b1), ys = h·W2ᵀ + b2, over its contiguous rows.
    func expertForward(_ i: Int) {
        let w = work, o = w.start[i], n = w.start[i + 1] - o
        guard n > 0 else { return }
        let xr = w.x.data + o * d, zr = w.z1.data + o * h1, hr = w.h.data + o * h
        let yr = w.y.data + o * d
        gemmExpert(m: n, n: h1, k: d, a: xr, lda: d, b: w1[i].value, ldb: d, c: zr, ldc: h1)
        if let pointwise {
            pointwise.forward(z: zr, bias: b1[i]?.value, y: hr, rows: n, cols: h)
        } else {
            if let b = b1[i] { Activation.identity.forward(z: zr, bias: b.value, y: zr, rows: n, cols: h1) }
            gated!.forward(ab: zr, h: hr, rows: n, hidden: h)
        }
        gemmExpert(m: n, n: d, k: h, a: hr, lda: h, b: w2[i].value, ldb: h, c: yr, ldc: d)
        if let b = b2[i] { Activation.identity.forward(z: yr, bias: b.value, y: yr, rows: n, cols: d) }
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

    /// f_e, P_e and Σ lse² over the global batch (summed over the ranks in a data-parallel
    /// training pass), and the weighted sum of the auxiliary losses.
    func computeAuxLoss(training: Bool) {
        let t = tokens
        for i in 0..<e {
            statistics[i] = Double(routed[i])
            var s = 0.0
            for r in 0..<t { s += Double(probs[r * e + i]) }
            statistics[e + i] = s
        }
        var zSum = 0.0
        for r in 0..<t {
            let row = logits.data + r * e
            var m = -Float.infinity
            for j in 0..<e { m = Swift.max(m, row[j]) }
            var s: Float = 0
            for j in 0..<e { s += expf(row[j] - m) }
            lse[r] = m + logf(s)
            zSum += Double(lse[r] * lse[r])
        }
        statistics[2 * e] = zSum
        if training, let reduction {
            statistics.withUnsafeMutableBufferPointer { reduction.sum($0.baseAddress!, count: 2 * e + 1) }
        }
        let n = Double(max(training ? globalTokens : t, 1))
        var assignments = 0.0
        for i in 0..<e { assignments += statistics[i] }
        var balance = 0.0, entropy = 0.0
        for i in 0..<e {
            share[i] = statistics[i] / Swift.max(assignments, 1)
            meanProb[i] = statistics[e + i] / n
            balance += share[i] * meanProb[i]
            if meanProb[i] > 0 { entropy += meanProb[i] * log(meanProb[i]) }
        }
        auxLoss = Double(spec.balanceCoefficient) * Double(e) * balance
            + Double(spec.zLossCoefficient) * statistics[2 * e] / n
            + Double(spec.entropyCoefficient) * entropy
    }

    // MARK: - Backward

    public func backward(_ dy: UnsafePointer<Float>, rows t: Int) -> UnsafePointer<Float>? {
        guard let x else { preconditionFailure("MoE.backward before forward") }
        dx.data.update(repeating: 0, count: t * d)
        if let shared, let ds = shared.backward(dy, rows: t) {
            add(UnsafePointer(dx.data), ds, into: dx.data, count: t * d)
        }
        // Combine: dys[p] = gate · dy[t], dgate = dy[t] · ys[p].
        for a in 0..<(t * k) {
            let p = Int(position[a])
            guard p >= 0 else { dgate[a] = 0; continue }
            let dyr = dy + (a / k) * d
            dgate[a] = dot(dyr, local.y.data + p * d, d)
            scaleCopy(gate[a], dyr, local.dy.data + p * d, d)
        }
        if let exchange { exchangeBackward(exchange) } else { expertsBackward() }
        // The grouped rows' input gradients go back to their tokens.
        for p in 0..<start[e] {
            let r = Int(rowToken[p])
            add(UnsafePointer(dx.data + r * d), UnsafePointer(local.dx.data + p * d), into: dx.data + r * d, count: d)
        }
        routerBackward(dy)
        // Router: dWr[E, d] += dlogitsᵀ · x, dx += dlogits · Wr.
        gemm(.transpose, .none, m: e, n: d, k: t, a: dlogits.data, lda: e, b: x, ldb: d, beta: 1, c: router.grad, ldc: d)
        gemm(.none, .none, m: t, n: d, k: e, a: dlogits.data, lda: e, b: router.value, ldb: d, beta: 1, c: dx.data, ldc: d)
        return UnsafePointer(dx.data)
    }

    func expertsBackward() {
        inBackward = true
        forEachExpertInParallel()
    }

    /// Who updates expert i inside backward: nil unless this rank owns it and ran it on every
    /// rank's tokens in this pass.
    func updater(of i: Int) -> (any UpdateInBackward)? {
        (exchange?.updatesHere(i) ?? true) ? updateInBackward : nil
    }

    /// Expert i's backward over its contiguous rows. Its weight and bias gradients go to the
    /// store's gradients, or, when this rank updates the expert in backward, to thread `part`'s
    /// buffer one parameter at a time, each updated as soon as backward no longer reads it.
    func expertBackward(_ i: Int, part: Int) {
        let w = work, o = w.start[i], n = w.start[i + 1] - o
        let updater = updater(of: i)
        let buffer = updater == nil ? nil : gradientBuffers[part].data
        guard n > 0 else {
            // No rows: the update from a zero gradient, as the pass after backward would do.
            guard let updater, let buffer else { return }
            func update(_ p: Parameter?) {
                guard let p else { return }
                buffer.update(repeating: 0, count: p.count)
                updater.update(p, from: buffer)
            }
            update(w1[i]); update(b1[i]); update(w2[i]); update(b2[i])
            return
        }
        let xr = w.x.data + o * d, zr = w.z1.data + o * h1, hr = w.h.data + o * h
        let dyr = w.dy.data + o * d, dhr = w.dh.data + o * h, dzr = w.dz1.data + o * h1, dxr = w.dx.data + o * d
        // Where a gradient goes, and the beta of a GEMM that writes it: the buffer is
        // overwritten (biases are sums, so theirs starts at zero), the store's added to.
        func weightGradient(_ p: Parameter) -> (UnsafeMutablePointer<Float>, beta: Float) { (buffer ?? p.grad, buffer == nil ? 1 : 0) }
        func biasGradient(_ p: Parameter) -> UnsafeMutablePointer<Float> {
            guard let buffer else { return p.grad }
            buffer.update(repeating: 0, count: p.count)
            return buffer
        }
        if let b = b2[i] {
            let g = biasGradient(b)
            addColumnSums(dyr, rows: n, cols: d, into: g)
            updater?.update(b, from: g)
        }
        // dW2[d, H] += dysᵀ · h;  dh = dys · W2
        let (g2, beta2) = weightGradient(w2[i])
        gemm(.transpose, .none, m: d, n: h, k: n, a: dyr, lda: d, b: hr, ldb: h, beta: beta2, c: g2, ldc: h)
        gemm(.none, .none, m: n, n: h, k: d, a: dyr, lda: d, b: w2[i].value, ldb: h, beta: 0, c: dhr, ldc: h)
        updater?.update(w2[i], from: g2)
        let gb1 = b1[i].map(biasGradient)
        if let pointwise {
            pointwise.backward(z: zr, dy: dhr, dz: dzr, dbias: gb1, rows: n, cols: h)
        } else {
            gated!.backward(ab: zr, dh: dhr, dab: dzr, rows: n, hidden: h)
            if let gb1 { addColumnSums(dzr, rows: n, cols: h1, into: gb1) }
        }
        if let b = b1[i], let gb1 { updater?.update(b, from: gb1) }
        // dW1[H1, d] += dz1ᵀ · xs;  dxs = dz1 · W1
        let (g1, beta1) = weightGradient(w1[i])
        gemm(.transpose, .none, m: h1, n: d, k: n, a: dzr, lda: h1, b: xr, ldb: d, beta: beta1, c: g1, ldc: d)
        gemm(.none, .none, m: n, n: d, k: h1, a: dzr, lda: h1, b: w1[i].value, ldb: d, beta: 0, c: dxr, ldc: d)
        updater?.update(w1[i], from: g1)
    }

    /// dlogits from the gates and the auxiliary losses.
    func routerBackward(_ dy: UnsafePointer<Float>) {
        let t = tokens
        let inv = 1 / Float(globalTokens)
        // ∂aux/∂p[t, i] for the terms built on the batch-mean softmax P: one value per expert.
        for i in 0..<e {
            var g = spec.balanceCoefficient * Float(e) * Float(share[i]) * inv
            if spec.entropyCoefficient != 0 && meanProb[i] > 0 {
                g += spec.entropyCoefficient * (Float(log(meanProb[i])) + 1) * inv
            }
            dMean[i] = g
        }
        for r in 0..<t {
            let pr = probs.data + r * e, dp = dprobs.data + r * e, dz = dlogits.data + r * e
            for i in 0..<e {
                dp[i] = dMean[i]
                dz[i] = 0
            }
            // Gates.
            switch spec.router {
            case .softmax(let renormalize):
                var total: Float = 0, weighted: Float = 0
                for slot in 0..<k where choice[r * k + slot] >= 0 {
                    total += pr[Int(choice[r * k + slot])]
                    weighted += dgate[r * k + slot] * gate[r * k + slot]
                }
                for slot in 0..<k where choice[r * k + slot] >= 0 {
                    let c = Int(choice[r * k + slot])
                    dp[c] += renormalize ? (dgate[r * k + slot] - weighted) / total : dgate[r * k + slot]
                }
            case .sigmoid:
                let sr = scores.data + r * e
                for slot in 0..<k where choice[r * k + slot] >= 0 {
                    let c = Int(choice[r * k + slot])
                    dz[c] += dgate[r * k + slot] * sr[c] * (1 - sr[c])
                }
            }
            // Softmax backward: dz += p ⊙ (dp − Σ dp·p); z-loss: dz += c·2·lse/T · p.
            var dotp: Float = 0
            for i in 0..<e { dotp += dp[i] * pr[i] }
            let zTerm = spec.zLossCoefficient * 2 * lse[r] * inv
            for i in 0..<e { dz[i] += pr[i] * (dp[i] - dotp) + zTerm * pr[i] }
        }
    }
}

/// y += a · x
@inline(__always) func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { store8(load8(y + i) + a * load8(x + i), y + i); i += 8 }
    while i < n { y[i] += a * x[i]; i += 1 }
}

/// y = a · x
@inline(__always) func scaleCopy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { store8(a * load8(x + i), y + i); i += 8 }
    while i < n { y[i] = a * x[i]; i += 1 }
}

/// Σ x·y
@inline(__always) func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Float8()
    var i = 0
    while i + 8 <= n { acc += load8(x + i) * load8(y + i); i += 8 }
    var s = acc.sum()
    while i < n { s += x[i] * y[i]; i += 1 }
    return s
}
