import Foundation
import TestSupport
import XCTest

/// Tests that run the real binary on the toy dataset in a temporary folder of their own.
class ToyDataTestCase: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = Fixtures.temporaryDirectory()
        Fixtures.dataset(in: dir)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    var binary: String { Fixtures.binary }

    /// Writes `text` (the toy job by default) as the folder's job file; returns its path.
    func writeJob(_ text: String? = nil) throws -> String {
        let path = "\(dir)/job.toml"
        try (text ?? Fixtures.job(dir: dir)).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}
