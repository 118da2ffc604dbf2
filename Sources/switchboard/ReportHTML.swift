import Foundation
import Training

/// `switchboard report`'s page: one HTML file, inline SVG charts and no script, so it opens
/// in any browser without a network. Each chart draws one `<path class="series">` per run
/// that has the series; MoE runs get a heatmap of tokens per expert per layer.
enum ReportHTML {
    static let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]

    static func page(_ runs: [RunHistory]) -> String {
        var body = "<h1>Switchboard runs</h1>\n<ul class=\"runs\">\n"
        for (i, run) in runs.enumerated() {
            body += "<li><span class=\"swatch\" style=\"background:\(color(i))\"></span><b>\(escape(run.name))</b> "
                + "<code>\(escape(run.path))</code>"
            for note in run.notes { body += "<div class=\"note\">\(escape(note))</div>" }
            body += "</li>\n"
        }
        body += "</ul>\n"
        let charts: [(String, String, String, Bool)] = [
            ("train/loss", "Training loss", "loss (log scale)", true),
            ("eval/test_loss", "Test loss", "loss (log scale)", true),
            ("eval/test_accuracy", "Test accuracy", "accuracy", false),
            ("train/lr", "Learning rate", "learning rate", false),
            ("train/samples_per_s", "Throughput", "samples/s", false),
        ]
        for (key, title, axis, log) in charts {
            let series = runs.enumerated().compactMap { i, run in run.series[key].map { (run.name, color(i), $0) } }
            body += "<h2>\(title)</h2>\n"
            body += series.isEmpty ? "<p class=\"note\">no run has \(key)</p>\n" : lineChart(series, yLabel: axis, logY: log) + "\n"
        }
        for (i, run) in runs.enumerated() where !run.expertTokens.isEmpty {
            for (layer, history) in run.expertTokens.enumerated() where !history.isEmpty {
                body += "<h2>Tokens per expert: \(escape(run.name)), MoE layer \(layer)</h2>\n" + heatmap(history, color: color(i)) + "\n"
            }
        }
        body += "<h2>Configuration</h2>\n" + configTable(runs)
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>Switchboard report</title>
            <style>
            body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
            h2 { font-size: 16px; margin-top: 28px; }
            .swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; }
            .note { color: #a33; margin: 2px 0 2px 18px; }
            svg text { font: 11px system-ui, sans-serif; fill: #333; }
            table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
            </style></head>
            <body>
            \(body)
            </body></html>

            """
    }

    static func color(_ i: Int) -> String { colors[i % colors.count] }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    // MARK: - Line charts

    static let width = 730.0, height = 300.0, left = 80.0, right = 16.0, top = 12.0, bottom = 40.0

    /// One path per run, against step; log10 of y when `logY` (non-positive values skipped).
    static func lineChart(_ series: [(String, String, [RunHistory.Point])], yLabel: String, logY: Bool) -> String {
        let shown = series.map { name, color, points in (name, color, points.filter { !logY || $0.value > 0 }) }
        let all = shown.flatMap { $0.2 }
        guard !all.isEmpty else { return "<p class=\"note\">no positive values to draw on a log scale</p>" }
        let y = { (v: Double) in logY ? log10(v) : v }
        var (x0, x1) = (Double(all.map(\.step).min()!), Double(all.map(\.step).max()!))
        var (y0, y1) = (all.map { y($0.value) }.min()!, all.map { y($0.value) }.max()!)
        if x1 == x0 { x0 -= 1; x1 += 1 }
        if y1 == y0 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        // No padding below zero for a quantity that never goes below it (a learning rate).
        y0 = !logY && y0 >= 0 ? max(0, y0 - pad) : y0 - pad
        y1 += pad
        let plotW = width - left - right, plotH = height - top - bottom
        func px(_ step: Int) -> Double { left + (Double(step) - x0) / (x1 - x0) * plotW }
        func py(_ value: Double) -> Double { top + (1 - (y(value) - y0) / (y1 - y0)) * plotH }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" class=\"chart\">\n"
        svg += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotW)\" height=\"\(plotH)\" fill=\"none\" stroke=\"#999\"/>\n"
        // Ticks at round values: whole steps across, 1–2–5 steps of the value up the side (on a
        // log scale, the round values inside the range, placed by their logarithm).
        for step in roundTicks(x0, x1).filter({ $0 == $0.rounded() }) {
            let gx = left + (step - x0) / (x1 - x0) * plotW
            svg += "<line x1=\"\(f(gx))\" y1=\"\(f(top + plotH))\" x2=\"\(f(gx))\" y2=\"\(f(top + plotH + 4))\" stroke=\"#999\"/>"
            svg += "<text x=\"\(f(gx))\" y=\"\(f(top + plotH + 16))\" text-anchor=\"middle\">\(Int(step))</text>\n"
        }
        let yTicks = logY ? logTicks(y0, y1) : roundTicks(y0, y1)
        // Whole numbers need decimals when the ticks are closer than 1 (a flat throughput).
        let spacing = logY || yTicks.count < 2 ? 1 : yTicks[1] - yTicks[0]
        for value in yTicks {
            let gy = top + (1 - (y(value) - y0) / (y1 - y0)) * plotH
            svg += "<line x1=\"\(f(left - 4))\" y1=\"\(f(gy))\" x2=\"\(f(left + plotW))\" y2=\"\(f(gy))\" stroke=\"#eee\"/>"
            svg += "<text x=\"\(f(left - 6))\" y=\"\(f(gy + 4))\" text-anchor=\"end\">\(tick(value, spacing: spacing))</text>\n"
        }
        svg += "<text class=\"axis\" x=\"\(f(left + plotW / 2))\" y=\"\(f(height - 6))\" text-anchor=\"middle\">step</text>\n"
        svg += "<text class=\"axis\" transform=\"translate(14 \(f(top + plotH / 2))) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (name, color, points) in shown where !points.isEmpty {
            let d = points.enumerated().map { i, p in "\(i == 0 ? "M" : "L")\(f(px(p.step))) \(f(py(p.value)))" }.joined(separator: " ")
            svg += "<path class=\"series\" data-run=\"\(escape(name))\" d=\"\(d)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\"/>\n"
            // A series of few points (one evaluation per epoch) is also drawn as its points: a
            // path of one point has no ink.
            if points.count <= Self.markedUpTo {
                for p in points {
                    svg += "<circle class=\"point\" data-run=\"\(escape(name))\" cx=\"\(f(px(p.step)))\" cy=\"\(f(py(p.value)))\" r=\"3\" fill=\"\(color)\"/>"
                }
                svg += "\n"
            }
        }
        return svg + "</svg>"
    }

    /// Series of at most this many points are marked point by point.
    static let markedUpTo = 40

    /// Round values in [lo, hi], 1, 2 or 5 times a power of ten apart, about five of them,
    /// each an integer multiple of the spacing (not a sum, which drifts).
    static func roundTicks(_ lo: Double, _ hi: Double) -> [Double] {
        guard hi > lo, lo.isFinite, hi.isFinite else { return lo.isFinite ? [lo] : [] }
        let raw = (hi - lo) / 5, power = pow(10, floor(log10(raw)))
        let spacing = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= raw } ?? 10 * power
        let first = (lo / spacing).rounded(.up), last = (hi / spacing).rounded(.down)
        guard spacing > 0, first.isFinite, last.isFinite, last - first < 12 else { return [lo, hi] }
        return stride(from: first, through: last, by: 1).map { $0 * spacing }
    }

    /// Round values for a log scale over log10 values [y0, y1]: the round values inside the
    /// range when it is less than a decade, else 1, 2 and 5 times the powers of ten (only
    /// every k-th power when those are many). Worked out on the logarithms: the values may be
    /// beyond a Double's range.
    static func logTicks(_ y0: Double, _ y1: Double) -> [Double] {
        guard y0.isFinite, y1.isFinite, y1 > y0 else { return [] }
        let lo = pow(10, y0), hi = pow(10, y1)
        if y1 - y0 < 1, lo > 0, hi.isFinite { return roundTicks(lo, hi).filter { $0 > 0 } }
        let first = ceil(y0 - log10(5)), last = floor(y1)
        let decades = last - first + 1
        let every = max(1, (decades / 6).rounded(.up))
        let mantissas: [Double] = decades > 4 ? [1] : [1, 2, 5]
        var ticks: [Double] = []
        for k in stride(from: first, through: last, by: every) {
            for m in mantissas where k + log10(m) >= y0 && k + log10(m) <= y1 {
                let value = m * pow(10, k)
                if value.isFinite && value > 0 { ticks.append(value) }
            }
        }
        return ticks
    }

    static func f(_ v: Double) -> String { fixed(v, 1) }

    /// A tick label: from 1000 to 10⁷ with as many decimals as ticks `spacing` apart need
    /// (none from a spacing of 1 on), else 4 significant digits, with an exponent only where
    /// that format needs one (below 10⁻⁴, from 10⁷ on).
    static func tick(_ v: Double, spacing: Double = 1) -> String {
        if abs(v) >= 1000 && abs(v) < 1e7 { return fixed(v, spacing >= 1 ? 0 : min(6, Int(ceil(-log10(spacing))))) }
        return String(format: "%.4g", v)
    }

    // MARK: - Heatmap

    /// Experts down, logged steps across; each cell's opacity is the expert's share of the
    /// step's tokens against twice the even share (so an even layer is a flat mid-tone).
    static func heatmap(_ all: [(step: Int, tokens: [Int])], color: String) -> String {
        // At most 360 columns: a long run shows every k-th logged step.
        let every = (all.count + 359) / 360
        let history = stride(from: 0, to: all.count, by: every).map { all[$0] }
        let experts = history.map(\.tokens.count).max()!
        let cellW = max(2.0, min(24.0, (width - left - right) / Double(history.count)))
        let cellH = max(4.0, min(18.0, 360.0 / Double(experts)))
        // At least as wide as its caption and its two step labels.
        let w = max(left + cellW * Double(history.count) + right, left + 300), h = top + cellH * Double(experts) + bottom
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" class=\"heatmap\">\n"
        for (c, entry) in history.enumerated() {
            let total = max(entry.tokens.reduce(0.0) { $0 + Double($1) }, 1)
            for (e, n) in entry.tokens.enumerated() {
                let share = Double(n) / total * Double(entry.tokens.count) / 2
                svg += "<rect x=\"\(f(left + Double(c) * cellW))\" y=\"\(f(top + Double(e) * cellH))\" width=\"\(f(cellW))\" "
                    + "height=\"\(f(cellH))\" fill=\"\(color)\" fill-opacity=\"\(fixed(min(share, 1), 3))\">"
                    + "<title>step \(entry.step), expert \(e): \(n) tokens</title></rect>\n"
            }
        }
        svg += "<text x=\"\(f(left - 6))\" y=\"\(f(top + cellH * 0.8))\" text-anchor=\"end\">expert 0</text>\n"
        svg += "<text x=\"\(f(left - 6))\" y=\"\(f(top + cellH * (Double(experts) - 0.2)))\" text-anchor=\"end\">\(experts - 1)</text>\n"
        // One label for the steps: two at the ends of a narrow map would overlap.
        let steps = history.count == 1 ? "step \(history[0].step)" : "steps \(history.first!.step)–\(history.last!.step)"
        svg += "<text x=\"\(f(left))\" y=\"\(f(h - 22))\">\(steps)</text>\n"
        svg += "<text class=\"axis\" x=\"\(f(w / 2))\" y=\"\(f(h - 6))\" text-anchor=\"middle\">logged step (darker: more tokens)</text>\n"
        return svg + "</svg>"
    }

    // MARK: - Configuration

    /// The settings that differ between the runs (all of them for one run).
    static func configTable(_ runs: [RunHistory]) -> String {
        let keys = Set(runs.flatMap { $0.config.keys }).sorted()
        let differing = runs.count == 1 ? keys : keys.filter { k in Set(runs.map { $0.config[k] ?? "" }).count > 1 }
        guard !differing.isEmpty else { return "<p>The runs' resolved configurations are the same.</p>\n" }
        var html = "<p>\(runs.count == 1 ? "The run's resolved configuration." : "Settings that differ between the runs.")</p>\n"
        html += "<table class=\"config\"><tr><th>setting</th>" + runs.map { "<th>\(escape($0.name))</th>" }.joined() + "</tr>\n"
        for k in differing {
            html += "<tr><td><code>\(escape(k))</code></td>" + runs.map { "<td>\(escape($0.config[k] ?? "—"))</td>" }.joined() + "</tr>\n"
        }
        return html + "</table>\n"
    }
}
