import Foundation
import XCTest
import Layers
@testable import Training

final class ConfigTests: XCTestCase {
    func parse(_ text: String, _ overrides: [String] = []) throws -> JobConfig {
        try JobConfig.parse(text, source: "job.toml", overrides: overrides)
    }

    func error(_ text: String, _ overrides: [String] = []) -> String {
        do {
            _ = try parse(text, overrides)
            return "no error"
        } catch let e as ConfigError {
            return e.description
        } catch {
            return "unexpected \(error)"
        }
    }

    func testDefaultsAndTypedValues() throws {
        let c = try parse("""
            [model]
            kind = "residual"
            width = 64
            depth = 3
            activation = "swiglu"
            norm = "rmsnorm"
            dropout = 0.25
            [train]
            batch_size = 32
            [optimizer]
            lr = 3   # an integer is accepted where a number is expected
            """)
        XCTAssertEqual(c.model, .residual(Trunk(width: 64, depth: 3, norm: .rmsNorm), .mlp(MLPSpec(hidden: 256, activation: .gated(.silu), dropout: 0.25))))
        XCTAssertEqual(c.train.batchSize, 32)
        XCTAssertEqual(c.train.epochs, 10)
        XCTAssertEqual(c.optimizer.lr, 3)
        XCTAssertEqual(c.optimizer.kind, .adamw)
        XCTAssertEqual(c.data.dir, "/usr/share/datasets/fashion-mnist")
    }

    func testUnknownKeyNamesItAndTheClosestValidKey() {
        XCTAssertEqual(error("[train]\nbach_size = 3\n"), "job.toml: unknown key bach_size in [train]; did you mean batch_size?")
        XCTAssertEqual(error("[trian]\nepochs = 3\n").prefix(59), "job.toml: unknown section [trian]; did you mean [train]? (s")
    }

    func testWrongTypeAndRangeErrors() {
        XCTAssertEqual(error("[train]\nbatch_size = \"big\"\n"), "job.toml: [train] batch_size must be an integer, got a string \"big\"")
        XCTAssertEqual(error("[train]\nbatch_size = 0\n"), "job.toml: [train] batch_size must be at least 1, got 0")
        XCTAssertEqual(error("[model]\ndropout = 1.0\n"), "job.toml: [model] dropout must be less than 1.0, got 1.0")
        XCTAssertEqual(error("[model]\nnorm = \"batchnorm\"\n"),
                       "job.toml: [model] norm = \"batchnorm\" is not one of layernorm, rmsnorm; did you mean \"layernorm\"?")
        XCTAssertEqual(error("[model]\nactivation = \"gelu_tan\"\n"),
                       "job.toml: [model] activation = \"gelu_tan\" is not one of relu, gelu, gelu_tanh, silu, swiglu, geglu, reglu, glu; did you mean \"gelu_tanh\"?")
        XCTAssertEqual(error("[model]\nhidden = [64, \"x\"]\nkind = \"stack\"\n"),
                       "job.toml: [model] hidden must be an array of integers, got an array [64, \"x\"]")
    }

    /// Every dimension a job declares is bounded, so the model counted before it is built
    /// (`Architecture.size`) has shapes that fit in an Int; each refusal names the key.
    func testModelDimensionsAreBounded() {
        let n = Architecture.largestDimension
        XCTAssertEqual(error("[model]\nwidth = \(n + 1)\n"), "job.toml: [model] width must be at most \(n), got \(n + 1)")
        XCTAssertEqual(error("[train]\nbatch_size = \(n + 1)\n"), "job.toml: [train] batch_size must be at most \(n), got \(n + 1)")
        XCTAssertEqual(error("[model]\nkind = \"stack\"\nhidden = [8, \(n + 1)]\n"),
                       "job.toml: [model] hidden must be made of integers of at most \(n), got [8, \(n + 1)]")
        XCTAssertEqual(error("[model]\nwidth = \(n / 2)\nexpansion = 3\n"),
                       "job.toml: [model] expansion = 3 × width = \(n / 2) is a hidden width above \(n), the largest a model may have")
        XCTAssertEqual(error("[model]\nblock = \"fff\"\n[fff]\ndepth = 16\nleaf_width = 512\n"),
                       "job.toml: [fff] depth = 16 gives 65536 leaves of leaf_width = 512, 33554432 in all, more than \(n), "
                       + "the largest hidden width a model may have")
        XCTAssertEqual(error("[model]\nkind = \"moe\"\ndepth = 17\n[moe]\nexperts = 65536\n"),
                       "job.toml: [model] depth = 17 blocks of [moe] experts = 65536 are 1114112 experts, more than the 1048576 a model may have")
        XCTAssertEqual(error("[model]\nwidth = \(n)\nexpansion = 1\ndepth = 3\n"), "no error", "the largest width is allowed")
    }

