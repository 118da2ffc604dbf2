import Foundation
import Storage
import TestSupport
import XCTest
@testable import Training
import Cluster

/// Damaged, hand-edited and unlucky inputs, each answered with one line and the right exit
/// code, never a crash, and without losing anything already on disk.
final class HostileInputTests: ToyDataTestCase {
    struct Outcome { var code: Int32; var out: String; var err: String; var signaled: Bool }

    func switchboard(_ arguments: [String], deadline: Double = 60) throws -> Outcome {
        let r = try Launcher.runApart(binary, arguments, directory: dir, deadline: deadline)
        return Outcome(code: r.code, out: r.out, err: r.err, signaled: r.signaled)
    }

    /// Exit `code`, and standard error one line: `switchboard: error: ` then `message`
    /// (or a line that starts so, with `prefix`).
    func assertOneLine(_ r: Outcome, code: Int32, _ message: String, prefix: Bool = false,
                       file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(r.signaled, "killed by a signal: \(r.err)", file: file, line: line)
        XCTAssertEqual(r.code, code, r.err, file: file, line: line)
        XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1, "one line on stderr: \(r.err)", file: file, line: line)
        let expected = "switchboard: error: \(message)"
        if prefix { XCTAssertTrue(r.err.hasPrefix(expected), "\(r.err) does not start with \(expected)", file: file, line: line) }
        else { XCTAssertEqual(r.err, expected + "\n", file: file, line: line) }
    }

    /// A finished toy run (`steps` steps, a checkpoint at the end); its folder.
    func finishedRun(_ name: String, steps: Int = 6) throws -> String {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.max_steps": "\(steps)"]))
        let r = try switchboard(["train", job, "--quiet", "--set", "run.name=\"\(name)\""])
        XCTAssertEqual(r.code, 0, r.err)
        return "\(dir)/runs/\(name)"
    }

    /// Rewrites a checkpoint's manifest through the HDF5 API, as a hand edit with h5py would.
    func editManifest(_ checkpoint: String, _ edit: (inout CheckpointManifest) -> Void) throws {
        let main = "\(checkpoint)/\(CheckpointManifest.mainFile)"
        var m = try CheckpointReader(checkpoint).manifest
        edit(&m)
        try FileManager.default.removeItem(atPath: main)
        try m.writeMainFile(main)
    }

    /// A manifest that declares a tensor larger than its file: every reader refuses it with one
    /// line, before allocating anything from the declared shape.
    func testAHugeTensorInTheManifestIsRefusedByEveryReader() throws {
        let run = try finishedRun("huge")
        let ck = "\(run)/step-000006"
        try editManifest(ck) { m in
            let i = m.tensors.firstIndex { $0.name == "params/head.weight" }!
            m.tensors[i].shape = [1 << 20, 1 << 20]
        }
        let problem = "\(ck)/rank-00000.h5: the manifest gives its 54 tensors "
        for arguments in [["inspect", "verify", ck], ["inspect", "stats", ck], ["inspect", "diff", ck, ck],
                          ["inspect", "export", ck, "\(dir)/out.safetensors"]] {
            let r = try switchboard(arguments)
            if arguments[1] == "verify" {
                XCTAssertEqual(r.code, 1, r.err)
                XCTAssertTrue(r.out.contains("problem: " + problem), r.out)
            } else {
                assertOneLine(r, code: 1, problem, prefix: true)
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out.safetensors"))
        // The manifest alone (nothing allocated from shapes) lists what it says.
        for sub in ["ls", "show"] { XCTAssertEqual(try switchboard(["inspect", sub, ck]).code, 0) }
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.max_steps": "6"]))
        let r = try switchboard(["train", job, "--quiet", "--resume", ck, "--set", "run.name=\"again\""])
        assertOneLine(r, code: 1, "\(ck): checkpoint.h5: does not fit this job: params/head.weight has shape [1048576, 1048576], the model [4, 32]",
                      prefix: true)
    }

    /// A key nested tens of thousands of levels deep, in a job file (a dotted key, a table
    /// header), a run folder's `config.toml`, or a checkpoint's stored config: one line naming
    /// the line and the limit, or a note in the report, never a crash (it overflowed the
    /// stack, exit 139); `inspect verify` reads the stored config as a resume would.
    func testADeeplyNestedKeyIsRefusedByEveryReader() throws {
        func deep(_ n: Int) -> String { Array(repeating: "a", count: n).joined(separator: ".") }
        func tooDeep(_ source: String, _ line: Int) -> String {
            "\(source):\(line): nested more than 64 levels deep (dotted keys, table headers, inline tables and arrays together); "
                + "no setting is nested deeper than section.key"
        }
        let key = "\(dir)/deep-key.toml", header = "\(dir)/deep-header.toml"
        try "[run]\n\(deep(40_000)) = 1\n".write(toFile: key, atomically: true, encoding: .utf8)
        try "[run]\nname = \"x\"\n[\(deep(50_000))]\n".write(toFile: header, atomically: true, encoding: .utf8)
        assertOneLine(try switchboard(["train", key]), code: 2, tooDeep(key, 2))
        assertOneLine(try switchboard(["train", header]), code: 2, tooDeep(header, 3))
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"), "a refused job makes no run folder")

        let run = try finishedRun("deep")
        let config = "\(run)/config.toml"
        try (try String(contentsOfFile: config, encoding: .utf8) + "[\(deep(50_000))]\n").write(toFile: config, atomically: true, encoding: .utf8)
        let report = try switchboard(["report", run, "--out", "\(dir)/report.html"])
        XCTAssertFalse(report.signaled, report.err)
        XCTAssertEqual(report.code, 0, report.err)
        let html = try String(contentsOfFile: "\(dir)/report.html", encoding: .utf8)
        XCTAssertTrue(html.contains("config.toml does not parse (config.toml:"), "the report says why the config is not compared")

        let ck = "\(run)/step-000006"
        var headerLine = 0
        try editManifest(ck) { m in
            headerLine = m.config.filter { $0 == "\n" }.count + 2
            m.config += "\n[\(deep(50_000))]\n"
        }
        let stored = "\(ck)/\(CheckpointManifest.mainFile) (its config)"
        for arguments in [["evaluate", ck], ["predict", ck, "\(dir)/test-images", "\(dir)/out.h5"], ["moefy", ck, "--experts", "2", "--out", "\(dir)/moe"]] {
            let r = try switchboard(arguments)
            XCTAssertFalse(r.signaled, "\(arguments[0]): \(r.err)")
            XCTAssertEqual(r.code, 2, "\(arguments[0]): \(r.err)")
            XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1, "\(arguments[0]): one line: \(r.err)")
            XCTAssertTrue(r.err.contains(": nested more than 64 levels deep ("), "\(arguments[0]): \(r.err)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out.h5") || FileManager.default.fileExists(atPath: "\(dir)/moe"))
        let verify = try switchboard(["inspect", "verify", ck])
        XCTAssertEqual(verify.code, 1, verify.out + verify.err)
        XCTAssertTrue(verify.out.contains("problem: " + tooDeep(stored, headerLine)), verify.out)
    }

    /// predict writes `OUT.partial` first: a stale file of that name (a killed predict's) is
    /// replaced, but a folder of that name is somebody's: refused, naming it, and left as it
    /// was (predict used to delete it, contents and all, and exit 0).
    func testPredictNeverRemovesAFolderInTheWayOfItsPartialFile() throws {
        let ck = "\(try finishedRun("partial"))/step-000006", out = "\(dir)/out.h5", partial = "\(dir)/out.h5.partial"
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: false)
        try "precious".write(toFile: "\(partial)/notes.txt", atomically: true, encoding: .utf8)
        let r = try switchboard(["predict", ck, "\(dir)/test-images", out])
        assertOneLine(r, code: 1, "\(partial): is in the way: this output is written there first, and it is a folder, "
                      + "not a file left by an earlier write; move it away")
        XCTAssertEqual(try String(contentsOfFile: "\(partial)/notes.txt", encoding: .utf8), "precious")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        try FileManager.default.removeItem(atPath: partial)
        try "stale".write(toFile: partial, atomically: true, encoding: .utf8)
        let again = try switchboard(["predict", ck, "\(dir)/test-images", out])
        XCTAssertEqual(again.code, 0, again.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out))
        XCTAssertFalse(FileManager.default.fileExists(atPath: partial), "the stale file is gone, the new one renamed")
    }

    /// HDF5's messages are made one line where they all pass: its open failures embed
    /// ctime()'s text with its newline, which split predict's error line in two (here the
    /// partial file's name is too long for the file system).
    func testAnHDF5FailureIsOneLine() throws {
        let ck = "\(try finishedRun("long"))/step-000006", out = "\(dir)/\(String(repeating: "x", count: 250)).h5"
        let r = try switchboard(["predict", ck, "\(dir)/test-images", out])
        assertOneLine(r, code: 1, "\(out).partial: creating the file failed (unable to create file; unable to open file: time = ", prefix: true)
        XCTAssertTrue(r.err.contains(" 20") && r.err.contains(", name = '\(out).partial'"), r.err)
    }

    /// predict leaves nothing half-written: stopped by SIGTERM between batches it removes
    /// `OUT.partial` and says so (it died of the signal and left the file); an IDX file whose
    /// header declares more than the file holds is refused before anything is written (the
    /// message's arithmetic was wrong, and the partial file stayed); a gzip file that ends
    /// early fails mid-way, and the partial file goes too.
    func testPredictLeavesNothingHalfWritten() throws {
        let ck = "\(try finishedRun("stopped"))/step-000006", out = "\(dir)/out.h5", partial = "\(dir)/out.h5.partial"
        func nothingWritten(_ what: String) {
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(what): no output")
            XCTAssertFalse(FileManager.default.fileExists(atPath: partial), "\(what): no partial file")
        }
        let stopped = try Launcher.runApart(binary, ["predict", ck, "\(dir)/test-images", out, "--batch", "10"],
                                            environment: ["SWITCHBOARD_FAULT": "rank=0,step=2,kind=term-in-predict"], directory: dir)
        XCTAssertFalse(stopped.signaled, stopped.err)
        XCTAssertEqual(stopped.code, 143, stopped.err)
        XCTAssertEqual(stopped.err, "")
        XCTAssertEqual(stopped.out, "stopped by SIGTERM; removed \(partial), \(out) not written\n")
        nothingWritten("SIGTERM")

        // 1,000,000 images declared, 100 present (8×8 pixels each).
        let images = "\(dir)/short-images"
        Fixtures.write(Array(Fixtures.idx([100, 8, 8], [UInt8](repeating: 7, count: 6400)).prefix(4)) + [0, 0x0f, 0x42, 0x40, 0, 0, 0, 8, 0, 0, 0, 8]
                       + [UInt8](repeating: 7, count: 6400), to: images)
        assertOneLine(try switchboard(["predict", ck, images, out, "--batch", "10"]), code: 1,
                      "\(images): truncated: its header declares 1000000 images of 64 bytes (64000000 bytes), the file holds 6400")
        nothingWritten("a short IDX file")

        // The same, gzipped: its length is known only at its end.
        let gz = Process()
        gz.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gz.arguments = ["-f", images]
        try gz.run()
        gz.waitUntilExit()
        XCTAssertEqual(gz.terminationStatus, 0, "gzip")
        assertOneLine(try switchboard(["predict", ck, images + ".gz", out, "--batch", "10"]), code: 1,
                      "\(images).gz: truncated: images 100…109 (64 bytes each, of the 1000000 its header declares) needs 640 bytes, "
                      + "the file ends after 0")
        nothingWritten("a short gzip file")
    }

    /// A negative number given to a numeric option is that option's value, refused by its
    /// check with the number, not taken for an option of its own ("missing value").
    func testNegativeNumbersAreRefusedAsValues() throws {
        let ck = "\(try finishedRun("negative"))/step-000006"
        for (arguments, message) in [
            (["evaluate", ck, "--threads", "-1"], "--threads -1: must be at least 1"),
            (["moefy", ck, "--experts", "-4", "--out", "\(dir)/m"], "--experts -4: must be at least 1"),
            (["predict", ck, "\(dir)/test-images", "\(dir)/p.h5", "--batch", "-2"], "--batch -2: must be at least 1"),
            (["inspect", "diff", ck, ck, "--atol", "-1"], "--atol -1.0, --rtol 0.0: tolerances are finite and at least 0"),
        ] {
            let r = try switchboard(arguments)
            XCTAssertFalse(r.signaled, r.err)
            XCTAssertEqual(r.code, 2, "\(arguments): \(r.err)")
            XCTAssertTrue(r.err.hasPrefix("switchboard: error: \(message)\n"), "\(arguments): \(r.err)")
        }
    }

    /// `--set model.width=` a few million: the job is refused before the model is built, with
    /// what it needs and what the machine has.
    func testAModelTooLargeForTheMachineIsRefused() throws {
        let job = try writeJob()
        let r = try switchboard(["train", job, "--set", "model.width=3000000"])
        assertOneLine(r, code: 2, "\(job): the model needs about ", prefix: true)
        XCTAssertTrue(r.err.contains(" of memory per rank (parameters and gradients ") && r.err.contains(" available; make the model"),
                      r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"), "a failed start leaves no run folder")
    }

    /// The estimate printed on the `model:` line is within 25% of the peak the run measures
    /// (a model of 17 M parameters, so that the runtime's share is small).
    func testTheMemoryEstimateIsNearTheMeasuredPeak() throws {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["model.width": "1024", "model.expansion": "4",
                                                                   "train.max_steps": "3"]))
        let r = try switchboard(["train", job, "--quiet"])
        XCTAssertEqual(r.code, 0, r.err)
        func bytes(after marker: String) throws -> Double {
            let line = try XCTUnwrap(r.out.split(separator: "\n").first { $0.contains(marker) }, r.out)
            let rest = line[line.range(of: marker)!.upperBound...].split(separator: " ")
            let scale: [Substring: Double] = ["kB": 1e3, "MB": 1e6, "GB": 1e9]
            return try XCTUnwrap(Double(rest[0])) * XCTUnwrap(scale[rest[1].prefix(2)], line.description)
        }
        let estimate = try bytes(after: "memory ≈ "), peak = try bytes(after: "peak memory ")
        XCTAssertEqual(estimate / peak, 1, accuracy: 0.25, "estimate \(estimate), measured peak \(peak)")
    }

    /// Everything after a NUL byte would be lost to a C string: the job file is refused,
    /// naming the byte.
    func testAControlByteInAJobFileIsRefused() throws {
        var bytes = Array(Fixtures.job(dir: dir).utf8)
        let at = bytes.count / 2
        bytes.insert(0, at: at)
        bytes += Array("\n[train]\nno_such_key = 1\n".utf8)
        let path = "\(dir)/nul.toml"
        Fixtures.write(bytes, to: path)
        let line = bytes[..<at].filter { $0 == 0x0A }.count + 1
        let column = at - ((bytes[..<at].lastIndex(of: 0x0A) ?? -1) + 1) + 1
        assertOneLine(try switchboard(["train", path]), code: 2,
                      "\(path): byte offset \(at) (line \(line), column \(column)) is the control character 0x00 (NUL); a job file must be text")
        Fixtures.write(Array("[run]\nname = \"caf".utf8) + [0xE9] + Array("\"\n".utf8), to: path)
        assertOneLine(try switchboard(["train", path]), code: 2, "\(path): byte offset 17 is not UTF-8 text (0xE9)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"))
    }

    /// A batch larger than the training set is refused rather than silently trained as the
    /// whole set.
    func testABatchLargerThanTheTrainingSetIsRefused() throws {
        let job = try writeJob()
        assertOneLine(try switchboard(["train", job, "--set", "train.batch_size=1000"]), code: 2,
                      "\(job): [train] batch_size = 1000 is larger than the training set (512 samples); set it to at most 512")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"))
    }

    /// A `--resume PATH` that fails leaves no run folder behind.
    func testAFailedResumeLeavesNoRunFolder() throws {
        let job = try writeJob()
        assertOneLine(try switchboard(["train", job, "--resume", "\(dir)/nowhere"]), code: 1,
                      "\(dir)/nowhere: no such checkpoint")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"), "a failed start leaves no run folder")
        // Another model's checkpoint: refused, and still no new folder beside the old run's.
        let run = try finishedRun("other")
        let r = try switchboard(["train", job, "--set", "model.width=24", "--resume", "\(run)/step-000006"])
        assertOneLine(r, code: 1, "\(run)/step-000006: checkpoint.h5: does not fit this job: ", prefix: true)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: "\(dir)/runs"), ["other"])
    }

    /// The same command run again on a finished run says so, reports the final model's
    /// evaluation, and keeps the run's summary; with the summary lost (killed after the last
    /// checkpoint), it writes a correct one.
    func testResumingAFinishedRunKeepsItsResult() throws {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.max_steps": "6"]))
        let first = try switchboard(["train", job, "--quiet", "--resume", "auto"])
        XCTAssertEqual(first.code, 0, first.err)
        let summaryPath = "\(dir)/runs/toy/summary.json"
        let summary = try String(contentsOfFile: summaryPath, encoding: .utf8)
        let accuracy = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(summary.utf8)) as? [String: Any])["test_accuracy"] as? Double
        let printed = String(format: "test accuracy %.2f%%", 100 * (accuracy ?? -1))
        XCTAssertTrue(first.out.contains(printed), first.out)

        let again = try switchboard(["train", job, "--quiet", "--resume", "auto"])
        XCTAssertEqual(again.code, 0, again.err)
        XCTAssertTrue(again.out.contains("the run is complete: its 6 steps were trained before"), again.out)
        XCTAssertTrue(again.out.contains("done: the run was complete at step 6; \(printed)"), again.out)
        XCTAssertEqual(try String(contentsOfFile: summaryPath, encoding: .utf8), summary, "summary.json kept")

        try FileManager.default.removeItem(atPath: summaryPath)
        let lost = try switchboard(["train", job, "--quiet", "--resume", "auto"])
        XCTAssertEqual(lost.code, 0, lost.err)
        let rewritten = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: summaryPath))) as? [String: Any])
        XCTAssertEqual(rewritten["test_accuracy"] as? Double, accuracy)
        XCTAssertEqual(rewritten["steps"] as? Int, 6)
    }

    /// The bytes of a little-endian float32 datatype message: one flipped bit (byte order)
    /// makes other HDF5 readers read every value byte-swapped.
    static let float32LE: [UInt8] = [0x11, 0x20, 0x1F, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x17, 0x08]

    /// Damaged HDF5 metadata that our own chunk reader would read past: a tensor's datatype
    /// flipped to big-endian, a link in checkpoint.h5 pointing elsewhere. `inspect verify` is
    /// healthy only when the HDF5 library reads the same values, and the loader refuses both.
    func testDamagedHDF5MetadataIsNotHealthy() throws {
        let run = try finishedRun("flipped")
        let ck = "\(run)/step-000006"
        XCTAssertEqual(try switchboard(["inspect", "verify", ck]).code, 0)
        let shard = "\(ck)/rank-00000.h5"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: shard)))
        let at = try XCTUnwrap((0...(bytes.count - Self.float32LE.count)).first { Array(bytes[$0..<($0 + Self.float32LE.count)]) == Self.float32LE },
                               "no float32 datatype message in the shard")
        bytes[at + 1] |= 1
        Fixtures.write(bytes, to: shard)
        var r = try switchboard(["inspect", "verify", ck])
        XCTAssertEqual(r.code, 1, "a flipped byte order must not verify healthy:\n\(r.out)")
        XCTAssertTrue(r.out.contains("not healthy"), r.out)
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.max_steps": "6"]))
        r = try switchboard(["train", job, "--quiet", "--resume", ck, "--set", "run.name=\"fromflipped\""])
        XCTAssertEqual(r.code, 1, r.out)

        let other = try finishedRun("relinked")
        let main = "\(other)/step-000006/checkpoint.h5"
        var mainBytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: main)))
        let name = Array("rank-00000.h5".utf8)
        let link = try XCTUnwrap((0...(mainBytes.count - name.count)).first { Array(mainBytes[$0..<($0 + name.count)]) == name })
        mainBytes[link + 9] = UInt8(ascii: "7")   // rank-00007.h5: no such file
        Fixtures.write(mainBytes, to: main)
        r = try switchboard(["inspect", "verify", "\(other)/step-000006"])
        XCTAssertEqual(r.code, 1, "a damaged link must not verify healthy:\n\(r.out)")
        // A resume from it reads the shards (verified) and says what HDF5 cannot reach.
        r = try switchboard(["train", job, "--quiet", "--resume", "\(other)/step-000006", "--set", "run.name=\"fromrelinked\"",
                             "--set", "train.max_steps=8"])
        XCTAssertEqual(r.code, 0, r.err)
        XCTAssertTrue(r.out.contains("warning: \(main): tensor ") && r.out.contains(" through its link: ")
                      && r.out.contains("(inspect verify calls it unhealthy)"), r.out)
    }

    /// `inspect verify` on a path that is not a checkpoint answers as every subcommand does:
    /// one error line, exit 2.
    func testVerifyOnAPathThatIsNotACheckpointIsAUsageError() throws {
        assertOneLine(try switchboard(["inspect", "verify", "\(dir)/nowhere"]), code: 2, "\(dir)/nowhere: no such checkpoint")
        assertOneLine(try switchboard(["inspect", "verify", dir]), code: 2,
                      "\(dir): no checkpoint.h5: not a committed checkpoint (the manifest is written last)")
    }

    /// Killing mpirun with SIGKILL: the ranks notice their launcher is gone and stop at once,
    /// committing nothing further.
    func testRanksStopWhenTheirLauncherIsKilled() throws {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.epochs": "200"], extra: "[checkpoint]\nevery_steps = 1\nkeep_last = 0\n"))
        let log = "\(dir)/orphans.log"
        let p = try start(ranks: 2, name: "orphans", job: job, extra: [], log: log)
        XCTAssertTrue(waitForStep(10, in: log, of: p), (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        let pids = ranks(of: p)
        XCTAssertEqual(pids.count, 2)
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        // The ranks' watch looks every 50 ms; a step and a save take a few ms here.
        Thread.sleep(forTimeInterval: 0.5)
        // Running: present and not a zombie (an orphan's exit is reaped by whoever adopts it).
        func running(_ pid: Int32) -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let end = stat.lastIndex(of: ")") else { return false }
            return stat[stat.index(end, offsetBy: 2)] != "Z"
        }
        let alive = pids.filter(running)
        for pid in alive { kill(pid, SIGKILL) }
        XCTAssertEqual(alive, [], "ranks still running half a second after mpirun died")
        let committed = CheckpointFolder.list(in: "\(dir)/runs/orphans").count
        Thread.sleep(forTimeInterval: 1)
        XCTAssertEqual(CheckpointFolder.list(in: "\(dir)/runs/orphans").count, committed, "checkpoints committed after the launcher died")
    }

    /// One job at a time owns a run folder: a second one on the same folder is refused,
    /// naming the process that holds it, and the first goes on undisturbed.
    func testASecondJobOnTheSameFolderIsRefused() throws {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.epochs": "100000"]))   // runs until the test ends it
        let log = "\(dir)/first.log"
        let first = Process()
        first.executableURL = URL(fileURLWithPath: binary)
        first.arguments = ["train", job, "--quiet", "--resume", "auto"]
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        first.standardOutput = FileHandle(forWritingAtPath: log)!
        first.standardError = first.standardOutput
        try first.run()
        defer { if first.isRunning { first.terminate(); first.waitUntilExit() } }
        XCTAssertTrue(waitForStep(5, in: log, of: first), (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        let second = try switchboard(["train", job, "--quiet", "--resume", "auto"])
        assertOneLine(second, code: 1, "\(dir)/runs/toy: the run folder is in use by another job (process \(first.processIdentifier) on ",
                      prefix: true)
        XCTAssertTrue(second.err.hasSuffix("; wait for it to end, or give this run another [run] name\n"), second.err)
        XCTAssertTrue(first.isRunning, "the first job goes on")
        // A new run (no --resume) takes the next free name instead.
        let third = try switchboard(["train", job, "--quiet", "--set", "train.epochs=1"])
        XCTAssertEqual(third.code, 0, third.err)
        XCTAssertTrue(third.out.contains("run folder: \(dir)/runs/toy-2"), third.out)
    }

    /// A requeued start must not run beside a rank of the previous one: while any process
    /// holds `.ranks` (every rank of a running job does), a continuing start is refused, or
    /// with `--wait-for-folder` waits, says so, and goes on once it is free.
    func testAContinuingStartWaitsForTheRanksOfAnEarlierJob() throws {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.max_steps": "10"], extra: "[checkpoint]\nevery_steps = 5\n"))
        let run = "\(dir)/runs/toy"
        XCTAssertEqual(try switchboard(["train", job, "--quiet", "--set", "train.max_steps=5"]).code, 0)
        // A rank of an earlier job, as far as the folder can tell: a shared lock on .ranks,
        // held here by this test process.
        let fd = open("\(run)/\(RunFolder.ranksFile)", O_RDWR | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(flock(fd, LOCK_SH), 0)
        let refused = try switchboard(["train", job, "--quiet", "--resume", "auto"])
        assertOneLine(refused, code: 1, "\(run): ranks of an earlier job still hold .ranks; they may still write checkpoint "
                      + "shards there: stop them (or wait longer, --wait-for-folder) before continuing")
        XCTAssertEqual(CheckpointFolder.list(in: run).map(\.step), [5], "nothing written while refused")

        // Released 2 s into a start that waits.
        DispatchQueue.global().asyncAfter(deadline: .now() + 2) { close(fd) }
        let t0 = Date()
        let waited = try switchboard(["train", job, "--quiet", "--resume", "auto", "--wait-for-folder", "30"])
        XCTAssertEqual(waited.code, 0, waited.err)
        XCTAssertGreaterThan(Date().timeIntervalSince(t0), 2, "it went on before the lock was released")
        XCTAssertTrue(waited.out.contains("\(run): ranks of an earlier job still hold .ranks; waiting up to 30 s for them to end\n"),
                      waited.out)
        XCTAssertTrue(waited.out.contains("resumed from \(run)/step-000005: step 5,"), waited.out)
        XCTAssertTrue(waited.out.contains("done: 10 steps"), waited.out)
    }

    /// The wait is for a start that continues a folder, and a number of seconds.
    func testWaitForFolderNeedsResumeAuto() throws {
        let job = try writeJob()
        let r = try switchboard(["train", job, "--wait-for-folder", "5"])
        XCTAssertEqual(r.code, 2)
        XCTAssertTrue(r.err.hasPrefix("switchboard: error: --wait-for-folder applies to --resume auto, the only start that "
                                      + "continues a run folder in use\n"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"), "nothing made")
    }

    /// A start after a failure says where it continues and how many finished steps were lost:
    /// those after the last checkpoint, as far as `.step` recorded.
    func testAResumedStartSaysHowManyStepsWereLost() throws {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.epochs": "100", "train.max_steps": "40"], extra: "[checkpoint]\nevery_steps = 10\n"))
        let failed = try Launcher.runApart(binary, ["train", job, "--quiet"], environment: ["SWITCHBOARD_FAULT": "rank=0,step=27"],
                                           directory: dir)
        XCTAssertEqual(failed.code, 1, failed.err)
        XCTAssertEqual(try String(contentsOfFile: "\(dir)/runs/toy/\(RunFolder.stepFileName)", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines), "27")
        let resumed = try switchboard(["train", job, "--quiet", "--resume", "auto"])
        XCTAssertEqual(resumed.code, 0, resumed.err)
        XCTAssertTrue(resumed.out.contains("resumed from \(dir)/runs/toy/step-000020: step 20,"), resumed.out)
        XCTAssertTrue(resumed.out.contains("\ncontinuing on 1 node (\(Preflight.hostName)) with 1 rank; "
                                           + "the previous start reached step 27: 7 steps lost\n"), resumed.out)
        let metrics = try String(contentsOfFile: "\(dir)/runs/toy/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(metrics.contains("\"ranks\":1,\"hosts\":[\"\(Preflight.hostName)\"],\"steps_lost\":7}"), metrics)
    }

    /// `--stop-exit-code` replaces 143 after a saved stop, so that a script can tell "saved,
    /// continue me" from a process killed by SIGTERM; the save is the same. The signal is
    /// taken by a thread of its own.
    func testAStopThatSavedExitsWithTheChosenCode() throws {
        let job = try writeJob(Fixtures.job(dir: dir, settings: ["train.epochs": "1000", "train.max_steps": "400"]))
        let log = "\(dir)/stop.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["train", job, "--quiet", "--stop-exit-code", "75"]
        p.environment = ProcessInfo.processInfo.environment.merging(["SWITCHBOARD_STEP_PAUSE": "20"]) { $1 }
        p.standardOutput = FileHandle(forWritingAtPath: log)!
        p.standardError = p.standardOutput
        try p.run()
        XCTAssertTrue(waitForStep(10, in: log, of: p), (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        // No computing thread takes the signal (a signal frame inside oneDNN's generated code
        // damaged it): the main thread blocks SIGTERM and SIGINT (bits 15 and 2 of SigBlk),
        // and one thread waits for them in sigwait.
        let task = "/proc/\(p.processIdentifier)/task", stops: UInt64 = 1 << 14 | 1 << 1
        func blocked(_ thread: String) -> UInt64 {
            let status = (try? String(contentsOfFile: "\(task)/\(thread)/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }
                .flatMap { UInt64($0.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16) } ?? 0
        }
        let threads = try FileManager.default.contentsOfDirectory(atPath: task)
        let waiting = threads.filter {
            (try? String(contentsOfFile: "\(task)/\($0)/wchan", encoding: .utf8))?.hasPrefix("do_sigtimedwait") == true
        }
        XCTAssertEqual(waiting.count, 1, "one thread in sigwait")
        XCTAssertEqual(blocked(String(p.processIdentifier)) & stops, stops, "the main thread blocks SIGTERM and SIGINT")
        for thread in threads where !waiting.contains(thread) {
            XCTAssertEqual(blocked(thread) & stops, stops, "thread \(thread) of \(threads.count) does not block SIGTERM and SIGINT")
        }
        p.terminate()   // SIGTERM
        p.waitUntilExit()
        let text = try String(contentsOfFile: log, encoding: .utf8)
        XCTAssertEqual(p.terminationReason, .exit, text)
        XCTAssertEqual(p.terminationStatus, 75, text)
        let saved = try XCTUnwrap(CheckpointFolder.list(in: "\(dir)/runs/toy").last, text)
        XCTAssertTrue(text.contains("stopped by SIGTERM after step \(saved.step); saved \(saved.path); continue with --resume auto"), text)

        let bad = try switchboard(["train", job, "--stop-exit-code", "0"])
        XCTAssertEqual(bad.code, 2)
        XCTAssertTrue(bad.err.hasPrefix("switchboard: error: --stop-exit-code must be from 1 to 255, got 0\n"), bad.err)
    }
}
