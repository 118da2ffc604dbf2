import XCTest
@testable import Cluster

/// How `ShardedSync` cuts a bucket into the ranks' chunks.
final class ShardedSyncTests: XCTestCase {
    /// Without alignment a bucket splits evenly, the first n % P chunks one float longer, and
    /// so does one with fewer floats than P pages; otherwise (the parameters in shards) every
    /// boundary inside the bucket is a multiple of the alignment, the nearest one. Either way
    /// the chunks tile the bucket in order.
    func testChunksTileTheBucketAndEndOnTheAlignment() {
        for p in [1, 2, 3, 4, 7] {
            for bucket in [0..<10, 5..<5_000_003, 1_000_000..<1_000_100, 3..<(9 << 19) + 11] {
                for a in [1, 1 << 19] {
                    var at = bucket.lowerBound
                    for i in 0..<p {
                        let c = ShardedSync.chunk(i, of: bucket, ranks: p, alignment: a)
                        let what = "chunk \(i) of \(bucket) on \(p) ranks, alignment \(a)"
                        XCTAssertEqual(bucket.lowerBound + c.offset, at, "\(what) starts where the one before ended")
                        XCTAssertGreaterThanOrEqual(c.count, 0, what)
                        at += c.count
                        let n = bucket.count, even = n / p + (i < n % p ? 1 : 0)
                        if a == 1 {
                            XCTAssertEqual(c.count, even, what)
                        } else if n < p * a {
                            XCTAssertEqual(c.count, even, "\(what): a bucket too small for a page a rank splits evenly")
                        } else if i > 0 && c.offset > 0 && bucket.lowerBound + c.offset < bucket.upperBound {
                            XCTAssertEqual((bucket.lowerBound + c.offset) % a, 0, "\(what) starts on the alignment")
                            let ideal = bucket.lowerBound + i * (n / p) + min(i, n % p)
                            XCTAssertLessThanOrEqual(abs(bucket.lowerBound + c.offset - ideal), a / 2, "\(what) starts at the nearest multiple")
                        }
                    }
                    XCTAssertEqual(at, bucket.upperBound, "the chunks of \(bucket) on \(p) ranks cover it (alignment \(a))")
                }
            }
        }
    }
}
