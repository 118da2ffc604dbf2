import Foundation
import TestSupport
import XCTest
@testable import Training

/// Seeing a run: TensorBoard's own reader on our event files (after a resume, and cut short
/// mid-record), and `switchboard report` in headless Chromium and in its SVG, and on bad input.
final class ReportTests: ToyDataTestCase {
    /// A Python with the `tensorboard` package (its `EventAccumulator`) and Pillow, in a
    /// virtual environment made once under `.build/` from PyPI; a test that needs it fails,
    /// saying why, where it cannot be made.
    func python() throws -> String {
        let build = URL(fileURLWithPath: Fixtures.binary).deletingLastPathComponent().deletingLastPathComponent().path
        let venv = "\(build)/test-venv", python = "\(venv)/bin/python"
        let ready = "\(venv)/.switchboard-ready"
        if FileManager.default.fileExists(atPath: ready) { return python }
        let system = try XCTUnwrap(Fixtures.tool("python3"), "python3 is not on PATH")
        var r = try Launcher.run(system, ["-m", "venv", venv], deadline: 120)
        XCTAssertEqual(r.code, 0, "python3 -m venv \(venv): \(r.output)")
        r = try Launcher.run(python, ["-m", "pip", "install", "--quiet", "tensorboard", "pillow"], deadline: 600)
        guard r.code == 0 else { throw SetupFailure("pip install tensorboard pillow failed (PyPI unreachable?): \(r.output)") }
        _ = FileManager.default.createFile(atPath: ready, contents: nil)
        return python
    }

    /// The test's own setup failed: the test fails, saying why.
    struct SetupFailure: Error, CustomStringConvertible { let description: String; init(_ d: String) { description = d } }