    /// The README's key table is the block kinds' list: the `block` choices, each kind's keys
    /// in the `[model]` row or its own section's row.
    func testTheREADMEKeyTableFollowsTheBlockKinds() throws {
        let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../README.md")
        let text = try String(contentsOf: readme, encoding: .utf8)
        let model = text.split(separator: "\n").first { $0.hasPrefix("| `[model]` |") }.map(String.init) ?? ""
        XCTAssertTrue(model.contains("residual: \(BlockKinds.choices);"), "the [model] row lists the block kinds: \(BlockKinds.choices)")
        for (kind, entry) in zip(BlockKinds.all, BlockKinds.readmeEntries) {
            XCTAssertTrue((kind.section == nil ? model : text).contains(entry), "README lacks block \(kind.name)'s keys: \(entry)")
        }
    }

    /// `block = "topk"` is an mlp block that keeps k of its hidden units: k is needed, at most
    /// the hidden width, and `[topk]` belongs to that block only.
    func testTopKBlock() throws {
        let c = try parse("[model]\nblock = \"topk\"\nwidth = 16\nexpansion = 4\nactivation = \"relu\"\n[topk]\nk = 8\n")
        XCTAssertEqual(c.model, .residual(Trunk(width: 16, depth: 2), .mlp(MLPSpec(hidden: 64, activation: .pointwise(.relu), keep: 8))))
        XCTAssertEqual(error("[model]\nblock = \"topk\"\nwidth = 16\n"),
                       "job.toml: [topk] k is missing: block = \"topk\" keeps the k largest of the 64 hidden units")
        XCTAssertEqual(error("[model]\nblock = \"topk\"\nwidth = 16\n[topk]\nk = 65\n"), "job.toml: [topk] k must be at most 64, got 65")
        XCTAssertEqual(error("[model]\nwidth = 16\n[topk]\nk = 8\n"), "job.toml: [topk] applies to [model] block = \"topk\", not block = \"mlp\"")
        XCTAssertEqual(error("[model]\nkind = \"moe\"\n[topk]\nk = 8\n"), "job.toml: [topk] applies to [model] block = \"topk\", not kind = \"moe\"")
    }

    /// Nesting deeper than `TOMLDepth.limit` (dotted keys, table headers, inline tables and
    /// arrays) is refused naming its line, before TOMLKit builds the tree: 40,000 levels used
    /// to overflow the stack. Dots in strings and comments, and floats, are not levels.
    func testDeepNestingIsRefusedByLine() {
        func deep(_ n: Int) -> String { Array(repeating: "a", count: n).joined(separator: ".") }
        func message(_ line: Int) -> String {
            "job.toml:\(line): nested more than 64 levels deep (dotted keys, table headers, inline tables and arrays together); "
                + "no setting is nested deeper than section.key"
        }
        XCTAssertEqual(error("[run]\n\(deep(40_000)) = 1\n"), message(2))
        XCTAssertEqual(error("# \(deep(100))\n\"\"\"x\ny\"\"\"\n[\(deep(50_000))]\n"), message(4), "comments and strings are skipped, lines counted")
        XCTAssertEqual(error("[run]\nx = " + String(repeating: "{ a = ", count: 70) + "1" + String(repeating: " }", count: 70) + "\n"), message(2))
        XCTAssertEqual(error("[train]\nx = " + String(repeating: "[", count: 70) + String(repeating: "]", count: 70) + "\n"), message(2))
        XCTAssertEqual(error("[optimizer]\nlr = 0.001 # \(deep(100))\n[run]\nname = \"\(deep(100))\"\n"), "no error")
        XCTAssertEqual(error("\(deep(63)) = 1\n").prefix(31), "job.toml: unknown section [a] (", "63 levels are read")
        // Levels add up: a header's parts with its keys', and the keys that open inline tables.
        XCTAssertEqual(error("[\(deep(40))]\n\(deep(30)) = 1\n"), message(2))
        XCTAssertEqual(error("[run]\nx = " + String(repeating: "{ \(deep(10)) = ", count: 7) + "1" + String(repeating: " }", count: 7) + "\n"),
                       message(2))
        XCTAssertFalse(error("[[\(deep(40))]]\n[run]\n\(deep(30)) = 1\n").contains("nested more than"),
                       "a new header replaces the last one's parts")
    }

