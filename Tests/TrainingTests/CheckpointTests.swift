import Foundation
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

/// Checkpoints made by the real binary under `mpirun`: killed runs resume bitwise, any world
/// size continues any checkpoint, corruption is caught and `--resume auto` falls back, and
/// SIGTERM saves and exits.
final class CheckpointTests: ToyDataTestCase {
    /// The toy job for `epochs` epochs of 11 steps, with settings appended to [train].
    func job(epochs: Int, checkpoint: String) throws -> (path: String, config: JobConfig) {
        let text = Fixtures.job(dir: dir, settings: ["train.epochs": "\(epochs)"], extra: "[checkpoint]\n" + checkpoint)
        let path = try writeJob(text)
        return (path, try JobConfig.parse(text, source: path))
    }

    /// The manifest of the checkpoint folder `path`.
    func manifest(_ path: String) throws -> CheckpointManifest {
        let main = try HDF5File.open("\(path)/\(CheckpointManifest.mainFile)")
        return try CheckpointManifest.decode(try main.readBytes(CheckpointManifest.manifestDataset, limit: 1 << 24), source: path)
    }

    /// Every tensor's checksum by name: equal maps mean bitwise-equal parameters and optimizer state.
    func checksums(_ path: String) throws -> [String: String] {
        Dictionary(uniqueKeysWithValues: try manifest(path).tensors.map { ($0.name, $0.checksum) })
    }

    /// 2 ranks, a checkpoint every 2 steps; kill -9 a random rank, or all of them, at random
    /// moments (some land inside saves), and twice inside a save on purpose (after a rank
    /// has written its shard, before the commit: on rank 1, then on the coordinator). Each
    /// time `--resume auto` continues, and the end is bitwise the run never killed:
    /// parameters and AdamW moments (every tensor's checksum), and `model.h5`.
    /// The random moments are drawn in steps, not seconds: a few steps after the attempt's
    /// first progress line plus up to 30 ms, so they land mid-run however fast the disk is.
    func testKilledRunsResumeToTheSameBits() throws {
        let (path, config) = try job(epochs: 80, checkpoint: "every_steps = 2\nkeep_last = 2")
        let reference = try mpirun(ranks: 2, name: "whole", job: path)
        XCTAssertEqual(reference.code, 0, reference.output)
        let whole = "\(dir)/runs/whole"

        var rng = SystemRandomNumberGenerator()
        var kills = 0, resumedFrom: [Int] = []
        let log = "\(dir)/killed.log"
        func resumedStep(_ text: String) -> Int? {
            guard let r = text.range(of: "resumed from ") else { return nil }
            let rest = text[r.upperBound...]
            guard let s = rest.range(of: ": step ") else { return nil }
            return Int(rest[s.upperBound...].prefix { $0.isNumber })
        }
        // Two deaths inside saves, then random kills until seven have landed, then to the end.
        let inSave = ["rank=1,step=40,kind=kill-in-save", "rank=0,step=80,kind=kill-in-save"]
        for attempt in 0..<40 {
            let fault = attempt < inSave.count ? inSave[attempt] : nil
            let p = try start(ranks: 2, name: "killed", job: path, extra: ["--resume", "auto"], log: log,
                              environment: fault.map { ["SWITCHBOARD_FAULT": $0] } ?? [:])
            var killed = false
            if fault == nil && kills < 7 {
                // Progress lines come every 5 steps; the run has 880.
                if waitForStep(1, in: log, of: p) {
                    let first = Self.lastLoggedStep(try String(contentsOfFile: log, encoding: .utf8)) ?? 0
                    _ = waitForStep(first + Int.random(in: 0...30, using: &rng), in: log, of: p)
                    Thread.sleep(forTimeInterval: Double.random(in: 0...0.03, using: &rng))
                }
                let pids = ranks(of: p)
                if p.isRunning && pids.count == 2 {
                    let victims = Bool.random(using: &rng) ? pids : [pids.randomElement(using: &rng)!]
                    for v in victims { kill(v, SIGKILL) }
                    killed = true
                }
            }
            p.waitUntilExit()
            let text = try String(contentsOfFile: log, encoding: .utf8)
            if let s = resumedStep(text) { resumedFrom.append(s) }
            if fault != nil {
                XCTAssertNotEqual(p.terminationStatus, 0, "the fault \(fault!) must kill the run\n\(text)")
                kills += 1
                continue
            }
            if p.terminationStatus == 0 { break }
            XCTAssertTrue(killed, "the run failed without being killed:\n\(text)")
            kills += 1
        }
        XCTAssertGreaterThanOrEqual(kills, 7, "two kills inside saves and at least five at random moments")
        XCTAssertTrue(resumedFrom.contains { $0 > 0 }, "some run resumed from a checkpoint: \(resumedFrom)")
        print("kill test: \(kills) kills; runs resumed from steps \(resumedFrom)")

        let final = CheckpointFolder.name(step: 880)
        XCTAssertEqual(try checksums("\(whole)/\(final)"), try checksums("\(dir)/runs/killed/\(final)"))
        let a = try loadModel("\(whole)/model.h5", config), b = try loadModel("\(dir)/runs/killed/model.h5", config)
        XCTAssertEqual(Self.maxRelativeDifference(a, b).0, 0)
        let left = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/runs/killed")
        XCTAssertFalse(left.contains { $0.hasSuffix(".tmp") }, "interrupted saves are cleaned up: \(left)")
        XCTAssertEqual(left.filter { $0.hasPrefix("step-") }.count, 2, "keep_last = 2: \(left)")
    }

