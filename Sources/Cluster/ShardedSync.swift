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
///
/// With the parameters in shards too (`[parallel] shard_parameters`, ZeRO stage 3), a bucket
/// is one layer's part of a synced region, uncut, so a rank's chunk of a layer is one run of
/// the arena: the pages outside it are given back to the system (`Tensor.release`) once its
/// gradients are reduce-scattered, and its values once the layer has run; a layer's values
/// are allgathered (`gather(bucket:)`) just before it runs, forward and backward, and its
/// reduce-scatter is queued by the layer (`reduceScatter(bucket:)`). The ring's steps are one
/// queue of jobs, run in order, the same on every rank.
public final class ShardedSync {
    /// Bucket ranges in launch order (the end of the arena first; with the parameters in
    /// shards, the last unit's first).
    public let buckets: [Range<Int>]
    /// The arena ranges this rank sums and updates: one chunk of each bucket (all of the
    /// synced regions in a world of one).
    public let ownedRanges: [Range<Int>]
    /// With the parameters in shards: the buckets of each layer, in the order given (nil otherwise).
    public let layerBuckets: [[Int]]?
    /// A name per bucket for hang reports, such as "bucket 2/4 (layers.1.weight … head.bias)".
    let labels: [String]
    let comm: Communicator
    let channel: MPI_Comm
    let grads: UnsafeMutablePointer<Float>
    let values: UnsafeMutablePointer<Float>
    /// The arenas whose pages outside this rank's chunks are given back, with the parameters
    /// in shards.
    let released: (grads: Tensor, values: Tensor)?
    let count: Int
    /// Chunk boundaries inside a bucket fall on multiples of this many floats (1: an even split).
    let alignment: Int
    /// Room for one incoming chunk.
    let scratch: UnsafeMutablePointer<Float>
    /// The receive and send of the step in flight.
    let requests: UnsafeMutablePointer<MPI_Request?>

    /// Ring work in order: bucket `bucket` from ring step `from` (nil: where it stands) to
    /// `until`; reduce-scatter steps are 0..<P−1, allgather steps P−1..<2(P−1).
    struct Job { var bucket: Int, from: Int?, until: Int }
    /// A ring of jobs, `queued` of them from `head`: room for every bucket three times (a
    /// gather before forward, one before backward, a reduce-scatter), so a step never grows it.
    let jobs: UnsafeMutablePointer<Job>
    let capacity: Int
    var head = 0, queued = 0
    /// Jobs ever finished and ever queued: a job's ticket is `enqueued` after queueing it.
    public private(set) var finished = 0
    public private(set) var enqueued = 0
    /// Ring steps completed per bucket.
    var completed: [Int]
    var inFlight = false
    /// Buckets whose reduce-scatter is queued this step: the first `scattered` in launch order
    /// by `gradientsFinal`, any by `reduceScatter(bucket:)`.
    var scattered = 0
    var scatterQueued: [Bool]
    /// Between `begin` and `finishReduceScatter`: the step's reduce-scatter is under way.
    public private(set) var scattering = false

    /// Seconds advancing buckets between layers, in the last step.
    public private(set) var lastProgressSeconds = 0.0
    /// Seconds finishing the reduce-scatter after backward, in the last step.
    public private(set) var lastScatterSeconds = 0.0
    /// Seconds in the parameter allgather (with the parameters in shards: waiting before a
    /// unit runs, for its gather and in backward the previous unit's reduce-scatter), in the
    /// last step.
    public private(set) var lastGatherSeconds = 0.0
    /// Bytes this rank sent in the ring since `startStep`: the last step's, read after it.
    public private(set) var bytesSent = 0

