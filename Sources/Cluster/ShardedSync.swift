import CMPI
import Kernels

/// Data-parallel synchronisation in buckets, with the optimizer sharded over the ranks
/// (ZeRO stage 1, Rajbhandari et al. 2020):
///
/// 1. during backward, each bucket of gradients is **reduce-scattered** as soon as backward
///    has finished it: afterwards rank r holds the sum over all ranks of one chunk (1/P) of
///    every bucket — its shard, `ownedRanges`;
/// 2. each rank updates only its shard (a P-th of the optimizer's work and state);
/// 3. the updated parameters are **allgathered**, bucket by bucket.
///
/// Together that is exactly a ring allreduce of the gradients (reduce-scatter + allgather,
/// `2(P−1)` steps of `1/P` of a bucket), with the allgather moving parameters instead of
/// gradients, so communication costs the same as averaging gradients while the optimizer
/// costs 1/P.
///
/// Buckets are contiguous ranges of the flat arena, cut from its end: parameters are laid out
/// in forward order and backward finishes them last-first, so finished gradients always form
/// a suffix `[offset, count)`. The ring is built from `MPI_Isend`/`MPI_Irecv` on a
/// communicator of its own and advanced by `MPI_Test` between layers: with OpenMPI 4.1 over
/// shared memory, `MPI_Iallreduce` moved gradients well below the blocking `MPI_Allreduce`'s
/// rate, and this ring does not. One bucket is in flight at a time and all share one receive
/// buffer, so the incoming chunk lands in a buffer still in cache (every bucket in flight at
/// once, each with its own buffer, was slower; docs/BENCHMARKS.md).
///
/// Sums are added in a fixed order, so results are bitwise reproducible at a given world
/// size, and the allgather gives every rank the same parameter bits.
public final class ShardedSync {
    /// Bucket ranges in launch order (the end of the arena first).
    public let buckets: [Range<Int>]
    /// The arena ranges this rank sums and updates: one chunk of each bucket (all of the
    /// synced regions in a world of one).
    public let ownedRanges: [Range<Int>]
    /// A name per bucket for hang reports, such as "bucket 2/4 (layers.1.weight … head.bias)".
    let labels: [String]
    let comm: Communicator
    let channel: MPI_Comm
    let grads: UnsafeMutablePointer<Float>
    let values: UnsafeMutablePointer<Float>
    let count: Int
    /// Room for one incoming chunk.
    let scratch: UnsafeMutablePointer<Float>
    /// The receive and send of the step in flight.
    let requests: UnsafeMutablePointer<MPI_Request?>

    /// Ring steps completed per bucket: reduce-scatter steps 0..<P−1, then allgather steps.
    var completed: [Int]
    var inFlight = false
    /// The bucket being worked on in the current phase.
    var current = 0
    /// The phase's goal for every bucket, in completed steps.
    var target = 0
    /// Every gradient at `[readyFrom, count)` is final.
    var readyFrom = 0

    /// Seconds advancing buckets between layers, in the last step.
    public private(set) var lastProgressSeconds = 0.0
    /// Seconds finishing the reduce-scatter after backward, in the last step.
    public private(set) var lastScatterSeconds = 0.0
    /// Seconds in the parameter allgather, in the last step.
    public private(set) var lastGatherSeconds = 0.0

    /// - Parameter regions: the parts of the arena every rank holds and syncs, ascending
    ///   (nil: all of it). Experts that only their runner holds are left out.
    /// - Parameter label: names the part of the arena a bucket covers (called at init only).
    public init(comm: Communicator, grads: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>,
                count: Int, bucketBytes: Int, regions: [Range<Int>]? = nil,
                label: (Range<Int>) -> String = { "floats \($0.lowerBound)..<\($0.upperBound)" }) throws {
        precondition(bucketBytes >= 4)
        self.comm = comm
        self.grads = grads
        self.values = values
        self.count = count
        let per = max(1, bucketBytes / 4)
        // Buckets never span two regions: each is one contiguous run of the arena.
        var ranges: [Range<Int>] = []
        for region in (regions ?? [0..<count]).reversed() {
            var end = region.upperBound
            while end > region.lowerBound {
                let start = max(region.lowerBound, end - per)
                ranges.append(start..<end)
                end = start
            }
        }
        buckets = ranges
        labels = ranges.enumerated().map { "bucket \($0.offset + 1)/\(ranges.count) (\(label($0.element)))" }
        let p = comm.size
        ownedRanges = Self.owned(by: comm.rank, of: p, buckets: ranges, regions: regions ?? [0..<count])
        scratch = .allocate(capacity: max((per + p - 1) / p, 1))
        requests = .allocate(capacity: 2)
        requests.initialize(repeating: sb_request_null(), count: 2)
        completed = [Int](repeating: 0, count: ranges.count)
        channel = p > 1 ? try comm.duplicate().raw : sb_comm_self()
    }

    deinit {
        scratch.deallocate()
        requests.deallocate()
    }

    /// The arena ranges rank `r` of `p` sums and updates: one chunk of each bucket, or every
    /// region in a world of one.
    static func owned(by r: Int, of p: Int, buckets: [Range<Int>], regions: [Range<Int>]) -> [Range<Int>] {
        p == 1 ? regions : buckets.map { b in
            let c = Self.chunk((r + 1) % p, of: b.count, ranks: p)
            return (b.lowerBound + c.offset)..<(b.lowerBound + c.offset + c.count)
        }
    }