    /// An MoE model of 8 experts saved on 2 ranks continues on 1 and on 4, and one saved on 4
    /// continues on 2; each matches the run that kept its world size, every tensor (parameters,
    /// AdamW m and v) is written exactly once, and `h5ls -r` lists them all by global name.
    func testMoECheckpointsContinueOnAnyNumberOfRanks() throws {
        let (path, config) = try moeJob("experts = 8\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01\nz_loss = 0.001", steps: 24)
        try (try String(contentsOfFile: path, encoding: .utf8) + "\n[checkpoint]\nevery_steps = 12\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let model = Model(config.model, inputs: 64, classes: 4, maxRows: 1, seed: 1)
        var expected = Set<String>()
        for p in model.store.parameters {
            expected.formUnion(["params/\(p.name)", "optimizer/m/\(p.name)", "optimizer/v/\(p.name)"])
        }
        XCTAssertEqual(expected.count, 3 * model.store.parameters.count)
        for (saved, continued) in [(2, [1, 4]), (4, [2])] {
            let base = "save\(saved)"
            _ = try train(ranks: saved, name: base, job: path)
            let checkpoint = "\(dir)/runs/\(base)/\(CheckpointFolder.name(step: 12))"
            let m = try manifest(checkpoint)
            XCTAssertEqual(m.worldSize, saved)
            XCTAssertEqual(m.placement?.expertsByRank.count, saved)
            XCTAssertEqual(Set(m.tensors.map(\.name)), expected, "every tensor in the manifest")
            XCTAssertEqual(m.tensors.count, expected.count, "each exactly once")
            // In the shard files themselves, each tensor is in exactly one.
            var holders: [String: [String]] = [:]
            for file in m.files {
                let listing = try Launcher.run(try XCTUnwrap(Fixtures.tool("h5ls"), "h5ls is not on PATH (Debian: hdf5-tools)"), ["-r", "\(checkpoint)/\(file)"]).output
                for line in listing.split(separator: "\n") where line.contains("Dataset") {
                    let name = String(line.split(separator: " ")[0].dropFirst())
                    holders[name, default: []].append(file)
                }
            }
            XCTAssertEqual(Set(holders.keys), expected)
            XCTAssertTrue(holders.values.allSatisfy { $0.count == 1 }, "tensors in more than one shard: \(holders.filter { $0.value.count > 1 })")
            let experts = holders.filter { $0.key.hasPrefix("params/blocks.0.moe.experts.") }.values.map { $0[0] }
            XCTAssertEqual(Set(experts).count, saved, "each rank wrote its own experts")
            let main = try Launcher.run(try XCTUnwrap(Fixtures.tool("h5ls"), "h5ls is not on PATH (Debian: hdf5-tools)"), ["-r", "\(checkpoint)/\(CheckpointManifest.mainFile)"]).output
            for name in expected { XCTAssertTrue(main.contains("/\(name) "), "h5ls -r lists \(name)") }

            let reference = try loadModel("\(dir)/runs/\(base)/model.h5", config)
            for ranks in continued {
                let name = "from\(saved)on\(ranks)"
                let r = try mpirun(ranks: ranks, name: name, job: path, settings: [], extraArguments: ["--resume", checkpoint])
                XCTAssertEqual(r.code, 0, r.output)
                XCTAssertTrue(r.output.contains("resumed from \(checkpoint): step 12"), r.output)
                XCTAssertTrue(r.output.contains("resharded from \(saved) to \(ranks) rank"), r.output)
                let other = try loadModel("\(dir)/runs/\(name)/model.h5", config)
                let worst = Self.maxRelativeDifference(reference, other)
                XCTAssertLessThanOrEqual(worst.0, 1e-5, "saved on \(saved), continued on \(ranks): \(worst.1)")
                print("MoE saved on \(saved) ranks, continued on \(ranks): max relative L2 difference \(worst.0) (\(worst.1))")
            }
        }
    }

    /// Each newer family's checkpoints: a run continued from its step-12 checkpoint on the
    /// same 2 ranks ends bitwise where the uninterrupted run ended (every tensor's checksum);
    /// continued on 1 rank, within rounding of it. A frozen parameter is written once, marked
    /// frozen, without optimizer state, and `inspect ls` and `inspect verify` say so.
    func testFamilyCheckpointsResumeBitwiseAndOnAnotherNumberOfRanks() throws {
        for (label, model) in [("fff", ToyModel.fff), ("hourglass", .hourglass), ("lowrank", .lowRank), ("sigma", .sigmaMoE)] {
            let text = Fixtures.job(dir: dir, model: model, settings: ["train.epochs": "3", "train.max_steps": "24"],
                                    extra: "[checkpoint]\nevery_steps = 12\nkeep_last = 0\n")
            let path = try writeJob(text)
            let config = try JobConfig.parse(text, source: path)
            _ = try train(ranks: 2, name: "\(label)whole", job: path)
            let whole = "\(dir)/runs/\(label)whole", middle = "\(whole)/\(CheckpointFolder.name(step: 12))"
            let final = CheckpointFolder.name(step: 24)
            let again = try mpirun(ranks: 2, name: "\(label)again", job: path, extraArguments: ["--resume", middle])
            XCTAssertEqual(again.code, 0, again.output)
            XCTAssertEqual(try checksums("\(whole)/\(final)"), try checksums("\(dir)/runs/\(label)again/\(final)"), "\(label): resumed bitwise")
            let one = try mpirun(ranks: 1, name: "\(label)one", job: path, extraArguments: ["--resume", middle])
            XCTAssertEqual(one.code, 0, one.output)
            XCTAssertTrue(one.output.contains("resharded from 2 to 1 rank"), one.output)
            let worst = Self.maxRelativeDifference(try loadModel("\(whole)/model.h5", config),
                                                   try loadModel("\(dir)/runs/\(label)one/model.h5", config))
            XCTAssertLessThanOrEqual(worst.0, 1e-5, "\(label): saved on 2 ranks, continued on 1: \(worst.1)")

            let m = try manifest(middle)
            let frozen = m.tensors.filter { $0.frozen == true }.map(\.name)
            let verify = try Launcher.run(binary, ["inspect", "verify", middle])
            XCTAssertEqual(verify.code, 0, verify.output)
            guard label == "hourglass" else { XCTAssertEqual(frozen, [], label); continue }
            XCTAssertEqual(frozen, ["params/embed.weight", "params/embed.bias"])
            XCTAssertFalse(m.tensors.contains { $0.name.hasPrefix("optimizer/") && $0.name.hasSuffix("/embed.weight") },
                           "a frozen parameter has no optimizer state")
            let ls = try Launcher.run(binary, ["inspect", "ls", middle])
            XCTAssertEqual(ls.code, 0, ls.output)
            XCTAssertTrue(ls.output.contains("params/embed.weight (frozen)"), ls.output)
            XCTAssertTrue(ls.output.contains("2,080 of them frozen (no optimizer state), in 2 tensors"), ls.output)
        }
    }

    /// A checkpoint moves between the modes: saved with the parameters in shards it resumes
    /// in the same mode and world size bitwise, on 2 ranks without shards and on 4 ranks
    /// within rounding of the uninterrupted run, and one saved on 4 ranks without shards
    /// resumes on 2 with them; `inspect verify` finds a sharded save healthy. Dense and MoE.
    func testCheckpointsMoveBetweenShardedAndWholeParameters() throws {
        let shard = "parallel.shard_parameters=true"
        for (label, model) in [("dense", ToyModel.residual), ("moe", .moe("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01"))] {
            let text = Fixtures.job(dir: dir, model: model, settings: ["train.epochs": "3", "train.max_steps": "24"],
                                    extra: "[checkpoint]\nevery_steps = 12\nkeep_last = 0\n")
            let path = try writeJob(text)
            let config = try JobConfig.parse(text, source: path)
            _ = try train(ranks: 2, name: "\(label)sharded", job: path, settings: [shard])
            let whole = "\(dir)/runs/\(label)sharded", middle = "\(whole)/\(CheckpointFolder.name(step: 12))"
            let final = CheckpointFolder.name(step: 24)
            let verify = try Launcher.run(binary, ["inspect", "verify", middle])
            XCTAssertEqual(verify.code, 0, verify.output)
            let again = try mpirun(ranks: 2, name: "\(label)again", job: path, settings: [shard], extraArguments: ["--resume", middle])
            XCTAssertEqual(again.code, 0, again.output)
            XCTAssertEqual(try checksums("\(whole)/\(final)"), try checksums("\(dir)/runs/\(label)again/\(final)"),
                           "\(label): resumed in the same mode on the same ranks, bitwise")
            let reference = try loadModel("\(whole)/model.h5", config)
            for (ranks, settings) in [(2, [String]()), (4, [shard])] {
                let name = "\(label)on\(ranks)\(settings.isEmpty ? "whole" : "sharded")"
                let r = try mpirun(ranks: ranks, name: name, job: path, settings: settings, extraArguments: ["--resume", middle])
                XCTAssertEqual(r.code, 0, r.output)
                let worst = Self.maxRelativeDifference(reference, try loadModel("\(dir)/runs/\(name)/model.h5", config))
                XCTAssertLessThanOrEqual(worst.0, 1e-5, "\(label): saved sharded on 2 ranks, continued as \(name): \(worst.1)")
            }
            _ = try train(ranks: 4, name: "\(label)four", job: path)
            let fromFour = try mpirun(ranks: 2, name: "\(label)fromfour", job: path, settings: [shard],
                                      extraArguments: ["--resume", "\(dir)/runs/\(label)four/\(CheckpointFolder.name(step: 12))"])
            XCTAssertEqual(fromFour.code, 0, fromFour.output)
            XCTAssertTrue(fromFour.output.contains("resharded from 4 to 2 rank"), fromFour.output)
            let worst = Self.maxRelativeDifference(reference, try loadModel("\(dir)/runs/\(label)fromfour/model.h5", config))
            XCTAssertLessThanOrEqual(worst.0, 1e-5, "\(label): saved whole on 4 ranks, continued sharded on 2: \(worst.1)")
        }
    }

    /// Each kind of damage to the newest checkpoint is named (file and tensor) and `--resume
    /// auto` falls back to the one before; the continuation then ends bitwise where the
    /// undamaged run ended, and replaces the damaged checkpoint.
    func testCorruptCheckpointsAreDetectedAndSkipped() throws {
        let (path, config) = try job(epochs: 2, checkpoint: "every_steps = 10\nkeep_last = 0")
        _ = try train(ranks: 2, name: "good", job: path)
        let good = "\(dir)/runs/good"
        let newest = CheckpointFolder.name(step: 22), older = CheckpointFolder.name(step: 20)
        let m = try manifest("\(good)/\(newest)")
        let victim = m.tensors.first { $0.name == "params/blocks.1.fc1.weight" }!
        let goodModel = try loadModel("\(good)/model.h5", config)

        typealias Damage = (String, (String) throws -> Void, [String])
        let cases: [Damage] = [
            ("truncated shard", { ck in
                let f = "\(ck)/\(victim.file)"
                let size = try FileManager.default.attributesOfItem(atPath: f)[.size] as! Int
                XCTAssertEqual(truncate(f, off_t(size / 2)), 0)
            }, [victim.file, "tensor params/", "truncated"]),
            ("flipped byte", { ck in
                // Find the tensor's first bytes in its shard (chunks are stored as is) and flip one.
                let f = "\(ck)/\(victim.file)"
                let values = [Float](unsafeUninitializedCapacity: victim.count) { buffer, n in
                    try? HDF5File.open(f).readFloats(victim.name, shape: victim.shape, into: buffer.baseAddress!)
                    n = victim.count
                }
                var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: f)))
                let needle = values.prefix(8).withUnsafeBytes { Array($0) }
                let at = (0...(bytes.count - needle.count)).first { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }!
                bytes[at + 5] ^= 0x10
                try Data(bytes).write(to: URL(fileURLWithPath: f))
            }, [victim.file, "tensor \(victim.name)"]),
            ("deleted shard", { ck in try FileManager.default.removeItem(atPath: "\(ck)/\(victim.file)") },
             [victim.file, "missing: it holds tensor params/"]),
            ("deleted manifest", { ck in try FileManager.default.removeItem(atPath: "\(ck)/\(CheckpointManifest.mainFile)") },
             ["no checkpoint.h5: not a committed checkpoint"]),
            ("shard from another save", { ck in
                let other = "\(good)/\(older)/\(victim.file)", f = "\(ck)/\(victim.file)"
                try FileManager.default.removeItem(atPath: f)
                try FileManager.default.copyItem(atPath: other, toPath: f)
            }, [victim.file, "belongs to save \(CheckpointFolder.name(step: 20))-", "the manifest to \(m.id)", "(tensor params/"]),
        ]
        for (label, damage, expected) in cases {
            let name = label.filter(\.isLetter)
            let run = "\(dir)/runs/\(name)"
            try FileManager.default.copyItem(atPath: good, toPath: run)
            for f in ["model.h5", "summary.json"] { try FileManager.default.removeItem(atPath: "\(run)/\(f)") }
            try damage("\(run)/\(newest)")
            let r = try mpirun(ranks: 2, name: name, job: path, extraArguments: ["--resume", "auto"])
            XCTAssertEqual(r.code, 0, "\(label): \(r.output)")
            let warning = r.output.split(separator: "\n").first { $0.hasPrefix("warning: checkpoint \(run)/\(newest) does not load: ") }
            XCTAssertNotNil(warning, "\(label): \(r.output)")
            for piece in expected { XCTAssertTrue(warning?.contains(piece) ?? false, "\(label): '\(piece)' in: \(warning ?? "")") }
            XCTAssertTrue(r.output.contains("resumed from \(run)/\(older): step 20"), "\(label): \(r.output)")
            XCTAssertEqual(Self.maxRelativeDifference(goodModel, try loadModel("\(run)/model.h5", config)).0, 0, label)
            XCTAssertEqual(try checksums("\(run)/\(newest)"), try checksums("\(good)/\(newest)"), "\(label): the damaged checkpoint is replaced")
            print("\(label): \(warning ?? "")")
        }
        // With nothing that loads, --resume auto stops rather than starting over.
        for (_, checkpoint) in CheckpointFolder.list(in: good) {
            try FileManager.default.removeItem(atPath: "\(checkpoint)/\(victim.file)")
        }
        let r = try mpirun(ranks: 2, name: "good", job: path, extraArguments: ["--resume", "auto"])
        XCTAssertEqual(r.code, 1, r.output)
        XCTAssertTrue(r.output.contains("no checkpoint loads"), r.output)
    }

    /// SIGTERM to one rank (as Slurm signals every task, and mpirun forwards): the step
    /// finishes, every rank joins the save, the program exits 143; `--resume auto` then ends
    /// bitwise where the uninterrupted run ends. So that the signal lands mid-run however fast
    /// the run is, rank 1 stops itself (SIGSTOP) before step 51; the test sends SIGTERM to the
    /// stopped process and then SIGCONT, which delivers it there. The kernel hands a signal
    /// sent to a process to any of its threads, and one that waits for a core sets the flag a
    /// little later: the toy's steps take ~0.1 ms, so the stop may come a few steps after 51
    /// (56 was seen on two busy cores). Every rank still stops after the same step.
    func testSIGTERMSavesAndTheRunContinuesExactly() throws {
        let (path, config) = try job(epochs: 60, checkpoint: "every_minutes = 0\nat_end = true")
        let whole = try mpirun(ranks: 2, name: "whole", job: path)
        XCTAssertEqual(whole.code, 0, whole.output)
        let log = "\(dir)/term.log"
        let p = try start(ranks: 2, name: "term", job: path, extra: [], log: log,
                          environment: ["SWITCHBOARD_FAULT": "rank=1,step=50,kind=stop"])
        func isStopped(_ pid: Int32) -> Bool {
            // /proc/PID/stat: "pid (comm) S …"; the state follows the last ')'.
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.range(of: ")", options: .backwards) else { return false }
            return stat[close.upperBound...].trimmingCharacters(in: .whitespaces).hasPrefix("T")
        }
        var pids: [Int32] = []
        for _ in 0..<1500 where p.isRunning {
            pids = ranks(of: p).sorted()
            if pids.count == 2 && pids.contains(where: isStopped) { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        guard let target = pids.first(where: isStopped) else {
            p.terminate()
            return XCTFail("rank 1 never stopped before step 50: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        }
        kill(target, SIGTERM)
        kill(target, SIGCONT)
        p.waitUntilExit()
        let text = try String(contentsOfFile: log, encoding: .utf8)
        XCTAssertEqual(p.terminationStatus, 143, text)
        let saved = CheckpointFolder.list(in: "\(dir)/runs/term")
        XCTAssertEqual(saved.count, 1, text)
        let at = saved.first?.step ?? 0
        XCTAssertTrue((51...70).contains(at), "the stop comes at the first step after the signal: saved \(saved.map(\.step)): \(text)")
        XCTAssertTrue(text.contains("stopped by SIGTERM after step \(at); saved"), text)
        XCTAssertTrue(text.contains("continue with --resume auto"), text)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs/term/summary.json"), "the run did not finish")

        let r = try mpirun(ranks: 2, name: "term", job: path, extraArguments: ["--resume", "auto"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("resumed from \(dir)/runs/term/\(CheckpointFolder.name(step: at)): step \(at)"), r.output)
        let final = CheckpointFolder.name(step: 660)
        XCTAssertEqual(try checksums("\(dir)/runs/whole/\(final)"), try checksums("\(dir)/runs/term/\(final)"))
        let a = try loadModel("\(dir)/runs/whole/model.h5", config), b = try loadModel("\(dir)/runs/term/model.h5", config)
        XCTAssertEqual(Self.maxRelativeDifference(a, b).0, 0)
    }

    /// A checkpoint that does not fit the job is refused with every mismatch listed at once,
    /// before anything is read into the model.
    func testACheckpointOfAnotherModelIsRefusedWithEveryMismatch() throws {
        let (path, _) = try job(epochs: 1, checkpoint: "")
        let first = try Launcher.run(binary, ["train", path, "--quiet", "--set", "train.max_steps=3"])
        XCTAssertEqual(first.code, 0, first.output)
        let checkpoint = "\(dir)/runs/toy/\(CheckpointFolder.name(step: 3))"
        let r = try Launcher.run(binary, ["train", path, "--quiet", "--resume", checkpoint, "--set", "model.width=24",
                                          "--set", "optimizer.name=\"sgd\"", "--set", "run.seed=6"])
        XCTAssertEqual(r.code, 1, r.output)
        let line = r.output.split(separator: "\n").first { $0.hasPrefix("switchboard: error: \(checkpoint): ") } ?? ""
        for piece in ["does not fit this job", "optimizer adamw in the checkpoint, sgd in the job",
                      "params/embed.weight has shape [32, 64], the model [24, 64]", "params/blocks.0.norm.weight has shape [32], the model [24]",
                      "seed 5 in the checkpoint, 6 in the job"] {
            XCTAssertTrue(line.contains(piece), "'\(piece)' in: \(r.output)")
        }
    }

    /// `every_minutes`: rank 0's clock asks, and both ranks save after the same step. Without
    /// depending on how fast the machine runs: an interval of 60 ns has passed by the end of
    /// every step after the first (so each saves, with both ranks' shards), and one of an hour
    /// never passes in the run (so none does).
    func testCheckpointsByTime() throws {
        let (path, _) = try job(epochs: 2, checkpoint: "every_minutes = 1e-9\nkeep_last = 0\nat_end = false")
        let r = try mpirun(ranks: 2, name: "timed", job: path)
        XCTAssertEqual(r.code, 0, r.output)
        let saved = CheckpointFolder.list(in: "\(dir)/runs/timed")
        // After every step from the second on (before the first, the clock may not have moved 60 ns).
        let steps = Set(saved.map(\.step))
        XCTAssertTrue(steps.isSuperset(of: 2...22) && steps.isSubset(of: 1...22), "a save after every step: \(steps.sorted())\n\(r.output)")
        for (_, checkpoint) in saved {
            let m = try manifest(checkpoint)
            XCTAssertEqual(m.files, ["rank-00000.h5", "rank-00001.h5"], "both ranks wrote their shard")
        }
        let hourly = try mpirun(ranks: 2, name: "hourly", job: path, settings: ["checkpoint.every_minutes=60.0"])
        XCTAssertEqual(hourly.code, 0, hourly.output)
        XCTAssertEqual(CheckpointFolder.list(in: "\(dir)/runs/hourly").count, 0, hourly.output)
    }
}
