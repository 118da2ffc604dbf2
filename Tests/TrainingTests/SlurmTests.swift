import Foundation
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

/// `cluster/slurm.sbatch` under a real Slurm: slurmctld and one slurmd per namespace host, made
/// by `cluster/slurm/harness.sh`. A node lost mid-run, a config error, `scancel --signal=TERM`
/// and the time-limit signal, each on a job submitted with sbatch as a user would.
///
/// Slurm holds a requeued job for about two minutes before it may start again (its own fixed
/// delay); the tests skip that wait (`scontrol update StartTime=now`), nothing else.
final class SlurmTests: ToyDataTestCase {
    let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    var harness: String { "\(repository)/cluster/slurm/harness.sh" }
    var sbatch: String { "\(repository)/cluster/slurm.sbatch" }
    /// The harness's state: its config, logs, munge socket.
    var state: String { "\(dir)/slurm" }

    /// The MoE job the tests submit: six experts (two per rank on three ranks), a checkpoint
    /// every 10 steps, all kept. `SWITCHBOARD_STEP_PAUSE` makes each step take ~40 ms.
    func moeJob(steps: Int) throws -> String {
        try writeJob(Fixtures.job(dir: dir, model: .moe("experts = 6\ntop_k = 2\nhidden = 16\nbalance_loss = 0.01"),
                                  settings: ["train.epochs": "1000", "train.max_steps": "\(steps)", "train.log_every": "10"],
                                  extra: "[checkpoint]\nevery_steps = 10\nkeep_last = 0\n"))
    }
    static let stepPause = "40"

    /// Starts a Slurm cluster of `hosts` hosts; a machine where it cannot start fails the
    /// test with the harness's reason. Tests defer `down()` before this, so that a start that
    /// failed half-way is removed too.
    func up(_ hosts: Int) throws {
        let r = try Launcher.runLeavingDaemons(harness, ["up", String(hosts)], environment: ["SB_SLURM_DIR": state], deadline: 90)
        guard r.code == 0 else {
            throw SlurmTestFailure("SLURM TEST NOT RUN: the test cluster did not start (needs root, network namespaces, and "
                                   + "Debian's slurm-wlm and munge, which scripts/setup.sh --tests installs):\n\(r.output)")
        }
    }

