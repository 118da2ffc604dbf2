/// How deeply a TOML text nests, measured on the text before it is parsed. TOMLKit bounds the
/// nesting of arrays and inline tables but not of dotted keys and table headers, and a tree
/// tens of thousands of levels deep exhausts the stack when it is converted (`ConfigValue`)
/// or freed: a job file, a run folder's `config.toml` or a checkpoint's stored config could
/// crash every command that reads it. So every TOML text is measured here first.
enum TOMLDepth {
    /// The most levels a value may be nested: its table header's parts, the inline tables
    /// and arrays around it with the keys that opened them, and its own key's parts, together. Far above any setting's (a
    /// section and a key), far below what exhausts a stack.
    static let limit = 64

    /// Throws naming the first line that nests deeper than `limit`. A value's depth is the
    /// parts of its table header, plus, for each inline table or array around it, the parts
    /// of the key that opened it and the level itself, plus its own key's parts. Strings and
    /// comments are skipped (a dot inside quotes is not a level); what is not valid TOML is
    /// left to the parser.
    static func check(_ text: String, source: String) throws {
        let b = Array(text.utf8)
        var line = 1, k = 0
        // The current table header's parts; what the open inline tables and arrays add (one
        // entry each); the dots of the key or header being read, and the parts of the key
        // whose value is being read.
        var header = 0, opened: [Int] = [], depth = 0, dots = 0, key = 0
        var lineStart = true, inHeader = false
        func tooDeep() -> ConfigError {
            ConfigError("\(source):\(line): nested more than \(limit) levels deep (dotted keys, table headers, inline tables and "
                        + "arrays together); no setting is nested deeper than section.key")
        }
        while k < b.count {
            let c = b[k]
            if c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") || c == UInt8(ascii: "\r") { k += 1; continue }
            let atStart = lineStart
            lineStart = false
            switch c {
            case UInt8(ascii: "\n"):
                line += 1
                dots = 0
                key = 0
                lineStart = true
            case UInt8(ascii: "#"):
                while k < b.count && b[k] != UInt8(ascii: "\n") { k += 1 }
                continue
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                k = endOfString(b, from: k, line: &line)
                continue
            case UInt8(ascii: "."):
                dots += 1
                if (inHeader ? 0 : header) + depth + dots + 1 > limit { throw tooDeep() }
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                if atStart && opened.isEmpty && c == UInt8(ascii: "[") {
                    // A table header (`[a.b]`, `[[a.b]]`): its parts replace the last one's.
                    inHeader = true
                    if k + 1 < b.count && b[k + 1] == UInt8(ascii: "[") { k += 1 }
                    dots = 0
                } else {
                    // The key that opened it, or one level for an array inside an array.
                    let levels = max(key, 1)
                    opened.append(levels)
                    depth += levels
                    dots = 0
                    key = 0
                    if header + depth > limit { throw tooDeep() }
                }
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                if inHeader && opened.isEmpty {
                    header = dots + 1
                    inHeader = false
                    if k + 1 < b.count && b[k + 1] == UInt8(ascii: "]") { k += 1 }
                } else if let last = opened.popLast() {
                    depth -= last
                }
                dots = 0
                key = 0
            case UInt8(ascii: "="):
                key = dots + 1
                dots = 0
            case UInt8(ascii: ","):
                key = 0
                dots = 0
            default:
                break
            }
            k += 1
        }
    }

    /// The index after the string that starts at `start` (basic or literal, single-line or
    /// multi-line), counting the lines it spans; the end of the text if it is not closed.
    static func endOfString(_ b: [UInt8], from start: Int, line: inout Int) -> Int {
        let quote = b[start], basic = quote == UInt8(ascii: "\"")
        let triple = start + 2 < b.count && b[start + 1] == quote && b[start + 2] == quote
        var k = start + (triple ? 3 : 1)
        while k < b.count {
            let c = b[k]
            if basic && c == UInt8(ascii: "\\") {
                if k + 1 < b.count && b[k + 1] == UInt8(ascii: "\n") { line += 1 }
                k += 2
                continue
            }
            if c == UInt8(ascii: "\n") {
                if !triple { return k }        // an unclosed single-line string: the parser says so
                line += 1
            }
            if c == quote && (!triple || (k + 2 < b.count && b[k + 1] == quote && b[k + 2] == quote)) {
                return k + (triple ? 3 : 1)
            }
            k += 1
        }
        return b.count
    }
}
