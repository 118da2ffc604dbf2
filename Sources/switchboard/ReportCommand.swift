import ArgumentParser
import Foundation
import Training

/// `switchboard report RUN [RUN…]`: curves of one or more runs in one self-contained HTML file.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write an HTML report of one or more runs: curves, tokens per expert, and how their configs differ.",
        discussion: """
            Reads each run folder's metrics.jsonl and config.toml and writes one HTML file with \
            inline SVG (no script, no network): training and test loss (log scale), test \
            accuracy, learning rate and throughput against step, every run overlaid; for MoE runs \
            a heatmap of tokens per expert over time for each layer; and a table of the settings \
            that differ between the runs. What is missing or damaged in a run folder is said in \
            the report.
            """)

    @Argument(help: "Run folders (<output>/<name>).") var runs: [String]

    @Option(help: "The HTML file to write.") var out = "report.html"

    func run() throws {
        guard !runs.isEmpty else { throw ValidationError("name at least one run folder") }
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: out, isDirectory: &isFolder), isFolder.boolValue {
            throw ValidationError("--out \(out): it is a folder; name the HTML file to write")
        }
        let histories = try runs.map(RunHistory.load)
        let page = ReportHTML.page(histories)
        try RunFolder.write(page, to: out)
        print("wrote \(out): \(histories.count) run\(histories.count == 1 ? "" : "s")")
        for h in histories { for note in h.notes { print("\(h.name): \(note)") } }
    }
}
