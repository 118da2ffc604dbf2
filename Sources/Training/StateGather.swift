import Cluster
import Kernels
import Layers

/// A parameter's optimizer state, whole, on the rank that writes it to a checkpoint. Each
/// rank holds the state of what it updates (`StateLayout`): a parameter its writer holds
/// whole is written from there, and one cut into the ranks' shards is gathered first, each
/// rank sending its part (one run of its state) straight into place in the writer's scratch.
/// Every rank can work out every rank's layout (the sync's chunks, the expert placement), so
/// the writer knows where each part goes without being told. Collective: every rank asks for
/// every parameter, in the same order.
final class StateGather {
    let comm: Communicator
    /// This rank's layout, and every rank's.
    let mine: StateLayout
    let layouts: [StateLayout]
    /// The writer's room for one gathered parameter, as large as the largest so far.
    private var scratch: Tensor?

    /// Whether each rank holds the values of its shard only (`shard_parameters`).
    let shardedValues: Bool

    init(_ trainer: Trainer) {
        comm = trainer.comm
        shardedValues = trainer.shards != nil
        mine = trainer.optimizer.layout
        layouts = (0..<trainer.comm.size).map { StateLayout(trainer.heldRanges(of: $0)) }
        precondition(layouts[trainer.comm.rank] == mine, "this rank's optimizer state is not laid out as its updates")
    }

    /// The values of `p`, whole, on `writer`; nil on the others. With the parameters in shards
    /// a synced parameter's values are gathered like its state, from each rank's chunks of
    /// the arena; every other parameter is whole on every rank that holds it.
    func values(of p: Parameter, to writer: Int) throws -> UnsafePointer<Float>? {
        guard p.resident else { return nil }
        if !shardedValues || p.frozen || layouts[writer].run(of: p.offset..<(p.offset + p.count)) != nil {
            return writer == comm.rank ? UnsafePointer(p.value) : nil
        }
        return try gather(p, to: writer, "checkpoint: parameter values") { UnsafePointer(p.value + $0.lowerBound - p.offset) }
    }

    /// `state` (laid out as this rank's layout) of `p`, whole, on `writer`; nil on the others.
    func state(_ state: Tensor, of p: Parameter, to writer: Int) throws -> UnsafePointer<Float>? {
        // An expert another rank owns: its owner, the writer, holds all of it.
        guard p.resident else { return nil }
        if let at = layouts[writer].run(of: p.offset..<(p.offset + p.count)) {
            return writer == comm.rank ? UnsafePointer(state.data + at) : nil
        }
        return try gather(p, to: writer, "checkpoint: optimizer state") { UnsafePointer(state.data + self.mine.index(of: $0.lowerBound)!) }
    }

    /// `p` whole in the writer's scratch: every rank sends its pieces of `p` (the arena ranges
    /// its layout holds, each found where `source` says this rank keeps it) straight into place.
    private func gather(_ p: Parameter, to writer: Int, _ phase: StaticString,
                        source: (Range<Int>) -> UnsafePointer<Float>) throws -> UnsafePointer<Float>? {
        let span = p.offset..<(p.offset + p.count)
        let pieces = StateLayout.pieces(of: span, in: mine.ranges)
        guard writer == comm.rank else {
            try comm.gatherRuns(pieces.map { (source($0), $0.count) }, root: writer, places: { _ in [] }, phase, p.name)
            return nil
        }
        if (scratch?.count ?? 0) < p.count { scratch = Tensor(shape: [p.count]) }
        let whole = scratch!.data
        for arena in pieces { (whole + arena.lowerBound - p.offset).update(from: source(arena), count: arena.count) }
        try comm.gatherRuns([], root: writer, places: { q in
            StateLayout.pieces(of: span, in: self.layouts[q].ranges).map { (whole + $0.lowerBound - p.offset, $0.count) }
        }, phase, p.name)
        return UnsafePointer(whole)
    }
}
