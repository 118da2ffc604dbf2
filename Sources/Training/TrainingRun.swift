import Cluster
import Foundation
import Kernels
import Layers
import Storage

/// The outcome of a whole training run.
public struct RunSummary: Sendable {
    public var steps: Int
    public var epochs: Int
    public var finalEvaluation: Evaluation
    public var trainSeconds: Double
    public var samplesPerSecond: Double
    /// Stopped early by SIGTERM or SIGINT (after saving).
    public var stopped: Bool
    /// The last checkpoint this run committed (coordinator only).
    public var lastCheckpoint: String?
}

extension Trainer {
    /// Each MoE layer's router statistics since the last logged step: one compact line per
    /// layer, warnings for router collapse (one expert with more than half the assignments)
    /// and for experts that received nothing for three intervals running, and metrics fields.
    func moeTelemetry() -> (lines: [String], fields: [(String, JSONValue)]) {
        var lines: [String] = [], fields: [(String, JSONValue)] = []
        lastExpertTokens = []
        for (l, moe) in model.moeLayers.enumerated() {
            let t = moe.takeTelemetry()
            lastExpertTokens.append(t.routed)
            let busiest = t.busiest
            var perRank = ""
            if comm.size > 1, let placement {
                // Assignments each rank's experts took (a replicated expert's split evenly).
                let load = (0..<comm.size).map { r in
                    placement.experts(on: r).reduce(0.0) { $0 + Double(t.accepted[$1]) / Double(placement.runners(of: $1).count) }
                }
                perRank = ", per rank max \(Int(load.max()!)) mean \(Int(load.reduce(0, +) / Double(load.count)))"
                fields.append(("moe\(l)_rank_max", .double(load.max()!)))
                if moeSums.movesExperts {
                    perRank += " (\(fixed(t.movedPerPass, 1)) experts run off their rank per pass)"
                    fields.append(("moe\(l)_moved", .double(t.movedPerPass)))
                }
            }
            lines.append("  \(moe.name): tokens per expert \(t.routed.min() ?? 0)–\(t.routed.max() ?? 0)\(perRank), "
                         + "dropped \(fixed(100 * t.droppedFraction, 1))%, balance \(fixed(t.balance, 3)), aux \(fixed(t.meanAux, 4))")
            if busiest.share > 0.5 {
                lines.append("warning: \(moe.name): expert \(busiest.expert) took \(Int(100 * busiest.share))% of the assignments (router collapse?)")
            }
            let idle = moe.idleIntervals.indices.filter { moe.idleIntervals[$0] == 3 }
            if !idle.isEmpty {
                lines.append("warning: \(moe.name): expert\(idle.count == 1 ? "" : "s") \(idle.map(String.init).joined(separator: ", ")) "
                             + "received no tokens for 3 logging intervals")
            }
            fields += [
                ("moe\(l)_tokens", .array(t.routed.map { .int($0) })),
                ("moe\(l)_dropped", .double(t.droppedFraction)),
                ("moe\(l)_balance", .double(t.balance)),
                ("moe\(l)_aux", .double(t.meanAux)),
            ]
        }
        return (lines, fields + fffTelemetry())
    }

    /// Each FFF layer with auxiliary losses: the last pass's, and how its global batch's hard
    /// descents spread over the leaves (balance: their entropy over log L).
    func fffTelemetry() -> [(String, JSONValue)] {
        var fields: [(String, JSONValue)] = []
        for (l, fff) in model.fffLayers.enumerated() {
            let counts = fff.leafDescents
            guard !counts.isEmpty else { continue }
            fields += [("fff\(l)_leaves", .array(counts.map { .int($0) })),
                       ("fff\(l)_balance", .double(MoETelemetry.balance(counts))),
                       ("fff\(l)_aux", .double(fff.auxLoss))]
        }
        return fields
    }

