import ArgumentParser
import Errors
import Foundation
import Storage
import Training

/// `switchboard inspect`: look inside checkpoints without writing code.
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Read, check, compare and export checkpoints.",
        discussion: """
            CKPT is a checkpoint folder (step-NNNNNN/) or its main file (checkpoint.h5). Every \
            subcommand prints aligned tables, or JSON with --json.
            """,
        subcommands: [InspectList.self, InspectShow.self, InspectStats.self, InspectDiff.self, InspectVerify.self,
                      InspectExperts.self, InspectExport.self])
}

/// Options every inspect subcommand takes.
struct InspectOptions: ParsableArguments {
    @Flag(help: "Print JSON instead of tables.") var json = false
}

/// Opens a checkpoint for inspection: a path that is not one is a usage error (exit 2), a
/// checkpoint that does not read is a data error (exit 1).
func openCheckpoint(_ path: String) throws -> CheckpointReader {
    do { return try CheckpointReader(path) } catch let e as CheckpointError {
        throw InspectFailure(message: e.description, exitCode: CheckpointReader.hasMainFile(path) ? 1 : 2)
    }
}

/// An inspect outcome other than success: printed as one error line (when there is a
/// message) and turned into the exit code.
struct InspectFailure: SwitchboardError {
    let message: String
    let exitCode: Int32
}

func printJSON(_ value: JSONValue) { print(value.text) }

/// Columns padded to their widest cell, two spaces apart; numbers aligned right.
struct TextTable {
    let header: [String]
    let right: Set<Int>
    var rows: [[String]] = []

    init(_ header: [String], right: Set<Int> = []) {
        self.header = header
        self.right = right
    }

    mutating func add(_ row: [String]) { rows.append(row) }

    var text: String {
        let all = [header] + rows
        let widths = header.indices.map { c in all.map { $0[c].count }.max() ?? 0 }
        return all.map { row in
            row.indices.map { c in
                let pad = String(repeating: " ", count: widths[c] - row[c].count)
                return right.contains(c) ? pad + row[c] : row[c] + (c == row.count - 1 ? "" : pad)
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }.joined(separator: "\n")
    }
}

/// "1.5 MB", "312 B": decimal units, as `ls -h --si` prints them.
func byteSize(_ bytes: Int) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var v = Double(bytes), u = 0
    while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
    return u == 0 ? "\(bytes) B" : String(format: "%.1f %@", v, units[u])
}

func shapeText(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }

/// A number for a table: 4 significant digits.
func number(_ v: Double) -> String { v.isNaN ? "nan" : String(format: "%.4g", v) }
