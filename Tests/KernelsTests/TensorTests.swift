import XCTest
@testable import Kernels

final class TensorTests: XCTestCase {
    /// Large tensors start on a 2 MiB boundary (so Linux can back them with huge pages), small
    /// ones on a cache line; both start zeroed.
    func testLargeTensorsAreAlignedForHugePages() {
        let large = Tensor(shape: [Tensor.hugePagesFrom / 4]), small = Tensor(shape: [1000])
        XCTAssertEqual(Int(bitPattern: large.data) % (1 << 21), 0)
        XCTAssertEqual(Int(bitPattern: small.data) % 64, 0)
        XCTAssertTrue(large.array.allSatisfy { $0 == 0 } && small.array.allSatisfy { $0 == 0 })
    }

    /// A large tensor takes memory only where it is written, and `release` gives back the
    /// whole pages inside a range (they read as zeros after) and keeps every float outside it,
    /// the partly covered pages at its ends too.
    func testReleaseGivesBackThePagesInsideARangeAndKeepsTheRest() throws {
        let floats = 64 << 18                                            // 64 MiB
        let before = try resident()
        let t = Tensor(shape: [floats])
        XCTAssertLessThan(try resident() - before, 8e6, "an untouched tensor must take (almost) no memory")
        for i in 0..<floats { t[i] = Float(i % 1000) + 1 }
        let written = try resident()
        XCTAssertGreaterThan(written - before, 60e6, "writing 64 MiB must take about 64 MiB")
        // Floats 1000 … 15·2^20 + 7: pages from the first 2 MiB boundary after 1000 to the last before the end.
        let range = 1000..<(15 << 20 + 7)
        t.release(range)
        let released = written - (try resident())
        XCTAssertGreaterThan(released, 50e6, "releasing ~60 MB gave back \(released) bytes")
        let page = (1 << 21) / 4
        for i in stride(from: 0, to: floats, by: 997) {
            let inside = i >= page && i < (15 << 20 + 7) / page * page
            XCTAssertEqual(t[i], inside ? 0 : Float(i % 1000) + 1, "float \(i) (\(inside ? "released" : "kept"))")
            if t[i] != (inside ? 0 : Float(i % 1000) + 1) { break }
        }
        XCTAssertEqual(t[999], 1000, "the float before the range is kept")
        XCTAssertEqual(t[15 << 20 + 7], Float((15 << 20 + 7) % 1000) + 1, "the float after the range is kept")
    }

    /// Resident memory of this process (`VmRSS`), in bytes.
    func resident() throws -> Double {
        let text = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try XCTUnwrap(text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") })
        return try XCTUnwrap(Double(line.split(separator: " ", omittingEmptySubsequences: true)[1])) * 1024
    }
}
