import CMPI
import Kernels
#if canImport(Glibc)
import Glibc
#endif

/// The hang watchdog. Every collective waits through `wait(_:)`, which polls the operation
/// and, past `deadline` seconds, turns a silent hang into a report and an abort:
///
/// - a rank that times out prints its tag and tells the coordinator;
/// - the coordinator (on its own timeout or on such a message) asks every rank where it is,
///   collects answers for a short grace period, prints one line per rank — ranks that do not
///   answer are named with the collective they never reached — and aborts the job;
/// - a rank whose report the coordinator never acts on (rank 0 itself is stopped) aborts the
///   job itself after the grace period, saying so.
///
/// Messages travel on a communicator of their own, so they never match the trainer's. Each
/// rank keeps one receive posted; it is only looked at while the rank waits in a collective.
public final class Watchdog {
    /// Seconds a rank may wait in one collective before the job is declared hung.
    public var deadline: Double
    /// Set by the trainer at each step, so that tags say where training was.
    public var step = -1
    public private(set) var tag = CollectiveTag.none
    /// Seconds spent waiting in collectives since the last `resetWaitTime()`.
    public private(set) var waitSeconds = 0.0

    let rank: Int
    let size: Int
    let channel: MPI_Comm
    let inbox = UnsafeMutablePointer<UInt8>.allocate(capacity: Message.size)
    var inboxRequest: MPI_Request? = sb_request_null()
    /// Outgoing messages stay alive until the job ends: it ends soon after any is sent.
    var outbox: [UnsafeMutablePointer<UInt8>] = []

    public static let defaultDeadline = 300.0

    init(channel: MPI_Comm, rank: Int, size: Int, deadline: Double = Watchdog.defaultDeadline) {
        self.channel = channel
        self.rank = rank
        self.size = size
        self.deadline = deadline
        if size > 1 { postReceive() }
    }

    /// Seconds to collect answers once a hang is declared, before aborting.
    var grace: Double { min(2, max(deadline / 2, 0.2)) }

    /// Marks the start of a collective: the next entry in this rank's sequence.
    public func begin(_ phase: StaticString, _ detail: String = "", bytes: Int) {
        tag = CollectiveTag(step: step, phase: phase, detail: detail, sequence: tag.sequence + 1, bytes: bytes)
    }

    public func resetWaitTime() { waitSeconds = 0 }

    /// Calls `poll` until it returns true (the collective has completed), answering watchdog
    /// messages meanwhile; never returns if the wait passes the deadline.
    public func wait(_ poll: () throws -> Bool) throws {
        if try poll() { return }
        let start = MPI_Wtime()
        defer { waitSeconds += MPI_Wtime() - start }
        var spins = 0
        while true {
            if try poll() { return }
            spins &+= 1
            // MPI_Test costs ~0.1 µs; looking at the clock and the inbox every 64 polls keeps
            // the watchdog's cost out of the profile.
            if spins & 63 == 0 {
                serviceInbox(waitingSince: start)
                let waited = MPI_Wtime() - start
                if waited > deadline { timedOut(waited: waited) }
            }
        }
    }

    // MARK: - Messages

    /// A fixed-size message: kind, sequence number, seconds waited, and a line of text.
    enum Kind: UInt8 { case hang = 1, whereAreYou = 2, here = 3 }

    struct Message {
        static let size = 512
        var kind: Kind
        var sequence: Int
        var waited: Double
        var text: String

        func encode(into p: UnsafeMutablePointer<UInt8>) {
            p.initialize(repeating: 0, count: Message.size)
            p[0] = kind.rawValue
            withUnsafeBytes(of: Int64(sequence).littleEndian) { for i in 0..<8 { p[1 + i] = $0[i] } }
            withUnsafeBytes(of: waited.bitPattern.littleEndian) { for i in 0..<8 { p[9 + i] = $0[i] } }
            let utf8 = Array(text.utf8.prefix(Message.size - 18))
            for (i, b) in utf8.enumerated() { p[17 + i] = b }
        }

        static func decode(_ p: UnsafePointer<UInt8>) -> Message? {
            guard let kind = Kind(rawValue: p[0]) else { return nil }
            var seq: UInt64 = 0, bits: UInt64 = 0
            for i in 0..<8 { seq |= UInt64(p[1 + i]) << (8 * UInt64(i)); bits |= UInt64(p[9 + i]) << (8 * UInt64(i)) }
            let text = String(decoding: UnsafeBufferPointer(start: p + 17, count: Message.size - 18).prefix { $0 != 0 }, as: UTF8.self)
            return Message(kind: kind, sequence: Int(Int64(bitPattern: seq)), waited: Double(bitPattern: bits), text: text)
        }
    }

