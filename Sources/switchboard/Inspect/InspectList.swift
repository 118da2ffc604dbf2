import ArgumentParser
import Foundation
import Storage
import Training

/// `inspect ls`: the logical tensors, from the manifest alone.
struct InspectList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls", abstract: "List the tensors: name, shape, dtype, size and file (reads the manifest only).")

    @Argument(help: "The checkpoint.") var checkpoint: String
    @Flag(help: "One line per tensor instead of repeated names collapsed into patterns.") var expand = false
    @OptionGroup var options: InspectOptions

    func run() throws {
        let m = try openCheckpoint(checkpoint).manifest
        let parameters = m.tensors.filter { CheckpointNames.isParameter($0.name) }
        let state = m.tensors.filter { !CheckpointNames.isParameter($0.name) }
        let frozen = parameters.filter { $0.frozen == true }
        let totals: [(String, JSONValue)] = [
            ("parameters", .int(parameters.reduce(0) { $0 + $1.count })), ("parameter_tensors", .int(parameters.count)),
            ("frozen_parameters", .int(frozen.reduce(0) { $0 + $1.count })),
            ("optimizer_state", .int(state.reduce(0) { $0 + $1.count })), ("optimizer_tensors", .int(state.count)),
            ("bytes", .int(m.tensors.reduce(0) { $0 + $1.count * 4 })), ("files", .int(m.files.count)),
        ]
        if options.json {
            printJSON(.object([
                ("tensors", .array(m.tensors.map { t in
                    .object([("name", .string(t.name)), ("shape", .array(t.shape.map { .int($0) })), ("dtype", .string(t.dtype)),
                             ("bytes", .int(t.count * 4)), ("file", .string(t.file)), ("frozen", .bool(t.frozen == true))])
                })),
                ("totals", .object(totals)),
            ]))
            return
        }
        var table = TextTable(["tensor", "count", "shape", "dtype", "size", "file"], right: [1, 4])
        for group in Self.groups(m.tensors, expand: expand) {
            let files = Set(group.map(\.file)).sorted()
            let name = group.count == 1 ? group[0].name : Self.pattern(group[0].name)
            table.add([name + (group[0].frozen == true ? " (frozen)" : ""), "×\(group.count)", shapeText(group[0].shape),
                       group[0].dtype, byteSize(group.reduce(0) { $0 + $1.count * 4 }),
                       files.count == 1 ? files[0] : "\(files.count) files (\(files.first!) … \(files.last!))"])
        }
        print(table.text)
        let optimizer = Set(state.compactMap { $0.name.split(separator: "/").dropFirst().first.map(String.init) }).sorted()
        print("")
        print("parameters: \(parameters.reduce(0) { $0 + $1.count }.formatted()) in \(parameters.count) tensors"
              + (frozen.isEmpty ? "" : "; \(frozen.reduce(0) { $0 + $1.count }.formatted()) of them frozen (no optimizer state), in \(frozen.count) tensors"))
        print("optimizer state (\(m.optimizer): \(optimizer.joined(separator: ", "))): \(state.reduce(0) { $0 + $1.count }.formatted()) in \(state.count) tensors")
        print("total: \(byteSize(m.tensors.reduce(0) { $0 + $1.count * 4 })) in \(m.files.count) file\(m.files.count == 1 ? "" : "s")")
    }

    /// A name with every numeric component replaced by `#`: `params/blocks.#.moe.experts.#.w1`.
    static func pattern(_ name: String) -> String {
        name.split(separator: ".", omittingEmptySubsequences: false)
            .map { $0.allSatisfy(\.isNumber) && !$0.isEmpty ? "#" : String($0) }.joined(separator: ".")
    }

    /// Tensors grouped by pattern, shape and dtype, in the order of first appearance:
    /// parameters first, then each kind of optimizer state.
    static func groups(_ all: [CheckpointManifest.Tensor], expand: Bool) -> [[CheckpointManifest.Tensor]] {
        let kind = { (t: CheckpointManifest.Tensor) in CheckpointNames.isParameter(t.name) ? "" : String(t.name.split(separator: "/").prefix(2).joined(separator: "/")) }
        var kinds: [String] = []
        for t in all where !kinds.contains(kind(t)) { kinds.append(kind(t)) }
        let tensors = kinds.flatMap { k in all.filter { kind($0) == k } }
        if expand { return tensors.map { [$0] } }
        var order: [String] = [], groups: [String: [CheckpointManifest.Tensor]] = [:]
        for t in tensors {
            let key = "\(pattern(t.name)) \(t.shape) \(t.dtype) \(t.frozen == true)"
            if groups[key] == nil { order.append(key) }
            groups[key, default: []].append(t)
        }
        return order.map { groups[$0]! }
    }
}
