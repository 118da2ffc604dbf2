// How an MoE layer reaches other ranks: the layer declares what it needs here (and its sums,
// `RankReduction`, in Capabilities.swift), and a multi-rank trainer provides it over MPI.
// Every rank makes the same calls in the same order.

/// Expert parallelism: each rank owns some of the experts, and a layer's tokens travel to the
/// rank that runs their expert in this pass (its owner, or a less busy rank that the owner
/// lends it to, `ExpertBalance`) and back. A multi-rank trainer provides this; the collectives
/// are the same on every rank whatever the routing (a fixed-size all-to-all of counts, then
/// all-to-alls of rows and of moved experts' parameters or gradients, in which any segment
/// may be empty), so no routing can hang the job.
public protocol ExpertExchange: AnyObject {
    var ranks: Int { get }
    var rank: Int { get }
    /// The rank that holds expert `expert` for rank `q`'s tokens: its owner, or with E < P
    /// the replica that serves q.
    func runner(of expert: Int, forTokensOf q: Int) -> Int
    /// Whether an expert may run away from its owner for a pass (`ExpertBalance`): each
    /// expert has one owner (E ≥ P) and the job allows it.
    var movesExperts: Bool { get }
    /// `perRank` integers to every rank, the same from every rank.
    func allToAll(_ send: UnsafePointer<Int32>, _ receive: UnsafeMutablePointer<Int32>, perRank: Int)
    /// `sendCounts[r]` floats from `send + sendOffsets[r]` to rank r; `receiveCounts[q]` floats
    /// from rank q into `receive + receiveOffsets[q]`.
    func allToAll(_ send: UnsafePointer<Float>, _ sendCounts: UnsafePointer<Int32>, _ sendOffsets: UnsafePointer<Int32>,
                  _ receive: UnsafeMutablePointer<Float>, _ receiveCounts: UnsafePointer<Int32>,
                  _ receiveOffsets: UnsafePointer<Int32>)
}
