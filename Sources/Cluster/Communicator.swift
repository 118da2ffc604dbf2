import CMPI
import Kernels
#if canImport(Glibc)
import Glibc
#endif

/// The MPI world of this process. Started once per process (MPI allows one `MPI_Init`);
/// a process started without `mpirun` is a world of one, which is the laptop mode.
public enum MPIWorld {
    nonisolated(unsafe) private static var started = false
    nonisolated(unsafe) private static var world: Communicator?
    /// This process's rank and the world's size once MPI has started (0 and 1 before).
    nonisolated(unsafe) public private(set) static var rank = 0
    nonisolated(unsafe) public private(set) static var size = 1

    /// Initializes MPI with `MPI_THREAD_FUNNELED` (only the main thread calls MPI; OpenBLAS
    /// threads never do) and returns the world communicator. Safe to call more than once.
    public static func start() throws -> Communicator {
        if !started {
            var provided: Int32 = 0
            try check(MPI_Init_thread(nil, nil, sb_thread_funneled(), &provided), "MPI_Init_thread")
            // Errors come back as codes and become Swift errors, instead of aborting.
            MPI_Comm_set_errhandler(sb_comm_world(), sb_errors_return())
            started = true
        }
        if let world { return world }
        let made = try Communicator(.world)
        world = made
        rank = made.rank
        size = made.size
        return made
    }

    /// A world of one made of this process alone (`MPI_COMM_SELF`), for measuring one rank
    /// by itself inside a multi-rank run.
    public static func alone() throws -> Communicator {
        try Communicator(CommHandle(raw: sb_comm_self()))
    }

    /// The MPI library's own version line ("Open MPI v4.1.4, …").
    public static var libraryVersion: String {
        var buf = [CChar](repeating: 0, count: Int(sb_max_library_version_string()) + 1)
        var len: Int32 = 0
        MPI_Get_library_version(&buf, &len)
        return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }.split(separator: ",").first.map(String.init) ?? "unknown MPI"
    }

    /// Ends MPI; no MPI call may follow.
    public static func finish() {
        if started { MPI_Finalize(); started = false }
    }

    /// Aborts every rank of the world with `code`, so that no rank is left waiting in a
    /// collective for one that has failed.
    public static func abort(code: Int32) -> Never {
        MPI_Abort(sb_comm_world(), code)
        exit(code)
    }
}

/// A communicator and this process's place in it. Every collective goes through the
/// communicator's watchdog: it carries a tag and cannot wait past the deadline.
public struct Communicator: @unchecked Sendable {
    public let handle: CommHandle
    public let rank: Int
    public let size: Int
    public let watchdog: Watchdog

