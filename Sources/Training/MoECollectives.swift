import Cluster
import Layers

/// The MoE layers' collectives: sums for capacity order and auxiliary statistics, and the
/// expert exchange. A layer's forward and backward cannot throw, so an MPI error is kept and
/// thrown by the trainer right after (every rank then aborts); later calls do nothing.
final class MoECollectives: RankReduction, ExpertExchange {
    let comm: Communicator
    var placement = ExpertPlacement(experts: 1, ranks: 1)
    var error: (any Error)?

    init(_ comm: Communicator) { self.comm = comm }

    /// The collectives of `model` on `comm`: on several ranks every layer with statistics over
    /// the ranks sums them here, and the MoE layers exchange tokens with the experts' runners.
    /// Returns them and the expert placement (nil without MoE layers).
    static func attach(to model: Model, comm: Communicator, balanceExperts: Bool) -> (MoECollectives, ExpertPlacement?) {
        let sums = MoECollectives(comm)
        let expertLayers = model.layers((any ExpertLayer).self)
        let placement = expertLayers.first.map { ExpertPlacement(experts: $0.experts, ranks: comm.size) }
        guard comm.size > 1 else { return (sums, placement) }
        for layer in model.layers((any RankStatistics).self) { layer.reduction = sums }
        if let placement {
            sums.placement = placement
            sums.balances = balanceExperts
            for layer in expertLayers { layer.attach(sums) }
        }
        return (sums, placement)
    }

    /// Set by the trainer: `parallel.balance_experts`.
    var balances = false

    var ranks: Int { comm.size }
    var rank: Int { comm.rank }
    var movesExperts: Bool { balances && placement.experts >= comm.size }

    func runner(of expert: Int, forTokensOf q: Int) -> Int { placement.runner(of: expert, forTokensOf: q) }

    func sum(_ data: UnsafeMutablePointer<Double>, count: Int) {
        guard error == nil else { return }
        do { try comm.allreduceSum(data, count: count, "MoE statistics") } catch { self.error = error }
    }

    func sumBelow(_ data: UnsafeMutablePointer<Double>, count: Int) {
        guard error == nil else { return }
        do { try comm.sumBelow(data, count: count, "MoE capacity order") } catch { self.error = error }
    }

    func allToAll(_ send: UnsafePointer<Int32>, _ receive: UnsafeMutablePointer<Int32>, perRank: Int) {
        guard error == nil else { return }
        do { try comm.allToAll(send, receive, perRank: perRank, "MoE token counts") } catch { self.error = error }
    }

    func allToAll(_ send: UnsafePointer<Float>, _ sendCounts: UnsafePointer<Int32>, _ sendOffsets: UnsafePointer<Int32>,
                  _ receive: UnsafeMutablePointer<Float>, _ receiveCounts: UnsafePointer<Int32>,
                  _ receiveOffsets: UnsafePointer<Int32>) {
        guard error == nil else { return }
        do {
            try comm.allToAll(send, sendCounts, sendOffsets, receive, receiveCounts, receiveOffsets, "MoE exchange")
        } catch { self.error = error }
    }

    func rethrow() throws {
        if let error { throw error }
    }
}
