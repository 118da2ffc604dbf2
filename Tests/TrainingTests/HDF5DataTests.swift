import Foundation
import Storage
import TestSupport
import XCTest
@testable import Training

/// HDF5 training data: `switchboard convert` writes it from IDX, in one file or many, and
/// training on it gives the same bits as training on the IDX files, alone and on 2 ranks.
final class HDF5DataTests: ToyDataTestCase {
    func convert(_ split: String, files: Int? = nil) throws {
        let r = try Launcher.run(binary, ["convert", "\(dir)/\(split)-images", "\(dir)/\(split)-labels", "\(dir)/\(split).h5"]
                                 + (files.map { ["--files", "\($0)"] } ?? []))
        XCTAssertEqual(r.code, 0, r.output)
        if let files {
            XCTAssertTrue(r.output.contains("wrote \(dir)/\(split)-0\(files - 1).h5: x uint8 [64, 8, 8], y uint8 [64] (samples 448…511)"), r.output)
        } else {
            XCTAssertTrue(r.output.contains("wrote \(dir)/\(split).h5: x uint8 ["), r.output)
        }
    }

    /// The toy job with `[data]` on HDF5 (`settings` over it) as a job file; returns its path.
    func hdf5JobFile(_ name: String, _ settings: KeyValuePairs<String, String?> = [:]) throws -> String {
        try hdf5Job(settings).write(toFile: "\(dir)/\(name).toml", atomically: true, encoding: .utf8)
        return "\(dir)/\(name).toml"
    }

    func hdf5Job(_ settings: KeyValuePairs<String, String?> = [:]) -> String {
        var text = Fixtures.job(dir: dir, settings: [
            "data.train_images": nil, "data.train_labels": nil, "data.test_images": nil, "data.test_labels": nil,
            "data.format": "\"hdf5\"", "data.train_file": "\"train.h5\"", "data.test_file": "\"test.h5\""])
        for (path, value) in settings { text = Fixtures.set(path, value, in: text) }
        return text
    }

    func testTrainingOnConvertedHDF5MatchesIDXBitForBit() throws {
        try convert("train")
        try convert("test")
        let listing = try Launcher.run(try XCTUnwrap(Fixtures.tool("h5ls"), "h5ls is not on PATH (Debian: hdf5-tools)"), ["\(dir)/train.h5"]).output
        XCTAssertTrue(listing.contains("x                        Dataset {512, 8, 8}"), listing)
        XCTAssertTrue(listing.contains("y                        Dataset {512}"), listing)
        let idxJob = try writeJob()
        let config = try JobConfig.parse(Fixtures.job(dir: dir), source: idxJob)
        let hdf5Text = hdf5Job()
        XCTAssertNotEqual(hdf5Text, Fixtures.job(dir: dir), "the [data] section was replaced")
        try hdf5Text.write(toFile: "\(dir)/hdf5.toml", atomically: true, encoding: .utf8)
        // Files of a chosen number of samples: 200, 200 and the last 112.
        let sized = try Launcher.run(binary, ["convert", "\(dir)/train-images", "\(dir)/train-labels", "\(dir)/sized.h5", "--samples-per-file", "200"])
        XCTAssertEqual(sized.code, 0, sized.output)
        XCTAssertEqual(sized.output.split(separator: "\n").map(String.init), [
            "wrote \(dir)/sized-00.h5: x uint8 [200, 8, 8], y uint8 [200] (samples 0…199)",
            "wrote \(dir)/sized-01.h5: x uint8 [200, 8, 8], y uint8 [200] (samples 200…399)",
            "wrote \(dir)/sized-02.h5: x uint8 [112, 8, 8], y uint8 [112] (samples 400…511)"])
        // The same samples in 8 files of 64, named by a glob, and by a list.
        try convert("train", files: 8)
        let glob = try hdf5JobFile("glob", ["data.train_file": "\"train-*.h5\""])
        let list = try hdf5JobFile("list", ["data.train_file": "[" + (0..<8).map { "\"train-0\($0).h5\"" }.joined(separator: ", ") + "]"])
        for ranks in [1, 2] {
            let a = try loadModel(try train(ranks: ranks, name: "idx\(ranks)", job: idxJob), config)
            for (label, job) in [("one file", "\(dir)/hdf5.toml"), ("8 files by a glob", glob), ("8 files listed", list)] {
                let name = "\(label.filter(\.isLetter))\(ranks)"
                let b = try loadModel(try train(ranks: ranks, name: name, job: job), config)
                XCTAssertEqual(Self.maxRelativeDifference(a, b).0, 0, "\(ranks) rank(s), \(label)")
            }
        }
    }

