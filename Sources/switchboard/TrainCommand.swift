import ArgumentParser
import Cluster
import Foundation
import Kernels
import Layers
import Storage
import Training

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train the model a job file describes.",
        discussion: """
            Runs alone (a world of one process) or under mpirun. Writes the run folder \
            <output>/<name>/ with config.toml, metrics.jsonl, checkpoints (step-NNNNNN/, as \
            [checkpoint] says) and, when finished, the trained parameters in model.h5 and \
            summary.json. SIGTERM or SIGINT: the step finishes, a checkpoint is saved, and the \
            program exits with 143 or 130; run the same command with --resume auto to go on.
            Example: switchboard train cluster/fashion-mlp.toml --set train.epochs=2
            """)

    @Argument(help: "The job file (TOML).")
    var job: String

    @Option(name: .customLong("set"), help: ArgumentHelp("Override a setting: section.key=value (repeatable).", valueName: "section.key=value"))
    var overrides: [String] = []

    @Flag(help: "Do not print the resolved config at start.")
    var quiet = false

    @Option(help: ArgumentHelp("""
        Continue from a checkpoint. auto: the newest checkpoint in the run folder <output>/<name> that \
        loads (older ones if it does not), continuing that folder, or step 0 if it has none. \
        A path: that checkpoint folder, into a new run folder. Any number of ranks can load any checkpoint.
        """, valueName: "auto|path"))
    var resume: String?

    @Option(name: .customLong("wait-for-folder"), help: ArgumentHelp("""
        With --resume auto: when the run folder is in use (a previous start of this job still stopping, \
        under a scheduler that requeued it), wait up to this many seconds for it to be free, then refuse.
        """, valueName: "seconds"))
    var waitForFolder = 0

    @Option(name: .customLong("stop-exit-code"), help: ArgumentHelp("""
        The exit code after a stop on SIGTERM or SIGINT that saved a checkpoint (default: 143 or 130, as a process \
        killed by the signal). A scheduler's script sets one that no killed process has, such as 75, to tell \
        "saved, continue me" from "a rank was killed".
        """, valueName: "code"))
    var stopExitCode: Int32?

    func validate() throws {
        if let code = stopExitCode, !(1...255).contains(code) {
            throw ValidationError("--stop-exit-code must be from 1 to 255, got \(code)")
        }
        guard waitForFolder >= 0 else { throw ValidationError("--wait-for-folder must be at least 0 seconds, got \(waitForFolder)") }
        guard waitForFolder == 0 || resume == "auto" else {
            throw ValidationError("--wait-for-folder applies to --resume auto, the only start that continues a run folder in use")
        }
    }

    /// How a step runs when it takes several passes (gradient accumulation), for the start line.
    func passes(_ trainer: Trainer) -> String {
        guard trainer.accumulates else { return "" }
        let n = trainer.passes(rows: trainer.config.train.batchSize)
        let statistics = trainer.model.layers((any ExpertLayer).self).isEmpty ? ""
            : trainer.config.train.moeStatistics == .batch ? ", MoE statistics over the batch" : ", MoE statistics per micro-batch"
        return " in \(n) passes of \(trainer.passRows) per rank\(statistics)"
    }

    func run() throws {
        let started = ContinuousClock.now
        let config = try JobConfig.parse(try JobFile.read(job), source: job, overrides: overrides)
        let comm = try CommandStart.world("train")
        let (threads, onHost) = try CommandStart.threads(config.train.threads > 0 ? config.train.threads : nil, comm: comm)
        let say: (String) -> Void = { if comm.isCoordinator { print($0); fflush(nil) } }
        say("switchboard \(Switchboard.version): \(comm.size) rank\(comm.size == 1 ? "" : "s") × \(threads) BLAS thread\(threads == 1 ? "" : "s") (OpenBLAS \(BLAS.coreName))")
        say("products: \(MatmulLibrary.summary(config.train.products))")

        // The hosts the ranks run on, in rank order (the coordinator's list).
        var hosts = [Preflight.hostName]
        if comm.size > 1 {
            let mine = Preflight.report(rank: comm.rank, blasThreads: threads, configText: config.resolvedTOML)
            if let all = try Preflight.gather(mine, on: comm) {
                hosts = all.reduce(into: []) { if !$0.contains($1.host) { $0.append($1.host) } }
                let verdict = Preflight.judge(all)
                say("preflight:\n" + Preflight.table(all).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
                for w in verdict.warnings { say("warning: \(w)") }
                if !verdict.problems.isEmpty {
                    throw ConfigError("preflight refused to start: " + verdict.problems.joined(separator: "; "))
                }
            }
        }
        if !quiet { say("resolved config:\n" + config.resolvedTOML.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n")) }

        let (train, test) = try config.data.load()
        try config.check(trainingSamples: train.count, source: job)
        // Nothing of the model is allocated before the machine is known to hold it.
        let memory = MemoryEstimate(config: config, train: train, test: test,
                                    maxRows: Trainer.maxRows(config, ranks: comm.size, testCount: test.count),
                                    ranks: comm.size, threads: threads)
        try memory.check(available: MachineMemory.available(sharedBy: onHost), ranksOnHost: onHost, source: job)
        let trainer = try Trainer(config: config, comm: comm, train: train, test: test)
        // A new run's [init] is checked (a strict job refused) before any run folder is made;
        // a resumed run has its own weights and does not need the source checkpoint.
        var initPlan = resume == nil ? try config.initialization.map { try InitPlan($0, model: trainer.model, source: job) } : nil
        say("data: \(train.count) training and \(test.count) test samples of \(train.width) features, \(config.data.classes) classes")
        let store = trainer.model.store, size = config.model.size(inputs: train.width, classes: config.data.classes, maxRows: 1,
                                                                   frozen: config.frozen)
        let frozen = store.parameters.reduce(0) { $0 + ($1.frozen ? $1.count : 0) }
        say("model: \(store.declaredCount.formatted()) parameters\(frozen > 0 ? " (\(frozen.formatted()) frozen)" : ""); "
            + "\(fixed(size.trainingFlops / 1e6, 2)) MFLOP per training sample, \(fixed(size.inferenceFlops / 1e6, 2)) per inference; "
            + "\(trainer.totalSteps) steps of \(config.train.batchSize) samples\(passes(trainer)); "
            + "memory ≈ \(MemoryEstimate.text(memory.total)) per rank")
        if comm.size > 1, let placement = trainer.placement {
            say("experts (each MoE layer):\n" + placement.description.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        }

        // The run folder. A run that continues its folder (`--resume auto`) owns it before it
        // looks inside; a new run takes one only once its start has succeeded, so a failed
        // start (a checkpoint that does not load) leaves none behind.
        let continuing = resume == "auto"
        var folder = comm.isCoordinator && continuing
            ? try RunFolder.claim(output: config.run.output, name: config.run.name, continuing: true,
                                  wait: .seconds(waitForFolder), waiting: say) : nil
        if let folder {
            for orphan in try CheckpointFolder.removeOrphans(in: folder.path) {
                say("removed \(folder.path)/\(orphan): an interrupted save")
            }
        }
        var resumed: CheckpointManifest?
        if let resume {
            resumed = try trainer.resume(resume, run: folder?.path ?? "", log: { say("warning: " + $0) })
        }
        // Starting at step 0 (`--resume auto` found no checkpoint): the weights of [init],
        // loaded before a new run folder is claimed.
        if resumed == nil, trainer.step == 0, let spec = config.initialization {
            if initPlan == nil { initPlan = try InitPlan(spec, model: trainer.model, source: job) }
            try initPlan!.apply(seed: config.run.seed)
            try trainer.parametersWritten()
        } else {
            initPlan = nil
        }
        if comm.isCoordinator && !continuing {
            folder = try RunFolder.claim(output: config.run.output, name: config.run.name, continuing: false)
        }
        try folder?.open(configTOML: config.resolvedTOML, continuing: continuing)
        // Every rank writes its checkpoint shards into the coordinator's run folder.
        var runBytes = Array((folder?.path ?? "").utf8)
        try comm.broadcastBytes(&runBytes, "run folder")
        let runPath = String(decoding: runBytes, as: UTF8.self)
        // Every other rank's share in the folder, which a later job waits for.
        let member = comm.isCoordinator ? nil : try RunFolder.Member(runPath)
        defer { withExtendedLifetime(member) {} }
        if let folder { say("run folder: \(folder.path)") }
        if let m = resumed, let resume {
            let p = m.position
            say("resumed from \(Trainer.folder(of: resume == "auto" ? runPath + "/" + CheckpointFolder.name(step: p.step) : resume)): "
                + "step \(p.step), epoch \(p.epoch + 1) at sample \(p.sampleCursor) of its order (saved by \(m.programVersion) "
                + "on \(m.worldSize) rank\(m.worldSize == 1 ? "" : "s") × \(m.threads) thread\(m.threads == 1 ? "" : "s"))")
            if let problem = trainer.resumeWarning {
                say("warning: \(problem); its values were read from the shards, every chunk's checksum verified, but HDF5 "
                    + "tools cannot read the checkpoint as it stands (inspect verify calls it unhealthy)")
            }
            for line in Self.reshardLines(m, trainer: trainer, threads: threads) { say(line) }
            say(continuationLine(hosts: hosts, ranks: comm.size, from: p.step, reached: folder?.previousStep))
            folder?.restartCurves(after: p.step)
            folder?.log([("kind", .string("resume")), ("step", .int(p.step)), ("saved_on_ranks", .int(m.worldSize)),
                         ("checkpoint_id", .string(m.id)), ("ranks", .int(comm.size)), ("hosts", .array(hosts.map { .string($0) }))]
                        + (folder?.previousStep.map { [("steps_lost", .int(max(0, $0 - p.step)))] } ?? []))
        } else if resume != nil {
            say("no checkpoint in \(runPath); starting at step 0")
            if let reached = folder?.previousStep {
                say(continuationLine(hosts: hosts, ranks: comm.size, from: 0, reached: reached))
                // What the folder's earlier attempt logged is trained again: the curves restart.
                folder?.restartCurves(after: 0)
                folder?.log([("kind", .string("resume")), ("step", .int(0)), ("ranks", .int(comm.size)),
                             ("hosts", .array(hosts.map { .string($0) })), ("steps_lost", .int(reached))])
            }
        }
        if let initPlan {
            say(initPlan.summary)
            folder?.log([("kind", .string("init")), ("from", .string(initPlan.checkpoint.folder)),
                         ("loaded", .int(initPlan.loads.count)), ("fresh", .array(initPlan.fresh.map { .string($0) })),
                         ("unused", .array(initPlan.unused.map { .string($0) }))])
        }
        let complete = trainer.step >= trainer.totalSteps
        if complete {
            say("the run is complete: its \(trainer.totalSteps) steps were trained before; evaluating the final model")
        }

        let progress = comm.isCoordinator
            ? ProgressReporter(totalSteps: trainer.totalSteps, epochs: config.train.epochs, logEvery: config.train.logEvery) : nil
        let summary = try trainer.run(folder: folder, run: runPath, threads: threads, progress: progress)
        if summary.stopped {
            let signal = StopRequest.signal
            say("stopped by \(signal == SIGINT ? "SIGINT" : "SIGTERM") after step \(summary.steps)"
                + (summary.lastCheckpoint.map { "; saved \($0); continue with --resume auto" } ?? ""))
            throw StoppedBySignal(signal: signal, exitCode: stopExitCode)
        }
        let e = summary.finalEvaluation
        let wall = (ContinuousClock.now - started).seconds
        // Every rank's peak, so the line names the largest and its rank.
        var peaks = [Double](repeating: 0, count: comm.size)
        peaks[comm.rank] = MachineMemory.peak ?? 0
        try peaks.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: $0.count, "peak memory") }
        let busiest = peaks.indices.max { peaks[$0] < peaks[$1] }!
        let peak = peaks[busiest] > 0
            ? "; peak memory \(MemoryEstimate.text(peaks[busiest]))" + (comm.size > 1 ? " on rank \(busiest) (the most of \(comm.size) ranks)" : "")
            : ""
        if complete {
            say("done: the run was complete at step \(summary.steps); test accuracy \(e.accuracyText), "
                + "test loss \(fixed(e.loss, 4)) (the final model)\(peak)")
        } else {
            say("done: \(summary.steps) steps, \(summary.epochs) epoch\(summary.epochs == 1 ? "" : "s"); test accuracy \(e.accuracyText), "
                + "test loss \(fixed(e.loss, 4)); training \(formatDuration(summary.trainSeconds)) at \(Int(summary.samplesPerSecond)) samples/s, "
                + "wall \(formatDuration(wall))\(peak)")
        }
        say("inference (the final evaluation, forward passes of \(config.train.evalBatchSize) samples): "
            + "\(Int(e.samplesPerSecond)) samples/s" + (e.hard.map { "; hard decisions \(Int($0.samplesPerSecond)) samples/s" } ?? ""))
        // Every rank takes part: experts travel from their owners to the coordinator.
        try trainer.writeModel(to: folder.map { "\($0.path)/model.h5" }, step: summary.steps)
        guard let folder else { return }
        if complete && folder.isFinished {
            say("kept \(folder.path)/summary.json, written when the run finished")
        } else {
            // A run that was complete before this process (killed between its last checkpoint
            // and its summary) has no training time of its own to report.
            try folder.finish(summary: [
                ("version", .string(Switchboard.version)), ("steps", .int(summary.steps)), ("epochs", .int(summary.epochs)),
                ("test_accuracy", .double(e.accuracy)), ("test_loss", .double(e.loss)),
                ("eval_samples_per_s", .double(e.samplesPerSecond.rounded())),
            ] + (e.hard.map { [("test_accuracy_hard", .double($0.accuracy)), ("test_loss_hard", .double($0.loss)),
                               ("eval_samples_per_s_hard", .double($0.samplesPerSecond.rounded()))] } ?? []) + [
                ("train_seconds", .double(complete ? .nan : (summary.trainSeconds * 1000).rounded() / 1000)),
                ("wall_seconds", .double((wall * 1000).rounded() / 1000)),
                ("samples_per_s", .double(complete ? .nan : summary.samplesPerSecond.rounded())),
                ("ranks", .int(comm.size)), ("threads", .int(threads)),
                ("peak_memory_bytes", .array(peaks.map { .double($0) })),
            ])
        }
        say("wrote \(folder.path)/")
        say("plots: switchboard report \(folder.path) --out \(folder.path)/report.html (or tensorboard --logdir \(config.run.output))")
    }

    /// Where a continued run goes on, and what its previous start did that is lost.
    func continuationLine(hosts: [String], ranks: Int, from step: Int, reached: Int?) -> String {
        let lost = reached.map { max(0, $0 - step) }
        return "continuing on \(hosts.count) node\(hosts.count == 1 ? "" : "s") (\(hosts.joined(separator: ", "))) with \(ranks) rank\(ranks == 1 ? "" : "s")"
            + (reached.map { "; the previous start reached step \($0): \(lost!) step\(lost == 1 ? "" : "s") lost" } ?? "")
    }

    /// What a load on a different world size or placement moved, for the log.
    static func reshardLines(_ m: CheckpointManifest, trainer: Trainer, threads: Int) -> [String] {
        let ranks = trainer.comm.size
        var lines: [String] = []
        let state = trainer.optimizer.state.map(\.name).joined(separator: ", ")
        if m.worldSize != ranks {
            lines.append("resharded from \(m.worldSize) to \(ranks) rank\(ranks == 1 ? "" : "s") by global name: parameters and optimizer state (\(state))")
        }
        if let saved = m.placement, let now = trainer.placement {
            let was = saved.expertsByRank.map { "\($0[0])–\($0[1] - 1)" }.joined(separator: " | ")
            let isNow = (0..<now.ranks).map { "\(now.experts(on: $0).lowerBound)–\(now.experts(on: $0).upperBound - 1)" }.joined(separator: " | ")
            if was != isNow { lines.append("experts by rank were \(was), now \(isNow)") }
        }
        if m.worldSize == ranks && m.threads != threads {
            lines.append("warning: saved with \(m.threads) BLAS threads per rank, running with \(threads): the continuation will not be bitwise identical")
        }
        return lines
    }
}
