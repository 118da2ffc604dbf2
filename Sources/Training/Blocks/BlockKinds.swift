import Layers

/// A kind of residual block a job can ask for (`[model] block`): its name, the section of its
/// own keys if it has one, the keys as the README lists them, and how it reads them. One
/// file per kind in this folder; the `block` choices, the check that a kind's section is not
/// given to another kind, and the README's key table (a test holds it to these) all come
/// from `BlockKinds.all`.
protocol BlockKind {
    /// Its `block` name.
    static var name: String { get }
    /// The section of its own keys (`[fff]`), if it has one.
    static var section: String? { get }
    /// Its keys and their defaults, as the README's key table gives them (in the `[model]`
    /// row after "name: ", or in its section's row after "with `block = "name"`: ").
    static var keys: String { get }
    /// Reads its keys for blocks on `trunk`: the block, and the parameters the kind keeps
    /// frozen.
    static func read(_ r: ConfigReader, trunk: Trunk, source: String) throws -> (block: FeedForward, frozen: [String])
}

enum BlockKinds {
    /// Every kind, the default first.
    static let all: [any BlockKind.Type] = [MLPBlock.self, HourglassBlock.self, FFFBlock.self, TopKBlock.self]

    static var names: [String] { all.map { $0.name } }

    /// The kind named `name` (a name `ConfigReader.string(oneOf: names)` accepted).
    static func named(_ name: String) -> any BlockKind.Type { all.first { $0.name == name }! }

    /// The README key table's text for each kind: its part of the `[model]` row, or its
    /// section's whole row.
    static var readmeEntries: [String] {
        all.map { kind in
            kind.section.map { "| `[\($0)]` | with `block = \"\(kind.name)\"`: \(kind.keys) |" } ?? "\(kind.name): \(kind.keys)"
        }
    }

    /// The `block` key as the README's key table gives it: `block` ("mlp", "hourglass", … or "topk").
    static var choices: String {
        let quoted = names.map { "\"\($0)\"" }
        return "`block` (" + (quoted.count == 1 ? quoted[0] : quoted.dropLast().joined(separator: ", ") + " or " + quoted.last!) + ")"
    }
}
