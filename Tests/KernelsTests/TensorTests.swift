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
}