    func postReceive() {
        MPI_Irecv(inbox, Int32(Message.size), sb_type_byte(), sb_any_source(), 0, channel, &inboxRequest)
    }

    /// The next message that has arrived, if any, with its sender.
    func receive() -> (from: Int, message: Message)? {
        var done: Int32 = 0
        var status = MPI_Status()
        // OpenMPI may allocate as it progresses (`libraryCall`).
        guard libraryCall({ MPI_Test(&inboxRequest, &done, &status) }) == sb_success(), done != 0 else { return nil }
        let message = Message.decode(inbox)
        let from = Int(status.MPI_SOURCE)
        postReceive()
        return message.map { (from, $0) }
    }

    func send(_ message: Message, to destination: Int) {
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: Message.size)
        message.encode(into: buffer)
        outbox.append(buffer)
        var request: MPI_Request? = sb_request_null()
        MPI_Isend(buffer, Int32(Message.size), sb_type_byte(), Int32(destination), 0, channel, &request)
    }

    func statusMessage(_ kind: Kind, waited: Double) -> Message {
        Message(kind: kind, sequence: tag.sequence, waited: waited,
                text: "waiting \(seconds(waited)) in \(tag)")
    }

    func serviceInbox(waitingSince start: Double) {
        while let (from, message) = receive() {
            if rank == 0 {
                if message.kind == .hang { coordinatorReport(trigger: (from, message), ownWait: MPI_Wtime() - start) }
            } else if message.kind == .whereAreYou {
                send(statusMessage(.here, waited: MPI_Wtime() - start), to: 0)
            }
        }
    }

    // MARK: - Declaring a hang

    func timedOut(waited: Double) -> Never {
        if rank == 0 { coordinatorReport(trigger: nil, ownWait: waited) }
        say("switchboard: watchdog: rank \(rank) waited \(seconds(waited)) (deadline \(seconds(deadline))) in \(tag); reporting to the coordinator")
        send(statusMessage(.hang, waited: waited), to: 0)
        // Answer the coordinator's questions while it prepares its report and aborts the job.
        let start = MPI_Wtime()
        while MPI_Wtime() - start < grace * 2 {
            while let (_, message) = receive() {
                if message.kind == .whereAreYou { send(statusMessage(.here, waited: waited + MPI_Wtime() - start), to: 0) }
            }
            usleep(1000)
        }
        say("switchboard: watchdog: rank \(rank): the coordinator (rank 0) did not answer within \(seconds(grace * 2)); "
            + "it may be stopped or stuck outside MPI. Aborting the job.")
        MPI_Abort(sb_comm_world(), 1)
        exit(1)
    }

    /// Asks every rank where it is, prints one line per rank, and aborts every rank.
    func coordinatorReport(trigger: (from: Int, message: Message)?, ownWait: Double) -> Never {
        var answers = [Message?](repeating: nil, count: size)
        answers[0] = statusMessage(.here, waited: ownWait)
        if let trigger { answers[trigger.from] = trigger.message }
        for r in 1..<size where answers[r] == nil { send(Message(kind: .whereAreYou, sequence: 0, waited: 0, text: ""), to: r) }
        let start = MPI_Wtime()
        while answers.contains(where: { $0 == nil }) && MPI_Wtime() - start < grace {
            while let (from, message) = receive() { answers[from] = message }
            usleep(1000)
        }
        // The collective a silent rank never reached: the earliest one anybody waits in.
        let missed = answers.compactMap { $0 }.min { $0.sequence < $1.sequence }
        let headline = trigger.map { "rank \($0.from) waited \(seconds($0.message.waited))" } ?? "rank 0 waited \(seconds(ownWait))"
        var lines = ["switchboard: watchdog: \(headline) in a collective (deadline \(seconds(deadline))); where every rank is:"]
        for r in 0..<size {
            if let a = answers[r] {
                lines.append("  rank \(r): \(a.text)")
            } else {
                let what = missed.map { "never reached collective #\($0.sequence), which the others wait in" } ?? "no answer"
                lines.append("  rank \(r): no answer: \(what) (stopped, crashed, or stuck outside MPI)")
            }
        }
        lines.append("switchboard: watchdog: aborting every rank")
        say(lines.joined(separator: "\n"))
        MPI_Abort(sb_comm_world(), 1)
        exit(1)
    }

    func say(_ text: String) {
        let line = text + "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }

    func seconds(_ s: Double) -> String {
        s < 10 ? "\(Double(Int(s * 10)) / 10) s" : "\(Int(s)) s"
    }
}
