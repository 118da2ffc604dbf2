import ArgumentParser
import Foundation
import Storage
import Training

/// `inspect experts`: how the routers spread the tokens, layer by layer.
struct InspectExperts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experts",
        abstract: "Each MoE layer's share of tokens per expert, as a bar chart; dead and overloaded experts marked.",
        discussion: """
            Tokens routed in the last logging interval before the save. Dead: no tokens. Overloaded: \
            more than twice the even share (2/E).
            """)

    @Argument(help: "The checkpoint.") var checkpoint: String
    @OptionGroup var options: InspectOptions

    func run() throws {
        let reader = try openCheckpoint(checkpoint)
        let m = reader.manifest
        // MoE layers in order, named by their router's parameter.
        let names = m.tensors.compactMap { t -> String? in
            guard let name = CheckpointNames.parameterName(of: t.name), name.hasSuffix(".router.weight") else { return nil }
            return String(name.dropLast(".router.weight".count))
        }
        var json: [JSONValue] = []
        if names.isEmpty && !options.json { print("no MoE layers: \(reader.folder) holds a dense model") }
        else if m.metrics.expertTokens.isEmpty && !options.json { print("no expert load recorded: the checkpoint was saved before the first logged step") }
        for (l, tokens) in m.metrics.expertTokens.enumerated() {
            let name = l < names.count ? names[l] : "moe\(l)"
            let total = tokens.reduce(0, +)
            let experts = tokens.count
            let shares = tokens.map { total > 0 ? Double($0) / Double(total) : 0 }
            let marks = shares.map { $0 == 0 ? "dead" : $0 > 2 / Double(experts) ? "overloaded" : "" }
            json.append(.object([("layer", .string(name)), ("tokens", .array(tokens.map { .int($0) })),
                                 ("shares", .array(shares.map { .double($0) })),
                                 ("dead", .array(marks.indices.filter { marks[$0] == "dead" }.map { .int($0) })),
                                 ("overloaded", .array(marks.indices.filter { marks[$0] == "overloaded" }.map { .int($0) }))]))
            if options.json { continue }
            print("\(name): \(total) assignments to \(experts) experts (even share \(String(format: "%.1f%%", 100 / Double(experts))))")
            let widest = shares.max() ?? 0
            for (e, share) in shares.enumerated() {
                let bar = Self.bar(widest > 0 ? share / widest : 0, width: 40)
                let label = String(repeating: " ", count: String(experts - 1).count - String(e).count) + "\(e)"
                print("  expert \(label)  \(bar)  \(String(format: "%5.1f%%", 100 * share))\(marks[e].isEmpty ? "" : "  " + marks[e])")
            }
        }
        if options.json { printJSON(.object([("layers", .array(json))])) }
    }

    /// A bar of `fraction` × `width` cells, in eighths.
    static func bar(_ fraction: Double, width: Int) -> String {
        let eighths = Int((fraction * Double(width * 8)).rounded())
        let partial = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]
        let text = String(repeating: "█", count: eighths / 8) + partial[eighths % 8]
        return text + String(repeating: " ", count: max(0, width - text.count))
    }
}
