import Foundation
import Storage
import TestSupport
import XCTest
@testable import Training

/// HDF5 training data: `switchboard convert` writes it from IDX, and training on it gives the
/// same bits as training on the IDX files, alone and on 2 ranks.
final class HDF5DataTests: ToyDataTestCase {
    func convert(_ split: String) throws {
        let r = try Launcher.run(binary, ["convert", "\(dir)/\(split)-images", "\(dir)/\(split)-labels", "\(dir)/\(split).h5"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("wrote \(dir)/\(split).h5: x uint8 ["), r.output)
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
        for ranks in [1, 2] {
            let a = try loadModel(try train(ranks: ranks, name: "idx\(ranks)", job: idxJob), config)
            let b = try loadModel(try train(ranks: ranks, name: "hdf5\(ranks)", job: "\(dir)/hdf5.toml"), config)
            XCTAssertEqual(Self.maxRelativeDifference(a, b).0, 0, "\(ranks) rank(s)")
        }
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
