import ArgumentParser
import Foundation
import Storage
import Training

/// `inspect show`: where training stood and what made the checkpoint.
struct InspectShow: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Step, data position, world size, expert placement, config, version, time and metrics.")

    @Argument(help: "The checkpoint.") var checkpoint: String
    @OptionGroup var options: InspectOptions

    func run() throws {
        let reader = try openCheckpoint(checkpoint)
        let m = reader.manifest
        let p = m.position
        let placement = m.placement.map { pl in
            pl.expertsByRank.enumerated().map { "rank \($0.offset): \(Self.range($0.element))" }.joined(separator: " | ")
        }
        if options.json {
            var fields: [(String, JSONValue)] = [
                ("checkpoint", .string(reader.folder)), ("id", .string(m.id)), ("step", .int(p.step)), ("epoch", .int(p.epoch)),
                ("batch", .int(p.batch)), ("sample_cursor", .int(p.sampleCursor)), ("world_size", .int(m.worldSize)),
                ("threads", .int(m.threads)), ("optimizer", .string(m.optimizer)), ("optimizer_steps", .int(m.optimizerSteps)),
                ("seed", .int(Int(m.rng.seed))), ("program_version", .string(m.programVersion)), ("created", .string(m.created)),
            ]
            if let pl = m.placement {
                fields.append(("experts", .int(pl.experts)))
                fields.append(("experts_by_rank", .array(pl.expertsByRank.map { .array($0.map { .int($0) }) })))
            }
            fields += [
                ("last_loss", m.metrics.lastLoss.map { .double($0) } ?? .string("")),
                ("test_loss", m.metrics.testLoss.map { .double($0) } ?? .string("")),
                ("test_accuracy", m.metrics.testAccuracy.map { .double($0) } ?? .string("")),
                ("expert_tokens", .array(m.metrics.expertTokens.map { .array($0.map { .int($0) }) })),
                ("config", .string(m.config)),
            ]
            printJSON(.object(fields))
            return
        }
        var table = TextTable(["", ""])
        table.add(["checkpoint", reader.folder])
        table.add(["step", "\(p.step)"])
        table.add(["data position", "epoch \(p.epoch + 1), next batch \(p.batch), sample \(p.sampleCursor) of the epoch's order"])
        table.add(["saved on", "\(m.worldSize) rank\(m.worldSize == 1 ? "" : "s") × \(m.threads) BLAS thread\(m.threads == 1 ? "" : "s")"])
        table.add(["experts", placement.map { "\(m.placement!.experts) per MoE layer; \($0)" } ?? "none (dense model)"])
        table.add(["optimizer", "\(m.optimizer), \(m.optimizerSteps) steps"])
        table.add(["seed", "\(m.rng.seed) (dropout counter at step \(m.rng.dropoutStep), shuffle of epoch \(m.rng.shuffleEpoch + 1))"])
        table.add(["version", m.programVersion])
        table.add(["created", m.created])
        table.add(["last loss", m.metrics.lastLoss.map { fixed($0, 4) } ?? "-"])
        table.add(["test", m.metrics.testLoss.map { "loss \(fixed($0, 4)), accuracy \(fixed(100 * (m.metrics.testAccuracy ?? 0), 2))%" } ?? "-"])
        table.add(["tensors", "\(m.tensors.count) in \(m.files.count) file\(m.files.count == 1 ? "" : "s"), \(byteSize(m.tensors.reduce(0) { $0 + $1.count * 4 }))"])
        // The header row is empty: drop it.
        print(table.text.split(separator: "\n", omittingEmptySubsequences: false).dropFirst().joined(separator: "\n"))
        print("config:")
        print(m.config.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n"))
    }

    static func range(_ r: [Int]) -> String { r[1] - r[0] == 1 ? "expert \(r[0])" : "experts \(r[0])–\(r[1] - 1)" }
}