    /// What rank `r` owns (`ownedRanges` on that rank).
    public func ownedRanges(of r: Int) -> [Range<Int>] {
        r == comm.rank ? ownedRanges : Self.owned(by: r, of: comm.size, buckets: buckets, regions: buckets)
    }

    /// Chunk `i` of a bucket of `n` floats split over `ranks`: the first `n % ranks` chunks
    /// hold one extra float.
    static func chunk(_ i: Int, of n: Int, ranks p: Int) -> (offset: Int, count: Int) {
        let q = n / p, extra = n % p
        return (i * q + min(i, extra), q + (i < extra ? 1 : 0))
    }

    /// Starts a step: gradients will be reported final from the end of the arena.
    public func begin() {
        for b in completed.indices { completed[b] = 0 }
        current = 0
        target = comm.size - 1
        readyFrom = count
        lastProgressSeconds = 0
        lastScatterSeconds = 0
        lastGatherSeconds = 0
    }

    /// Backward has finished every gradient at `[offset, count)`: advances the reduce-scatter.
    public func gradientsFinal(from offset: Int) throws {
        guard comm.size > 1 else { return }
        let t0 = MPI_Wtime()
        readyFrom = offset
        _ = try progress()
        lastProgressSeconds += MPI_Wtime() - t0
    }

    /// Completes the reduce-scatter (under the watchdog): this rank's `ownedRanges` of the
    /// gradients then hold the sums over all ranks, and every other gradient is zero, ready
    /// for the next backward to accumulate into.
    public func finishReduceScatter() throws {
        guard comm.size > 1 else { return }
        let t0 = MPI_Wtime()
        readyFrom = 0
        try wait("gradient reduce-scatter")
        lastScatterSeconds = MPI_Wtime() - t0
    }

    /// Sends this rank's updated `ownedRanges` of the parameters to every rank and receives
    /// theirs (under the watchdog).
    public func gatherParameters() throws {
        guard comm.size > 1 else { return }
        let t0 = MPI_Wtime()
        current = 0
        target = 2 * (comm.size - 1)
        try wait("parameter allgather")
        lastGatherSeconds = MPI_Wtime() - t0
    }

    func wait(_ phase: StaticString) throws {
        if try progress() { return }
        comm.watchdog.begin(phase, labels[current], bytes: buckets[current].count * 4)
        try comm.watchdog.wait { try progress() }
    }

    /// Advances the phase: completes the step in flight if it is done, posts the next step of
    /// the current bucket or moves to the next bucket. True when every bucket has reached the
    /// phase's target.
    func progress() throws -> Bool {
        while current < buckets.count {
            let b = current
            if inFlight {
                var done: Int32 = 0
                try check(MPI_Testall(2, requests, &done, sb_statuses_ignore()), "MPI_Testall (\(labels[b]))")
                guard done != 0 else { return false }
                inFlight = false
                complete(b)
            }
            if completed[b] < target {
                // A bucket starts only once backward has finished all of it.
                guard completed[b] > 0 || buckets[b].lowerBound >= readyFrom else { return false }
                try post(b)
            } else {
                current += 1
            }
        }
        return true
    }

    /// Ring step j of bucket b: reduce-scatter step j (j < P−1) sends the partial sum of chunk
    /// r−j and receives chunk r−j−1's into scratch; allgather step k = j−(P−1) sends the
    /// finished chunk r+1−k and receives chunk r−k in place.
    func post(_ b: Int) throws {
        let p = comm.size, r = comm.rank, j = completed[b]
        let bucket = buckets[b]
        func mod(_ x: Int) -> Int { ((x % p) + p) % p }
        let scatter = j < p - 1
        let k = scatter ? j : j - (p - 1)
        let base = (scatter ? grads : values) + bucket.lowerBound
        let send = Self.chunk(scatter ? mod(r - k) : mod(r + 1 - k), of: bucket.count, ranks: p)
        let recv = Self.chunk(scatter ? mod(r - k - 1) : mod(r - k), of: bucket.count, ranks: p)
        let into = scatter ? scratch : base + recv.offset
        let right = Int32(mod(r + 1)), left = Int32(mod(r - 1)), tag = Int32(b)
        try check(MPI_Irecv(into, Int32(recv.count), sb_type_float(), left, tag, channel, requests),
                  "MPI_Irecv (\(labels[b]))")
        try check(MPI_Isend(base + send.offset, Int32(send.count), sb_type_float(), right, tag, channel, requests + 1),
                  "MPI_Isend (\(labels[b]))")
        inFlight = true
    }

    /// Finishes ring step j of bucket b. A reduce-scatter step adds the received partial sum,
    /// and zeroes the chunk it sent: every chunk but the owned one is sent exactly once, and
    /// is not needed again (zeroing it here, still in cache, costs less than a pass at the end).
    func complete(_ b: Int) {
        let p = comm.size, r = comm.rank, j = completed[b]
        if j < p - 1 {
            let bucket = buckets[b]
            let c = Self.chunk(((r - j - 1) % p + p) % p, of: bucket.count, ranks: p)
            let chunk = grads + bucket.lowerBound + c.offset
            add(UnsafePointer(chunk), UnsafePointer(scratch), into: chunk, count: c.count)
            let sent = Self.chunk(((r - j) % p + p) % p, of: bucket.count, ranks: p)
            (grads + bucket.lowerBound + sent.offset).update(repeating: 0, count: sent.count)
        }
        completed[b] = j + 1
    }
}
