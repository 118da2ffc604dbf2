import Errors
import Foundation

/// What a run folder says about its run, for `switchboard report`: the resolved config, and
/// the series of `metrics.jsonl`, read as untrusted input. What is missing or damaged becomes
/// a note (the report says it) rather than an error; only a path that is not a run folder at
/// all is refused.
public struct RunHistory: Sendable {
    public struct Point: Sendable, Equatable {
        public let step: Int
        public let value: Double
    }

    /// The folder's name, which names the run in the report.
    public let name: String
    public let path: String
    /// `section.key` → the value as written in `config.toml`.
    public var config: [String: String] = [:]
    /// "train/loss", "train/lr", "train/samples_per_s", "eval/test_loss", "eval/test_accuracy", …
    public var series: [String: [Point]] = [:]
    /// Per MoE layer, the tokens routed to each expert at each logged step.
    public var expertTokens: [[(step: Int, tokens: [Int])]] = []
    /// What the report should say is missing or damaged.
    public var notes: [String] = []

    /// Reads `path`; throws only when it is not a run folder (neither `config.toml` nor
    /// `metrics.jsonl` in it).
    public static func load(_ path: String) throws -> RunHistory {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ConfigError("\(path): no such run folder")
        }
        let trimmed = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        var run = RunHistory(name: URL(fileURLWithPath: trimmed).lastPathComponent, path: trimmed)
        let configPath = "\(trimmed)/config.toml", metricsPath = "\(trimmed)/metrics.jsonl"
        let hasConfig = FileManager.default.fileExists(atPath: configPath)
        let hasMetrics = FileManager.default.fileExists(atPath: metricsPath)
        guard hasConfig || hasMetrics else {
            throw ConfigError("\(path): not a run folder (it has neither config.toml nor metrics.jsonl)")
        }
        if hasConfig, let text = try? String(contentsOfFile: configPath, encoding: .utf8) {
            do {
                run.config = Self.flatten(try ConfigValue.parse(text, source: "config.toml"))
            } catch {
                run.notes.append("config.toml does not parse (\((error as? ConfigError)?.message ?? "\(error)")): the run's settings are not compared")
            }
        } else {
            run.notes.append("config.toml is missing or unreadable: the run's settings are not compared")
        }
        guard hasMetrics, let data = FileManager.default.contents(atPath: metricsPath) else {
            run.notes.append("metrics.jsonl is missing or unreadable: no curves")
            return run
        }
        run.read(metrics: data)
        if run.series.isEmpty { run.notes.append("no metrics yet (the run has not reached its first logged step)") }
        return run
    }

    /// A parsed config as `section.key` → the value in TOML (nested tables joined by dots).
    static func flatten(_ table: [String: ConfigValue], prefix: String = "") -> [String: String] {
        var out: [String: String] = [:]
        for (key, value) in table {
            let name = prefix.isEmpty ? key : "\(prefix).\(key)"
            if case .table(let inner) = value {
                out.merge(flatten(inner, prefix: name)) { a, _ in a }
            } else {
                out[name] = value.toml
            }
        }
        return out
    }

    mutating func read(metrics data: Data) {
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        var bad: [Int] = []
        // Read from the end: a run continued from its checkpoint at step S logs the steps after
        // S again, so a record before a resume record of step S counts only up to S (the later
        // values win, as TensorBoard's restart marks make them win there). One pass, however
        // many resumes.
        var cutoff = Int.max
        for (i, line) in lines.enumerated().reversed() where !line.isEmpty {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let kind = object["kind"] as? String, let step = Self.integer(object["step"]), step >= 0 else {
                // The last line of a run killed mid-write, or damage anywhere.
                if i == lines.count - 1 {
                    notes.append("metrics.jsonl: its last line (\(i + 1)) is cut short, an interrupted write; the lines before it are shown")
                } else {
                    bad.append(i + 1)
                }
                continue
            }
            guard step <= cutoff else { continue }
            defer { if kind == "resume" { cutoff = min(cutoff, step) } }
            for (key, value) in object where !EventFile.positionKeys.contains(key) {
                if let v = Self.number(value), v.isFinite, abs(v) < 1e300 {
                    series["\(kind)/\(key)", default: []].append(Point(step: step, value: v))
                } else if kind == "train", key.hasPrefix("moe"), key.hasSuffix("_tokens"),
                          let layer = Int(key.dropFirst(3).dropLast(7)), layer >= 0, layer < 1024,
                          let counts = value as? [Any] {
                    // Counts are tokens: not negative, and a layer has at most a few thousand experts.
                    let tokens = counts.compactMap(Self.integer).filter { $0 >= 0 }
                    guard tokens.count == counts.count, !tokens.isEmpty, tokens.count <= 4096 else { continue }
                    while expertTokens.count <= layer { expertTokens.append([]) }
                    expertTokens[layer].append((step, tokens))
                }
            }
        }
        bad.reverse()
        for layer in expertTokens.indices { expertTokens[layer].reverse() }
        if !bad.isEmpty {
            notes.append("metrics.jsonl: \(bad.count) line\(bad.count == 1 ? " is" : "s are") not a metrics record (line\(bad.count == 1 ? "" : "s") "
                         + "\(bad.prefix(5).map(String.init).joined(separator: ", "))\(bad.count > 5 ? ", …" : "")); skipped")
        }
        for key in series.keys { series[key]!.sort { $0.step < $1.step } }
    }

    /// A JSON number (not a boolean, which Foundation also hands over as an NSNumber).
    static func number(_ value: Any?) -> Double? {
        guard let value, !(type(of: value) == Bool.self), let n = value as? NSNumber,
              String(cString: n.objCType) != "c" else { return nil }
        return n.doubleValue
    }

    static func integer(_ value: Any?) -> Int? {
        guard let v = number(value), v == v.rounded(), abs(v) < 1e15 else { return nil }
        return Int(v)
    }
}