    /// Collective over `handle`: every rank of it must make the same call.
    public init(_ handle: CommHandle) throws {
        self.handle = handle
        var r: Int32 = 0, s: Int32 = 0
        try check(MPI_Comm_rank(handle.raw, &r), "MPI_Comm_rank")
        try check(MPI_Comm_size(handle.raw, &s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
        var channel: MPI_Comm? = nil
        try check(MPI_Comm_dup(handle.raw, &channel), "MPI_Comm_dup")
        watchdog = Watchdog(channel: channel!, rank: rank, size: size)
    }

    /// A new communicator over the same ranks, for traffic that must never match this one's
    /// (the gradient buckets' point-to-point messages). Collective.
    public func duplicate() throws -> CommHandle {
        var raw: MPI_Comm? = nil
        try check(MPI_Comm_dup(handle.raw, &raw), "MPI_Comm_dup")
        return CommHandle(raw: raw!)
    }

    /// How many ranks of this communicator share this rank's host (its memory), whatever the
    /// launcher. Collective.
    public func ranksOnThisHost() throws -> Int {
        guard size > 1 else { return 1 }
        var host: MPI_Comm? = nil
        try check(MPI_Comm_split_type(handle.raw, sb_comm_type_shared(), Int32(rank), sb_info_null(), &host),
                  "MPI_Comm_split_type")
        defer { MPI_Comm_free(&host) }
        var n: Int32 = 0
        try check(MPI_Comm_size(host!, &n), "MPI_Comm_size")
        return Int(n)
    }

    /// The coordinator owns the sample order, prints and writes files.
    public var isCoordinator: Bool { rank == 0 }

    /// In-place sum of `count` floats over all ranks. In a world of one the data is
    /// already the sum, and the call returns without touching it.
    public func allreduceSum(_ data: UnsafeMutablePointer<Float>, count: Int, _ phase: StaticString, _ detail: String = "") throws {
        try allreduceSum(UnsafeMutableRawPointer(data), count: count, .float, bytes: 4, phase, detail)
    }

    /// In-place sum of `count` doubles over all ranks.
    public func allreduceSum(_ data: UnsafeMutablePointer<Double>, count: Int, _ phase: StaticString, _ detail: String = "") throws {
        try allreduceSum(UnsafeMutableRawPointer(data), count: count, .double, bytes: 8, phase, detail)
    }

    func allreduceSum(_ data: UnsafeMutableRawPointer, count: Int, _ type: DataType, bytes: Int,
                      _ phase: StaticString, _ detail: String) throws {
        guard size > 1, count > 0 else { return }
        watchdog.begin(phase, detail, bytes: count * bytes)
        try collective("MPI_Iallreduce of \(count) × \(bytes) bytes") {
            MPI_Iallreduce(sb_in_place(), data, Int32(count), type.raw, ReduceOp.sum.raw, handle.raw, $0)
        }
    }

    /// In place: the sum of `data` over the ranks below this one (`MPI_Exscan`); zeros on
    /// rank 0, where MPI leaves the result undefined.
    public func sumBelow(_ data: UnsafeMutablePointer<Double>, count: Int, _ phase: StaticString, _ detail: String = "") throws {
        guard size > 1, count > 0 else {
            data.update(repeating: 0, count: count)
            return
        }
        watchdog.begin(phase, detail, bytes: count * 8)
        try collective("MPI_Iexscan of \(count) doubles") {
            MPI_Iexscan(sb_in_place(), data, Int32(count), DataType.double.raw, ReduceOp.sum.raw, handle.raw, $0)
        }
        if rank == 0 { data.update(repeating: 0, count: count) }
    }

    /// Fixed-size all-to-all: `perRank` Int32 to every rank from `send` (rank after rank), the
    /// same from every rank into `receive`.
    public func allToAll(_ send: UnsafePointer<Int32>, _ receive: UnsafeMutablePointer<Int32>, perRank: Int,
                         _ phase: StaticString, _ detail: String = "") throws {
        guard size > 1 else { receive.update(from: send, count: perRank); return }
        watchdog.begin(phase, detail, bytes: perRank * size * 4)
        try collective("MPI_Ialltoall of \(perRank) integers per rank") {
            MPI_Ialltoall(send, Int32(perRank), sb_type_int32(), receive, Int32(perRank), sb_type_int32(), handle.raw, $0)
        }
    }

    /// All-to-all of float runs of different lengths (`MPI_Alltoallv`): `sendCounts[r]` floats
    /// from `send + sendOffsets[r]` to rank r, `receiveCounts[q]` from rank q into
    /// `receive + receiveOffsets[q]`. Zero-length runs are allowed.
    public func allToAll(_ send: UnsafePointer<Float>, _ sendCounts: UnsafePointer<Int32>, _ sendOffsets: UnsafePointer<Int32>,
                         _ receive: UnsafeMutablePointer<Float>, _ receiveCounts: UnsafePointer<Int32>,
                         _ receiveOffsets: UnsafePointer<Int32>, _ phase: StaticString, _ detail: String = "") throws {
        var bytes = 0
        for r in 0..<size { bytes += Int(sendCounts[r]) * 4 }
        watchdog.begin(phase, detail, bytes: bytes)
        try collective("MPI_Ialltoallv of \(bytes) bytes") {
            MPI_Ialltoallv(send, sendCounts, sendOffsets, sb_type_float(), receive, receiveCounts, receiveOffsets, sb_type_float(),
                           handle.raw, $0)
        }
    }

    /// Float runs to one rank (point to point, under the watchdog): every rank but `root`
    /// sends its `runs` in order, one message each; `root` receives, from each other rank q in
    /// order, runs into `places(q)`, which lists them as q sends them. Every rank makes the call;
    /// a rank with nothing to send passes no runs. A run is at most a bucket's chunk (a bucket
    /// is at most 1 GiB), so its count fits MPI's `Int32`.
    public func gatherRuns(_ runs: [(UnsafePointer<Float>, Int)], root: Int,
                           places: (Int) -> [(UnsafeMutablePointer<Float>, Int)], _ phase: StaticString,
                           _ detail: String = "") throws {
        guard size > 1 else { return }
        let tag: Int32 = 31
        // (where, floats, peer), received on the root, sent elsewhere.
        let transfers: [(UnsafeMutablePointer<Float>, Int, Int)] = rank == root
            ? (0..<size).filter { $0 != root }.flatMap { q in places(q).map { ($0.0, $0.1, q) } }
            : runs.map { (UnsafeMutablePointer(mutating: $0.0), $0.1, root) }
        // Every rank counts the call, whether it moves anything or not.
        watchdog.begin(phase, detail, bytes: 4 * transfers.reduce(0) { $0 + $1.1 })
        var requests: [MPI_Request?] = []
        for (at, n, peer) in transfers where n > 0 {
            var request: MPI_Request? = sb_request_null()
            if rank == root {
                try check(MPI_Irecv(at, Int32(n), sb_type_float(), Int32(peer), tag, handle.raw, &request), "MPI_Irecv of \(n) floats")
            } else {
                try check(MPI_Isend(at, Int32(n), sb_type_float(), Int32(peer), tag, handle.raw, &request), "MPI_Isend of \(n) floats")
            }
            requests.append(request)
        }
        guard !requests.isEmpty else { return }
        try requests.withUnsafeMutableBufferPointer { all in
            try watchdog.wait {
                var done: Int32 = 0
                try check(MPI_Testall(Int32(all.count), all.baseAddress, &done, sb_statuses_ignore()), "MPI_Testall of \(all.count) runs")
                return done != 0
            }
        }
    }

    /// A plain blocking `MPI_Allreduce`, without tag or watchdog: the reference rate that
    /// `bench W3` compares the bucketed gradient sync with.
    public func referenceAllreduceSum(_ data: UnsafeMutablePointer<Float>, count: Int) throws {
        guard size > 1, count > 0 else { return }
        try check(MPI_Allreduce(sb_in_place(), data, Int32(count), DataType.float.raw, ReduceOp.sum.raw, handle.raw),
                  "MPI_Allreduce of \(count) floats")
    }

    /// Posts a nonblocking collective (`post` fills in its request) and waits for it under the
    /// watchdog. OpenMPI's nonblocking collectives (libnbc) allocate a schedule per call and
    /// more as they progress: the allocation counter counts those apart from ours (`libraryCall`).
    func collective(_ call: @autoclosure () -> String, _ post: (UnsafeMutablePointer<MPI_Request?>) -> Int32) throws {
        var request: MPI_Request? = sb_request_null()
        try libraryCall {
            try check(withUnsafeMutablePointer(to: &request) { post($0) }, call())
            try complete(&request, call())
        }
    }

    /// Waits for one request under the watchdog.
    func complete(_ request: inout MPI_Request?, _ call: @autoclosure () -> String) throws {
        try watchdog.wait {
            var done: Int32 = 0
            try check(MPI_Test(&request, &done, sb_status_ignore()), call())
            return done != 0
        }
    }

    /// Gathers `bytes` (the same length on every rank) on the coordinator, in rank order;
    /// nil on the other ranks.
    public func gatherBytes(_ bytes: [UInt8], _ phase: StaticString) throws -> [UInt8]? {
        guard size > 1 else { return bytes }
        watchdog.begin(phase, bytes: bytes.count)
        var out = [UInt8](repeating: 0, count: isCoordinator ? bytes.count * size : 0)
        try bytes.withUnsafeBufferPointer { send in
            try out.withUnsafeMutableBufferPointer { recv in
                try collective("MPI_Igather of \(bytes.count) bytes") {
                    MPI_Igather(send.baseAddress, Int32(bytes.count), DataType.byte.raw,
                                recv.baseAddress, Int32(bytes.count), DataType.byte.raw, 0, handle.raw, $0)
                }
            }
        }
        return isCoordinator ? out : nil
    }

    /// The coordinator's `bytes`, on every rank (any length): the length goes first, then the
    /// bytes. The other ranks' `bytes` are replaced.
    public func broadcastBytes(_ bytes: inout [UInt8], _ phase: StaticString) throws {
        guard size > 1 else { return }
        var length = Int64(bytes.count)
        watchdog.begin(phase, bytes: 8)
        try collective("MPI_Ibcast of a length") { MPI_Ibcast(&length, 1, DataType.int64.raw, 0, handle.raw, $0) }
        if !isCoordinator { bytes = [UInt8](repeating: 0, count: Int(length)) }
        guard length > 0 else { return }
        watchdog.begin(phase, bytes: Int(length))
        try bytes.withUnsafeMutableBufferPointer { buffer in
            try collective("MPI_Ibcast of \(length) bytes") {
                MPI_Ibcast(buffer.baseAddress, Int32(length), DataType.byte.raw, 0, handle.raw, $0)
            }
        }
    }

    /// Waits until every rank has arrived (a barrier under the watchdog). `idle` ranks sleep
    /// between polls instead of spinning, to leave the cores to ranks that are measuring.
    public func barrier(_ phase: StaticString, idle: Bool = false) throws {
        guard size > 1 else { return }
        watchdog.begin(phase, bytes: 0)
        var request: MPI_Request? = sb_request_null()
        try check(MPI_Ibarrier(handle.raw, &request), "MPI_Ibarrier")
        try watchdog.wait {
            var done: Int32 = 0
            try check(MPI_Test(&request, &done, sb_status_ignore()), "MPI_Ibarrier")
            if done == 0 && idle { usleep(2000) }
            return done != 0
        }
    }
}
