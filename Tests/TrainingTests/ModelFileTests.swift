import Foundation
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

final class ModelFileTests: XCTestCase {
    let arch = Architecture.residual(Trunk(width: 16, depth: 2, norm: .rmsNorm), .mlp(MLPSpec(hidden: 32, activation: .gated(.silu), dropout: 0)))

    func testRoundTripByGlobalName() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = Model(arch, inputs: 8, classes: 3, maxRows: 2, seed: 1)
        let b = Model(arch, inputs: 8, classes: 3, maxRows: 2, seed: 2)
        XCTAssertNotEqual(a.store.values.array, b.store.values.array)
        try ModelFile.write(a, to: "\(dir)/model.h5", step: 7, configTOML: "[run]\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/model.h5.tmp"))
        try ModelFile.read(b, from: "\(dir)/model.h5")
        assertBitwiseEqual(a.store.values, b.store.values, "parameters read back")
    }

    func testShapeMismatchAndCorruptionAreErrorsNotZeros() throws {
        let dir = Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = Model(arch, inputs: 8, classes: 3, maxRows: 2, seed: 1)
        let path = "\(dir)/model.h5"
        try ModelFile.write(a, to: path, step: 1, configTOML: "")
        let wider = Model(.residual(Trunk(width: 12, depth: 2, norm: .rmsNorm), .mlp(MLPSpec(hidden: 24, activation: .gated(.silu), dropout: 0))),
                          inputs: 8, classes: 3, maxRows: 2, seed: 1)
        XCTAssertThrowsError(try ModelFile.read(wider, from: path)) {
            XCTAssertEqual("\($0)", "\(path): reading embed.weight failed (shape [16, 8], expected [12, 8])")
        }
        // Flip one byte inside the head's weights: the Fletcher32 checksum must catch it.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let head = a.store["head.weight"]!
        let needle = withUnsafeBytes(of: head.value[0]) { Array($0) } + withUnsafeBytes(of: head.value[1]) { Array($0) }
        let at = (0...(bytes.count - needle.count)).first { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }!
        bytes[at + 2] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try ModelFile.read(a, from: path)) {
            XCTAssertTrue("\($0)".hasPrefix("\(path): reading dataset head.weight failed ("), "\($0)")
        }
    }
}