    /// - Parameter regions: the parts of the arena every rank holds and syncs, ascending
    ///   (nil: all of it). Experts that only their runner holds are left out.
    /// - Parameter shards: the parameters in shards: the arena range of each layer gathered
    ///   on its own (`Model.gatheringUnits`), and the arenas behind `grads` and `values`.
    /// - Parameter label: names the part of the arena a bucket covers (called at init only).
    public init(comm: Communicator, grads: UnsafeMutablePointer<Float>, values: UnsafeMutablePointer<Float>,
                count: Int, bucketBytes: Int, regions: [Range<Int>]? = nil,
                shards: (layers: [Range<Int>], grads: Tensor, values: Tensor)? = nil,
                label: (Range<Int>) -> String = { "floats \($0.lowerBound)..<\($0.upperBound)" }) throws {
        precondition(bucketBytes >= 4)
        self.comm = comm
        self.grads = grads
        self.values = values
        self.count = count
        let per = max(1, bucketBytes / 4)
        let regions = regions ?? [0..<count]
        var ranges: [Range<Int>] = []
        var perLayer: [[Int]]?
        if let layers = shards?.layers {
            // One bucket per piece of a layer inside a region, from the end.
            var indices = [[Int]](repeating: [], count: layers.count)
            for (i, layer) in layers.enumerated().reversed() {
                let pieces = regions.compactMap { r -> Range<Int>? in
                    let lo = max(r.lowerBound, layer.lowerBound), hi = min(r.upperBound, layer.upperBound)
                    return lo < hi ? lo..<hi : nil
                }
                for piece in pieces.reversed() {
                    indices[i].append(ranges.count)
                    ranges.append(piece)
                }
            }
            perLayer = indices
        } else {
            // Buckets never span two regions: each is one contiguous run of the arena.
            for region in regions.reversed() {
                var end = region.upperBound
                while end > region.lowerBound {
                    let start = max(region.lowerBound, end - per)
                    ranges.append(start..<end)
                    end = start
                }
            }
        }
        buckets = ranges
        layerBuckets = perLayer
        released = shards.map { ($0.grads, $0.values) }
        labels = ranges.enumerated().map { "bucket \($0.offset + 1)/\(ranges.count) (\(label($0.element)))" }
        let p = comm.size
        // With the parameters in shards, chunks end on huge pages, so the pages outside a
        // rank's chunk are whole and go back whole.
        alignment = shards?.grads.releasesPages == true ? Tensor.pageFloats : 1
        ownedRanges = Self.owned(by: comm.rank, of: p, buckets: ranges, regions: regions, alignment: alignment)
        var largest = 1
        for b in ranges { for i in 0..<p { largest = max(largest, Self.chunk(i, of: b, ranks: p, alignment: alignment).count) } }
        scratch = .allocate(capacity: largest)
        requests = .allocate(capacity: 2)
        requests.initialize(repeating: sb_request_null(), count: 2)
        completed = [Int](repeating: 0, count: ranges.count)
        scatterQueued = [Bool](repeating: false, count: ranges.count)
        capacity = 3 * ranges.count + 1
        jobs = .allocate(capacity: capacity)
        channel = p > 1 ? try comm.duplicate().raw : sb_comm_self()
    }

    deinit {
        scratch.deallocate()
        requests.deallocate()
        jobs.deallocate()
    }

    /// Whether the parameters are held in shards (each rank keeps its chunks only).
    public var shardsParameters: Bool { layerBuckets != nil }

    /// The arena ranges rank `r` of `p` sums and updates: one chunk of each bucket, or every
    /// region in a world of one.
    static func owned(by r: Int, of p: Int, buckets: [Range<Int>], regions: [Range<Int>], alignment: Int) -> [Range<Int>] {
        p == 1 ? regions : buckets.map { b in
            let c = Self.chunk((r + 1) % p, of: b, ranks: p, alignment: alignment)
            return (b.lowerBound + c.offset)..<(b.lowerBound + c.offset + c.count)
        }
    }

    /// What rank `r` owns (`ownedRanges` on that rank).
    public func ownedRanges(of r: Int) -> [Range<Int>] {
        r == comm.rank ? ownedRanges : Self.owned(by: r, of: comm.size, buckets: buckets, regions: buckets, alignment: alignment)
    }

