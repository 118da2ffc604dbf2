import Foundation
import Storage
import TestSupport
import XCTest

/// Checkpoint tensors bypass HDF5's filter pipeline; these tests hold them to it: HDF5 reads
/// and verifies what `writeTensor` wrote, `readTensor` verifies what HDF5 wrote, and the
/// Fletcher32 kernel matches a transcription of HDF5's own loop.
final class ChunkedTensorIOTests: XCTestCase {
    var dir = ""
    override func setUp() { dir = Fixtures.temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// `H5_checksum_fletcher32` (H5checksum.c), word by word.
    static func referenceFletcher32(_ bytes: [UInt8]) -> UInt32 {
        var sum1: UInt32 = 0, sum2: UInt32 = 0
        var len = bytes.count / 2, i = 0
        while len > 0 {
            var tlen = min(len, 360)
            len -= tlen
            repeat {
                sum1 = sum1 &+ (UInt32(bytes[i]) << 8 | UInt32(bytes[i + 1]))
                i += 2
                sum2 = sum2 &+ sum1
                tlen -= 1
            } while tlen > 0
            sum1 = (sum1 & 0xffff) + (sum1 >> 16)
            sum2 = (sum2 & 0xffff) + (sum2 >> 16)
        }
        if bytes.count % 2 == 1 {
            sum1 = sum1 &+ UInt32(bytes[i]) << 8
            sum2 = sum2 &+ sum1
            sum1 = (sum1 & 0xffff) + (sum1 >> 16)
            sum2 = (sum2 & 0xffff) + (sum2 >> 16)
        }
        sum1 = (sum1 & 0xffff) + (sum1 >> 16)
        sum2 = (sum2 & 0xffff) + (sum2 >> 16)
        return (sum2 << 16) | sum1
    }

    func testFletcher32MatchesHDF5sLoop() {
        var rng = SystemRandomNumberGenerator()
        // Lengths around the 360-word block and the 8-word step, odd ones, and all-ones bytes
        // (the largest sums, where 32-bit wrap-around happens).
        for length in [0, 1, 2, 15, 16, 718, 720, 721, 722, 736, 5000, 100_001, 1 << 20] {
            for fill in [nil, UInt8(0xff)] {
                let bytes = (0..<length).map { _ in fill ?? UInt8.random(in: 0...255, using: &rng) }
                let base = { (b: UnsafeRawBufferPointer) in b.baseAddress ?? UnsafeRawPointer(bitPattern: 1)! }
                let expected = Self.referenceFletcher32(bytes)
                XCTAssertEqual(bytes.withUnsafeBytes { Fletcher32.checksum(base($0), bytes: length) }, expected,
                               "\(length) bytes, fill \(String(describing: fill))")
                XCTAssertEqual(bytes.withUnsafeBytes { Fletcher32.checksumWithoutAVX2(base($0), bytes: length) }, expected,
                               "SSE2: \(length) bytes, fill \(String(describing: fill))")
            }
        }
    }

    /// Shapes with one chunk, many full chunks, and an edge chunk (1 MiB chunks of whole rows).
    let shapes = [[7], [3, 5], [1000, 1000], [700, 1024], [300_000]]

    func values(_ count: Int) -> [Float] { (0..<count).map { Float($0 % 977) * 0.37 - 100 } }

    func testHDF5ReadsAndVerifiesWhatWriteTensorWrites() throws {
        let file = try HDF5File.create("\(dir)/t.h5")
        var sums: [UInt32] = []
        for (i, shape) in shapes.enumerated() { sums.append(try values(shape.reduce(1, *)).withUnsafeBufferPointer { try file.writeTensor("t\(i)", shape: shape, $0.baseAddress!) }) }
        try file.close()
        let back = try HDF5File.open("\(dir)/t.h5")
        for (i, shape) in shapes.enumerated() {
            let n = shape.reduce(1, *)
            var a = [Float](repeating: 0, count: n), b = [Float](repeating: 0, count: n)
            try back.readFloats("t\(i)", shape: shape, into: &a)   // HDF5's pipeline checks every sum
            XCTAssertTrue(a == values(n), "\(shape)")
            XCTAssertEqual(try back.readTensor("t\(i)", shape: shape, into: &b), sums[i])
            XCTAssertTrue(b == values(n), "\(shape)")
        }
    }

    func testReadTensorVerifiesWhatHDF5Wrote() throws {
        let file = try HDF5File.create("\(dir)/h.h5")
        for (i, shape) in shapes.enumerated() { try values(shape.reduce(1, *)).withUnsafeBufferPointer { try file.writeFloats("h\(i)", shape: shape, $0.baseAddress!) } }
        try file.close()
        let back = try HDF5File.open("\(dir)/h.h5")
        for (i, shape) in shapes.enumerated() {
            var b = [Float](repeating: 0, count: shape.reduce(1, *))
            _ = try back.readTensor("h\(i)", shape: shape, into: &b)
            XCTAssertTrue(b == values(b.count), "\(shape)")
        }
    }

    func testAFlippedByteFailsTheChunkAndATruncatedFileIsNamed() throws {
        let shape = [700, 1024]
        let data = (0..<(700 * 1024)).map { Float($0) }   // unique, so the bytes below occur once
        let path = "\(dir)/f.h5"
        do {
            let file = try HDF5File.create(path)
            _ = try data.withUnsafeBufferPointer { try file.writeTensor("x", shape: shape, $0.baseAddress!) }
            try file.close()
        }
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let needle = data[300_000..<300_008].withUnsafeBytes { Array($0) }
        let at = (0...(bytes.count - needle.count)).first { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }!
        bytes[at + 3] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        var out = [Float](repeating: 0, count: data.count)
        XCTAssertThrowsError(try HDF5File.open(path).readTensor("x", shape: shape, into: &out)) {
            XCTAssertTrue("\($0)".contains("chunk 1 of 3 fails its Fletcher32 checksum"), "\($0)")
        }
        XCTAssertThrowsError(try HDF5File.open(path).readTensor("x", shape: [1024, 700], into: &out)) {
            XCTAssertTrue("\($0)".contains("shape [700, 1024], expected [1024, 700]"), "\($0)")
        }
    }
}
