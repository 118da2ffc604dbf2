import XCTest
@testable import Cluster

/// The preflight verdict and table, on made-up reports (no MPI needed).
final class PreflightTests: XCTestCase {
    func report(_ rank: Int, host: String = "a", cores: Int = 4, binding: [Int] = [0, 1, 2, 3], threads: Int = 1,
                gflops: Double = 30, binary: String = "b1", config: String = "c1") -> RankReport {
        RankReport(rank: rank, host: host, cores: cores, binding: binding, blasThreads: threads, blasCore: "Zen",
                   onednnISA: "avx512_core_bf16", matmulGFLOPs: gflops, binaryHash: binary, configHash: config)
    }

    func testHealthyClusterHasNoFindings() {
        let v = Preflight.judge([report(0, binding: [0]), report(1, binding: [1]), report(2, host: "b", binding: [0])])
        XCTAssertEqual(v, Preflight.Verdict())
    }

    func testDifferentBinariesOrConfigsRefuseToStart() {
        let v = Preflight.judge([report(0), report(1, binary: "b2"), report(2, config: "c2"), report(3, config: "c2")])
        XCTAssertEqual(v.problems, [
            "rank 1 runs a different switchboard binary than rank 0 (hash b1)",
            "ranks 2, 3 resolved a different config than rank 0 (job file or --set differ)",
        ])
    }

    func testWarnings() {
        let v = Preflight.judge([
            report(0, cores: 2, binding: [0], threads: 1),
            report(1, cores: 2, binding: [0], threads: 2),              // same core as rank 0; 3 threads on 2 cores
            report(2, host: "b", gflops: 12),                            // under half the median of 30
            report(3, host: "b", binding: [0, 1, 2, 3]),                 // unbound: no overlap warning
        ])
        XCTAssertEqual(v.problems, [])
        XCTAssertEqual(v.warnings, [
            "host a: 2 ranks × BLAS threads = 3 threads on 2 cores (oversubscribed: expect slow steps)",
            "host a: ranks 0 and 1 are bound to overlapping CPUs (0 and 0)",
            "rank 2 on b: fp32 matmul 12.0 GFLOP/s is under half the median 30.0 (a busy node or a mis-detected CPU?)",
        ])
    }

    func testTableAndCPULists() {
        XCTAssertEqual(Preflight.table([report(0, binding: [0, 1, 2, 3, 8], binary: "0123456789abcdef")]), """
            rank  host  cores  bound to  BLAS threads  OpenBLAS core  oneDNN ISA        matmul GFLOP/s  binary    config
            0     a     4      0-3,8     1             Zen            avx512_core_bf16  30.0            01234567  c1
            """)
        XCTAssertEqual(Preflight.parseCPUList(" 0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11])
        XCTAssertEqual(Preflight.cpuList([0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11")
        XCTAssertEqual(Preflight.hex(0xab), "00000000000000ab")
    }

    /// A report too large for the gather is named as such (it once read "MPI_SUCCESS: no
    /// errors"); a machine of 256 CPUs fits.
    func testAReportTooLargeForTheGatherIsNamed() throws {
        XCTAssertEqual(try Preflight.encode(report(0, binding: Array(0..<256))).count, Preflight.reportBytes)
        XCTAssertThrowsError(try Preflight.encode(report(0, binding: Array(0..<4000)))) { error in
            let e = error as? PreflightError
            XCTAssertEqual(e?.exitCode, 1)
            XCTAssertTrue(e?.message.hasPrefix("preflight: rank 0's report is ") ?? false, "\(error)")
            XCTAssertTrue(e?.message.hasSuffix(" bytes, more than the 16384 the gather holds") ?? false, "\(error)")
        }
    }
}
