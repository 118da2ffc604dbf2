import Kernels

/// Where one expert's parameters lie in the store: weights and biases of an expert are
/// registered together, so they are one contiguous span of values and one of gradients.
struct ExpertSpan {
    let values: UnsafeMutablePointer<Float>
    let grads: UnsafeMutablePointer<Float>
}

/// The buffers of one MoE layer's exchange, sized when the exchange is attached.
final class ExchangeBuffers {
    let exchange: any ExpertExchange
    let ranks: Int
    let rank: Int
    let experts: Int
    /// [P·E] the rank that runs expert e on rank q's tokens when none is moved.
    let staticRunner: [Int]
    /// [P·E] this rank's rows per expert, once for every rank / every rank's rows per expert.
    let announce: UnsafeMutablePointer<Int32>
    let counts: UnsafeMutablePointer<Int32>
    /// [P·E]: rows this rank sends to rank r for expert e / rows rank q sends here for e.
    let sendRows: UnsafeMutablePointer<Int32>
    let receiveRows: UnsafeMutablePointer<Int32>
    /// [P]: floats and float offsets per rank, for the all-to-alls of rows.
    let sendCounts: UnsafeMutablePointer<Int32>, sendOffsets: UnsafeMutablePointer<Int32>
    let receiveCounts: UnsafeMutablePointer<Int32>, receiveOffsets: UnsafeMutablePointer<Int32>
    /// Received rows in source-rank order, before they are grouped by expert (and outgoing
    /// rows after).
    let staging: Tensor
    /// [E] rows placed so far per expert while regrouping.
    let filled: UnsafeMutablePointer<Int>

    /// Moving experts (`exchange.movesExperts`): the parameters of each expert held here (nil
    /// for those another rank owns), the runner of each expert in this pass (`ExpertBalance`),
    /// and the plan's scratch.
    let spans: [ExpertSpan?]
    let runner: UnsafeMutablePointer<Int>
    var balance: ExpertBalance
    /// Experts moved in the last pass.
    private(set) var moved = 0
    /// Float counts and offsets per rank of the experts this rank owns that run elsewhere in
    /// this pass ("held"): their parameters on the way out, their gradients on the way back.
    let heldCounts: UnsafeMutablePointer<Int32>, heldOffsets: UnsafeMutablePointer<Int32>
    /// The experts this rank runs for their owners in this pass: their parameters, as they
    /// arrive, and their gradients, which backward writes (one backward per pass) and which go
    /// home after it; room for `maxVisiting` experts (the plan moves no more here). A rank
    /// lends at most as many experts as it owns, no more than that room, so the same two
    /// buffers carry the held experts too: their parameters leave from `visitingGrads` (idle
    /// in forward), their gradients arrive in `visiting` (idle once backward is done).
    let visiting: Tensor, visitingGrads: Tensor
    let visitingCounts: UnsafeMutablePointer<Int32>, visitingOffsets: UnsafeMutablePointer<Int32>
    /// [E] where a visiting expert's span starts in `visiting` in this pass; −1 for the others.
    let visitingAt: UnsafeMutablePointer<Int>
    /// The most experts a rank runs for their owners in one pass: as many as the most a rank
    /// owns, so a rank never holds more than twice its own experts.
    let maxVisiting: Int
    /// Floats of one expert's parameters.
    let expertFloats: Int

