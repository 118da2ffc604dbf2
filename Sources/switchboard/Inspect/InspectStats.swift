import ArgumentParser
import Foundation
import Storage
import Training

/// `inspect stats`: what the values look like, tensor by tensor.
struct InspectStats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats", abstract: "Per tensor: mean, std, min, max, L2 norm, NaN and Inf counts, share of zeros.")

    @Argument(help: "The checkpoint.") var checkpoint: String
    @Option(help: "Only tensors whose name matches this shell pattern (params/blocks.*).") var match: String?
    @OptionGroup var options: InspectOptions

    struct Summary {
        var mean = 0.0, std = 0.0, min = Double.infinity, max = -Double.infinity, l2 = 0.0
        var nan = 0, inf = 0, zeros = 0, count = 0
        var finite: Bool { nan == 0 && inf == 0 }
    }

    static func summarize(_ v: UnsafeBufferPointer<Float>) -> Summary {
        var s = Summary()
        var sum = 0.0, squares = 0.0, finite = 0
        for x in v {
            if x.isNaN { s.nan += 1; continue }
            if x.isInfinite { s.inf += 1; continue }
            let d = Double(x)
            if x == 0 { s.zeros += 1 }
            sum += d
            squares += d * d
            s.min = Swift.min(s.min, d)
            s.max = Swift.max(s.max, d)
            finite += 1
        }
        s.count = v.count
        s.mean = finite > 0 ? sum / Double(finite) : .nan
        s.std = finite > 0 ? Swift.max(0, squares / Double(finite) - s.mean * s.mean).squareRoot() : .nan
        s.l2 = squares.squareRoot()
        if finite == 0 { s.min = .nan; s.max = .nan }
        return s
    }

    func run() throws {
        let reader = try openCheckpoint(checkpoint)
        let selected = reader.manifest.tensors.filter { t in match.map { fnmatch($0, t.name, 0) == 0 } ?? true }
        var table = TextTable(["tensor", "count", "mean", "std", "min", "max", "L2", "NaN", "Inf", "zeros", ""], right: Set(1...9))
        var json: [JSONValue] = []
        var flagged = 0
        for t in selected {
            let values = try reader.values(t.name)
            let s = values.withUnsafeBufferPointer { Self.summarize($0) }
            if !s.finite { flagged += 1 }
            let zeros = Double(s.zeros) / Double(s.count)
            table.add([t.name, "\(s.count)", number(s.mean), number(s.std), number(s.min), number(s.max), number(s.l2),
                       "\(s.nan)", "\(s.inf)", String(format: "%.1f%%", 100 * zeros), s.finite ? "" : "NON-FINITE"])
            json.append(.object([("name", .string(t.name)), ("count", .int(s.count)), ("mean", .double(s.mean)), ("std", .double(s.std)),
                                 ("min", .double(s.min)), ("max", .double(s.max)), ("l2", .double(s.l2)), ("nan", .int(s.nan)),
                                 ("inf", .int(s.inf)), ("zero_share", .double(zeros)), ("finite", .bool(s.finite))]))
        }
        if options.json { return printJSON(.object([("tensors", .array(json)), ("non_finite", .int(flagged))])) }
        print(table.text)
        print("")
        print("\(selected.count) tensor\(selected.count == 1 ? "" : "s")" + (flagged > 0 ? "; \(flagged) with NaN or Inf" : "; all finite"))
    }
}
