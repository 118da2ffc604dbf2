import Foundation
import Kernels
import Storage
import TestSupport
import XCTest
@testable import Training

/// Mutates valid inputs — job files (bytes, values, nesting depth and length), IDX headers
/// and bodies, the manifest inside `checkpoint.h5` (through the HDF5 API; its stored config by
/// depth and length too), shard files and `checkpoint.h5` (bytes, HDF5 metadata included), a
/// run folder's `config.toml` and `metrics.jsonl` — and runs every reader on each: `train`
/// start-up, `--resume`, every `inspect` subcommand, `evaluate`, `predict`, `moefy`,
/// `convert`, `report`. Every outcome must be exit 0, or exit 1 or 2 with
/// one line on standard error; never a signal, a hang past the deadline, or an allocation
/// larger than the input justifies (each run has a 1 GiB heap limit); and where `inspect
/// verify` says healthy, the HDF5 library itself reads the values the pristine checkpoint holds.
///
/// Seeded (a failure repeats); `SWITCHBOARD_FUZZ_ROUNDS` (default 24) sets the length, and
/// `SWITCHBOARD_FUZZ_SEED` the seed. Each round runs one mutation of each of the eight kinds.
final class FuzzTests: ToyDataTestCase {
    /// The heap a run of the program may take (`ulimit -d`): inputs of a few kilobytes and a
    /// toy model justify far less, so an allocation sized from a damaged input fails, and
    /// the run is killed, instead of passing unseen. The program's memory check sees the limit.
    static let memoryLimit = 1 << 30
    static let deadline = 60.0

    var rng = Philox(seed: 1)
    var draws: UInt64 = 0
    var runs = 0
    var messages: [String: Int] = [:]

    func random(_ bound: Int) -> Int {
        draws += 1
        return rng.integer(below: bound, stream: 77, index: draws)
    }

    /// Runs the program; checks the outcome as the contract says; returns it.
    @discardableResult
    func check(_ arguments: [String], what: String) throws -> (code: Int32, out: String, err: String) {
        let r = try Launcher.runApart(binary, arguments, directory: dir, deadline: Self.deadline, dataLimit: Self.memoryLimit)
        runs += 1
        let context = "\(what): switchboard \(arguments.joined(separator: " "))\nstdout: \(r.out.suffix(2000))\nstderr: \(r.err.suffix(2000))"
        XCTAssertFalse(r.signaled, "killed by a signal, the deadline or the memory limit: \(context)")
        XCTAssertTrue([0, 1, 2].contains(r.code), "exit \(r.code): \(context)")
        if r.code == 0 {
            XCTAssertEqual(r.err, "", "exit 0 with something on stderr: \(context)")
        } else if !r.err.isEmpty || !(arguments.starts(with: ["inspect", "verify"]) || arguments.starts(with: ["inspect", "diff"])) {
            XCTAssertEqual(r.err.filter { $0 == "\n" }.count, 1, "not one line on stderr: \(context)")
            XCTAssertTrue(r.err.hasPrefix("switchboard: error: "), context)
            messages[Self.shape(of: r.err), default: 0] += 1
        }
        return (r.code, r.out, r.err)
    }

    /// An error line with its paths and numbers taken out, so that alike errors count once.
    static func shape(of line: String) -> String {
        line.trimmingCharacters(in: .whitespacesAndNewlines)
            .replacingOccurrences(of: "(^|[ (])/[^ :;()]*", with: "$1PATH", options: .regularExpression)
            .replacingOccurrences(of: "-?[0-9][0-9.e+-]*", with: "N", options: .regularExpression)
    }

    func mutateBytes(_ bytes: [UInt8], focus: Int? = nil) -> [UInt8] {
        var b = bytes
        for _ in 0..<(1 + random(4)) where !b.isEmpty {
            let span = focus.map { min($0, b.count) } ?? b.count
            let at = random(span)
            switch random(4) {
            case 0: b[at] ^= UInt8(1 << random(8))
            case 1: b[at] = [0x00, 0xFF, 0x7F, 0x80, 0x0A, 0x22, 0x5B][random(7)]
            case 2: b.insert(UInt8(random(256)), at: at)
            default: b.remove(at: at)
            }
        }
        return b
    }