    init(_ exchange: any ExpertExchange, experts e: Int, rows: Int, width d: Int, spans: [ExpertSpan?], expertFloats: Int,
         in build: BuildContext) {
        self.exchange = exchange
        ranks = exchange.ranks
        rank = exchange.rank
        experts = e
        let p = ranks
        // The tables per rank and expert are indices, not floats: not counted, and none in a
        // counting build (whose ranks and experts may be more than any machine holds).
        let cells = build.counting ? 0 : p * e
        staticRunner = (0..<cells).map { exchange.runner(of: $0 % e, forTokensOf: $0 / e) }
        announce = .allocate(capacity: cells)
        counts = .allocate(capacity: cells)
        sendRows = .allocate(capacity: cells)
        receiveRows = .allocate(capacity: cells)
        sendCounts = .allocate(capacity: p)
        sendOffsets = .allocate(capacity: p)
        receiveCounts = .allocate(capacity: p)
        receiveOffsets = .allocate(capacity: p)
        staging = build.tensor([rows, d])
        filled = .allocate(capacity: e)
        let moving = exchange.movesExperts
        self.spans = moving ? spans : []
        self.expertFloats = expertFloats
        runner = .allocate(capacity: e)
        maxVisiting = moving ? Self.visitingSlots(experts: e, ranks: p) : 0
        balance = build.counting ? ExpertBalance(ranks: 0, experts: 0) : ExpertBalance(ranks: p, experts: e, maxVisiting: maxVisiting)
        let runners = (0..<e).map { exchange.runner(of: $0, forTokensOf: exchange.rank) }
        for i in 0..<e { runner[i] = runners[i] }
        // Summed in Double: a counted model's experts may hold more than an Int counts.
        let visitingFloats = Double(maxVisiting) * Double(expertFloats)
        visiting = build.tensor(elements: visitingFloats)
        visitingGrads = build.tensor(elements: visitingFloats)
        visitingAt = .allocate(capacity: e)
        visitingAt.initialize(repeating: -1, count: e)
        heldCounts = .allocate(capacity: p)
        heldOffsets = .allocate(capacity: p)
        visitingCounts = .allocate(capacity: p)
        visitingOffsets = .allocate(capacity: p)
    }

    deinit {
        for b in [announce, counts, sendRows, receiveRows, sendCounts, sendOffsets, receiveCounts, receiveOffsets,
                  heldCounts, heldOffsets, visitingCounts, visitingOffsets] { b.deallocate() }
        for b in [filled, runner, visitingAt] { b.deallocate() }
    }

    var movesExperts: Bool { !spans.isEmpty }

    /// The experts a rank may run for their owners in one pass: as many as the most a rank owns.
    static func visitingSlots(experts e: Int, ranks p: Int) -> Int { (e + p - 1) / p }

    /// Visiting expert i's slot in this pass (its place in `visiting`, in experts).
    func slot(of i: Int) -> Int {
        precondition(visitingAt[i] >= 0, "expert \(i) is not visiting here")
        return visitingAt[i] / expertFloats
    }

    /// The owner of expert i (one per expert when experts move).
    func owner(_ i: Int) -> Int { staticRunner[i] }

    /// Whether expert i's gradient is whole on this rank when its backward ends: it ran here,
    /// on its owner, for every rank's tokens in this pass. With one runner per expert (E ≥ P;
    /// replicated experts are summed by the gradient sync and never updated in backward).
    func updatesHere(_ i: Int) -> Bool {
        movesExperts ? runner[i] == rank && owner(i) == rank : staticRunner[i] == rank
    }

    /// From `counts` (every rank's rows per expert): where each expert runs in this pass, and
    /// the rows this rank sends to and receives from every rank. The runners are contiguous
    /// blocks in rank order, so the rows for one rank are one run of this rank's rows.
    func route() {
        let e = experts
        if movesExperts {
            moved = balance.plan(rows: counts, owner: owner, runner: runner)
        }
        for q in 0..<ranks {
            for i in 0..<e {
                receiveRows[q * e + i] = runner(of: i, forTokensOf: q) == rank ? counts[q * e + i] : 0
                sendRows[q * e + i] = runner(of: i, forTokensOf: rank) == q ? counts[rank * e + i] : 0
            }
        }
    }

    /// The rank that runs expert i on rank q's tokens in this pass.
    private func runner(of i: Int, forTokensOf q: Int) -> Int {
        movesExperts ? runner[i] : staticRunner[q * experts + i]
    }

    /// Float counts and offsets from the row counts (each rank's segment holds its experts in
    /// ascending order, so rows to or from a rank are contiguous).
    func setCounts(width d: Int) {
        var sent: Int32 = 0, received: Int32 = 0
        for r in 0..<ranks {
            var s: Int32 = 0, q: Int32 = 0
            for i in 0..<experts { s += sendRows[r * experts + i]; q += receiveRows[r * experts + i] }
            sendOffsets[r] = sent * Int32(d)
            sendCounts[r] = s * Int32(d)
            receiveOffsets[r] = received * Int32(d)
            receiveCounts[r] = q * Int32(d)
            sent += s
            received += q
        }
    }

