import Cluster
import Kernels
import Layers

/// The parameters in shards (`[parallel] shard_parameters`, ZeRO stage 3): each rank keeps its
/// chunk of every synced gathering unit (`Model.gatheringUnits`: a top-level layer, or one
/// layer of a residual block's branch, such as one matrix), the sync's buckets
/// (`ShardedSync.layerBuckets`); a unit's whole values are gathered just before it runs and
/// given back after.
///
/// Forward, before unit i: its gather is waited for (queued earlier as a prefetch, or now),
/// and unit i + 1's is queued, so it moves while unit i computes (as far as MPI progresses
/// between layers). After unit i: its values go back, except the last unit's, which backward
/// needs next. Backward runs the same from the end, unit i − 1 prefetched; in the step's last
/// backward, each unit's reduce-scatter is queued as soon as it is done, and finished before
/// the next unit computes, so those gradients' pages are back before the next unit's are
/// written: beyond its shards a rank holds the values of two units (three in the forward
/// after an evaluation, whose last unit stays whole) and the gradients of one
/// (all of them under gradient accumulation, whose passes add into every gradient). A
/// gathered unit stays valid until the optimizer's update (`invalidate`), so evaluation
/// between two steps and a forward right after it reuse what is still here.
///
/// The sync gives back a bucket's gradient pages outside this rank's chunk once it has
/// reduce-scattered them.
final class ParameterShards: ParameterGathering {
    let sync: ShardedSync
    let buckets: [[Int]]
    /// Per unit: its ticket while its gather is queued, nil otherwise.
    var queued: [Int?]
    /// Per unit: its values are whole here.
    var whole: [Bool]
    /// The first failure of a gather, thrown by `rethrow` (forward and backward do not throw).
    var failure: (any Error)?

    init(sync: ShardedSync) {
        self.sync = sync
        buckets = sync.layerBuckets!
        queued = [Int?](repeating: nil, count: buckets.count)
        whole = [Bool](repeating: false, count: buckets.count)
        // Nothing is gathered yet: every page outside this rank's chunks goes back (the model
        // was initialized whole: every value was written once on every rank).
        for u in buckets.indices { release(u) }
    }

    func willRun(_ unit: Int, backward: Bool) {
        guard failure == nil else { return }
        do {
            // Everything queued so far: this unit's gather, and in backward the previous unit's
            // reduce-scatter, whose gradients then go back before this unit writes its own.
            request(unit)
            try sync.waitForGather(sync.enqueued)
            queued[unit] = nil
            whole[unit] = true
            let next = backward ? unit - 1 : unit + 1
            if buckets.indices.contains(next) { request(next) }
        } catch {
            failure = error
        }
    }

    func didRun(_ unit: Int, backward: Bool) {
        if backward || unit < buckets.count - 1 { release(unit) }
        // The step's last backward: this unit's gradients are final.
        if backward && sync.scattering { for b in buckets[unit] { sync.reduceScatter(bucket: b) } }
    }

    /// Queues unit `i`'s gather unless it is whole here or queued already.
    func request(_ i: Int) {
        guard !whole[i], queued[i] == nil, !buckets[i].isEmpty else {
            if buckets[i].isEmpty { whole[i] = true }
            return
        }
        var ticket = sync.enqueued
        for b in buckets[i] { ticket = sync.gather(bucket: b) }
        queued[i] = ticket
    }

    /// Gives back unit `i`'s values outside this rank's chunks.
    func release(_ i: Int) {
        for b in buckets[i] { sync.releaseValues(bucket: b) }
        whole[i] = false
    }

    /// After the update: every gathered unit is out of date. Waits for any gather still
    /// queued (a prefetch nobody used), then gives back every unit whole here, or with `all`
    /// every unit (the parameters were written whole: a load, `[init]`).
    func invalidate(all: Bool = false) throws {
        for i in buckets.indices {
            if let ticket = queued[i] {
                try sync.waitForGather(ticket)
                whole[i] = true
            }
            queued[i] = nil
            if all || whole[i] { release(i) }
        }
    }

    /// Throws the first failure of a gather since the last call.
    func rethrow() throws {
        if let failure {
            self.failure = nil
            throw failure
        }
    }
}
