import Foundation
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

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

    /// mpirun from `PATH`; a test that needs it fails, saying so, where it is missing.
    func mpirunPath() throws -> String {
        try XCTUnwrap(Fixtures.tool("mpirun"), "mpirun is not on PATH (Debian: openmpi-bin; scripts/setup.sh installs it)")
    }

    /// Runs mpirun with `arguments` (after the root and oversubscription flags), killed after
    /// 30 s; returns its exit code, output and seconds.
    func launch(_ arguments: [String], environment: [String: String] = [:])
        throws -> (code: Int32, output: String, seconds: Double) {
        try Launcher.run(try mpirunPath(), ["--allow-run-as-root", "--oversubscribe"]
                         + environment.keys.sorted().flatMap { ["-x", $0] } + arguments, environment: environment)
    }

    /// `switchboard train job` on `ranks` ranks, under run name `name`.
    func mpirun(ranks: Int, name: String, job: String, settings: [String] = [], extraArguments: [String] = [],
                environment: [String: String] = [:]) throws -> (code: Int32, output: String, seconds: Double) {
        try launch(["-np", String(ranks), binary, "train", job, "--quiet", "--set", "run.name=\"\(name)\""]
                   + settings.flatMap { ["--set", $0] } + extraArguments, environment: environment)
    }

    func train(ranks: Int, name: String, job: String, settings: [String] = [], environment: [String: String] = [:]) throws -> String {
        let r = try mpirun(ranks: ranks, name: name, job: job, settings: settings, environment: environment)
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("\(ranks) rank"), r.output)
        try r.output.write(toFile: "\(dir)/\(name).out", atomically: true, encoding: .utf8)
        return "\(dir)/runs/\(name)/model.h5"
    }

    /// Starts `mpirun -np ranks switchboard train …` with its output going to `log`, without
    /// waiting for it.
    func start(ranks: Int, name: String, job: String, extra: [String], log: String, environment: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try mpirunPath())
        p.arguments = ["--allow-run-as-root", "--oversubscribe"] + environment.keys.sorted().flatMap { ["-x", $0] }
            + ["-np", String(ranks), binary, "train", job, "--quiet", "--set", "run.name=\"\(name)\""] + extra
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let out = FileHandle(forWritingAtPath: log)!
        p.standardOutput = out
        p.standardError = out
        try p.run()
        return p
    }

    /// The rank processes mpirun started.
    func ranks(of mpirun: Process) -> [Int32] {
        let r = try? Launcher.run(Fixtures.tool("pgrep") ?? "/usr/bin/pgrep", ["-P", String(mpirun.processIdentifier)])
        return (r?.output ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    /// The step of the newest progress line (`… step N/total …`) in `text`.
    static func lastLoggedStep(_ text: String) -> Int? {
        var before = text.endIndex
        while let r = text.range(of: " step ", options: .backwards, range: text.startIndex..<before) {
            let digits = text[r.upperBound...].prefix { $0.isNumber }
            if !digits.isEmpty && text[r.upperBound...].dropFirst(digits.count).hasPrefix("/") { return Int(digits) }
            before = r.lowerBound
        }
        return nil
    }

    /// Polls `log` until its newest progress line reaches `step`, or `process` ends; true if reached.
    func waitForStep(_ step: Int, in log: String, of process: Process, deadline: Double = 30) -> Bool {
        let end = Date().addingTimeInterval(deadline)
        while process.isRunning && Date() < end {
            if let s = Self.lastLoggedStep((try? String(contentsOfFile: log, encoding: .utf8)) ?? ""), s >= step { return true }
            Thread.sleep(forTimeInterval: 0.002)
        }
        return false
    }

    /// Max over tensors of ‖a − b‖₂ / ‖a‖₂, and the tensor where it occurs.
    static func maxRelativeDifference(_ a: Model, _ b: Model) -> (Double, String) {
        var worst = (0.0, "")
        for (p, q) in zip(a.store.parameters, b.store.parameters) {
            var diff = 0.0, norm = 0.0
            for i in 0..<p.count {
                let d = Double(p.value[i]) - Double(q.value[i])
                diff += d * d
                norm += Double(p.value[i]) * Double(p.value[i])
            }
            let rel = (diff / max(norm, 1e-30)).squareRoot()
            if rel > worst.0 { worst = (rel, p.name) }
        }
        return worst
    }

    /// The toy job with an MoE model: `moe` is the body of the [moe] section.
    func moeJob(_ moe: String, steps: Int) throws -> (path: String, config: JobConfig) {
        let text = Fixtures.job(dir: dir, model: .moe(moe), settings: ["train.epochs": "3", "train.max_steps": "\(steps)"])
        let job = try writeJob(text)
        return (job, try JobConfig.parse(text, source: job))
    }

    /// Trains the toy job with `model` for 22 steps (two epochs, evaluated after each) on
    /// `ranks` ranks under run name `name`; returns its final checkpoint and its job text.
    func trainedToy(_ model: ToyModel = .residual, name: String, ranks: Int = 1) throws -> (checkpoint: String, job: String) {
        let text = Fixtures.job(dir: dir, model: model, settings: ["train.max_steps": "22"])
        _ = try train(ranks: ranks, name: name, job: try writeJob(text))
        return ("\(dir)/runs/\(name)/\(CheckpointFolder.name(step: 22))", text)
    }

    /// The parameters of a model file (`model.h5`) written by a run of `config`.
    func loadModel(_ path: String, _ config: JobConfig) throws -> Model {
        let m = Model(config.model, inputs: 64, classes: 4, maxRows: 1, seed: 999)
        try ModelFile.read(m, from: path)
        return m
    }
}