    func testSyntaxErrorNamesLineAndColumn() {
        XCTAssertTrue(error("[train]\nepochs = = 3\n").hasPrefix("job.toml:2:"), error("[train]\nepochs = = 3\n"))
    }

    func testOverrides() throws {
        let c = try parse("[train]\nepochs = 3\n", ["train.epochs=7", "model.activation=relu", "run.name=\"x y\""])
        XCTAssertEqual(c.train.epochs, 7)
        XCTAssertEqual(c.run.name, "x y")
        XCTAssertEqual(error("", ["train.epoch=2"]), "job.toml: unknown key epoch in [train]; did you mean epochs?")
        XCTAssertEqual(error("", ["epochs=2"]), "--set epochs=2: the key must be section.key, like train.epochs")
        XCTAssertEqual(error("", ["train.epochs"]), "--set train.epochs: expected section.key=value")
    }

    /// The resolved config is itself a valid job file that resolves to the same text.
    func testResolvedConfigRoundTrips() throws {
        let c = try parse("[model]\nkind = \"stack\"\nhidden = [32, 16]\n[optimizer]\nlr = 0.01\n")
        XCTAssertTrue(c.resolvedTOML.contains("hidden = [32, 16]"))
        XCTAssertTrue(c.resolvedTOML.contains("batch_size = 256"))
        let again = try parse(c.resolvedTOML)
        XCTAssertEqual(again.resolvedTOML, c.resolvedTOML)
        XCTAssertEqual(again.model, c.model)
    }

    func testEditDistance() {
        XCTAssertEqual(editDistance("kitten", "sitting"), 3)
        XCTAssertEqual(editDistance("", "abc"), 3)
        XCTAssertEqual(editDistance("abc", ""), 3)
        XCTAssertNil(closest("zzzzzz", among: ["epochs", "batch_size"]))
    }
}

final class ScheduleTests: XCTestCase {
    func testWarmupThenCosineAndLinear() {
        let cos = LearningRateSchedule(base: 1, kind: .cosine, warmupSteps: 10, totalSteps: 110, finalFraction: 0.1)
        XCTAssertEqual(cos.rate(0), 0.1, accuracy: 1e-12)
        XCTAssertEqual(cos.rate(9), 1, accuracy: 1e-12)
        XCTAssertEqual(cos.rate(10), 1, accuracy: 1e-12)
        XCTAssertEqual(cos.rate(60), 0.55, accuracy: 1e-12)
        XCTAssertEqual(cos.rate(110), 0.1, accuracy: 1e-12)
        let lin = LearningRateSchedule(base: 2, kind: .linear, warmupSteps: 0, totalSteps: 100, finalFraction: 0)
        XCTAssertEqual(lin.rate(50), 1, accuracy: 1e-12)
        let flat = LearningRateSchedule(base: 2, kind: .constant, warmupSteps: 4, totalSteps: 100, finalFraction: 0)
        XCTAssertEqual(flat.rate(1), 1, accuracy: 1e-12)
        XCTAssertEqual(flat.rate(99), 2, accuracy: 1e-12)
    }
}