    /// Copies rows between the source-rank order of `staging` and the expert order of
    /// `rows` (`toExperts`: staging → rows, else rows → staging); expert e's rows from rank q
    /// follow those from ranks below q. Sets `start` when regrouping forward.
    func regroup(_ rows: UnsafeMutablePointer<Float>, start: UnsafeMutablePointer<Int>, width d: Int,
                 toExperts: Bool, settingStart: Bool) {
        let e = experts
        if settingStart {
            start[0] = 0
            for i in 0..<e {
                var n = 0
                for q in 0..<ranks { n += Int(receiveRows[q * e + i]) }
                start[i + 1] = start[i] + n
            }
        }
        for i in 0..<e { filled[i] = 0 }
        var source = 0
        for q in 0..<ranks {
            for i in 0..<e {
                let n = Int(receiveRows[q * e + i])
                guard n > 0 else { continue }
                let at = rows + (start[i] + filled[i]) * d, staged = staging.data + source * d
                if toExperts { at.update(from: staged, count: n * d) } else { staged.update(from: at, count: n * d) }
                filled[i] += n
                source += n
            }
        }
    }

    /// Forward: the owners of moved experts send their parameters to the runners, which keep
    /// them in their visiting slots for the pass. Every rank makes this call whether or not
    /// anything moves (then every segment is empty).
    func sendParameters() {
        layOut(.held, heldCounts, heldOffsets)
        layOut(.visiting, visitingCounts, visitingOffsets)
        precondition(Int(visitingOffsets[ranks - 1]) + Int(visitingCounts[ranks - 1]) <= visiting.count
                     && Int(heldOffsets[ranks - 1]) + Int(heldCounts[ranks - 1]) <= visiting.count,
                     "more experts move than the slots hold")
        let out = visitingGrads.data
        forEachMoved(.held, heldOffsets) { i, at in (out + at).update(from: spans[i]!.values, count: expertFloats) }
        exchange.allToAll(out, heldCounts, heldOffsets, visiting.data, visitingCounts, visitingOffsets)
        for i in 0..<experts { visitingAt[i] = -1 }
        forEachMoved(.visiting, visitingOffsets) { i, at in visitingAt[i] = at }
    }

    /// Where visiting expert i's parameters and gradients are in this pass.
    func visiting(_ i: Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        let at = visitingAt[i]
        precondition(at >= 0, "expert \(i) is neither held nor visiting here")
        return (visiting.data + at, visitingGrads.data + at)
    }

    /// After backward: the runners return the moved experts' weight gradients to their owners,
    /// and each owner adds them to its gradient, which held nothing for that expert in this
    /// pass: the same bits the owner would have made.
    func returnGradients() {
        let back = visiting.data
        exchange.allToAll(visitingGrads.data, visitingCounts, visitingOffsets, back, heldCounts, heldOffsets)
        forEachMoved(.held, heldOffsets) { i, at in
            let grads = spans[i]!.grads
            add(UnsafePointer(grads), UnsafePointer(back + at), into: grads, count: expertFloats)
        }
    }

    /// Moved experts this rank owns (their peer is the runner) or runs for another (the peer
    /// is the owner).
    enum Side { case held, visiting }

    /// The rank at the other end of moved expert i, or nil when i is not moved on `side`.
    private func peer(_ i: Int, _ side: Side) -> Int? {
        let o = owner(i), r = runner[i]
        guard o != r else { return nil }
        switch side {
        case .held: return o == rank ? r : nil
        case .visiting: return r == rank ? o : nil
        }
    }

    /// Float counts and offsets per peer rank of the moved experts on `side`, ascending by expert.
    private func layOut(_ side: Side, _ counts: UnsafeMutablePointer<Int32>, _ offsets: UnsafeMutablePointer<Int32>) {
        var at = 0
        for q in 0..<ranks {
            offsets[q] = Int32(at)
            for i in 0..<experts where peer(i, side) == q { at += expertFloats }
            counts[q] = Int32(at) - offsets[q]
        }
    }

    /// Each moved expert on `side`, with where it lies in its buffer, in the order `layOut` gives.
    private func forEachMoved(_ side: Side, _ offsets: UnsafeMutablePointer<Int32>, _ body: (Int, Int) -> Void) {
        for q in 0..<ranks {
            var at = Int(offsets[q])
            for i in 0..<experts where peer(i, side) == q {
                body(i, at)
                at += expertFloats
            }
        }
    }
}
