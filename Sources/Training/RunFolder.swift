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
/// One job at a time owns a run folder: it holds an exclusive `flock` on `<folder>/.lock`
/// for as long as it runs, and the kernel drops the lock when the process ends, however it
/// ends. A second job on the same folder is refused, naming the process that holds it.
public final class RunFolder {
    public let path: String
    /// The lock's file descriptor, open until this object goes.
    private let lock: Int32
    private var metrics: UnsafeMutablePointer<FILE>?
    /// The same records as TensorBoard scalars (`EventFile`).
    private var events: EventFile?

    public static let lockFile = ".lock"

    /// Claims `<output>/<name>` (`continuing`: as it is, made if missing) or, for a new run,
    /// the first free name from it; nothing else is written yet (`open`).
    public static func claim(output: String, name: String, continuing: Bool) throws -> RunFolder {
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
            if let folder = try RunFolder(candidate, refuseIfHeld: continuing) {
                // Another new run may have taken the name between the look and the lock.
                let items = (try? fm.contentsOfDirectory(atPath: candidate)) ?? []
                if continuing || items == [lockFile] { return folder }
            }
        }
    }

    /// Locks `path`; nil when another process holds it and `refuseIfHeld` is false.
    private init?(_ path: String, refuseIfHeld: Bool) throws {
        let lockPath = "\(path)/\(Self.lockFile)"
        let fd = Glibc.open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DiskError(lockPath, "cannot open the run folder's lock (\(systemMessage()))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno
            let holder = (try? String(contentsOfFile: lockPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            Glibc.close(fd)
            // Only "held by another" is a held lock; a file system without locks is an error.
            guard reason == EWOULDBLOCK else {
                throw DiskError(lockPath, failedCall("locking the run folder", systemMessage(reason)))
            }
            guard refuseIfHeld else { return nil }
            throw RunFolderInUse(path: path, holder: holder?.isEmpty == false ? holder! : "another process")
        }
        // Who holds it, for the message another job gets.
        let host = ProcessInfo.processInfo.hostName
        let note = "process \(getpid()) on \(host), since \(ISO8601DateFormatter().string(from: Date()))\n"
        _ = ftruncate(fd, 0)
        _ = note.withCString { pwrite(fd, $0, strlen($0), 0) }
        self.path = path
        lock = fd
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
        Glibc.close(lock)
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
    public var message: String {
        "\(path): the run folder is in use by another job (\(holder)); wait for it to end, or give this run another [run] name"
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