    static let hostileValues = ["0", "-1", "1", "2147483648", "4611686018427387904", "9223372036854775807", "1e300", "-1e300",
                                "nan", "inf", "\"\"", "\"x\"", "[]", "[0]", "true", "{}", "0.5", "1000000"]

    func testMutatedInputsNeverCrashTheReaders() throws {
        let environment = ProcessInfo.processInfo.environment
        let rounds = Int(environment["SWITCHBOARD_FUZZ_ROUNDS"] ?? "") ?? 24
        rng = Philox(seed: UInt64(environment["SWITCHBOARD_FUZZ_SEED"] ?? "") ?? 20261129)
        let sandbox = "\(dir)/sandbox"
        let jobText = Fixtures.job(dir: dir, settings: ["train.max_steps": "6"], extra: "[checkpoint]\nkeep_last = 0\n")
        let job = try writeJob(jobText)
        let first = try check(["train", job, "--quiet", "--set", "run.name=\"pristine\""], what: "the pristine run")
        XCTAssertEqual(first.code, 0)
        let pristine = "\(dir)/runs/pristine/step-000006"
        let reader = try CheckpointReader(pristine)
        let values = try Dictionary(uniqueKeysWithValues: reader.manifest.tensors.map { ($0.name, try reader.values($0.name)) })
        // Mutated jobs write only into the sandbox, whatever their [run] output says.
        let contained = ["--set", "run.output=\"\(sandbox)\"", "--set", "train.max_steps=2"]
        var mutations = 0

        for round in 0..<rounds {
            // 1. Job file bytes.
            let bytesJob = "\(dir)/mutated.toml"
            Fixtures.write(mutateBytes(Array(jobText.utf8)), to: bytesJob)
            try check(["train", bytesJob, "--quiet"] + contained, what: "job bytes, round \(round)")

            // 2. Job file values.
            let lines = jobText.split(separator: "\n", omittingEmptySubsequences: false)
            let keyed = lines.indices.filter { lines[$0].contains(" = ") && !lines[$0].hasPrefix("output") }
            var edited = lines.map(String.init)
            let line = keyed[random(keyed.count)]
            let key = edited[line].split(separator: "=")[0].trimmingCharacters(in: .whitespaces)
            edited[line] = "\(key) = \(Self.hostileValues[random(Self.hostileValues.count)])"
            try edited.joined(separator: "\n").write(toFile: bytesJob, atomically: true, encoding: .utf8)
            try check(["train", bytesJob, "--quiet"] + contained, what: "job value \(edited[line]), round \(round)")

            // 3. Job file nesting and length.
            let (deep, how) = mutateDepthOrLength(jobText)
            try deep.write(toFile: bytesJob, atomically: true, encoding: .utf8)
            try check(["train", bytesJob, "--quiet"] + contained, what: "job with \(how), round \(round)")

            // 4. IDX headers (most often) and bodies, read by train and by convert.
            let idx = "\(dir)/idx"
            try? FileManager.default.removeItem(atPath: idx)
            try FileManager.default.createDirectory(atPath: idx, withIntermediateDirectories: true)
            for name in ["train-images", "train-labels", "test-images", "test-labels"] {
                try FileManager.default.copyItem(atPath: "\(dir)/\(name)", toPath: "\(idx)/\(name)")
            }
            let victim = ["train-images", "train-labels", "test-images", "test-labels"][random(4)]
            let original = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(idx)/\(victim)")))
            Fixtures.write(mutateBytes(original, focus: random(2) == 0 ? 20 : nil), to: "\(idx)/\(victim)")
            try check(["train", job, "--quiet", "--set", "data.dir=\"\(idx)\""] + contained, what: "IDX \(victim), round \(round)")
            let split = victim.hasPrefix("train") ? "train" : "test"
            try check(["convert", "\(idx)/\(split)-images", "\(idx)/\(split)-labels", "\(sandbox)-\(split).h5"],
                      what: "convert of \(victim), round \(round)")

            // 5–7. The checkpoint: its manifest through the HDF5 API, the bytes of a shard, the
            // bytes of checkpoint.h5.
            for kind in 0..<3 {
                let copy = "\(dir)/mutant"
                try? FileManager.default.removeItem(atPath: copy)
                try FileManager.default.copyItem(atPath: pristine, toPath: copy)
                let what: String
                switch kind {
                case 0:
                    var m = reader.manifest
                    what = mutateManifest(&m)
                    let main = "\(copy)/checkpoint.h5"
                    try FileManager.default.removeItem(atPath: main)
                    do { try m.writeMainFile(main) } catch {
                        // A name HDF5 cannot link (an empty file name): the manifest alone.
                        try FileManager.default.removeItem(atPath: main)
                        let file = try HDF5File.create(main)
                        try file.writeBytes(CheckpointManifest.manifestDataset, try m.encoded())
                        try file.setAttribute("checkpoint_id", m.id)
                        try file.close()
                    }
                case 1:
                    let shard = "\(copy)/\(reader.manifest.files[0])"
                    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: shard)))
                    Fixtures.write(mutateBytes(bytes, focus: random(2) == 0 ? 4096 : nil), to: shard)
                    what = "shard bytes"
                default:
                    let main = "\(copy)/checkpoint.h5"
                    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: main)))
                    Fixtures.write(mutateBytes(bytes), to: main)
                    what = "checkpoint.h5 bytes"
                }
                try readEveryWay(copy, pristine: pristine, values: values, job: job, contained: contained,
                                 what: "\(what), round \(round)")
            }
            // 8. A run folder: its config.toml by nesting and length, or by bytes, and its metrics.
            let run = "\(dir)/mutant-run"
            try? FileManager.default.removeItem(atPath: run)
            try FileManager.default.copyItem(atPath: "\(dir)/runs/pristine", toPath: run)
            let configText = try String(contentsOfFile: "\(run)/config.toml", encoding: .utf8)
            let config = random(2) == 0 ? mutateDepthOrLength(configText).0 : String(decoding: mutateBytes(Array(configText.utf8)), as: UTF8.self)
            try config.write(toFile: "\(run)/config.toml", atomically: true, encoding: .utf8)
            let metrics = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(run)/metrics.jsonl")))
            Fixtures.write(mutateBytes(metrics), to: "\(run)/metrics.jsonl")
            try check(["report", run, "--out", "\(sandbox)-report.html"], what: "run folder, round \(round)")

            mutations += 8
            try? FileManager.default.removeItem(atPath: sandbox)
        }
        let seen = messages.sorted { $0.value > $1.value }
        print("fuzz: \(mutations) mutations, \(runs) runs of the program, \(seen.count) distinct error messages:")
        for (message, count) in seen { print("  \(count)× \(message)") }
    }

    /// Every reader on the checkpoint at `path`; where `inspect verify` says healthy, the HDF5
    /// library must read the pristine values through `checkpoint.h5`.
    func readEveryWay(_ path: String, pristine: String, values: [String: [Float]], job: String, contained: [String],
                      what: String) throws {
        let verify = try check(["inspect", "verify", path], what: what)
        for sub in [["ls"], ["show"], ["stats"], ["experts"], ["diff", pristine], ["export"]] {
            let extra = sub[0] == "export" ? ["\(dir)/sandbox-export.safetensors"] : []
            try check(["inspect", sub[0], path] + sub.dropFirst() + extra, what: what)
        }
        try check(["train", job, "--quiet", "--resume", path, "--set", "train.max_steps=8"] + contained, what: "resume from \(what)")
        // The commands after training, on the same checkpoint; what they write goes away after.
        try check(["evaluate", path], what: "evaluate \(what)")
        try check(["predict", path, "\(dir)/test-images", "\(dir)/sandbox-predict.h5"], what: "predict \(what)")
        try check(["moefy", path, "--experts", "2", "--samples", "64", "--out", "\(dir)/sandbox-moefy"], what: "moefy \(what)")
        for written in ["\(dir)/sandbox-predict.h5", "\(dir)/sandbox-moefy"] { try? FileManager.default.removeItem(atPath: written) }
        guard verify.code == 0 else { return }
        // Healthy: what any HDF5 reader sees through the links is the pristine checkpoint.
        let main = try HDF5File.open("\(path)/\(CheckpointManifest.mainFile)")
        let manifest = try CheckpointReader(path).manifest
        for t in manifest.tensors {
            guard let expected = values[t.name] else { XCTFail("healthy, but \(t.name) is not a pristine tensor (\(what))"); continue }
            var read = [Float](repeating: 0, count: t.count)
            do {
                try read.withUnsafeMutableBufferPointer { try main.readFloats(t.name, shape: t.shape, into: $0.baseAddress!) }
            } catch {
                XCTFail("verify said healthy, but HDF5 cannot read \(t.name): \(error) (\(what))")
                continue
            }
            assertBitwiseEqual(read, expected, "verify said healthy, but HDF5 reads other values of \(t.name) (\(what))")
        }
    }

    /// One change to a TOML text's nesting or length, at the end of it: a key nested around
    /// and far past the depth readers allow (dotted, or as a table header), nested inline
    /// tables or arrays, or a huge key; says which.
    func mutateDepthOrLength(_ text: String) -> (String, String) {
        let n = [8, 63, 64, 65, 1000, 40_000][random(6)]
        let path = Array(repeating: "a", count: n).joined(separator: ".")
        switch random(5) {
        case 0: return (text + "\n\(path) = 1\n", "a key \(n) levels deep")
        case 1: return (text + "\n[\(path)]\n", "a table header \(n) levels deep")
        case 2:
            let m = min(n, 5000)
            return (text + "\n[zz]\nx = " + String(repeating: "{ a = ", count: m) + "1" + String(repeating: " }", count: m) + "\n", "\(m) inline tables")
        case 3:
            let m = min(n, 5000)
            return (text + "\n[zz]\nx = " + String(repeating: "[", count: m) + String(repeating: "]", count: m) + "\n", "\(m) nested arrays")
        default: return (text + "\n[zz]\n" + String(repeating: "k", count: 25 * n) + " = 1\n", "a key of \(25 * n) characters")
        }
    }

    /// One change to the manifest's values, shapes, names or stored config; says which.
    func mutateManifest(_ m: inout CheckpointManifest) -> String {
        let t = random(m.tensors.count)
        let huge = [0, -1, 1, 3, 1 << 20, 1 << 40, Int.max, Int.min][random(8)]
        switch random(13) {
        case 0: m.tensors[t].shape = [huge]; return "shape [\(huge)] of \(m.tensors[t].name)"
        case 1: m.tensors[t].shape = m.tensors[t].shape.reversed() + [huge]; return "a dimension \(huge) added to \(m.tensors[t].name)"
        case 2: m.tensors[t].shape = []; return "an empty shape for \(m.tensors[t].name)"
        case 3: m.tensors[t].name = ["", "/abs", "../up", "params/other", m.tensors[(t + 1) % m.tensors.count].name][random(5)]; return "a tensor name"
        case 4: m.tensors[t].file = ["", "../rank-00000.h5", "/etc/passwd", "rank-00001.h5", "checkpoint.h5"][random(5)]; return "a tensor's file"
        case 5: m.tensors[t].checksum = ["", "zzzzzzzz", "00000000", "1234"][random(4)]; return "a checksum"
        case 6: m.tensors[t].dtype = ["float64", "", "int8"][random(3)]; return "a dtype"
        case 7: m.position.step = huge; m.position.batch = huge; return "the position \(huge)"
        case 8: m.worldSize = huge; return "the world size \(huge)"
        case 9: m.tensors.remove(at: t); return "a tensor removed"
        case 10: m.files = [["", "x/y", String(repeating: "a", count: 300)][random(3)]]; return "the file list"
        case 11:
            let (config, how) = mutateDepthOrLength(m.config)
            m.config = config
            return "the stored config, \(how)"
        default: m.placement = .init(experts: huge, ranks: 2, expertsByRank: [[0, huge], [huge, 0]]); return "a placement"
        }
    }
}