    /// Resumed in the middle of an epoch from 8 files, a run ends on the bits of the run that
    /// went through.
    func testResumingMidEpochFromManyFiles() throws {
        try convert("train", files: 8)
        try convert("test")
        let job = try hdf5JobFile("many", ["data.train_file": "\"train-*.h5\"", "train.max_steps": "16"])
        try (try String(contentsOfFile: job, encoding: .utf8) + "[checkpoint]\nevery_steps = 5\nkeep_last = 0\n")
            .write(toFile: job, atomically: true, encoding: .utf8)
        let config = try JobConfig.parse(hdf5Job(), source: job)
        let whole = try loadModel(try train(ranks: 2, name: "whole", job: job), config)
        let r = try mpirun(ranks: 2, name: "resumed", job: job, extraArguments: ["--resume", "\(dir)/runs/whole/\(CheckpointFolder.name(step: 5))"])
        XCTAssertEqual(r.code, 0, r.output)
        let resumed = try loadModel("\(dir)/runs/resumed/model.h5", config)
        assertBitwiseEqual(whole.store.values, resumed.store.values, "resumed at step 5 of 11 in the first epoch")
    }

    /// Resident memory does not grow with the data: the toy model trained for 300 steps on 8
    /// files of 48 MB (384 MB of 32 × 32 images) peaks within 80 MB of the same job on one
    /// file of 8 MB, a bound the data is nearly 5 times; the chunks kept between batches
    /// are capped (`SampleFiles.cacheBudget`, 64 MiB), the rest is read when needed.
    func testMemoryDoesNotGrowWithTheData() throws {
        // uint8 images [n, 32, 32] and labels 0–3, chunked as `convert` writes them.
        func write(_ name: String, samples n: Int, seed: UInt8) throws {
            var pixels = [UInt8](repeating: 0, count: n * 1024)
            for i in pixels.indices { pixels[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) &+ seed }
            let labels = (0..<n).map { UInt8(($0 &* 7 &+ Int(seed)) % 4) }
            let file = try HDF5File.create("\(dir)/\(name)")
            try pixels.withUnsafeBufferPointer { try file.writeUInt8("x", shape: [n, 32, 32], $0.baseAddress!, chunkBytes: 64 << 10) }
            try labels.withUnsafeBufferPointer { try file.writeUInt8("y", shape: [n], $0.baseAddress!, chunkBytes: 64 << 10) }
            try file.close()
        }
        try write("small.h5", samples: 8192, seed: 1)
        for f in 0..<8 { try write("big-0\(f).h5", samples: 49152, seed: UInt8(f)) }
        func peak(_ name: String, _ train: String) throws -> Double {
            let job = try hdf5JobFile(name, ["data.train_file": train, "data.test_file": "\"small.h5\"", "train.max_steps": "300",
                                             "train.epochs": "1", "train.eval_batch_size": "256"])
            let r = try Launcher.run(binary, ["train", job, "--quiet", "--set", "run.name=\"\(name)\""])
            XCTAssertEqual(r.code, 0, r.output)
            let line = try XCTUnwrap(r.output.split(separator: "\n").first { $0.hasPrefix("done: ") }, r.output)
            let text = try XCTUnwrap(line.components(separatedBy: "peak memory ").last?.split(separator: " ").first, String(line))
            let unit = line.components(separatedBy: "peak memory ").last!.split(separator: " ")[1]
            let value = try XCTUnwrap(Double(text), String(line))
            return value * (unit.hasPrefix("GB") ? 1000 : 1)
        }
        let small = try peak("small", "\"small.h5\"")
        let big = try peak("big", "\"big-*.h5\"")
        XCTAssertLessThanOrEqual(big - small, 80, "peak \(big) MB on 384 MB of data against \(small) MB on 8 MB")
        print("peak memory: \(small) MB on 8 MB of data, \(big) MB on 384 MB")
    }

