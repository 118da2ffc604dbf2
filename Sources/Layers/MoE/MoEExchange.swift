import Kernels

extension MoE {
    /// Every rank's rows per expert go to every rank (so each can work out where every expert
    /// runs in this pass, `ExpertBalance`); moved experts' parameters go to their runners;
    /// this rank's grouped rows go to the ranks that run their experts, the experts run here
    /// on everything sent to them, and the outputs return.
    func exchangeForward(_ b: ExchangeBuffers) {
        for r in 0..<b.ranks {
            for i in 0..<e { b.announce[r * e + i] = Int32(start[i + 1] - start[i]) }
        }
        b.exchange.allToAll(b.announce, b.counts, perRank: e)
        b.route()
        b.setCounts(width: d)
        if b.movesExperts { b.sendParameters() }
        let o = owner!
        roundTrip(b, send: local.x, arrive: o.x, settingStart: true, leave: o.y, receive: local.y) { runExperts() }
    }

    /// The output gradients travel the same way; the experts' input gradients come back, and
    /// the moved experts' weight gradients go home to their owners.
    func exchangeBackward(_ b: ExchangeBuffers) {
        let o = owner!
        roundTrip(b, send: local.dy, arrive: o.dy, settingStart: false, leave: o.dx, receive: local.dx) { expertsBackward() }
        if b.movesExperts { b.returnGradients() }
    }

    /// `send` (this rank's rows) → the runners' `arrive`, grouped by expert; `run` on the
    /// runners' rows; their `leave` → this rank's `receive`, with the counts of the forward pass.
    func roundTrip(_ b: ExchangeBuffers, send: Tensor, arrive: Tensor, settingStart: Bool, leave: Tensor, receive: Tensor,
                   run: () -> Void) {
        let o = owner!
        b.exchange.allToAll(send.data, b.sendCounts, b.sendOffsets, b.staging.data, b.receiveCounts, b.receiveOffsets)
        b.regroup(arrive.data, start: o.start, width: d, toExperts: true, settingStart: settingStart)
        work = o
        run()
        work = local
        b.regroup(leave.data, start: o.start, width: d, toExperts: false, settingStart: false)
        b.exchange.allToAll(b.staging.data, b.receiveCounts, b.receiveOffsets, receive.data, b.sendCounts, b.sendOffsets)
    }
}
