import Foundation

/// Typed, validated access to a job file's settings.
///
/// Every read names its section and key and gives a default, so the reader knows every
/// valid key; `finish()` then rejects any key the file has that nothing read, naming the
/// closest valid one. Each value read is recorded, giving the resolved config (file,
/// overrides and defaults together) in reading order.
public final class ConfigReader {
    let source: String
    var root: [String: ConfigValue]
    private var known: [String: [String]] = [:]   // section → keys, in reading order
    private var resolved: [(section: String, key: String, value: ConfigValue)] = []

    public init(text: String, source: String) throws {
        self.source = source
        root = try ConfigValue.parse(text, source: source)
    }

    /// Applies `section.key=value`. The value is read as TOML; a bare word that is not valid
    /// TOML is taken as a string (`--set model.activation=gelu`).
    public func override(_ assignment: String) throws {
        guard let eq = assignment.firstIndex(of: "=") else {
            throw ConfigError("--set \(assignment): expected section.key=value")
        }
        let path = assignment[..<eq].trimmingCharacters(in: .whitespaces)
        let text = String(assignment[assignment.index(after: eq)...]).trimmingCharacters(in: .whitespaces)
        let parts = path.split(separator: ".").map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw ConfigError("--set \(assignment): the key must be section.key, like train.epochs")
        }
        let value: ConfigValue
        if let parsed = try? ConfigValue.parse("v = \(text)", source: "--set"), let v = parsed["v"] {
            value = v
        } else {
            value = .string(text)
        }
        var section: [String: ConfigValue] = [:]
        if let existing = root[parts[0]] {
            guard case .table(let t) = existing else { throw ConfigError("--set \(assignment): \(parts[0]) is not a section") }
            section = t
        }
        section[parts[1]] = value
        root[parts[0]] = .table(section)
    }

    // MARK: typed reads

    public func int(_ section: String, _ key: String, _ fallback: Int, min: Int? = nil, max: Int? = nil) throws -> Int {
        let v = try value(section, key, .int(fallback))
        guard case .int(let n) = v else { throw typeError(section, key, "an integer", v) }
        if let min, n < min { throw rangeError(section, key, "at least \(min)", v) }
        if let max, n > max { throw rangeError(section, key, "at most \(max)", v) }
        return n
    }

    public func double(_ section: String, _ key: String, _ fallback: Double,
                       min: Double? = nil, max: Double? = nil, above: Double? = nil, below: Double? = nil) throws -> Double {
        var v = try value(section, key, .double(fallback))
        if case .int(let n) = v { v = .double(Double(n)); record(section, key, v) }
        guard case .double(let x) = v else { throw typeError(section, key, "a number", v) }
        guard x.isFinite else { throw rangeError(section, key, "finite", v) }
        if let min, x < min { throw rangeError(section, key, "at least \(min)", v) }
        if let max, x > max { throw rangeError(section, key, "at most \(max)", v) }
        if let above, x <= above { throw rangeError(section, key, "greater than \(above)", v) }
        if let below, x >= below { throw rangeError(section, key, "less than \(below)", v) }
        return x
    }

    public func bool(_ section: String, _ key: String, _ fallback: Bool) throws -> Bool {
        let v = try value(section, key, .bool(fallback))
        guard case .bool(let b) = v else { throw typeError(section, key, "true or false", v) }
        return b
    }

    public func string(_ section: String, _ key: String, _ fallback: String, oneOf choices: [String]? = nil) throws -> String {
        let v = try value(section, key, .string(fallback))
        guard case .string(let s) = v else { throw typeError(section, key, "a string", v) }
        if let choices, !choices.contains(s) {
            var message = "\(source): [\(section)] \(key) = \"\(s)\" is not one of \(choices.joined(separator: ", "))"
            if let near = closest(s, among: choices) { message += "; did you mean \"\(near)\"?" }
            throw ConfigError(message)
        }
        return s
    }

    public func intArray(_ section: String, _ key: String, _ fallback: [Int], min: Int? = nil, max: Int? = nil) throws -> [Int] {
        let v = try value(section, key, .array(fallback.map { .int($0) }))
        guard case .array(let items) = v else { throw typeError(section, key, "an array of integers", v) }
        return try items.map {
            guard case .int(let n) = $0 else { throw typeError(section, key, "an array of integers", v) }
            if let min, n < min { throw rangeError(section, key, "made of integers of at least \(min)", v) }
            if let max, n > max { throw rangeError(section, key, "made of integers of at most \(max)", v) }
            return n
        }
    }

    public func stringArray(_ section: String, _ key: String, _ fallback: [String]) throws -> [String] {
        let v = try value(section, key, .array(fallback.map { .string($0) }))
        guard case .array(let items) = v else { throw typeError(section, key, "an array of strings", v) }
        return try items.map {
            guard case .string(let s) = $0 else { throw typeError(section, key, "an array of strings", v) }
            return s
        }
    }

    /// A string, or an array of at least one string.
    public func strings(_ section: String, _ key: String, _ fallback: String) throws -> [String] {
        let v = try value(section, key, .string(fallback))
        if case .string(let s) = v { return [s] }
        guard case .array(let items) = v, !items.isEmpty else { throw typeError(section, key, "a string or a non-empty array of strings", v) }
        return try items.map {
            guard case .string(let s) = $0 else { throw typeError(section, key, "a string or a non-empty array of strings", v) }
            return s
        }
    }

    /// Whether the file (or an override) sets `key` in `section`.
    public func has(_ section: String, _ key: String) -> Bool {
        if case .table(let t) = root[section], t[key] != nil { return true }
        return false
    }

    /// Whether the file (or an override) has a section of this name.
    public func hasSection(_ name: String) -> Bool { root[name] != nil }

    /// Rejects unknown sections and keys, naming the closest valid one.
    public func finish() throws {
        for (name, v) in root.sorted(by: { $0.key < $1.key }) {
            guard let keys = known[name] else {
                var m = "\(source): unknown section [\(name)]"
                if let near = closest(name, among: Array(known.keys)) { m += "; did you mean [\(near)]?" }
                throw ConfigError(m + " (sections: \(known.keys.sorted().joined(separator: ", ")))")
            }
            guard case .table(let t) = v else { throw ConfigError("\(source): \(name) must be a section [\(name)]") }
            for key in t.keys.sorted() where !keys.contains(key) {
                var m = "\(source): unknown key \(key) in [\(name)]"
                if let near = closest(key, among: keys) { m += "; did you mean \(near)?" }
                throw ConfigError(m)
            }
        }
    }

    /// The resolved configuration as a TOML document.
    public var resolvedTOML: String {
        var out = ""
        var sections: [String] = []
        for r in resolved where !sections.contains(r.section) { sections.append(r.section) }
        for s in sections {
            out += (out.isEmpty ? "" : "\n") + "[\(s)]\n"
            for r in resolved where r.section == s { out += "\(r.key) = \(r.value.toml)\n" }
        }
        return out
    }

    // MARK: internals

    private func value(_ section: String, _ key: String, _ fallback: ConfigValue) throws -> ConfigValue {
        if known[section] == nil { known[section] = [] }
        if !known[section]!.contains(key) { known[section]!.append(key) }
        var v = fallback
        if let s = root[section] {
            guard case .table(let t) = s else { throw ConfigError("\(source): \(section) must be a section [\(section)]") }
            if let given = t[key] { v = given }
        }
        record(section, key, v)
        return v
    }

    private func record(_ section: String, _ key: String, _ v: ConfigValue) {
        if let i = resolved.firstIndex(where: { $0.section == section && $0.key == key }) {
            resolved[i].value = v
        } else {
            resolved.append((section, key, v))
        }
    }

    private func typeError(_ section: String, _ key: String, _ expected: String, _ got: ConfigValue) -> ConfigError {
        ConfigError("\(source): [\(section)] \(key) must be \(expected), got \(got.typeName) \(got.toml)")
    }

    private func rangeError(_ section: String, _ key: String, _ expected: String, _ got: ConfigValue) -> ConfigError {
        ConfigError("\(source): [\(section)] \(key) must be \(expected), got \(got.toml)")
    }
}

/// The candidate with the smallest edit distance, if it is close enough to be a typo.
func closest(_ word: String, among candidates: [String]) -> String? {
    var best: (word: String, distance: Int)?
    for c in candidates.sorted() {
        let d = editDistance(word, c)
        if best == nil || d < best!.distance { best = (c, d) }
    }
    guard let best, best.distance <= max(2, word.count / 2) else { return nil }
    return best.word
}

/// Levenshtein distance.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var row = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var prev = row[0]
        row[0] = i
        for j in stride(from: 1, through: b.count, by: 1) {
            let cur = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
            prev = cur
        }
    }
    return a.isEmpty ? b.count : row[b.count]
}
