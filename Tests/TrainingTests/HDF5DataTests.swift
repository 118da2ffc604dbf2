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

    func hdf5Job() -> String {
        Fixtures.job(dir: dir)
            .replacingOccurrences(of: "train_images = \"train-images\"\ntrain_labels = \"train-labels\"\ntest_images = \"test-images\"\ntest_labels = \"test-labels\"",
                                  with: "format = \"hdf5\"\ntrain_file = \"train.h5\"\ntest_file = \"test.h5\"")
    }

    func testTrainingOnConvertedHDF5MatchesIDXBitForBit() throws {
        try convert("train")
        try convert("test")
        let listing = try Launcher.run("/usr/bin/h5ls", ["\(dir)/train.h5"]).output
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
        let job = hdf5Job().replacingOccurrences(of: "classes = 4", with: "classes = 3")
            .replacingOccurrences(of: "train_file = \"train.h5\"", with: "train_file = \"test.h5\"")
        try job.write(toFile: "\(dir)/bad.toml", atomically: true, encoding: .utf8)
        var r = try Launcher.run(binary, ["train", "\(dir)/bad.toml", "--quiet"])
        XCTAssertEqual(r.code, 1, r.output)
        XCTAssertTrue(r.output.contains("switchboard: error: \(dir)/test.h5: label 3 at index "), r.output)
        XCTAssertTrue(r.output.contains("of y is not in 0..<3"), r.output)

        let missing = hdf5Job().replacingOccurrences(of: "train_file = \"train.h5\"", with: "train_file = \"test.h5\"\nx_name = \"images\"")
        try missing.write(toFile: "\(dir)/missing.toml", atomically: true, encoding: .utf8)
        r = try Launcher.run(binary, ["train", "\(dir)/missing.toml", "--quiet"])
        XCTAssertEqual(r.code, 1, r.output)
        XCTAssertTrue(r.output.contains("switchboard: error: \(dir)/test.h5: opening dataset images failed"), r.output)
    }
}
