import CMPI
import Kernels

/// Sums a flat gradient buffer over all ranks in buckets, each started as soon as backward
/// has finished the gradients in it and advanced between layers, so that communication
/// overlaps the rest of backward.
///
/// Buckets are contiguous ranges of the buffer, cut from its end: parameters are laid out in
/// forward order and backward finishes them last-first, so the finished gradients are always
/// a suffix `[offset, count)`.
///
/// Each bucket is a ring allreduce (reduce-scatter, then allgather: `2(P−1)` steps of `1/P`
/// of the bucket) built from `MPI_Isend`/`MPI_Irecv` on a communicator of its own, advanced by
/// `MPI_Test`. Measured on 2 ranks with OpenMPI 4.1 (shared memory), `MPI_Iallreduce` moved
/// gradients at 0.6 of the blocking `MPI_Allreduce`'s rate at every size from 64 KiB to
/// 11 MiB, while this ring matches it; `bench W3` prints both.
///
/// One bucket is in flight at a time, the next starting as soon as it is done and ready, and
/// all share one receive buffer: with every bucket in flight at once (each with its own
/// buffer) the sync ran at 0.7–0.8 of `MPI_Allreduce`, with one at a time at 1.0, because
/// the incoming chunk then lands in a buffer that is still in cache.
///
/// The additions happen in a fixed order, so the result is bitwise reproducible at a given
/// world size, and every rank ends with the same bits (the allgather copies one rank's sums).
public final class BucketedAllreduce {
    /// Bucket ranges in launch order (the end of the buffer first).
    public let buckets: [Range<Int>]
    /// A name per bucket for hang reports, such as "bucket 2/4 (layers.1.weight … head.bias)".
    let labels: [String]
    let comm: Communicator
    let channel: MPI_Comm
    let data: UnsafeMutablePointer<Float>
    let count: Int
    /// Room for one incoming chunk.
    let scratch: UnsafeMutablePointer<Float>
    /// Two requests (receive, send) per bucket.
    let requests: UnsafeMutablePointer<MPI_Request?>
    /// Per bucket: 0 not started, s in 1...2(P−1) step s in flight, `done` finished.
    var stage: [Int]
    let done: Int
    var started = 0
    var finished = 0
    /// Every gradient at `[readyFrom, count)` is final.
    var readyFrom = 0

    /// Seconds spent in `finish` waiting for the last buckets, in the last step.
    public private(set) var lastWaitSeconds = 0.0
    /// Seconds spent advancing buckets between layers, in the last step.
    public private(set) var lastProgressSeconds = 0.0

    /// - Parameter label: names the part of the buffer a bucket covers (called at init only).
    public init(comm: Communicator, data: UnsafeMutablePointer<Float>, count: Int, bucketBytes: Int,
                label: (Range<Int>) -> String = { "floats \($0.lowerBound)..<\($0.upperBound)" }) throws {
        precondition(bucketBytes >= 4)
        self.comm = comm
        self.data = data
        self.count = count
        let per = max(1, bucketBytes / 4)
        var ranges: [Range<Int>] = []
        var end = count
        while end > 0 {
            let start = max(0, end - per)
            ranges.append(start..<end)
            end = start
        }
        buckets = ranges
        labels = ranges.enumerated().map { "bucket \($0.offset + 1)/\(ranges.count) (\(label($0.element)))" }
        let p = comm.size
        scratch = .allocate(capacity: max((per + p - 1) / p, 1))
        requests = .allocate(capacity: 2 * max(ranges.count, 1))
        requests.initialize(repeating: sb_request_null(), count: 2 * max(ranges.count, 1))
        stage = [Int](repeating: 0, count: ranges.count)
        done = 2 * (p - 1) + 1
        channel = p > 1 ? try comm.duplicate().raw : sb_comm_self()
    }

    deinit {
        scratch.deallocate()
        requests.deallocate()
    }

    /// Starts a step's synchronisation; gradients will be reported final from the end.
    public func begin() {
        for b in stage.indices { stage[b] = 0 }
        started = 0
        finished = 0
        readyFrom = count
        lastWaitSeconds = 0
        lastProgressSeconds = 0
    }

    /// Backward has finished every gradient at `[offset, count)`: advances the bucket in
    /// flight and starts the next ones that lie wholly inside.
    public func gradientsFinal(from offset: Int) throws {
        guard comm.size > 1 else { return }
        let t0 = MPI_Wtime()
        readyFrom = offset
        _ = try progress()
        lastProgressSeconds += MPI_Wtime() - t0
    }

    /// Starts whatever has not started and waits (under the watchdog) until every bucket is
    /// summed on every rank.
    public func finish() throws {
        guard comm.size > 1 else { return }
        let t0 = MPI_Wtime()
        readyFrom = 0
        _ = try progress()
        let pending = buckets.indices.first { stage[$0] != done } ?? 0
        comm.watchdog.begin("gradient sync", labels[pending], bytes: buckets[pending].count * 4)
        try comm.watchdog.wait { try progress() }
        lastWaitSeconds = MPI_Wtime() - t0
    }

    /// Advances the bucket in flight if its current step has completed, and starts the next
    /// ready bucket when it is done; true when all are done.
    func progress() throws -> Bool {
        while true {
            if started > finished {
                let b = started - 1
                var complete: Int32 = 0
                try check(MPI_Testall(2, requests + 2 * b, &complete, sb_statuses_ignore()), "MPI_Testall (\(labels[b]))")
                guard complete != 0 else { return false }
                try advance(b)
                if started > finished { continue }
            }
            guard started < buckets.count, buckets[started].lowerBound >= readyFrom else { break }
            try advance(started)
            started += 1
        }
        return finished == buckets.count
    }

    /// Completes bucket `b`'s current ring step (adding a received partial sum) and posts the
    /// next one.
    func advance(_ b: Int) throws {
        let p = comm.size, r = comm.rank
        let bucket = buckets[b]
        let base = data + bucket.lowerBound
        let n = bucket.count
        // Chunk i of the bucket: the first n % p chunks hold one extra float.
        func chunk(_ i: Int) -> (offset: Int, count: Int) {
            let q = n / p, extra = n % p
            return (i * q + min(i, extra), q + (i < extra ? 1 : 0))
        }
        func mod(_ x: Int) -> Int { ((x % p) + p) % p }
        let s = stage[b]
        if s >= 1 && s <= p - 1 {
            // Reduce-scatter step s−1 received a partial sum of chunk r−s.
            let c = chunk(mod(r - s))
            add(UnsafePointer(base + c.offset), UnsafePointer(scratch), into: base + c.offset, count: c.count)
        }
        let next = s + 1
        stage[b] = next
        if next == done {
            finished += 1
            return
        }
        let right = Int32(mod(r + 1)), left = Int32(mod(r - 1))
        let send: (offset: Int, count: Int), recv: (offset: Int, count: Int), into: UnsafeMutablePointer<Float>
        if next <= p - 1 {
            let k = next - 1
            send = chunk(mod(r - k))
            recv = chunk(mod(r - k - 1))
            into = scratch
        } else {
            let k = next - p
            send = chunk(mod(r + 1 - k))
            recv = chunk(mod(r - k))
            into = base + recv.offset
        }
        let tag = Int32(b)
        try check(MPI_Irecv(into, Int32(recv.count), sb_type_float(), left, tag, channel, requests + 2 * b),
                  "MPI_Irecv (\(labels[b]))")
        try check(MPI_Isend(base + send.offset, Int32(send.count), sb_type_float(), right, tag, channel, requests + 2 * b + 1),
                  "MPI_Isend (\(labels[b]))")
    }
}