    /// A file per sample, 512 of them, each open twice (HDF5's handle and the chunk reads'
    /// descriptor): more than the usual soft limit of 1024 open files, which the run raises.
    func testMoreFilesThanTheSoftLimitOnOpenFiles() throws {
        let c = try Launcher.run(binary, ["convert", "\(dir)/train-images", "\(dir)/train-labels", "\(dir)/one.h5", "--samples-per-file", "1"])
        XCTAssertEqual(c.code, 0, c.output)
        try convert("test")
        let job = try hdf5JobFile("each", ["data.train_file": "\"one-*.h5\"", "train.max_steps": "3"])
        let r = try Launcher.run("/bin/sh", ["-c", "ulimit -S -n 1024 && exec \"$0\" train \"$1\" --quiet", binary, job])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("done: 3 steps"), r.output)
    }

    /// A missing, truncated or mismatched file among many is named, with the samples it holds,
    /// before training starts (exit 1); a damaged chunk is named with its samples when a
    /// batch needs them, and the run stops there.
    func testABadFileAmongManyIsNamedWithItsSamples() throws {
        try convert("train", files: 8)
        try convert("test")
        let files = (0..<8).map { "\"train-0\($0).h5\"" }
        func fails(_ name: String, _ list: [String], _ expected: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let job = try hdf5JobFile(name, ["data.train_file": "[" + list.joined(separator: ", ") + "]"])
            let r = try Launcher.run(binary, ["train", job, "--quiet"])
            XCTAssertEqual(r.code, 1, r.output, file: file, line: line)
            XCTAssertTrue(r.output.contains("switchboard: error: \(expected)"), r.output, file: file, line: line)
            XCTAssertFalse(r.output.contains("epoch 1/"), "nothing trains: \(r.output)", file: file, line: line)
        }
        var missing = files
        missing[3] = "\"train-99.h5\""
        try fails("missing", missing, "\(dir)/train-99.h5: (file 4 of 8, from sample 192) no such file")

        let truncated = "\(dir)/train-05.h5"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: truncated))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: "\(dir)/short.h5"))
        var short = files
        short[5] = "\"short.h5\""
        try fails("truncated", short, "\(dir)/short.h5: (file 6 of 8, from sample 320) ")

        // A file of 6 × 6 images among 8 × 8 ones.
        let other = "\(dir)/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        Fixtures.dataset(in: other, train: 64, side: 6)
        let c = try Launcher.run(binary, ["convert", "\(other)/train-images", "\(other)/train-labels", "\(dir)/narrow.h5"])
        XCTAssertEqual(c.code, 0, c.output)
        var narrow = files
        narrow[2] = "\"narrow.h5\""
        try fails("narrow", narrow, "\(dir)/narrow.h5: (file 3 of 8, from sample 128) has 36 uint8 features per sample, "
                  + "\(dir)/train-00.h5 64 uint8")

        // A flipped byte in the last file's features: its first chunk fails its checksum
        // when a batch needs one of its rows.
        var damaged = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/train-07.h5"))
        let idx = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/train-images"))
        let stored = idx.subdata(in: (16 + 448 * 64)..<(16 + 512 * 64))   // after the IDX header: samples 448…511
        let chunk = try XCTUnwrap(damaged.range(of: stored), "the features of samples 448…511 are stored as one plain chunk")
        damaged[chunk.lowerBound + 100] ^= 0xff
        try damaged.write(to: URL(fileURLWithPath: "\(dir)/train-07.h5"))
        let job = try hdf5JobFile("damaged", ["data.train_file": "\"train-*.h5\""])
        let r = try Launcher.run(binary, ["train", job, "--quiet"])
        XCTAssertEqual(r.code, 1, r.output)
        XCTAssertTrue(r.output.contains("switchboard: error: \(dir)/train-07.h5: samples 448…511 (rows 0…63 of x) fail their "
                                        + "Fletcher32 checksum (the file is damaged)"), r.output)
    }

    func testBadHDF5DataIsNamed() throws {
        try convert("test")
        // Labels 0–3 exist; with 3 classes label 3 is out of range.
        let job = hdf5Job(["data.classes": "3", "data.train_file": "\"test.h5\""])
        try job.write(toFile: "\(dir)/bad.toml", atomically: true, encoding: .utf8)
        var r = try Launcher.run(binary, ["train", "\(dir)/bad.toml", "--quiet"])
        XCTAssertEqual(r.code, 1, r.output)
        XCTAssertTrue(r.output.contains("switchboard: error: \(dir)/test.h5: label 3 at index "), r.output)
        XCTAssertTrue(r.output.contains("of y is not in 0..<3"), r.output)

        let missing = hdf5Job(["data.train_file": "\"test.h5\"", "data.x_name": "\"images\""])
        try missing.write(toFile: "\(dir)/missing.toml", atomically: true, encoding: .utf8)
        r = try Launcher.run(binary, ["train", "\(dir)/missing.toml", "--quiet"])
        XCTAssertEqual(r.code, 1, r.output)
        XCTAssertTrue(r.output.contains("switchboard: error: \(dir)/test.h5: opening dataset images failed"), r.output)
    }
}
