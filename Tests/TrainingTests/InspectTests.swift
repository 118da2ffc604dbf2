import Foundation
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

/// `switchboard inspect`, end to end: the real binary on checkpoints the trainer made.
final class InspectTests: ToyDataTestCase {
    /// Trains the toy job (1 process) for `steps` steps with a checkpoint every `every`;
    /// returns the run folder and the config.
    func makeRun(_ name: String, steps: Int, every: Int, text: String? = nil) throws -> (run: String, config: JobConfig) {
        let job = Fixtures.set("train.max_steps", "\(steps)", in: text ?? Fixtures.job(dir: dir))
            + "\n[checkpoint]\nevery_steps = \(every)\nkeep_last = 0\n"
        let path = try writeJob(job)
        let r = try Launcher.run(binary, ["train", path, "--quiet", "--set", "run.name=\"\(name)\""])
        XCTAssertEqual(r.code, 0, r.output)
        return ("\(dir)/runs/\(name)", try JobConfig.parse(job, source: path))
    }

    func inspect(_ arguments: [String]) throws -> (code: Int32, output: String) {
        let r = try Launcher.run(binary, ["inspect"] + arguments)
        return (r.code, r.output.replacingOccurrences(of: dir, with: "$DIR"))
    }

    func testListShowVerifyAndDiffPrintTheExpectedText() throws {
        let (run, _) = try makeRun("toy", steps: 6, every: 3)
        let ck = "\(run)/step-000006"
        var r = try inspect(["ls", ck])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertEqual(r.output, """
            tensor                            count  shape     dtype       size  file
            params/embed.weight                  ×1  [32, 64]  float32   8.2 kB  rank-00000.h5
            params/embed.bias                    ×1  [32]      float32    128 B  rank-00000.h5
            params/blocks.#.norm.weight          ×2  [32]      float32    256 B  rank-00000.h5
            params/blocks.#.norm.bias            ×2  [32]      float32    256 B  rank-00000.h5
            params/blocks.#.fc1.weight           ×2  [64, 32]  float32  16.4 kB  rank-00000.h5
            params/blocks.#.fc1.bias             ×2  [64]      float32    512 B  rank-00000.h5
            params/blocks.#.fc2.weight           ×2  [32, 64]  float32  16.4 kB  rank-00000.h5
            params/blocks.#.fc2.bias             ×2  [32]      float32    256 B  rank-00000.h5
            params/norm.weight                   ×1  [32]      float32    128 B  rank-00000.h5
            params/norm.bias                     ×1  [32]      float32    128 B  rank-00000.h5
            params/head.weight                   ×1  [4, 32]   float32    512 B  rank-00000.h5
            params/head.bias                     ×1  [4]       float32     16 B  rank-00000.h5
            optimizer/m/embed.weight             ×1  [32, 64]  float32   8.2 kB  rank-00000.h5
            optimizer/m/embed.bias               ×1  [32]      float32    128 B  rank-00000.h5
            optimizer/m/blocks.#.norm.weight     ×2  [32]      float32    256 B  rank-00000.h5
            optimizer/m/blocks.#.norm.bias       ×2  [32]      float32    256 B  rank-00000.h5
            optimizer/m/blocks.#.fc1.weight      ×2  [64, 32]  float32  16.4 kB  rank-00000.h5
            optimizer/m/blocks.#.fc1.bias        ×2  [64]      float32    512 B  rank-00000.h5
            optimizer/m/blocks.#.fc2.weight      ×2  [32, 64]  float32  16.4 kB  rank-00000.h5
            optimizer/m/blocks.#.fc2.bias        ×2  [32]      float32    256 B  rank-00000.h5
            optimizer/m/norm.weight              ×1  [32]      float32    128 B  rank-00000.h5
            optimizer/m/norm.bias                ×1  [32]      float32    128 B  rank-00000.h5
            optimizer/m/head.weight              ×1  [4, 32]   float32    512 B  rank-00000.h5
            optimizer/m/head.bias                ×1  [4]       float32     16 B  rank-00000.h5
            optimizer/v/embed.weight             ×1  [32, 64]  float32   8.2 kB  rank-00000.h5
            optimizer/v/embed.bias               ×1  [32]      float32    128 B  rank-00000.h5
            optimizer/v/blocks.#.norm.weight     ×2  [32]      float32    256 B  rank-00000.h5
            optimizer/v/blocks.#.norm.bias       ×2  [32]      float32    256 B  rank-00000.h5
            optimizer/v/blocks.#.fc1.weight      ×2  [64, 32]  float32  16.4 kB  rank-00000.h5
            optimizer/v/blocks.#.fc1.bias        ×2  [64]      float32    512 B  rank-00000.h5
            optimizer/v/blocks.#.fc2.weight      ×2  [32, 64]  float32  16.4 kB  rank-00000.h5
            optimizer/v/blocks.#.fc2.bias        ×2  [32]      float32    256 B  rank-00000.h5
            optimizer/v/norm.weight              ×1  [32]      float32    128 B  rank-00000.h5
            optimizer/v/norm.bias                ×1  [32]      float32    128 B  rank-00000.h5
            optimizer/v/head.weight              ×1  [4, 32]   float32    512 B  rank-00000.h5
            optimizer/v/head.bias                ×1  [4]       float32     16 B  rank-00000.h5

            parameters: 10,788 in 18 tensors
            optimizer state (adamw: m, v): 21,576 in 36 tensors
            total: 129.5 kB in 1 file

            """)
        r = try inspect(["ls", "\(ck)/checkpoint.h5", "--expand"])
        XCTAssertEqual(r.output.split(separator: "\n").filter { $0.hasPrefix("params/blocks.1.fc1.weight ") }.count, 1, r.output)

        r = try inspect(["show", ck])
        XCTAssertEqual(r.code, 0, r.output)
        let created = r.output.split(separator: "\n").first { $0.hasPrefix("created ") } ?? ""
        XCTAssertNotNil(created.range(of: #"^created +20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ$"#, options: .regularExpression), r.output)
        let metrics = try manifestOf(ck).metrics
        let config = try manifestOf(ck).config.replacingOccurrences(of: dir, with: "$DIR")
        XCTAssertEqual(r.output.replacingOccurrences(of: String(created), with: "created        <time>"), """
            checkpoint     $DIR/runs/toy/step-000006
            step           6
            data position  epoch 1, next batch 6, sample 288 of the epoch's order
            saved on       1 rank × 1 BLAS thread
            experts        none (dense model)
            optimizer      adamw, 6 steps
            seed           5 (dropout counter at step 6, shuffle of epoch 1)
            version        \(Switchboard.version)
            created        <time>
            last loss      \(fixed(metrics.lastLoss!, 4))
            test           loss \(fixed(metrics.testLoss!, 4)), accuracy \(fixed(100 * metrics.testAccuracy!, 2))%
            tensors        54 in 1 file, 129.5 kB
            config:
            \(config.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }.joined(separator: "\n"))

            """)

        r = try inspect(["verify", ck, "--ranks", "2"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertEqual(r.output, """
            healthy: 54 tensors in 1 file, every chunk's Fletcher32 and every tensor's checksum verified, the HDF5 library reads the same values; names unique; shapes agree
            on 2 ranks: loads (saved on 1); parameters and optimizer state placed by global name, data position exact
              dense model: every rank reads every parameter and the optimizer state of its shard

            """)

        r = try inspect(["diff", ck, ck])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertEqual(r.output, "equal: 54 tensors compared (atol 0.0, rtol 0.0)\n")
        r = try inspect(["diff", "\(run)/step-000003", ck])
        XCTAssertEqual(r.code, 1, r.output)
        let lines = r.output.split(separator: "\n")
        XCTAssertEqual(lines.first, "tensor                            max |a−b|  ‖a−b‖/‖a‖  elements differing")
        XCTAssertEqual(lines.last, "different: 54 of 54 tensors differ, 0 only in A, 0 only in B, 0 changed shape (atol 0.0, rtol 0.0)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("params/blocks.0.fc1.weight ") && $0.hasSuffix(" 2048") }, r.output)
        // Within a loose enough tolerance they are equal.
        r = try inspect(["diff", "\(run)/step-000003", ck, "--atol", "10"])
        XCTAssertEqual(r.code, 0, r.output)

        // JSON for scripts.
        r = try inspect(["ls", ck, "--json"])
        let json = try JSONSerialization.jsonObject(with: Data(r.output.utf8)) as! [String: Any]
        XCTAssertEqual((json["tensors"] as! [Any]).count, 54)
        XCTAssertEqual((json["totals"] as! [String: Any])["parameters"] as? Int, 10_788)
        r = try inspect(["verify", ck, "--json"])
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(r.output.utf8)) as! [String: Any])["healthy"] as? Bool, true)

        // Not a checkpoint: a clear error, exit 2.
        r = try inspect(["ls", dir])
        XCTAssertEqual(r.code, 2, r.output)
        XCTAssertEqual(r.output, "switchboard: error: $DIR: no checkpoint.h5: not a committed checkpoint (the manifest is written last)\n")
        r = try inspect(["diff", ck, "\(dir)/nothing"])
        XCTAssertEqual(r.code, 2, r.output)
        XCTAssertEqual(r.output, "switchboard: error: $DIR/nothing: no such checkpoint\n")
    }

    func manifestOf(_ ck: String) throws -> CheckpointManifest { try CheckpointReader(ck).manifest }

    /// Each number `stats` prints agrees with the values read from `model.h5` by HDF5's own
    /// reader, to the 4 digits printed.
    func testStatsAgreeWithValuesReadIndependently() throws {
        let (run, config) = try makeRun("toy", steps: 6, every: 6)
        let r = try inspect(["stats", "\(run)/step-000006", "--match", "params/*"])
        XCTAssertEqual(r.code, 0, r.output)
        let model = try loadModel("\(run)/model.h5", config)
        let rows = r.output.split(separator: "\n").dropFirst().map { $0.split(separator: " ") }.filter { $0.count >= 10 }
        XCTAssertEqual(rows.count, model.store.parameters.count, r.output)
        for p in model.store.parameters {
            let v = (0..<p.count).map { Double(p.value[$0]) }
            let mean = v.reduce(0, +) / Double(v.count)
            let std = (v.map { $0 * $0 }.reduce(0, +) / Double(v.count) - mean * mean).squareRoot()
            let l2 = v.map { $0 * $0 }.reduce(0, +).squareRoot()
            guard let row = rows.first(where: { $0[0] == "params/\(p.name)" }) else { XCTFail("no row for \(p.name)"); continue }
            XCTAssertEqual(Int(row[1]), p.count)
            for (column, expected) in [(2, mean), (3, std), (4, v.min()!), (5, v.max()!), (6, l2)] {
                let printed = Double(row[column])!
                XCTAssertEqual(printed, expected, accuracy: max(abs(expected) * 1e-3, 1e-9), "\(p.name) column \(column)")
            }
            XCTAssertEqual(row[7], "0")
            XCTAssertEqual(row[8], "0")
        }
        XCTAssertTrue(r.output.hasSuffix("\n18 tensors; all finite\n"), r.output)
    }

    /// Every corruption of the checkpoint tests is found by `verify`, named by file and tensor.
    func testVerifyFindsEachCorruption() throws {
        let (run, _) = try makeRun("toy", steps: 6, every: 3)
        let good = "\(run)/step-000006"
        let victim = try manifestOf(good).tensors.first { $0.name == "params/blocks.1.fc1.weight" }!
        let cases: [(String, (String) throws -> Void, String)] = [
            ("truncated shard", { ck in
                let f = "\(ck)/rank-00000.h5"
                XCTAssertEqual(truncate(f, off_t((try FileManager.default.attributesOfItem(atPath: f)[.size] as! Int) / 2)), 0)
            }, "problem: $DIR/runs/truncatedshard/rank-00000.h5: opening the file failed (unable to open file; unable to read superblock; truncated file: eof = "),
            ("flipped byte", { ck in
                let f = "\(ck)/rank-00000.h5"
                var values = [Float](repeating: 0, count: victim.count)
                try HDF5File.open(f).readFloats(victim.name, shape: victim.shape, into: &values)
                var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: f)))
                let needle = values.prefix(8).withUnsafeBytes { Array($0) }
                let at = (0...(bytes.count - needle.count)).first { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }!
                bytes[at + 9] ^= 0x40
                try Data(bytes).write(to: URL(fileURLWithPath: f))
            }, "problem: $DIR/runs/flippedbyte/rank-00000.h5: tensor params/blocks.1.fc1.weight: reading params/blocks.1.fc1.weight failed (chunk 0 of 1 fails its Fletcher32 checksum (data error))"),
            ("deleted shard", { ck in try FileManager.default.removeItem(atPath: "\(ck)/rank-00000.h5") },
             "problem: $DIR/runs/deletedshard/rank-00000.h5: missing (listed in the manifest)"),
            ("shard from another save", { ck in
                try FileManager.default.removeItem(atPath: "\(ck)/rank-00000.h5")
                try FileManager.default.copyItem(atPath: "\(run)/step-000003/rank-00000.h5", toPath: "\(ck)/rank-00000.h5")
            }, "problem: $DIR/runs/shardfromanothersave/rank-00000.h5: belongs to save step-000003-"),
        ]
        for (label, damage, expected) in cases {
            let ck = "\(dir)/runs/\(label.filter(\.isLetter))"
            try FileManager.default.copyItem(atPath: good, toPath: ck)
            try damage(ck)
            let r = try inspect(["verify", ck])
            XCTAssertEqual(r.code, 1, "\(label): \(r.output)")
            XCTAssertTrue(r.output.contains(expected), "\(label): expected '\(expected)' in:\n\(r.output)")
            XCTAssertTrue(r.output.contains("not healthy: "), r.output)
            if label == "truncated shard" { XCTAssertTrue(r.output.contains("; it holds 54 tensors (tensor params/embed.weight and 53 more)"), r.output) }
        }
        // Without its main file a folder is no checkpoint: a usage error, as for any path that is not one.
        let ck = "\(dir)/runs/deletedmanifest"
        try FileManager.default.copyItem(atPath: good, toPath: ck)
        try FileManager.default.removeItem(atPath: "\(ck)/checkpoint.h5")
        let r = try inspect(["verify", ck])
        XCTAssertEqual(r.code, 2, r.output)
        XCTAssertEqual(r.output, "switchboard: error: $DIR/runs/deletedmanifest: no checkpoint.h5: not a committed checkpoint (the manifest is written last)\n")
    }

    /// The safetensors file, read by a reader written here from the published format and
    /// sharing no code with the writer, holds the values `model.h5` holds.
    func testExportedSafetensorsHoldTheParameters() throws {
        let (run, config) = try makeRun("toy", steps: 6, every: 6)
        let out = "\(dir)/model.safetensors"
        var r = try inspect(["export", "\(run)/step-000006", "--format", "safetensors", out])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertEqual(r.output, "wrote $DIR/model.safetensors: 18 tensors, \(String(format: "%.1f", Double(try size(out)) / 1000)) kB (safetensors, F32)\n")

        // The reader: u64 little-endian header length, a JSON header, then the data.
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
        let n = (0..<8).reduce(0) { $0 | Int(bytes[$1]) << (8 * $1) }
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as! [String: Any]
        let metadata = header["__metadata__"] as! [String: String]
        XCTAssertEqual(metadata["step"], "6")
        XCTAssertTrue(metadata["config"]!.contains("batch_size = 48"))
        let model = try loadModel("\(run)/model.h5", config)
        XCTAssertEqual(header.count - 1, model.store.parameters.count)
        var covered = 0
        for p in model.store.parameters {
            let entry = header[p.name] as! [String: Any]
            XCTAssertEqual(entry["dtype"] as? String, "F32")
            XCTAssertEqual(entry["shape"] as? [Int], p.shape)
            let offsets = entry["data_offsets"] as! [Int]
            XCTAssertEqual(offsets[1] - offsets[0], 4 * p.count)
            for i in 0..<p.count {
                let at = 8 + n + offsets[0] + 4 * i
                let bits = UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
                if Float(bitPattern: bits) != p.value[i] { XCTFail("\(p.name)[\(i)]: \(Float(bitPattern: bits)) against \(p.value[i])"); break }
            }
            covered += offsets[1] - offsets[0]
        }
        XCTAssertEqual(8 + n + covered, bytes.count, "the data is exactly the tensors")

        r = try inspect(["export", "\(run)/step-000006", "--format", "safetensors", out, "--with-optimizer", "--json"])
        XCTAssertEqual(r.code, 0, r.output)
        let reread = [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
        let m = (0..<8).reduce(0) { $0 | Int(reread[$1]) << (8 * $1) }
        let names = (try JSONSerialization.jsonObject(with: Data(reread[8..<(8 + m)])) as! [String: Any]).keys
        XCTAssertEqual(names.count, 1 + 3 * 18)
        XCTAssertTrue(names.contains("optimizer.m.blocks.0.fc1.weight") && names.contains("optimizer.v.head.bias"))
    }

    func size(_ path: String) throws -> Int { try FileManager.default.attributesOfItem(atPath: path)[.size] as! Int }

    /// A router that sends every token to expert 0 (zero router weights, top-1, no balance
    /// loss: the router gets no gradient): the chart shows it, and the three dead experts.
    func testExpertsChartShowsDeadAndOverloadedExperts() throws {
        let text = Fixtures.job(dir: dir, model: .moe(depth: 1, "experts = 4\ntop_k = 1\nhidden = 8\nbalance_loss = 0\nrouter_init = \"zeros\""))
        let (run, _) = try makeRun("moe", steps: 5, every: 5, text: text)
        let r = try inspect(["experts", "\(run)/step-000005"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertEqual(r.output, """
            blocks.0.moe: 240 assignments to 4 experts (even share 25.0%)
              expert 0  ████████████████████████████████████████  100.0%  overloaded
              expert 1                                              0.0%  dead
              expert 2                                              0.0%  dead
              expert 3                                              0.0%  dead

            """)
    }
}