    /// Trains from the current step (0, or where a checkpoint left off) to the configured
    /// epochs (or `max_steps`), evaluating on the test split after every epoch and saving
    /// checkpoints into `run` (every rank's path of the run folder) on schedule, at the end,
    /// and when asked to stop. Only the coordinator prints and writes `folder`.
    public func run(folder: RunFolder?, run: String? = nil, threads: Int = 1, progress: ProgressReporter?) throws -> RunSummary {
        let c = config.checkpoint
        var last = lastEvaluation ?? Evaluation(loss: .nan, accuracy: 0, samples: 0)
        var samples = 0
        let clock = ContinuousClock()
        var trainTime = Duration.zero
        var lastSave = clock.now
        var lastCheckpoint: String?
        var stopped = false
        let perEpoch = order.batchesPerEpoch
        let first = step / perEpoch
        // Resumed with nothing left to train: the result is the final model's evaluation.
        if step >= totalSteps { last = try evaluate(testSet) }
        func save() throws {
            guard let run else { return }
            let t0 = clock.now
            let path = try saveCheckpoint(in: run, keepLast: c.keepLast, threads: threads)
            lastSave = clock.now
            if let path {
                lastCheckpoint = path
                let seconds = (clock.now - t0).seconds
                progress?.message("checkpoint \(path) (step \(step), \(fixed(seconds, 2)) s)")
                folder?.log([("kind", .string("checkpoint")), ("step", .int(step)), ("path", .string(path)),
                             ("seconds", .double((seconds * 1000).rounded() / 1000))])
            }
        }
        training: for epoch in first..<max(first, config.train.epochs) {
            for batch in (epoch == first ? step % perEpoch : 0)..<perEpoch {
                if config.train.maxSteps > 0 && step >= config.train.maxSteps { break training }
                FatalSignalReport.at(step: step)
                try FaultInjection.check(rank: comm.rank, step: step)
                wantsSave = comm.isCoordinator && c.everyMinutes > 0 && (clock.now - lastSave).seconds >= 60 * c.everyMinutes
                let t0 = clock.now
                let r = try trainStep(epoch: epoch, batch: batch)
                trainTime += clock.now - t0
                folder?.reached(step: r.step)
                samples += r.rows
                // Every rank closes the MoE telemetry interval on the same steps.
                let moe: (lines: [String], fields: [(String, JSONValue)]) =
                    isLoggedStep(r.step, every: config.train.logEvery, total: totalSteps) ? moeTelemetry() : ([], [])
                if let logged = progress?.step(r) {
                    for line in moe.lines { progress?.message(line) }
                    folder?.log([
                        ("kind", .string("train")), ("step", .int(r.step)), ("epoch", .int(epoch + 1)),
                        ("loss", .double(logged.loss)), ("lr", .double(r.lr)), ("grad_norm", .double(r.gradNorm)),
                        ("samples_per_s", .double(logged.samplesPerSecond.rounded())),
                    ] + moe.fields)
                }
                let finished = (config.train.maxSteps > 0 && step >= config.train.maxSteps)
                    || (batch == perEpoch - 1 && epoch == config.train.epochs - 1)
                // An epoch's evaluation comes before a checkpoint taken at its end, so a run
                // resumed there starts the next epoch with nothing left undone.
                if batch == perEpoch - 1 || finished {
                    last = try evaluate(testSet)
                    progress?.message("epoch \(epoch + 1)/\(config.train.epochs) step \(step): test loss \(fixed(last.loss, 4)) "
                                      + "accuracy \(last.accuracyText)")
                    let hard: [(String, JSONValue)] = last.hard.map {
                        [("test_loss_hard", .double($0.loss)), ("test_accuracy_hard", .double($0.accuracy))]
                    } ?? []
                    folder?.log([
                        ("kind", .string("eval")), ("step", .int(step)), ("epoch", .int(epoch + 1)),
                        ("test_loss", .double(last.loss)), ("test_accuracy", .double(last.accuracy)),
                    ] + hard + [("time_s", .double((trainTime.seconds * 1000).rounded() / 1000))])
                }
                if r.stopRequested || r.saveRequested || (c.everySteps > 0 && step % c.everySteps == 0) || (finished && c.atEnd) {
                    try save()
                }
                if r.stopRequested { stopped = true; break training }
                if finished { break training }
            }
        }
        progress?.finish()
        try collectExperts()
        let seconds = trainTime.seconds
        return RunSummary(steps: step, epochs: min(config.train.epochs, (step + perEpoch - 1) / perEpoch), finalEvaluation: last,
                          trainSeconds: seconds, samplesPerSecond: Double(samples) / max(seconds, 1e-9), stopped: stopped,
                          lastCheckpoint: lastCheckpoint)
    }
}