    /// Chunk `i` of arena range `bucket` split over `ranks`, as an offset into the bucket and
    /// a count: the first `n % ranks` chunks of an even split hold one extra float. With an
    /// `alignment`, in a bucket of at least that many floats per rank, each boundary inside
    /// the bucket moves to the nearest arena offset that is a multiple of it.
    static func chunk(_ i: Int, of bucket: Range<Int>, ranks p: Int, alignment a: Int) -> (offset: Int, count: Int) {
        let n = bucket.count, q = n / p, extra = n % p
        func boundary(_ j: Int) -> Int {
            let even = bucket.lowerBound + j * q + min(j, extra)
            // A bucket too small for a page a rank splits evenly.
            guard a > 1, j > 0, j < p, n >= p * a else { return even }
            return min(max((even + a / 2) / a * a, bucket.lowerBound), bucket.upperBound)
        }
        let lo = boundary(i)
        return (lo - bucket.lowerBound, boundary(i + 1) - lo)
    }

    /// Chunk `i` of `bucket` on this world.
    func chunk(_ i: Int, of bucket: Range<Int>) -> (offset: Int, count: Int) {
        Self.chunk(i, of: bucket, ranks: comm.size, alignment: alignment)
    }

    /// Starts a step's timings.
    public func startStep() {
        bytesSent = 0
        lastProgressSeconds = 0
        lastScatterSeconds = 0
        lastGatherSeconds = 0
    }

    /// Starts the reduce-scatter of a step: gradients will be reported final from the end of
    /// the arena.
    public func begin() {
        scattered = 0
        for b in scatterQueued.indices { scatterQueued[b] = false }
        scattering = true
    }

    /// Backward has finished every gradient at `[offset, count)`: queues the reduce-scatter of
    /// every bucket inside that and advances the ring.
    public func gradientsFinal(from offset: Int) throws {
        guard comm.size > 1 else { return }
        let t0 = MPI_Wtime()
        // With the parameters in shards the layers queue their own (`reduceScatter(bucket:)`).
        while !shardsParameters && scattered < buckets.count && buckets[scattered].lowerBound >= offset {
            reduceScatter(bucket: scattered)
            scattered += 1
        }
        _ = try progress()
        lastProgressSeconds += MPI_Wtime() - t0
    }

    /// Completes the reduce-scatter (under the watchdog): this rank's `ownedRanges` of the
    /// gradients then hold the sums over all ranks, and every other gradient is zero, ready
    /// for the next backward to accumulate into.
    public func finishReduceScatter() throws {
        guard comm.size > 1 else { return }
        let t0 = MPI_Wtime()
        for b in buckets.indices { reduceScatter(bucket: b) }
        scattering = false
        try wait(through: enqueued, "gradient reduce-scatter")
        lastScatterSeconds = MPI_Wtime() - t0
    }

    /// Sends this rank's updated `ownedRanges` of the parameters to every rank and receives
    /// theirs (under the watchdog). With the parameters in shards nothing moves: each layer
    /// is gathered when it runs.
    public func gatherParameters() throws {
        guard comm.size > 1, !shardsParameters else { return }
        let t0 = MPI_Wtime()
        for b in buckets.indices { push(Job(bucket: b, from: nil, until: 2 * (comm.size - 1))) }
        try wait(through: enqueued, "parameter allgather")
        lastGatherSeconds = MPI_Wtime() - t0
    }

    /// Queues bucket `b`'s reduce-scatter, once a step: backward has finished its gradients.
    public func reduceScatter(bucket b: Int) {
        guard comm.size > 1, !scatterQueued[b] else { return }
        scatterQueued[b] = true
        push(Job(bucket: b, from: 0, until: comm.size - 1))
    }

    /// Queues the allgather of bucket `b`'s values from every rank's chunk; returns the ticket
    /// to wait for (`wait(through:)`).
    public func gather(bucket b: Int) -> Int {
        guard comm.size > 1 else { return enqueued }
        push(Job(bucket: b, from: comm.size - 1, until: 2 * (comm.size - 1)))
        return enqueued
    }

    /// Waits for a layer's gather (`gather(bucket:)`'s ticket), counted in `lastGatherSeconds`.
    public func waitForGather(_ ticket: Int) throws {
        let t0 = MPI_Wtime()
        try wait(through: ticket, "parameter gather")
        lastGatherSeconds += MPI_Wtime() - t0
    }

