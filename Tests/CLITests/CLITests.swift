import Foundation
@testable import Kernels
import TestSupport
import XCTest

/// The real `switchboard` binary on real files: exit codes, messages, the run folder.
final class CLITests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = Fixtures.temporaryDirectory()
        Fixtures.dataset(in: dir)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    struct Result { var code: Int32; var out: String; var err: String }

    /// Runs the `switchboard` built next to this test bundle.
    func run(_ args: [String], environment: [String: String] = [:]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Fixtures.binary)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(code: p.terminationStatus, out: String(decoding: o, as: UTF8.self), err: String(decoding: e, as: UTF8.self))
    }

    func writeJob(_ text: String) -> String {
        let path = "\(dir)/job.toml"
        try! text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// One line on stderr, the exit code, and no run folder left behind.
    func assertFails(_ args: [String], code: Int32, message: String, environment: [String: String] = [:],
                     file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(args, environment: environment)
        XCTAssertEqual(r.code, code, "stderr: \(r.err)", file: file, line: line)
        XCTAssertEqual(r.err, "switchboard: error: \(message)\n", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"), "a failed start must not leave a run folder",
                       file: file, line: line)
    }

    func testConfigErrorsExitWithCode2() throws {
        try assertFails(["train", "\(dir)/nope.toml"], code: 2, message: "\(dir)/nope.toml: cannot read the job file (no such file)")
        let job = writeJob(Fixtures.job(dir: dir))
        try assertFails(["train", job, "--set", "train.bach_size=3"], code: 2,
                        message: "\(job): unknown key bach_size in [train]; did you mean batch_size?")
        try assertFails(["train", job, "--set", "train.batch_size=0"], code: 2,
                        message: "\(job): [train] batch_size must be at least 1, got 0")
        try assertFails(["train", job, "--set", "train.epochs=\"two\""], code: 2,
                        message: "\(job): [train] epochs must be an integer, got a string \"two\"")
        try assertFails(["train", job, "--set", "train.micro_batch=0"], code: 2,
                        message: "\(job): [train] micro_batch must be at least 1, got 0")
        try assertFails(["train", job, "--set", "train.micro_batch=20"], code: 2,
                        message: "[train] micro_batch = 20 does not divide the 48 rows of batch_size = 48 that each of 1 rank takes; "
                        + "use a divisor of 48, such as 16")
        let moe = writeJob(Fixtures.job(dir: dir, model: .moe("experts = 4\nhidden = 8")))
        try assertFails(["train", moe, "--set", "moe.statistics=\"exact\""], code: 2,
                        message: "\(moe): [moe] statistics = \"exact\" is not one of batch, micro_batch")
        let r = try run(["train", job, "--no-such-flag"])
        XCTAssertEqual(r.code, 2)
        XCTAssertTrue(r.err.hasPrefix("switchboard: error: Unknown option '--no-such-flag'\nUsage: switchboard train <job>"), r.err)
    }

    /// bf16 on a CPU without native bf16 stops before anything is written, naming what is
    /// missing; a job that accepts emulation runs, and says how. Simulated by capping oneDNN
    /// (ONEDNN_MAX_CPU_ISA, which the program reads as the CPU): at AVX-512 without BF16,
    /// where oneDNN emulates bf16, and at AVX2, where oneDNN has no bf16 matmul and the
    /// products run emulated on the fp32 library. A cap only lowers: on a narrower CPU (or a
    /// suite run capped lower) each case names what oneDNN runs there.
    func testBFloat16WithoutNativeSupportIsRefusedUnlessEmulationIsAccepted() throws {
        let job = writeJob(Fixtures.job(dir: dir, settings: ["train.max_steps": "3", "train.precision": "\"bf16\""]))
        for (cap, level) in [("avx512_core", 4), ("avx2", 3)] {
            let lowers = level <= OneDNN.isaLevel
            let isa = lowers ? cap : OneDNN.isa
            let capped = lowers ? ["ONEDNN_MAX_CPU_ISA": cap.uppercased(), "OPENBLAS_CORETYPE": "Haswell"] : [:]
            try assertFails(["train", job], code: 2, message: "[train] precision = \"bf16\": this CPU has no native bf16 arithmetic "
                            + "(oneDNN runs \(isa) here; bf16 needs AVX512-BF16 or AMX-BF16); use precision = \"fp32\", "
                            + "or set [train] bf16_emulation = true to run it emulated", environment: capped)
            let r = try run(["train", job, "--set", "train.bf16_emulation=true"], environment: capped)
            XCTAssertEqual(r.code, 0, r.err)
            // Below AVX-512 the fp32 library: OpenBLAS where oneDNN is no wider (OpenBLAS Haswell under the cap).
            let fp32 = lowers || MatmulLibrary.fp32 == .openBLAS ? "OpenBLAS \(lowers ? "Haswell" : BLAS.coreName)" : "oneDNN \(OneDNN.version) \(isa)"
            let products = isa.hasPrefix("avx512") ? "bf16 on oneDNN \(OneDNN.version) \(isa) (bf16 emulated)"
                : "bf16 emulated on \(fp32) (inputs rounded to bf16, multiplied in fp32: oneDNN \(OneDNN.version) \(isa) has no bf16 matmul)"
            XCTAssertTrue(r.out.contains("products: \(products); MoE routers in fp32 on "), "capped at \(cap): \(r.out)")
            try FileManager.default.removeItem(atPath: "\(dir)/runs")
        }
    }

    /// `bench` has a subcommand per workload, each with only its options: the parser refuses
    /// a workload, an option or a thread count it does not know, and the help lists them.
    func testBenchRefusesUnknownWorkloadsOptionsAndThreadCounts() throws {
        var r = try run(["bench", "W9"])
        XCTAssertEqual(r.code, 2, r.err)
        XCTAssertTrue(r.err.hasPrefix("switchboard: error: Unexpected argument 'W9'\nUsage: switchboard bench <subcommand>\n"), r.err)
        r = try run(["bench", "--help"])
        let listed = r.out.split(separator: "\n").compactMap { $0.split(separator: " ", omittingEmptySubsequences: true).first }
        for workload in ["W1,", "W2,", "W3,", "W4,", "W5,", "W6,", "input", "kernels"] {
            XCTAssertTrue(listed.contains(Substring(workload)), "bench --help lists \(workload): \(r.out)")
        }
        r = try run(["bench", "W5", "--threads", "2"])
        XCTAssertEqual(r.code, 2, r.err)
        XCTAssertTrue(r.err.hasPrefix("switchboard: error: Unknown option '--threads'\nUsage: switchboard bench W5 [--repeats <repeats>]"), r.err)
        r = try run(["bench", "w1", "--threads", "1,0"])
        XCTAssertEqual(r.code, 2, r.err)
        XCTAssertTrue(r.err.hasPrefix("switchboard: error: The value '1,0' is invalid for '--threads <threads>'\n"), r.err)
        XCTAssertEqual(r.out, "", "nothing runs")
    }

    /// Mixture-of-experts settings that cannot work are refused before anything runs.
    func testBadMoEConfigsExitWithCode2() throws {
        let moe = Fixtures.job(dir: dir, model: .moe(depth: 1, "experts = 4\nhidden = 8"))
        let job = writeJob(moe)
        try assertFails(["train", job, "--set", "moe.top_k=5"], code: 2,
                        message: "\(job): [moe] top_k = 5 is larger than experts = 4; a token cannot use more experts than exist")
        try assertFails(["train", job, "--set", "moe.dropless=false", "--set", "moe.capacity_factor=0"], code: 2,
                        message: "\(job): [moe] capacity_factor must be greater than 0.0, got 0.0")
        try assertFails(["train", job, "--set", "moe.router=\"softmx\""], code: 2,
                        message: "\(job): [moe] router = \"softmx\" is not one of softmax, sigmoid; did you mean \"softmax\"?")
        let dense = writeJob(Fixtures.job(dir: dir) + "\n[moe]\nexperts = 4\n")
        try assertFails(["train", dense], code: 2, message: "\(dense): [moe] applies to [model] kind = \"moe\", not \"residual\"")
        // And a valid one trains.
        let valid = writeJob(moe)
        let r = try run(["train", valid, "--quiet", "--set", "train.max_steps=5"])
        XCTAssertEqual(r.code, 0, r.err)
        XCTAssertTrue(r.out.contains("done: 5 steps"), r.out)
    }

    /// The model families' settings that cannot work are refused by key before anything runs.
    func testBadFamilyConfigsExitWithCode2() throws {
        let fff = writeJob(Fixtures.job(dir: dir, model: .fff))
        try assertFails(["train", fff, "--set", "fff.depth=0"], code: 2, message: "\(fff): [fff] depth must be at least 1, got 0")
        try assertFails(["train", fff, "--set", "fff.depth=17"], code: 2, message: "\(fff): [fff] depth must be at most 16, got 17")
        try assertFails(["train", fff, "--set", "fff.leaf_width=0"], code: 2, message: "\(fff): [fff] leaf_width must be at least 1, got 0")
        let hourglass = writeJob(Fixtures.job(dir: dir, model: .hourglass))
        try assertFails(["train", hourglass, "--set", "model.bottleneck=32"], code: 2,
                        message: "\(hourglass): [model] bottleneck = 32 is not narrower than the stream (width = 32); "
                            + "an hourglass block computes through a bottleneck narrower than its stream")
        let lowRank = writeJob(Fixtures.job(dir: dir, model: .lowRank))
        try assertFails(["train", lowRank, "--set", "model.rank=32"], code: 2,
                        message: "\(lowRank): [model] rank = 32 is not below the block matrices' smaller side (32 = min(width 32, hidden 48)); "
                            + "a factorization U·V of that rank has at least the dense matrix's parameters")
        let dense = writeJob(Fixtures.job(dir: dir))
        try assertFails(["train", dense, "--set", "model.frozen=[\"embed.weight\", \"emebd.bias\"]"], code: 2,
                        message: "\(dense): [model] frozen lists \"emebd.bias\", which names no parameter of this model "
                            + "(a global name such as \"embed.weight\", or a prefix of whole components such as \"embed\")")
        try assertFails(["train", dense, "--set", "fff.depth=2"], code: 2,
                        message: "\(dense): [fff] applies to [model] block = \"fff\", not block = \"mlp\"")
        let moe = writeJob(Fixtures.job(dir: dir, model: .sigmaMoE))
        try assertFails(["train", moe, "--set", "model.frozen=[\"blocks.1.moe\"]"], code: 2,
                        message: "\(moe): [model] frozen lists \"blocks.1.moe\", which names MoE parameters; an MoE layer cannot be frozen")
    }

    func testDataErrorsExitWithCode1() throws {
        let job = writeJob(Fixtures.job(dir: dir))
        try FileManager.default.removeItem(atPath: "\(dir)/test-labels")
        try assertFails(["train", job], code: 1, message: "\(dir)/test-labels: cannot open (No such file or directory)")

        Fixtures.write(Fixtures.idx([128], [UInt8](repeating: 1, count: 100)), to: "\(dir)/test-labels")
        try assertFails(["train", job], code: 1,
                        message: "\(dir)/test-labels: truncated: data of shape 128 needs 128 bytes, the file ends after 100")

        Fixtures.write(Fixtures.idx([127], [UInt8](repeating: 1, count: 127)), to: "\(dir)/test-labels")
        try assertFails(["train", job], code: 1, message: "\(dir)/test-labels: has 127 labels but \(dir)/test-images has 128 images")

        Fixtures.write(Fixtures.idx([128], [UInt8](repeating: 1, count: 128)), to: "\(dir)/test-labels")
        Fixtures.write(Fixtures.idx([128, 4, 4], [UInt8](repeating: 1, count: 128 * 16)), to: "\(dir)/test-images")
        try assertFails(["train", job], code: 1,
                        message: "\(dir)/test-images: has 16 features per sample, the training data 64")
    }

    func testTrainWritesARunFolderAndRunsAreReproducible() throws {
        let job = writeJob(Fixtures.job(dir: dir))
        let first = try run(["train", job])
        XCTAssertEqual(first.code, 0, first.err)
        XCTAssertEqual(first.err, "")
        XCTAssertTrue(first.out.contains("resolved config:\n  [run]\n  name = \"toy\""), first.out)
        XCTAssertTrue(first.out.contains("data: 512 training and 128 test samples of 64 features, 4 classes"), first.out)
        XCTAssertTrue(first.out.contains("epoch 2/2 step 22: test loss"), first.out)
        XCTAssertTrue(first.out.contains("done: 22 steps, 2 epochs; test accuracy "), first.out)
        let run1 = "\(dir)/runs/toy"
        let config = try String(contentsOfFile: "\(run1)/config.toml", encoding: .utf8)
        XCTAssertTrue(config.contains("batch_size = 48"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(run1)/summary.json"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(run1)/model.h5"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(run1)/step-000022/checkpoint.h5"), "a checkpoint at the end")

        // Not a terminal: plain progress lines every log_every steps.
        XCTAssertTrue(first.out.contains("epoch 1/2 step 5/22 loss "), first.out)
        XCTAssertFalse(first.out.contains("\u{1B}["), "no terminal escapes when output is not a terminal")

        // A second run never overwrites the first; with the same seed its metrics are equal.
        let second = try run(["train", job, "--quiet"])
        XCTAssertEqual(second.code, 0, second.err)
        XCTAssertTrue(second.out.contains("run folder: \(dir)/runs/toy-2"), second.out)
        let a = try metrics("\(run1)/metrics.jsonl"), b = try metrics("\(dir)/runs/toy-2/metrics.jsonl")
        XCTAssertEqual(a.count, 5 + 2 + 1, "one line per logged step (5, 10, 15, 20, 22), per evaluation, and the checkpoint")
        XCTAssertEqual(a, b)
        XCTAssertEqual(a.filter { $0["kind"] as? String == "eval" }.count, 2)
    }

    /// The program users train with does not carry the allocation counter, which interposes
    /// malloc: its dynamic symbol table defines no allocator function. `bench` preloads the
    /// counter library instead, which does define them.
    func testTheProgramDoesNotInterposeMalloc() throws {
        let nm = try XCTUnwrap(Fixtures.tool("nm"), "nm is not on PATH (Debian: binutils)")
        func defined(_ file: String) throws -> Set<String> {
            let r = try Launcher.run(nm, ["-D", "--defined-only", file])
            XCTAssertEqual(r.code, 0, r.output)
            return Set(r.output.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) })
        }
        let allocator: Set = ["malloc", "calloc", "realloc", "free", "memalign", "aligned_alloc", "posix_memalign"]
        let program = try defined(Fixtures.binary)
        XCTAssertTrue(program.isDisjoint(with: allocator), "switchboard defines \(program.intersection(allocator).sorted())")
        XCTAssertFalse(program.contains("sb_thread_allocations"))
        let library = URL(fileURLWithPath: Fixtures.binary).deletingLastPathComponent()
            .appendingPathComponent("libSwitchboardAllocCounter.so").path
        XCTAssertTrue(try defined(library).isSuperset(of: allocator.union(["sb_thread_allocations"])), library)
    }

    /// metrics.jsonl lines as dictionaries, without the fields that measure time or name the run folder.
    func metrics(_ path: String) throws -> [NSDictionary] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
            let d = try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            return d.filter { !["samples_per_s", "time_s", "seconds", "path"].contains($0.key) } as NSDictionary
        }
    }
}
