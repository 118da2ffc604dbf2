import Foundation
import Layers
import TestSupport
import XCTest
@testable import Training

/// Two ranks on two hosts, talking over TCP, train the same model as two ranks on one host.
/// The hosts are network namespaces made by `cluster/netns/harness.sh` (each with its own
/// address and hostname); mpirun reaches the second host through `rsh-agent.sh`.
final class MultiHostTests: ToyDataTestCase {
    let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    func testTwoNamespaceHostsOverTCPTrainLikeTwoRanksOnOneHost() throws {
        let harness = "\(repository)/cluster/netns/harness.sh"
        // Namespaces need root with CAP_NET_ADMIN and CAP_SYS_ADMIN, and iproute2. Where they
        // cannot be made, the test fails saying so: a test that did not run is not a pass.
        let probe = try Launcher.run(harness, ["run", "2", "--", "true"])
        guard probe.code == 0 else {
            return XCTFail("MULTI-HOST TEST NOT RUN: network namespaces cannot be created here "
                           + "(needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN, and iproute2): \(probe.output)")
        }
        let text = Fixtures.job(dir: dir, settings: ["train.epochs": "3", "train.max_steps": "30"])
        let job = try writeJob(text)
        let train = [binary, "train", job, "--quiet", "--set", "parallel.bucket_kib=4"]

        let local = try Launcher.run(try mpirunPath(), ["--allow-run-as-root", "--oversubscribe", "-np", "2"]
                                     + train + ["--set", "run.name=\"local\""])
        XCTAssertEqual(local.code, 0, local.output)

        let command = "mpirun --allow-run-as-root $SB_MPI_FLAGS -np 2 " + train.joined(separator: " ") + " --set 'run.name=\"hosts\"'"
        let hosts = try Launcher.run(harness, ["run", "2", "--", "sh", "-c", command], deadline: 60)
        XCTAssertEqual(hosts.code, 0, hosts.output)
        // The preflight table lists each rank on its own host.
        XCTAssertTrue(hosts.output.contains("  0     sb-h1 "), hosts.output)
        XCTAssertTrue(hosts.output.contains("  1     sb-h2 "), hosts.output)

        let config = try JobConfig.parse(text, source: job)
        func parameters(_ run: String) throws -> [Float] {
            let m = Model(config.model, inputs: 64, classes: 4, maxRows: 1, seed: 999)
            try ModelFile.read(m, from: "\(dir)/runs/\(run)/model.h5")
            return m.store.values.array
        }
        // Same ranks, same sums, same bits: only the transport differs.
        XCTAssertEqual(try parameters("hosts"), try parameters("local"), "2 hosts over TCP must equal 2 ranks on one host bitwise")

        // The harness leaves nothing behind.
        let left = try Launcher.run("/bin/sh", ["-c", "ip netns list"])
        XCTAssertFalse(left.output.contains("sb-h"), left.output)
    }
}
