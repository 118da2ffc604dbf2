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
    /// What each layer that reports telemetry did since the last logged step (`ReportsTelemetry`):
    /// its lines, and its metrics fields numbered per prefix (`moe0_tokens`, `fff1_balance`).
    /// Expert layers on several ranks also report the most and mean rows a rank's experts took.
    func telemetry() -> (lines: [String], fields: [(String, JSONValue)]) {
        var lines: [String] = [], fields: [(String, JSONValue)] = []
        var numbered: [String: Int] = [:]
        lastExpertTokens = []
        let rankLoad: (([Int]) -> (max: Double, mean: Double))? = comm.size > 1 ? placement.map { placement in
            { accepted in
                // Assignments each rank's experts took (a replicated expert's split evenly).
                let load = (0..<placement.ranks).map { r in
                    placement.experts(on: r).reduce(0.0) { $0 + Double(accepted[$1]) / Double(placement.runners(of: $1).count) }
                }
                return (load.max()!, load.reduce(0, +) / Double(load.count))
            }
        } : nil
        for layer in model.layers((any ReportsTelemetry).self) {
            let report = layer.takeReport(rankLoad: rankLoad)
            let prefix = layer.telemetryPrefix, index = numbered[prefix, default: 0]
            numbered[prefix] = index + 1
            if let rows = report.expertRows { lastExpertTokens.append(rows) }
            lines += report.lines
            for (key, value) in report.fields {
                let json: JSONValue
                switch value {
                case .number(let x): json = .double(x)
                case .counts(let c): json = .array(c.map { .int($0) })
                }
                fields.append(("\(prefix)\(index)_\(key)", json))
            }
        }
        return (lines, fields)
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
        var allocations = AllocationTrace.open(), stepsRun = 0
        defer { allocations?.report(rank: comm.rank) }
        training: for epoch in first..<max(first, config.train.epochs) {
            for batch in (epoch == first ? step % perEpoch : 0)..<perEpoch {
                if config.train.maxSteps > 0 && step >= config.train.maxSteps { break training }
                FatalSignalReport.at(step: step)
                try FaultInjection.check(rank: comm.rank, step: step)
                wantsSave = comm.isCoordinator && c.everyMinutes > 0 && (clock.now - lastSave).seconds >= 60 * c.everyMinutes
                let t0 = clock.now
                let r = try allocations == nil ? trainStep(epoch: epoch, batch: batch)
                    : allocations!.step(stepsRun, at: step) { try trainStep(epoch: epoch, batch: batch) }
                stepsRun += 1
                trainTime += clock.now - t0
                folder?.reached(step: r.step)
                samples += r.rows
                // Every rank closes the telemetry interval on the same steps.
                let telemetry: (lines: [String], fields: [(String, JSONValue)]) =
                    isLoggedStep(r.step, every: config.train.logEvery, total: totalSteps) ? telemetry() : ([], [])
                if let logged = progress?.step(r) {
                    for line in telemetry.lines { progress?.message(line) }
                    folder?.log([
                        ("kind", .string("train")), ("step", .int(r.step)), ("epoch", .int(epoch + 1)),
                        ("loss", .double(logged.loss)), ("lr", .double(r.lr)), ("grad_norm", .double(r.gradNorm)),
                        ("samples_per_s", .double(logged.samplesPerSecond.rounded())),
                    ] + telemetry.fields)
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
        let seconds = trainTime.seconds
        return RunSummary(steps: step, epochs: min(config.train.epochs, (step + perEpoch - 1) / perEpoch), finalEvaluation: last,
                          trainSeconds: seconds, samplesPerSecond: Double(samples) / max(seconds, 1e-9), stopped: stopped,
                          lastCheckpoint: lastCheckpoint)
    }
}
