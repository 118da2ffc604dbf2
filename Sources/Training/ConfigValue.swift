import Errors
import TOMLKit
import Foundation

/// A TOML value, converted from the parser's tree once so nothing else depends on it.
public indirect enum ConfigValue: Equatable, Sendable {
    case int(Int)
    case double(Double)
    case bool(Bool)
    case string(String)
    case array([ConfigValue])
    case table([String: ConfigValue])

    /// The value's TOML type, as written in error messages.
    var typeName: String {
        switch self {
        case .int: "an integer"
        case .double: "a number"
        case .bool: "a boolean"
        case .string: "a string"
        case .array: "an array"
        case .table: "a table"
        }
    }

    /// TOML text for the value.
    public var toml: String {
        switch self {
        case .int(let v): String(v)
        case .double(let v): "\(v)"   // Swift writes 1.0, 1e-08, 1e+15: all valid TOML floats
        case .bool(let v): v ? "true" : "false"
        case .string(let v): "\"" + v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        case .array(let a): "[" + a.map(\.toml).joined(separator: ", ") + "]"
        case .table(let t): "{ " + t.keys.sorted().map { "\($0) = \(t[$0]!.toml)" }.joined(separator: ", ") + " }"
        }
    }

    /// Parses a TOML document into a table (its nesting bounded first: `TOMLDepth`).
    static func parse(_ text: String, source: String) throws -> [String: ConfigValue] {
        try TOMLDepth.check(text, source: source)
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ConfigError("\(source):\(e.source.begin.line):\(e.source.begin.column): \(e.description)")
        }
        guard case .table(let t) = try convert(table, path: "", source: source) else { fatalError() }
        return t
    }

    static func convert(_ v: TOMLValueConvertible, path: String, source: String) throws -> ConfigValue {
        switch v.type {
        case .int: return .int(v.int!)
        case .double: return .double(v.double!)
        case .bool: return .bool(v.bool!)
        case .string: return .string(v.string!)
        case .array:
            return .array(try v.array!.map { try convert($0, path: path, source: source) })
        case .table:
            let t = v.table!
            var out: [String: ConfigValue] = [:]
            for k in t.keys { out[k] = try convert(t[k]!, path: path.isEmpty ? k : "\(path).\(k)", source: source) }
            return .table(out)
        case .date, .time, .dateTime:
            throw ConfigError("\(source): \(path) is a date or time; no setting takes one")
        }
    }
}

/// A bad job file or option: exit code 2.
public struct ConfigError: SwitchboardError, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
    public var message: String { description }
    public var exitCode: Int32 { 2 }
}