    /// Advances the ring until the job with `ticket` (and every one before it) is done,
    /// under the watchdog.
    func wait(through ticket: Int, _ phase: StaticString) throws {
        guard comm.size > 1 else { return }
        if try progress(through: ticket) { return }
        let b = jobs[head].bucket
        comm.watchdog.begin(phase, labels[b], bytes: buckets[b].count * 4)
        try comm.watchdog.wait { try progress(through: ticket) }
    }

    /// Gives back the pages of bucket `b`'s values outside this rank's chunk (with the
    /// parameters in shards).
    public func releaseValues(bucket b: Int) {
        guard let released, comm.size > 1 else { return }
        releaseOutsideChunk(b, of: released.values)
    }

    func releaseOutsideChunk(_ b: Int, of tensor: Tensor) {
        let bucket = buckets[b], own = ownedRanges[b]
        tensor.release(bucket.lowerBound..<own.lowerBound)
        tensor.release(own.upperBound..<bucket.upperBound)
    }

    func push(_ job: Job) {
        precondition(queued < capacity, "ring job queue full")
        jobs[(head + queued) % capacity] = job
        queued += 1
        enqueued += 1
    }

    /// Advances the queue: completes the step in flight if it is done, posts the next step of
    /// the head job or moves to the next job. True when every job through `ticket` is done.
    func progress(through ticket: Int? = nil) throws -> Bool {
        let goal = ticket ?? enqueued
        while queued > 0 && finished < goal {
            let job = jobs[head]
            let b = job.bucket
            if inFlight {
                var done: Int32 = 0
                // OpenMPI may allocate as it progresses (`libraryCall`).
                try check(libraryCall { MPI_Testall(2, requests, &done, sb_statuses_ignore()) }, "MPI_Testall (\(labels[b]))")
                guard done != 0 else { return false }
                inFlight = false
                complete(b)
            } else if let from = job.from {
                completed[b] = from
                jobs[head].from = nil
            }
            if completed[b] < job.until {
                try post(b)
            } else {
                // A reduce-scattered bucket's gradients outside this rank's chunk are zero: with
                // the parameters in shards, their pages go back until the next backward.
                if let released, job.until == comm.size - 1 { releaseOutsideChunk(b, of: released.grads) }
                head = (head + 1) % capacity
                queued -= 1
                finished += 1
            }
        }
        return finished >= goal
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
        let send = chunk(scatter ? mod(r - k) : mod(r + 1 - k), of: bucket)
        let recv = chunk(scatter ? mod(r - k - 1) : mod(r - k), of: bucket)
        let into = scatter ? scratch : base + recv.offset
        let right = Int32(mod(r + 1)), left = Int32(mod(r - 1)), tag = Int32(b)
        try check(libraryCall { MPI_Irecv(into, Int32(recv.count), sb_type_float(), left, tag, channel, requests) },
                  "MPI_Irecv (\(labels[b]))")
        try check(libraryCall { MPI_Isend(base + send.offset, Int32(send.count), sb_type_float(), right, tag, channel, requests + 1) },
                  "MPI_Isend (\(labels[b]))")
        bytesSent += 4 * send.count
        inFlight = true
    }

    /// Finishes ring step j of bucket b. A reduce-scatter step adds the received partial sum,
    /// and zeroes the chunk it sent: every chunk but the owned one is sent exactly once, and
    /// is not needed again (zeroing it here, still in cache, costs less than a pass at the end).
    func complete(_ b: Int) {
        let p = comm.size, r = comm.rank, j = completed[b]
        if j < p - 1 {
            let bucket = buckets[b]
            let c = chunk(((r - j - 1) % p + p) % p, of: bucket)
            let into = grads + bucket.lowerBound + c.offset
            add(UnsafePointer(into), UnsafePointer(scratch), into: into, count: c.count)
            let sent = chunk(((r - j) % p + p) % p, of: bucket)
            (grads + bucket.lowerBound + sent.offset).update(repeating: 0, count: sent.count)
        }
        completed[b] = j + 1
    }
}
