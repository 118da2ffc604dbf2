import Errors
import Foundation
import Storage

/// The folder a run writes: `<output>/<name>/` with the resolved `config.toml`,
/// `metrics.jsonl` (one JSON object per logged step and per evaluation) and, only when the
/// run finished, `summary.json`. A run never writes into a folder that already has files:
/// it takes the next free name (`<name>-2`, `<name>-3`, …), so nothing on disk is lost —
/// unless it continues that run (`--resume auto`), appending to its metrics.
public final class RunFolder {
    public let path: String
    private let metrics: UnsafeMutablePointer<FILE>

    /// - Parameter continuing: use `<output>/<name>` as it is (made if missing) and append.
    public init(output: String, name: String, configTOML: String, continuing: Bool = false) throws {
        let fm = FileManager.default
        var candidate = "\(output)/\(name)"
        var n = 2
        while !continuing, let items = try? fm.contentsOfDirectory(atPath: candidate), !items.isEmpty {
            candidate = "\(output)/\(name)-\(n)"
            n += 1
        }
        do {
            try fm.createDirectory(atPath: candidate, withIntermediateDirectories: true)
        } catch {
            throw DiskError(candidate, "cannot create the run folder (\(error.localizedDescription))")
        }
        path = candidate
        try Self.write(configTOML, to: "\(candidate)/config.toml")
        guard let f = fopen("\(candidate)/metrics.jsonl", continuing ? "a" : "w") else {
            throw DiskError("\(candidate)/metrics.jsonl", "cannot open for writing (\(systemMessage()))")
        }
        metrics = f
    }

    deinit { fclose(metrics) }

    /// Appends one JSON object (built from ordered fields) as a line and flushes it.
    public func log(_ fields: [(String, JSONValue)]) {
        fputs(JSONValue.object(fields).text + "\n", metrics)
        fflush(metrics)
    }

    /// Marks the run finished.
    public func finish(summary: [(String, JSONValue)]) throws {
        try Self.write(JSONValue.object(summary).text + "\n", to: "\(path)/summary.json")
    }

    static func write(_ text: String, to path: String) throws {
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw DiskError(path, "cannot write (\(error.localizedDescription))")
        }
    }
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