    /// Stops the cluster, then checks that nothing of it is left: namespaces, daemons, ranks, state.
    func down() {
        let r = try? Launcher.run(harness, ["down"], environment: ["SB_SLURM_DIR": state], deadline: 60)
        XCTAssertEqual(r?.code, 0, r?.output ?? "harness down did not run")
        let namespaces = (try? Launcher.run("/bin/sh", ["-c", "ip netns list"]).output) ?? ""
        XCTAssertFalse(namespaces.contains("sb-h"), "namespaces left behind: \(namespaces)")
        for pattern in ["slurmctld -D", "slurmd -D", "slurmstepd", "munged .*\(state)", "switchboard train \(dir)"] {
            let left = (try? Launcher.run("/usr/bin/pgrep", ["-af", pattern]).output) ?? ""
            XCTAssertEqual(left, "", "processes left behind (\(pattern))")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: state), "the harness's state folder is left behind")
    }

    /// Runs a Slurm command on host 1.
    func slurm(_ arguments: [String], environment: [String: String] = [:]) throws -> (code: Int32, output: String) {
        let r = try Launcher.run(harness, ["on", "1"] + arguments, environment: environment.merging(["SB_SLURM_DIR": state]) { $1 })
        return (r.code, r.output)
    }

    /// Submits `cluster/slurm.sbatch job` with one rank per node; returns the job id.
    func submit(_ job: String, options: [String], arguments: [String] = []) throws -> String {
        let r = try slurm(["sbatch", "--parsable", "--output=\(dir)/slurm-%j.out"] + options + [sbatch, job, "--quiet"] + arguments,
                          environment: ["SWITCHBOARD": binary, "SWITCHBOARD_RANKS_PER_NODE": "1",
                                        "SWITCHBOARD_STEP_PAUSE": Self.stepPause])
        XCTAssertEqual(r.code, 0, r.output)
        return try XCTUnwrap(r.output.split(separator: "\n").last.map { $0.trimmingCharacters(in: .whitespaces) }, r.output)
    }

    /// `scontrol show job`'s fields (JobState, Restarts, ExitCode, NodeList, Reason, …).
    func fields(_ id: String) throws -> [String: String] {
        let text = try slurm(["scontrol", "-o", "show", "job", id]).output
        var out: [String: String] = [:]
        for token in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let eq = token.firstIndex(of: "=") else { continue }
            out[String(token[..<eq])] = String(token[token.index(after: eq)...])
        }
        return out
    }

    /// Waits until job `id` has ended, starting a requeued job at once rather than after
    /// Slurm's delay; `during` runs every poll with the job's fields. Returns the final fields.
    @discardableResult
    func waitForEnd(_ id: String, deadline: Double, during: ([String: String]) throws -> Void = { _ in }) throws -> [String: String] {
        let end = Date().addingTimeInterval(deadline)
        while Date() < end {
            let f = try fields(id)
            try during(f)
            switch f["JobState"] {
            case "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY": return f
            // Only once the previous start's step daemons are gone: within Slurm's delay they
            // have long finished (and removed the step's PMIx folder, which the next start of
            // the same job id would make again).
            case "PENDING" where f["Reason"] == "BeginTime" && !stepDaemonsRunning():
                _ = try slurm(["scontrol", "update", "JobId=\(id)", "StartTime=now"])
            default: break
            }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw SlurmTestFailure("job \(id) did not end within \(Int(deadline)) s: \(try fields(id))\n\(log(id))")
    }

    func stepDaemonsRunning() -> Bool { (try? Launcher.run("/usr/bin/pgrep", ["slurmstepd"]).code) == 0 }

    func log(_ id: String) -> String { (try? String(contentsOfFile: "\(dir)/slurm-\(id).out", encoding: .utf8)) ?? "" }

    /// Waits until the run folder `run` holds a checkpoint of at least `step` steps.
    func waitForCheckpoint(_ step: Int, in run: String, job id: String) throws {
        let end = Date().addingTimeInterval(90)
        while Date() < end {
            if CheckpointFolder.list(in: run).contains(where: { $0.step >= step }) { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw SlurmTestFailure("no checkpoint of step \(step) in \(run) within 90 s\n\(log(id))")
    }

    /// The numbers after `prefix` in the first line of `text` that has it.
    func number(after prefix: String, in text: String) -> Int? {
        guard let r = text.range(of: prefix) else { return nil }
        return Int(text[r.upperBound...].prefix { $0.isNumber })
    }

    func model(_ path: String, _ job: String) throws -> Model {
        let config = try JobConfig.parse(try String(contentsOfFile: job, encoding: .utf8), source: job)
        return try loadModel(path, config)
    }

    /// Three hosts; the third is lost mid-run, between checkpoints. Slurm marks it down and
    /// requeues the job, which continues on the two survivors from the last checkpoint and
    /// finishes like a run resumed by hand on two ranks from that checkpoint.
    func testANodeLostMidRunIsRequeuedAndTheJobFinishesOnTheSurvivors() throws {
        defer { down() }
        try up(3)
        let job = try moeJob(steps: 200)
        let run = "\(dir)/runs/toy"
        let id = try submit(job, options: ["--nodes=2-3"])
        // Mid-interval: a checkpoint at 40, and rank 0 past step 42 (its `.step`), so that
        // some steps are lost.
        try waitForCheckpoint(40, in: run, job: id)
        let end42 = Date().addingTimeInterval(30)
        while (RunFolder.readStep("\(run)/\(RunFolder.stepFileName)") ?? 0) < 42 && Date() < end42 {
            Thread.sleep(forTimeInterval: 0.01)
        }
        let lose = try Launcher.run(harness, ["lose", "3"], environment: ["SB_SLURM_DIR": state])
        XCTAssertEqual(lose.code, 0, lose.output)
        let end = try waitForEnd(id, deadline: 240)
        let text = log(id)
        XCTAssertEqual(end["JobState"], "COMPLETED", "\(end)\n\(text)")
        // Counted from the script's own lines: Slurm may also requeue a batch launch that
        // timed out on a busy machine, before the script runs.
        let starts = text.components(separatedBy: "slurm.sbatch: job \(id) start ").dropFirst()
        XCTAssertEqual(starts.count, 2, "one start on 3 nodes, one on the survivors: \(text)")
        XCTAssertTrue(starts.first?.contains(" on 3 nodes (sb-h[1-3]), ranks per node: 1\n") == true, text)
        XCTAssertTrue(text.contains("  rank 2: experts"), "experts on every host: \(text)")
        XCTAssertTrue(text.contains("DUE TO NODE FAILURE"), text)
        let second = try XCTUnwrap(starts.last, text)
        XCTAssertTrue(second.contains(" on 2 nodes (sb-h[1-2]), ranks per node: 1\n"), text)

        // The second start says where it continues, from which checkpoint, and what was lost.
        let checkpoint = try XCTUnwrap(number(after: "resumed from \(run)/step-", in: second), second)
        XCTAssertTrue(second.contains("continuing on 2 nodes (sb-h1, sb-h2) with 2 ranks; the previous start reached step "), second)
        let reached = try XCTUnwrap(number(after: "the previous start reached step ", in: second), second)
        let lost = try XCTUnwrap(number(after: "step \(reached): ", in: second), second)
        XCTAssertEqual(lost, reached - checkpoint, second)
        XCTAssertLessThanOrEqual(lost, 10, "steps lost are at most the checkpoint interval")
        XCTAssertEqual(checkpoint, 40, "the host was lost after step 42, before step 50's checkpoint: \(second)")
        XCTAssertGreaterThanOrEqual(lost, 2, "steps 41 and 42 were done and lost: \(second)")
        XCTAssertTrue(second.contains("done: 200 steps"), second)

        // By hand: the same checkpoint on two ranks of this host.
        let hand = try mpirun(ranks: 2, name: "hand", job: job,
                              extraArguments: ["--resume", "\(run)/\(CheckpointFolder.name(step: checkpoint))"])
        XCTAssertEqual(hand.code, 0, hand.output)
        let (worst, tensor) = Self.maxRelativeDifference(try model("\(run)/model.h5", job), try model("\(dir)/runs/hand/model.h5", job))
        XCTAssertLessThanOrEqual(worst, 1e-5, "relative L2 difference \(worst) in \(tensor) from the run resumed by hand")
        print("node loss: resumed from step \(checkpoint), \(lost) steps lost; largest relative L2 difference from the run "
              + "resumed by hand: \(worst) (\(tensor))")
    }

    /// A config error ends the job (exit 2), and Slurm does not start it again.
    func testAConfigErrorIsNotRequeued() throws {
        defer { down() }
        try up(2)
        let job = try moeJob(steps: 20)
        let id = try submit(job, options: ["--nodes=2"], arguments: ["--set", "train.bach_size=48"])
        let end = try waitForEnd(id, deadline: 60)
        let text = log(id)
        XCTAssertEqual(end["JobState"], "FAILED", "\(end)\n\(text)")
        XCTAssertEqual(end["ExitCode"], "2:0", "\(end)\n\(text)")
        // Each rank says it, and both exit 2: none is terminated by srun while still starting
        // (which would exit 143 and hide the config error).
        XCTAssertEqual(text.components(separatedBy: "switchboard: error: \(job): unknown key bach_size in [train]; "
                                       + "did you mean batch_size?").count - 1, 2, text)
        XCTAssertEqual(text.components(separatedBy: ": Exited with exit code 2").count - 1, 2, text)
        // The script ran once (Slurm itself may requeue a batch launch that timed out, before
        // the script runs: that is not the script's doing).
        XCTAssertEqual(text.components(separatedBy: "slurm.sbatch: job \(id) start ").count - 1, 1, text)
        XCTAssertEqual(text.components(separatedBy: "slurm.sbatch: config error (exit 2); not requeued").count - 1, 1, text)
        Thread.sleep(forTimeInterval: 3)
        let later = try fields(id)
        XCTAssertEqual(later["JobState"], "FAILED", "the job must stay ended: \(later)\n\(log(id))")
        XCTAssertEqual(later["Restarts"], end["Restarts"], "requeued after the config error: \(later)\n\(log(id))")
    }

    /// What preemption does: `scancel --signal=TERM` reaches every rank, which saves; the
    /// script requeues the job, and it finishes bitwise like a run never stopped.
    func testSIGTERMSavesOnEveryRankAndTheRequeuedJobContinuesBitwise() throws {
        defer { down() }
        try up(2)
        let job = try moeJob(steps: 120)
        let run = "\(dir)/runs/toy"
        let id = try submit(job, options: ["--nodes=2"])
        try waitForCheckpoint(20, in: run, job: id)
        let signal = try slurm(["scancel", "--signal=TERM", id])
        XCTAssertEqual(signal.code, 0, signal.output)
        try assertStoppedAndContinuedBitwise(id, job: job, run: run)
    }

    /// The time limit's warning signal (`--signal=TERM@…`) does the same as preemption's.
    func testTheTimeLimitSignalSavesAndTheRequeuedJobContinuesBitwise() throws {
        defer { down() }
        try up(2)
        let job = try moeJob(steps: 1200)
        let run = "\(dir)/runs/toy"
        // A one-minute limit with the signal 50 s ahead: Slurm sends it some seconds after
        // the start (its timer looks every few seconds), long before the 1200 steps (48 s of pauses) are done.
        let id = try submit(job, options: ["--nodes=2", "--time=1", "--signal=TERM@50"])
        try assertStoppedAndContinuedBitwise(id, job: job, run: run)
    }

    /// Job `id` was stopped by SIGTERM at least once, saved on every rank, was requeued and
    /// finished; its model equals, bit for bit, an uninterrupted run on two ranks.
    func assertStoppedAndContinuedBitwise(_ id: String, job: String, run: String) throws {
        let end = try waitForEnd(id, deadline: 240)
        let text = log(id)
        XCTAssertEqual(end["JobState"], "COMPLETED", "\(end)\n\(text)")
        let starts = text.components(separatedBy: "slurm.sbatch: job \(id) start ").count - 1
        XCTAssertGreaterThanOrEqual(starts, 2, text)
        let stops = text.components(separatedBy: "stopped by SIGTERM after step ").dropFirst()
        XCTAssertEqual(stops.count, starts - 1, "each start but the last stopped on the signal: \(text)")
        for stop in stops {
            let step = try XCTUnwrap(Int(stop.prefix { $0.isNumber }), text)
            // Saved by every rank: the checkpoint is whole, and the next start resumes from it.
            XCTAssertTrue(stop.contains("; saved \(run)/\(CheckpointFolder.name(step: step)); continue with --resume auto"), text)
            XCTAssertTrue(text.contains("resumed from \(run)/\(CheckpointFolder.name(step: step)): step \(step),"), text)
            XCTAssertTrue(text.contains("the previous start reached step \(step): 0 steps lost"), text)
        }
        XCTAssertTrue(text.contains("slurm.sbatch: stopped by a signal after saving; requeued to continue"), text)

        let whole = try mpirun(ranks: 2, name: "whole", job: job)
        XCTAssertEqual(whole.code, 0, whole.output)
        let a = try model("\(run)/model.h5", job), b = try model("\(dir)/runs/whole/model.h5", job)
        XCTAssertEqual(a.store.values.array, b.store.values.array, "the requeued run must equal an uninterrupted one bitwise")
    }
}

/// Why a Slurm test could not go on (XCTest reports a thrown error as the test's failure).
struct SlurmTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
