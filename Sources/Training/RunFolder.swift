import Errors
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Storage

/// The folder a run writes: `<output>/<name>/` with the resolved `config.toml`,
/// `metrics.jsonl` (one JSON object per logged step and per evaluation) and, only when the
/// run finished, `summary.json`. A run never writes into a folder that already has files:
/// it takes the next free name (`<name>-2`, `<name>-3`, …), so nothing on disk is lost —
/// unless it continues that run (`--resume auto`), appending to its metrics.
///
/// One job at a time owns a run folder: its coordinator holds an exclusive `flock` on
/// `<folder>/.lock` for as long as it runs, and the kernel drops the lock when the process
/// ends, however it ends. A second job on the same folder is refused, naming the process that
/// holds it, or waits for it (`wait`: a requeued job whose previous start is still stopping).
///
/// Every rank of the job writes checkpoint shards into the folder, so every rank also holds a
/// shared lock on `<folder>/.ranks` (`RunFolder.Member`), and a job starts only once it can
/// take that one exclusively: no rank of an earlier start, say one on a node cut off from
/// the others, still writes there.
///
/// `<folder>/.step` holds the last step the coordinator finished, so that the next start
/// can say how many steps since the last checkpoint were lost.
public final class RunFolder {
    public let path: String
    /// The locks' file descriptors (`.lock`, `.ranks`), open until this object goes.
    private let lock: Int32, ranks: Int32
    /// `.step`, and the text written there each step (a number padded with spaces).
    private let stepFile: Int32
    private let stepText = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: 24)
    /// The step the previous start of this run reached (`.step`), when there was one.
    public let previousStep: Int?
    private var metrics: UnsafeMutablePointer<FILE>?
    /// The same records as TensorBoard scalars (`EventFile`).
    private var events: EventFile?

    public static let lockFile = ".lock", ranksFile = ".ranks", stepFileName = ".step"

    /// How often a waiting start looks at the locks again.
    static let retry: Duration = .milliseconds(200)

    /// Claims `<output>/<name>` (`continuing`: as it is, made if missing) or, for a new run,
    /// the first free name from it; nothing else is written yet (`open`). A folder in use is
    /// waited for up to `wait` (`waiting` says so once), then refused.
    public static func claim(output: String, name: String, continuing: Bool, wait: Duration = .zero,
                             waiting: (String) -> Void = { _ in }) throws -> RunFolder {
        let fm = FileManager.default
        var n = 1
        while true {
            let candidate = n == 1 ? "\(output)/\(name)" : "\(output)/\(name)-\(n)"
            n += 1
            if !continuing, let items = try? fm.contentsOfDirectory(atPath: candidate), !items.isEmpty { continue }
            do {
                try fm.createDirectory(atPath: candidate, withIntermediateDirectories: true)
            } catch {
                throw DiskError(candidate, "cannot create the run folder (\(error.localizedDescription))")
            }
            if let folder = try RunFolder(candidate, continuing: continuing, wait: wait, waiting: waiting) {
                // Another new run may have taken the name between the look and the lock.
                let items = (try? fm.contentsOfDirectory(atPath: candidate)) ?? []
                if continuing || Set(items).isSubset(of: [lockFile, ranksFile, stepFileName]) { return folder }
            }
        }
    }

    /// Locks `path`; nil when another process holds it and this is a new run (which looks
    /// for another name instead).
    private init?(_ path: String, continuing: Bool, wait: Duration, waiting: (String) -> Void) throws {
        let deadline = ContinuousClock.now + wait
        let lockPath = "\(path)/\(Self.lockFile)"
        let fd = try Self.openLock(lockPath)
        let taken = try Self.take(fd, lockPath, until: continuing ? deadline : .now) {
            let holder = (try? String(contentsOfFile: lockPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            return holder?.isEmpty == false ? holder! : "another process"
        } waiting: { waiting("\(path): in use by another job (\($0)); waiting up to \(Int(wait.seconds)) s for it to end") }
        if let holder = taken {
            Glibc.close(fd)
            if continuing { throw RunFolderInUse(path: path, holder: holder, waited: wait) }
            return nil
        }
        // Who holds it, for the message another job gets.
        let host = ProcessInfo.processInfo.hostName
        let note = "process \(getpid()) on \(host), since \(ISO8601DateFormatter().string(from: Date()))\n"
        _ = ftruncate(fd, 0)
        _ = note.withCString { pwrite(fd, $0, strlen($0), 0) }

        // No rank of an earlier job may still write here: their shared locks must be gone.
        let ranksPath = "\(path)/\(Self.ranksFile)"
        let ranks: Int32
        do { ranks = try Self.openLock(ranksPath) } catch { Glibc.close(fd); throw error }
        if try Self.take(ranks, ranksPath, until: deadline, holder: { "" }, waiting: { _ in
            waiting("\(path): ranks of an earlier job still hold \(Self.ranksFile); waiting up to \(Int(wait.seconds)) s for them to end")
        }) != nil {
            Glibc.close(fd)
            Glibc.close(ranks)
            throw RanksStillWriting(path: path, waited: wait)
        }
        // Now shared, beside the other ranks of this job. No other job can come between:
        // it would need `.lock` first.
        _ = flock(ranks, LOCK_SH)

        let stepPath = "\(path)/\(Self.stepFileName)"
        previousStep = continuing ? Self.readStep(stepPath) : nil
        stepFile = Glibc.open(stepPath, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        self.path = path
        lock = fd
        self.ranks = ranks
    }

    /// Opens (or makes) a lock file.
    static func openLock(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DiskError(path, "cannot open the run folder's lock (\(systemMessage()))") }
        return fd
    }

    /// Takes `fd`'s lock exclusively, trying again until `deadline` (`waiting` says so once,
    /// with the holder); nil once taken, else the holder when the deadline passed.
    static func take(_ fd: Int32, _ path: String, until deadline: ContinuousClock.Instant, holder: () -> String,
                     waiting: (String) -> Void) throws -> String? {
        var said = false
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let reason = errno
            // Only "held by another" is a held lock; a file system without locks is an error.
            guard reason == EWOULDBLOCK else { throw DiskError(path, failedCall("locking the run folder", systemMessage(reason))) }
            guard ContinuousClock.now < deadline else { return holder() }
            if !said { waiting(holder()) }
            said = true
            Thread.sleep(forTimeInterval: retry.seconds)
        }
        return nil
    }

    /// The step in `.step`, when it holds one (it is only a report: anything else is no step).
    static func readStep(_ path: String) -> Int? {
        guard let data = FileManager.default.contents(atPath: path), data.count <= 64,
              let text = String(data: data, encoding: .utf8),
              let step = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), step >= 0 else { return nil }
        return step
    }

    /// Records that the run finished `step` (a plain write, every step; no allocation).
    public func reached(step: Int) {
        guard stepFile >= 0 else { return }
        var v = step, i = stepText.count - 1
        stepText[i] = UInt8(ascii: "\n")
        repeat { i -= 1; stepText[i] = UInt8(ascii: "0") + UInt8(v % 10); v /= 10 } while v > 0 && i > 0
        while i > 0 { i -= 1; stepText[i] = UInt8(ascii: " ") }
        _ = pwrite(stepFile, stepText.baseAddress, stepText.count, 0)
    }

    /// A rank's share in the run folder at `path`: its shared lock on `.ranks`, held until
    /// the process ends. The coordinator's `RunFolder` holds its own.
    public final class Member {
        private let fd: Int32
        public init(_ path: String) throws {
            let ranksPath = "\(path)/\(RunFolder.ranksFile)"
            fd = try RunFolder.openLock(ranksPath)
            // The coordinator holds it shared already: only a lock that failed is refused.
            guard flock(fd, LOCK_SH) == 0 else {
                let reason = systemMessage()
                Glibc.close(fd)
                throw DiskError(ranksPath, failedCall("locking the run folder", reason))
            }
        }
        deinit { Glibc.close(fd) }
    }

    /// Starts writing: the resolved config, and the metrics (appended to when continuing).
    public func open(configTOML: String, continuing: Bool) throws {
        try Self.write(configTOML, to: "\(path)/config.toml")
        guard let f = fopen("\(path)/metrics.jsonl", continuing ? "a" : "w") else {
            throw DiskError("\(path)/metrics.jsonl", "cannot open for writing (\(systemMessage()))")
        }
        metrics = f
        events = try EventFile(folder: path)
    }

    deinit {
        if let metrics { fclose(metrics) }
        if stepFile >= 0 { Glibc.close(stepFile) }
        stepText.deallocate()
        Glibc.close(ranks)
        Glibc.close(lock)
    }

    /// A run continued from the checkpoint of `step`: TensorBoard is told to drop what the
    /// run logged after it before it stopped (the steps it now trains again).
    public func restartCurves(after step: Int) {
        try? events?.restart(at: step + 1)
    }

    /// Appends one JSON object (built from ordered fields) as a line and flushes it.
    public func log(_ fields: [(String, JSONValue)]) {
        guard let metrics else { return }
        fputs(JSONValue.object(fields).text + "\n", metrics)
        fflush(metrics)
        // Like the metrics line, a record TensorBoard misses (a full disk) does not stop training.
        if let (step, scalars) = EventFile.scalars(fields) { try? events?.write(step: step, scalars: scalars) }
    }

    /// Whether the run has been marked finished.
    public var isFinished: Bool { FileManager.default.fileExists(atPath: "\(path)/summary.json") }

    /// Marks the run finished.
    public func finish(summary: [(String, JSONValue)]) throws {
        try Self.write(JSONValue.object(summary).text + "\n", to: "\(path)/summary.json")
    }

    /// Writes `text` to `path` (through a temporary file and a rename), naming the path if it cannot.
    public static func write(_ text: String, to path: String) throws {
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw DiskError(path, "cannot write (\(error.localizedDescription))")
        }
    }
}

