import TestSupport
import XCTest
@testable import Storage

final class IDXTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = Fixtures.temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func dataError(_ body: () throws -> Void) -> String {
        do { try body(); return "no error" } catch let e as DataError { return e.description } catch { return "\(error)" }
    }

    func testReadsPlainAndGzipWithScaling() throws {
        Fixtures.write(Fixtures.idx([2, 2, 2], [0, 255, 51, 102, 1, 2, 3, 4]), to: "\(dir)/x")
        Fixtures.write(Fixtures.idx([2], [1, 0]), to: "\(dir)/y")
        let plain = try Dataset.idx(images: "\(dir)/x", labels: "\(dir)/y", classes: 2)
        XCTAssertEqual(plain.count, 2)
        XCTAssertEqual(plain.width, 4)
        let expected: [Float] = [0, 255, 51, 102, 1, 2, 3, 4].map { $0 * (1 / 255) }
        XCTAssertEqual(plain.features.array, expected)
        XCTAssertEqual(plain.labels, [1, 0])
        let gz = Process()
        gz.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gz.arguments = ["-k", "\(dir)/x", "\(dir)/y"]
        try gz.run()
        gz.waitUntilExit()
        let zipped = try Dataset.idx(images: "\(dir)/x.gz", labels: "\(dir)/y.gz", classes: 2)
        assertBitwiseEqual(zipped.features, plain.features, "gzip against plain")
    }

    func testRejectsBadFiles() {
        let x = "\(dir)/x", y = "\(dir)/y"
        Fixtures.write(Fixtures.idx([3], [0, 1, 1]), to: y)

        XCTAssertEqual(dataError { _ = try Dataset.idx(images: "\(dir)/missing", labels: y, classes: 2) },
                       "\(dir)/missing: cannot open (No such file or directory)")

        Fixtures.write(Array(Fixtures.idx([3, 2, 2], [UInt8](repeating: 9, count: 12)).dropLast(5)), to: x)
        XCTAssertEqual(dataError { _ = try Dataset.idx(images: x, labels: y, classes: 2) },
                       "\(x): truncated: data of shape 3×2×2 needs 12 bytes, the file ends after 7")

        Fixtures.write(Fixtures.idx([2, 2, 2], [UInt8](repeating: 9, count: 8)), to: x)
        XCTAssertEqual(dataError { _ = try Dataset.idx(images: x, labels: y, classes: 2) },
                       "\(y): has 3 labels but \(x) has 2 images")

        Fixtures.write([0x1f, 0x8c, 0, 0, 0], to: x)
        XCTAssertEqual(dataError { _ = try Dataset.idx(images: x, labels: y, classes: 2) },
                       "\(x): not an IDX file (magic bytes 1f 8c 00 00, expected 00 00 08 03)")

        Fixtures.write(Fixtures.idx([3], [0, 1, 1]), to: x)
        XCTAssertEqual(dataError { _ = try Dataset.idx(images: x, labels: y, classes: 2) },
                       "\(x): IDX file has 1 dimensions, expected 3")

        Fixtures.write(Fixtures.idx([3, 1, 1], [0, 1, 1], magicType: 0x0D), to: x)
        XCTAssertEqual(dataError { _ = try Dataset.idx(images: x, labels: y, classes: 2) },
                       "\(x): IDX element type 0xd is not supported (expected 0x08, unsigned byte)")

        Fixtures.write(Fixtures.idx([3, 1, 1], [0, 1, 1, 7]), to: x)
        XCTAssertEqual(dataError { _ = try Dataset.idx(images: x, labels: y, classes: 2) },
                       "\(x): unexpected bytes after the 3 data bytes of shape [3, 1, 1]")

        Fixtures.write(Fixtures.idx([3, 1, 1], [0, 1, 1]), to: x)
        Fixtures.write(Fixtures.idx([3], [0, 5, 1]), to: y)
        XCTAssertEqual(dataError { _ = try Dataset.idx(images: x, labels: y, classes: 2) },
                       "\(y): label 5 at index 1 is not below the 2 classes")
    }
}
