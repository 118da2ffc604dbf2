import ArgumentParser
import Cluster
import Foundation
import Layers
import Storage
import Training

/// `inspect verify`: is the checkpoint whole, and how would it load on N ranks.
struct InspectVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Check every file and checksum of a checkpoint (exit 0 healthy, 1 not).")

    @Argument(help: "The checkpoint.") var checkpoint: String
    @Option(parsing: .unconditional, help: "Also say how the checkpoint would load on this many ranks.") var ranks: Int?
    @OptionGroup var options: InspectOptions

    func run() throws {
        if let ranks, ranks < 1 { throw ValidationError("--ranks must be at least 1") }
        var problems: [String] = []
        var reader: CheckpointReader?
        // A path that is not a checkpoint at all is a usage error (exit 2); a checkpoint whose
        // main file does not read is an unhealthy one (exit 1).
        guard CheckpointReader.hasMainFile(checkpoint) else {
            throw InspectFailure(message: CheckpointError(CheckpointReader.folder(of: checkpoint), CheckpointReader.notACheckpoint(checkpoint)).message,
                                 exitCode: 2)
        }
        do { reader = try CheckpointReader(checkpoint) } catch let e as CheckpointError {
            problems.append(e.description)
        }
        var checked = 0
        var plan: [String] = []
        if let reader {
            let m = reader.manifest
            // The stored config, read as a resume, evaluate or predict reads it.
            do { _ = try JobConfig.parse(m.config, source: "\(reader.mainPath) (its config)") } catch let e as ConfigError {
                problems.append(e.message)
            }
            // Each shard once: present, opens, and belongs to this save.
            var broken = Set<String>()
            for file in m.files {
                do { try reader.checkShard(file) } catch let e as CheckpointError {
                    broken.insert(file)
                    problems.append(FileManager.default.fileExists(atPath: "\(reader.folder)/\(file)") ? e.description
                                    : "\(reader.folder)/\(file): missing (listed in the manifest)")
                }
            }
            // Every trainable parameter has its optimizer state, and the other way round; a
            // frozen one has none.
            let states = Set(m.tensors.compactMap { t -> String? in
                let parts = t.name.split(separator: "/")
                return parts.count >= 3 && parts[0] == "optimizer" ? String(parts[1]) : nil
            })
            let parameterTensors = m.tensors.filter { CheckpointNames.isParameter($0.name) }
            let parameters = Set(parameterTensors.compactMap { CheckpointNames.parameterName(of: $0.name) })
            let frozen = Set(parameterTensors.filter { $0.frozen == true }.compactMap { CheckpointNames.parameterName(of: $0.name) })
            for s in states.sorted() {
                for p in parameters.subtracting(frozen).sorted() where reader.tensors[CheckpointNames.state(s, p)] == nil {
                    problems.append("manifest: optimizer state \(s) of \(p) is missing")
                }
            }
            for t in m.tensors where t.name.hasPrefix(CheckpointNames.statePrefix) {
                let p = t.name.split(separator: "/").dropFirst(2).joined(separator: "/")
                if !parameters.contains(p) { problems.append("manifest: \(t.name) has no parameter \(p)") }
                else if frozen.contains(p) { problems.append("manifest: \(t.name) is state of a frozen parameter") }
                else if reader.tensors[CheckpointNames.parameter(p)]!.shape != t.shape { problems.append("manifest: \(t.name) has shape \(t.shape), its parameter \(reader.tensors[CheckpointNames.parameter(p)]!.shape)") }
            }
            // Every tensor read through its chunk checksums and checked against the manifest,
            // then read again by the HDF5 library through checkpoint.h5's link, as any HDF5
            // reader would: healthy means both give the same bits.
            for t in m.tensors where !broken.contains(t.file) {
                do {
                    let ours = try reader.values(t.name), hdf5 = try reader.valuesThroughLinks(t.name)
                    if let i = ours.indices.first(where: { ours[$0].bitPattern != hdf5[$0].bitPattern }) {
                        problems.append("\(reader.mainPath): tensor \(t.name): the HDF5 library reads other values through the link "
                                        + "(first at [\(i)]: \(hdf5[i]), the checksummed chunks hold \(ours[i]))")
                    } else {
                        checked += 1
                    }
                } catch let e as CheckpointError { problems.append(e.description) }
            }
            if let ranks { plan = Self.loadPlan(m, ranks: ranks) }
        }
        let healthy = problems.isEmpty
        if options.json {
            printJSON(.object([("healthy", .bool(healthy)), ("tensors_verified", .int(checked)),
                               ("problems", .array(problems.map { .string($0) })), ("load_plan", .array(plan.map { .string($0) }))]))
        } else {
            for p in problems { print("problem: \(p)") }
            if let reader {
                print(healthy ? "healthy: \(checked) tensors in \(reader.manifest.files.count) file\(reader.manifest.files.count == 1 ? "" : "s"), "
                        + "every chunk's Fletcher32 and every tensor's checksum verified, the HDF5 library reads the same values; names unique; shapes agree"
                      : "not healthy: \(problems.count) problem\(problems.count == 1 ? "" : "s"); \(checked) of \(reader.manifest.tensors.count) tensors verified")
            } else {
                print("not healthy: the checkpoint cannot be opened")
            }
            for line in plan { print(line) }
        }
        if !healthy { throw InspectFailure(message: "", exitCode: 1) }
    }

    /// How the checkpoint maps onto `ranks` ranks.
    static func loadPlan(_ m: CheckpointManifest, ranks: Int) -> [String] {
        var lines = ["on \(ranks) rank\(ranks == 1 ? "" : "s"): loads (saved on \(m.worldSize)); "
                     + (ranks == m.worldSize ? "same world size, continues bitwise at the same thread count"
                        : "parameters and optimizer state placed by global name, data position exact")]
        guard let saved = m.placement else {
            lines.append("  dense model: every rank reads every parameter and the optimizer state of its shard")
            return lines
        }
        let placement = ExpertPlacement(experts: saved.experts, ranks: ranks)
        for r in 0..<ranks {
            let mine = placement.experts(on: r)
            let from = Set((0..<saved.expertsByRank.count).filter { q in
                let s = saved.expertsByRank[q]
                return s[0] < mine.upperBound && mine.lowerBound < s[1]
            }.map { m.files.contains(CheckpointNames.shardFile(rank: $0)) ? CheckpointNames.shardFile(rank: $0) : "rank \($0)" }).sorted()
            let list = mine.count == 1 ? "expert \(mine.lowerBound)" : "experts \(mine.lowerBound)–\(mine.upperBound - 1)"
            let replica = saved.experts < ranks ? " (replica \(r - placement.runners(of: mine.lowerBound).lowerBound + 1) of \(placement.runners(of: mine.lowerBound).count))" : ""
            lines.append("  rank \(r): \(list)\(replica) from \(from.joined(separator: ", "))")
        }
        return lines
    }
}
