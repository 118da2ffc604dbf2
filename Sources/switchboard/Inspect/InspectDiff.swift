import ArgumentParser
import Foundation
import Storage
import Training

/// `inspect diff`: what differs between two checkpoints. Exits 0 when they are equal within
/// the tolerance, 1 when they differ, 2 on error, as h5diff does.
struct InspectDiff: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff", abstract: "Compare two checkpoints tensor by tensor (exit 0 equal, 1 different, 2 error).")

    @Argument(help: "The first checkpoint.") var a: String
    @Argument(help: "The second checkpoint.") var b: String
    @Option(parsing: .unconditional, help: "Absolute tolerance: elements equal when |a − b| ≤ atol + rtol·|b|.") var atol = 0.0
    @Option(parsing: .unconditional, help: "Relative tolerance.") var rtol = 0.0
    @OptionGroup var options: InspectOptions

    func validate() throws {
        guard atol >= 0, rtol >= 0, atol.isFinite, rtol.isFinite else {
            throw ValidationError("--atol \(atol), --rtol \(rtol): tolerances are finite and at least 0")
        }
    }

    func run() throws {
        let ra = try openCheckpoint(a), rb = try openCheckpoint(b)
        let onlyA = ra.manifest.tensors.map(\.name).filter { rb.tensors[$0] == nil }
        let onlyB = rb.manifest.tensors.map(\.name).filter { ra.tensors[$0] == nil }
        var reshaped: [(String, [Int], [Int])] = []
        var changed: [(name: String, maxAbs: Double, relative: Double, outside: Int)] = []
        var compared = 0
        for t in ra.manifest.tensors {
            guard let u = rb.tensors[t.name] else { continue }
            guard t.shape == u.shape else { reshaped.append((t.name, t.shape, u.shape)); continue }
            compared += 1
            let x = try ra.values(t.name), y = try rb.values(t.name)
            var maxAbs = 0.0, diff2 = 0.0, norm2 = 0.0, outside = 0
            for i in 0..<t.count {
                let p = Double(x[i]), q = Double(y[i])
                let d = abs(p - q)
                // NaN against NaN counts as equal; NaN against a number does not.
                let same = d <= atol + rtol * abs(q) || (p.isNaN && q.isNaN) || p == q
                if !same { outside += 1 }
                if d.isFinite { maxAbs = max(maxAbs, d); diff2 += d * d } else if !same { maxAbs = .infinity }
                norm2 += p * p
            }
            if outside > 0 { changed.append((t.name, maxAbs, (diff2 / max(norm2, 1e-300)).squareRoot(), outside)) }
        }
        let equal = onlyA.isEmpty && onlyB.isEmpty && reshaped.isEmpty && changed.isEmpty
        if options.json {
            printJSON(.object([
                ("equal", .bool(equal)), ("compared", .int(compared)),
                ("only_in_a", .array(onlyA.map { .string($0) })), ("only_in_b", .array(onlyB.map { .string($0) })),
                ("shape_changed", .array(reshaped.map { .object([("name", .string($0.0)), ("a", .array($0.1.map { .int($0) })),
                                                                  ("b", .array($0.2.map { .int($0) }))]) })),
                ("changed", .array(changed.map { .object([("name", .string($0.name)), ("max_abs", .double($0.maxAbs)),
                                                          ("relative_l2", .double($0.relative)), ("elements_outside", .int($0.outside))]) })),
            ]))
        } else {
            for n in onlyA { print("only in A: \(n)") }
            for n in onlyB { print("only in B: \(n)") }
            for (n, s, u) in reshaped { print("shape changed: \(n) \(shapeText(s)) → \(shapeText(u))") }
            if !changed.isEmpty {
                var table = TextTable(["tensor", "max |a−b|", "‖a−b‖/‖a‖", "elements differing"], right: [1, 2, 3])
                for c in changed { table.add([c.name, number(c.maxAbs), number(c.relative), "\(c.outside)"]) }
                print(table.text)
            }
            print(equal ? "equal: \(compared) tensors compared (atol \(atol), rtol \(rtol))"
                  : "different: \(changed.count) of \(compared) tensors differ, \(onlyA.count) only in A, \(onlyB.count) only in B, "
                    + "\(reshaped.count) changed shape (atol \(atol), rtol \(rtol))")
        }
        if !equal { throw InspectFailure(message: "", exitCode: 1) }
    }
}
