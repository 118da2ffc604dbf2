import XCTest
@testable import Training

final class SampleOrderTests: XCTestCase {
    func testEpochVisitsEverySampleOnceWithAPartialLastBatch() {
        let order = GlobalSampleOrder(count: 1000, batchSize: 64, seed: 3)
        XCTAssertEqual(order.batchesPerEpoch, 16)
        XCTAssertEqual(order.batch(15), 960..<1000)
        var p = [Int32](repeating: 0, count: 1000)
        order.permutation(epoch: 0, into: &p)
        var seen = Set<Int32>()
        for b in 0..<order.batchesPerEpoch { for i in order.batch(b) { seen.insert(p[i]) } }
        XCTAssertEqual(seen.count, 1000)
        var q = p
        order.permutation(epoch: 1, into: &q)
        XCTAssertNotEqual(p, q, "each epoch reshuffles")
    }

    /// Each rank's part is contiguous, and the parts of any world size tile the batch exactly.
    func testRankPartsTileEveryBatchForAnyWorldSize() {
        for rows in [1, 7, 64, 96, 256] {
            for ranks in 1...5 {
                var next = 0
                for r in 0..<ranks {
                    let part = GlobalSampleOrder.part(rows: rows, rank: r, ranks: ranks)
                    XCTAssertEqual(part.lowerBound, next)
                    XCTAssertLessThanOrEqual(part.count, (rows + ranks - 1) / ranks)
                    next = part.upperBound
                }
                XCTAssertEqual(next, rows)
            }
        }
    }
}