    /// Every scalar TensorBoard finds under `folder`: tag → [(step, value)].
    func tensorBoardScalars(_ folder: String) throws -> [String: [[Double]]] {
        let script = """
            import json, sys
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
            acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
            acc.Reload()
            print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
            """
        let r = try Launcher.run(try python(), ["-c", script, folder], deadline: 120)
        XCTAssertEqual(r.code, 0, r.output)
        let json = try XCTUnwrap(r.output.split(separator: "\n").last, r.output)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: [[Double]]], r.output)
    }

    /// What the event files should hold: every number of every metrics record, as
    /// `EventFile.scalars` names them, rounded to fp32 as the protobuf carries them.
    func expectedScalars(_ metrics: String, droppingLast: Int = 0) throws -> [String: [[Double]]] {
        var out: [String: [[Double]]] = [:]
        for line in try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").dropLast(droppingLast) {
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            guard let kind = object["kind"] as? String, let step = object["step"] as? Int else { continue }
            func add(_ tag: String, _ value: Any) {
                if let v = RunHistory.number(value) {
                    out[tag, default: []].append([Double(step), Double(Float(v))])
                } else if let items = value as? [Any] {
                    for (i, item) in items.enumerated() { add("\(tag)/\(i)", item) }
                }
            }
            // A resume from the checkpoint at `step`: what was logged after it is logged again.
            if kind == "resume" { for tag in out.keys { out[tag]!.removeAll { $0[0] > Double(step) } } }
            for (key, value) in object where !EventFile.positionKeys.contains(key) { add("\(kind)/\(key)", value) }
        }
        return out
    }

    func assertSame(_ got: [String: [[Double]]], _ want: [String: [[Double]]], _ what: String,
                    file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(Set(got.keys), Set(want.keys), "\(what): tags", file: file, line: line)
        // Compared as the fp32 values the events carry (JSON text → Double is not exact both ways).
        func fp32(_ points: [[Double]]) -> [[Float]] { points.map { $0.map(Float.init) } }
        for (tag, points) in want {
            XCTAssertEqual(fp32(got[tag] ?? []), fp32(points), "\(what): \(tag)", file: file, line: line)
        }
    }

    func moeJob(steps: Int, extra: String = "") throws -> String {
        try writeJob(Fixtures.job(dir: dir, model: .moe("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01"),
                                  settings: ["train.epochs": "4", "train.max_steps": "\(steps)"], extra: extra))
    }

    func eventFiles(_ folder: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasPrefix("events.out.tfevents.") }.sorted()
    }

    /// TensorBoard reads every scalar with its step and value: loss, learning rate, gradient
    /// norm, throughput, test loss and accuracy, each MoE layer's dropped share, balance,
    /// auxiliary loss and tokens per expert; a resumed run adds a file and the curves go on.
    func testTensorBoardReadsEveryScalarAcrossAResume() throws {
        let job = try moeJob(steps: 12, extra: "[checkpoint]\nevery_steps = 12\n")
        _ = try train(ranks: 1, name: "tb", job: job)
        let run = "\(dir)/runs/tb"
        XCTAssertEqual(try eventFiles(run).count, 1)
        let first = try tensorBoardScalars(run)
        assertSame(first, try expectedScalars("\(run)/metrics.jsonl"), "one run")
        XCTAssertNotNil(first["train/moe0_tokens/3"], "\(first.keys.sorted())")
        XCTAssertNotNil(first["eval/test_accuracy"], "\(first.keys.sorted())")

        Thread.sleep(forTimeInterval: 1.1)   // a new second: the resumed run's file sorts after
        let resumed = try mpirun(ranks: 1, name: "tb", job: job, settings: ["train.max_steps=24"], extraArguments: ["--resume", "auto"])
        XCTAssertEqual(resumed.code, 0, resumed.output)
        XCTAssertEqual(try eventFiles(run).count, 2, "a resumed run starts a file of its own")
        let both = try tensorBoardScalars(run)
        assertSame(both, try expectedScalars("\(run)/metrics.jsonl"), "after the resume")
        let steps = (both["train/loss"] ?? []).map { Int($0[0]) }
        XCTAssertEqual(steps, steps.sorted(), "one continuous curve")
        XCTAssertEqual(steps.last, 24)
    }

    /// A run that logged steps past its last checkpoint before it failed, then resumed: each
    /// step appears once in TensorBoard (the resumed file starts with a restart mark) and in
    /// the report's curves, with the resumed run's value; before, TensorBoard had steps 5–6
    /// twice and the curves went back.
    func testAResumeAfterLostStepsShowsEachStepOnce() throws {
        let job = try moeJob(steps: 10, extra: "[checkpoint]\nevery_steps = 4\n")
        let failed = try mpirun(ranks: 1, name: "lost", job: job, settings: ["train.log_every=1"],
                                environment: ["SWITCHBOARD_FAULT": "rank=0,step=7"])
        XCTAssertEqual(failed.code, 1, failed.output)
        let run = "\(dir)/runs/lost"
        XCTAssertTrue(try String(contentsOfFile: "\(run)/metrics.jsonl", encoding: .utf8).contains("\"step\":6,"), "steps 5 and 6 were logged")
        Thread.sleep(forTimeInterval: 1.1)   // a new second: the resumed run's file sorts after
        let resumed = try mpirun(ranks: 1, name: "lost", job: job, settings: ["train.log_every=1"], extraArguments: ["--resume", "auto"])
        XCTAssertEqual(resumed.code, 0, resumed.output)
        let scalars = try tensorBoardScalars(run)
        assertSame(scalars, try expectedScalars("\(run)/metrics.jsonl"), "after a resume that lost steps 5 and 6")
        XCTAssertEqual((scalars["train/loss"] ?? []).map { Int($0[0]) }, Array(1...10), "each step once, in order")
        let history = try RunHistory.load(run)
        XCTAssertEqual((history.series["train/loss"] ?? []).map(\.step), Array(1...10), "the report's curve: each step once")

        // Failed before its first checkpoint: the continued run starts at step 0, and the
        // earlier attempt's steps are dropped the same way.
        let early = try mpirun(ranks: 1, name: "early", job: job, settings: ["train.log_every=1"],
                               environment: ["SWITCHBOARD_FAULT": "rank=0,step=3"])
        XCTAssertEqual(early.code, 1, early.output)
        Thread.sleep(forTimeInterval: 1.1)
        let again = try mpirun(ranks: 1, name: "early", job: job, settings: ["train.log_every=1"], extraArguments: ["--resume", "auto"])
        XCTAssertEqual(again.code, 0, again.output)
        let earlyRun = "\(dir)/runs/early"
        XCTAssertEqual((try tensorBoardScalars(earlyRun)["train/loss"] ?? []).map { Int($0[0]) }, Array(1...10))
        XCTAssertEqual((try RunHistory.load(earlyRun).series["train/loss"] ?? []).map(\.step), Array(1...10))
    }

    /// A file cut inside its last record (a run killed mid-write) reads up to the record before.
    func testTruncatedEventFileReadsUpToTheLastWholeRecord() throws {
        _ = try train(ranks: 1, name: "cut", job: try moeJob(steps: 22))
        let run = "\(dir)/runs/cut", name = try XCTUnwrap(try eventFiles(run).first)
        let whole = try tensorBoardScalars(run)
        let copy = "\(dir)/cutcopy"
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        var bytes = try XCTUnwrap(FileManager.default.contents(atPath: "\(run)/\(name)"))
        bytes.removeLast(9)
        try bytes.write(to: URL(fileURLWithPath: "\(copy)/\(name)"))
        let cut = try tensorBoardScalars(copy)
        // The last record (the final checkpoint's) is gone, every one before it is whole.
        assertSame(whole, try expectedScalars("\(run)/metrics.jsonl"), "whole")
        assertSame(cut, try expectedScalars("\(run)/metrics.jsonl", droppingLast: 1), "cut short")
        XCTAssertNotNil(whole["checkpoint/seconds"])
        XCTAssertNil(cut["checkpoint/seconds"])
    }

    /// The report of two runs (one MoE) in headless Chromium is not a blank page; its SVG has
    /// one curve per run per chart, axis labels, a heatmap for the MoE run only, and the
    /// settings that differ.
    func testReportOfTwoRunsRendersAndDiffsTheirConfigs() throws {
        _ = try train(ranks: 1, name: "dense", job: try writeJob(Fixtures.job(dir: dir, settings: ["train.max_steps": "22"])))
        let trained = try String(contentsOfFile: "\(dir)/dense.out", encoding: .utf8)
        XCTAssertTrue(trained.contains("plots: switchboard report \(dir)/runs/dense --out \(dir)/runs/dense/report.html"), trained)
        _ = try train(ranks: 1, name: "experts", job: try moeJob(steps: 22))
        let out = "\(dir)/report.html"
        let r = try Launcher.run(binary, ["report", "\(dir)/runs/dense", "\(dir)/runs/experts", "--out", out])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertEqual(r.output, "wrote \(out): 2 runs\n")
        let html = try String(contentsOfFile: out, encoding: .utf8)
        for run in ["dense", "experts"] {
            XCTAssertEqual(html.components(separatedBy: "class=\"series\" data-run=\"\(run)\"").count - 1, 5,
                           "\(run): one curve in each of the 5 charts")
        }
        for text in ["Training loss", "Test accuracy", "Learning rate", "Throughput", ">step</text>", "loss (log scale)",
                     "Tokens per expert: experts, MoE layer 0", "Tokens per expert: experts, MoE layer 1",
                     "<td><code>model.kind</code></td><td>&quot;residual&quot;</td><td>&quot;moe&quot;</td>"] {
            XCTAssertTrue(html.contains(text), "the report lacks \(text)")
        }
        XCTAssertFalse(html.contains("Tokens per expert: dense"))
        // A heatmap of few logged steps is still as wide as its caption (it was cut to "gged
        // step (darker: more token"), and names its steps in one label (two overlapped).
        let heatmaps = html.components(separatedBy: "<svg ").filter { $0.prefix { $0 != ">" }.contains("class=\"heatmap\"") }
        XCTAssertEqual(heatmaps.count, 2, "one heatmap per MoE layer")
        for map in heatmaps {
            let tag = map.prefix { $0 != ">" }
            let width = Double(tag.components(separatedBy: "width=\"").last?.prefix { $0 != "\"" } ?? "") ?? 0
            XCTAssertGreaterThanOrEqual(width, 380, "the heatmap is as wide as its caption: \(tag)")
            XCTAssertTrue(map.contains(">steps 5–22</text>") && !map.contains(">step 5</text>"), "one label for the steps")
        }
        XCTAssertFalse(html.contains("<script"), "no script")
        XCTAssertFalse(html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "").contains("http://")
                       || html.contains("https://"), "nothing fetched from a network")

        let chromium = try XCTUnwrap(Fixtures.tool("chromium"), "chromium is not on PATH (Debian: chromium; scripts/setup.sh --tests installs it)")
        let png = "\(dir)/report.png"
        let shot = try Launcher.run(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                               "--window-size=900,1600", "--screenshot=\(png)", "file://\(out)"], deadline: 120)
        XCTAssertTrue(FileManager.default.fileExists(atPath: png), "no screenshot: \(shot.output)")
        let check = """
            import sys
            from PIL import Image
            im = Image.open(sys.argv[1]).convert("RGB")
            px = list(im.getdata())
            inked = sum(1 for p in px if p != (255, 255, 255)) / len(px)
            print(len(set(px)), round(inked, 4))
            """
        let c = try Launcher.run(try python(), ["-c", check, png], deadline: 60)
        XCTAssertEqual(c.code, 0, c.output)
        let fields = c.output.split(separator: "\n").last?.split(separator: " ") ?? []
        let colors = Int(fields.first ?? "") ?? 0, inked = Double(fields.last ?? "") ?? 0
        XCTAssertGreaterThan(colors, 20, "the screenshot has \(colors) colours: a blank page?")
        XCTAssertGreaterThan(inked, 0.02, "\(inked) of the screenshot is not white")
    }

    /// A run of one epoch has one evaluation: its test charts mark the point (a path of one
    /// point drew nothing), which headless Chromium shows in the run's colour; every chart's
    /// ticks are round values, 1, 2 or 5 times a power of ten apart; and `--out` naming a
    /// folder is refused.
    func testAOneEpochRunsTestChartsHaveInkAndRoundTicks() throws {
        _ = try train(ranks: 1, name: "short", job: try writeJob(Fixtures.job(dir: dir, settings: ["train.epochs": "1", "train.max_steps": nil])))
        let out = "\(dir)/short.html"
        let r = try Launcher.run(binary, ["report", "\(dir)/runs/short", "--out", out])
        XCTAssertEqual(r.code, 0, r.output)
        let html = try String(contentsOfFile: out, encoding: .utf8)
        func chart(_ title: String) -> String {
            guard let start = html.range(of: "<h2>\(title)</h2>"), let end = html.range(of: "</svg>", range: start.upperBound..<html.endIndex)
            else { return "" }
            return String(html[start.upperBound..<end.upperBound])
        }
        for title in ["Training loss", "Test loss", "Test accuracy", "Learning rate", "Throughput"] {
            let svg = chart(title)
            XCTAssertFalse(svg.isEmpty, "no \(title) chart")
            // The y ticks: right-aligned labels; equally spaced, a 1–2–5 spacing, on its multiples.
            let labels = svg.components(separatedBy: "text-anchor=\"end\">").dropFirst().compactMap { Double($0.prefix { $0 != "<" }) }
            XCTAssertGreaterThanOrEqual(labels.count, 2, "\(title): \(labels)")
            if title.hasSuffix("loss") { continue }   // log scale: checked by eye, 1–2–5 within a decade
            let gaps = zip(labels.dropFirst(), labels).map { $0 - $1 }
            let spacing = gaps.first ?? 1, mantissa = spacing / pow(10, floor(log10(spacing)))
            XCTAssertTrue(gaps.allSatisfy { abs($0 - spacing) <= 1e-6 * spacing }, "\(title): ticks \(labels)")
            XCTAssertTrue([1.0, 2, 5].contains { abs(mantissa - $0) < 1e-6 }, "\(title): spacing \(spacing)")
            XCTAssertTrue(labels.allSatisfy { abs($0 / spacing - ($0 / spacing).rounded()) < 1e-3 }, "\(title): ticks \(labels)")
        }
        let accuracy = chart("Test accuracy")
        XCTAssertEqual(accuracy.components(separatedBy: "<circle class=\"point\"").count - 1, 1, "one evaluation, one point")

        let page = "\(dir)/chart.html", png = "\(dir)/chart.png"
        try "<!DOCTYPE html><html><body style=\"margin:0\">\(accuracy)</body></html>".write(toFile: page, atomically: true, encoding: .utf8)
        let chromium = try XCTUnwrap(Fixtures.tool("chromium"), "chromium is not on PATH (Debian: chromium; scripts/setup.sh --tests installs it)")
        let shot = try Launcher.run(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                               "--window-size=760,320", "--screenshot=\(png)", "file://\(page)"], deadline: 120)
        XCTAssertTrue(FileManager.default.fileExists(atPath: png), "no screenshot: \(shot.output)")
        let check = """
            import sys
            from PIL import Image
            px = list(Image.open(sys.argv[1]).convert("RGB").getdata())
            print(sum(1 for p in px if abs(p[0] - 31) + abs(p[1] - 119) + abs(p[2] - 180) < 30))
            """
        let c = try Launcher.run(try python(), ["-c", check, png], deadline: 60)
        XCTAssertEqual(c.code, 0, c.output)
        let inked = Int(c.output.split(separator: "\n").last ?? "") ?? 0
        XCTAssertGreaterThan(inked, 10, "the test accuracy chart of a one-epoch run shows its point: \(inked) pixels of the run's colour")

        let folder = try Launcher.runApart(binary, ["report", "\(dir)/runs/short", "--out", dir])
        XCTAssertEqual(folder.code, 2, folder.err)
        XCTAssertTrue(folder.err.hasPrefix("switchboard: error: --out \(dir): it is a folder; name the HTML file to write\n"), folder.err)
    }

    /// Values at the ends of what a metrics file may hold (a loss from 1e-299 to 1e299 on a
    /// log scale, which used to trap) draw a report; a nearly flat curve of large values gets
    /// distinct tick labels.
    func testExtremeValuesDrawAReport() throws {
        let run = "\(dir)/extreme"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        try ("{\"kind\":\"train\",\"step\":1,\"loss\":1e-299,\"samples_per_s\":12345.0}\n"
             + "{\"kind\":\"train\",\"step\":2,\"loss\":1e299,\"samples_per_s\":12345.4}\n")
            .write(toFile: "\(run)/metrics.jsonl", atomically: true, encoding: .utf8)
        let r = try Launcher.runApart(binary, ["report", run, "--out", "\(dir)/extreme.html"])
        XCTAssertFalse(r.signaled, r.err)
        XCTAssertEqual(r.code, 0, r.err)
        let html = try String(contentsOfFile: "\(dir)/extreme.html", encoding: .utf8)
        let throughput = html.components(separatedBy: "<h2>Throughput</h2>").last?.components(separatedBy: "</svg>").first ?? ""
        let labels = throughput.components(separatedBy: "text-anchor=\"end\">").dropFirst().map { $0.prefix { $0 != "<" } }
        XCTAssertGreaterThanOrEqual(labels.count, 2, throughput)
        XCTAssertEqual(Set(labels).count, labels.count, "distinct labels: \(labels)")
    }

    /// Bad input: not a folder, not a run folder (usage errors, one line, exit 2); a run with
    /// no metrics yet, or a metrics file cut short or damaged: a report that says so.
    func testBadInputIsNamedNeverACrash() throws {
        var r = try Launcher.runApart(binary, ["report", "\(dir)/nowhere", "--out", "\(dir)/r.html"])
        XCTAssertEqual(r.code, 2)
        XCTAssertEqual(r.err, "switchboard: error: \(dir)/nowhere: no such run folder\n")
        r = try Launcher.runApart(binary, ["report", dir, "--out", "\(dir)/r.html"])
        XCTAssertEqual(r.code, 2)
        XCTAssertEqual(r.err, "switchboard: error: \(dir): not a run folder (it has neither config.toml nor metrics.jsonl)\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/r.html"), "no report from a failed start")

        let empty = "\(dir)/empty", cut = "\(dir)/cut", damaged = "\(dir)/damaged"
        for f in [empty, cut, damaged] { try FileManager.default.createDirectory(atPath: f, withIntermediateDirectories: true) }
        try "[run]\nname = \"empty\"\n".write(toFile: "\(empty)/config.toml", atomically: true, encoding: .utf8)
        try "".write(toFile: "\(empty)/metrics.jsonl", atomically: true, encoding: .utf8)
        let good = "{\"kind\":\"train\",\"step\":5,\"loss\":1.5,\"lr\":0.001}\n{\"kind\":\"train\",\"step\":10,\"loss\":1.2,\"lr\":0.001}\n"
        try (good + "{\"kind\":\"train\",\"st").write(toFile: "\(cut)/metrics.jsonl", atomically: true, encoding: .utf8)
        try "[run\nname = 1\n".write(toFile: "\(damaged)/config.toml", atomically: true, encoding: .utf8)
        try ("{\"kind\":\"train\",\"step\":5,\"loss\":\"NaN\"}\n[1,2]\n\u{1}\u{2}garbage\n" + good + "{\"kind\":\"eval\",\"step\":-3,\"test_loss\":1}\n")
            .write(toFile: "\(damaged)/metrics.jsonl", atomically: true, encoding: .utf8)
        r = try Launcher.runApart(binary, ["report", empty, cut, damaged, "--out", "\(dir)/r.html"])
        XCTAssertEqual(r.code, 0, r.err)
        XCTAssertEqual(r.out, """
            wrote \(dir)/r.html: 3 runs
            empty: no metrics yet (the run has not reached its first logged step)
            cut: config.toml is missing or unreadable: the run's settings are not compared
            cut: metrics.jsonl: its last line (3) is cut short, an interrupted write; the lines before it are shown
            damaged: config.toml does not parse (config.toml:1:5: Error while parsing table header: expected ']', saw '\\n'): the run's settings are not compared
            damaged: metrics.jsonl: 3 lines are not a metrics record (lines 2, 3, 6); skipped

            """)
        let html = try String(contentsOfFile: "\(dir)/r.html", encoding: .utf8)
        XCTAssertEqual(html.components(separatedBy: "class=\"series\" data-run=\"cut\"").count - 1, 2, "cut: loss and lr")
        XCTAssertTrue(html.contains("no metrics yet"))
    }
}