/// Another job holds the run folder.
public struct RunFolderInUse: SwitchboardError {
    public let path: String, holder: String
    /// How long this start waited for it.
    public var waited: Duration = .zero
    public var message: String {
        "\(path): the run folder is in use by another job (\(holder))"
            + (waited > .zero ? " after waiting \(Int(waited.seconds)) s" : "")
            + "; wait for it to end, or give this run another [run] name"
    }
    public var exitCode: Int32 { 1 }
}

/// Ranks of an earlier job still hold the run folder's `.ranks` (its coordinator is gone).
public struct RanksStillWriting: SwitchboardError {
    public let path: String, waited: Duration
    public var message: String {
        "\(path): ranks of an earlier job still hold \(RunFolder.ranksFile)"
            + (waited > .zero ? " after waiting \(Int(waited.seconds)) s" : "")
            + "; they may still write checkpoint shards there: stop them (or wait longer, --wait-for-folder) before continuing"
    }
    public var exitCode: Int32 { 1 }
}

/// The JSON this program writes: numbers print in Swift's shortest round-trip form, so
/// equal values give equal text.
public enum JSONValue {
    case int(Int)
    case double(Double)
    case string(String)
    case bool(Bool)
    case object([(String, JSONValue)])
    case array([JSONValue])

    public var text: String {
        switch self {
        case .int(let v): String(v)
        case .double(let v): v.isFinite ? "\(v)" : "null"
        case .bool(let v): v ? "true" : "false"
        case .string(let s): Self.quote(s)
        case .object(let f): "{" + f.map { "\(Self.quote($0.0)):\($0.1.text)" }.joined(separator: ",") + "}"
        case .array(let a): "[" + a.map(\.text).joined(separator: ",") + "]"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
    }
}
