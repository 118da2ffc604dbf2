import Errors
import Foundation

/// What a checkpoint holds, written last by the coordinator (docs/ARCHITECTURE.md, "Checkpoints"): every
/// logical tensor with the file and dataset that hold it, its shape, dtype and checksum; the
/// training position; and what is needed to understand the run later. Stored as JSON in the
/// `manifest` dataset of the checkpoint's main file (`checkpoint.h5`), so it is protected by
/// the same Fletcher32 checksum as the tensors. Decoding never trusts a size: `validate()`
/// bounds every count and shape before anything is allocated from it.
public struct CheckpointManifest: Codable, Sendable, Equatable {
    public static let format = 1
    public static let mainFile = "checkpoint.h5"
    public static let manifestDataset = "manifest"
    /// Far above any real manifest (a few hundred bytes per tensor), far below harm.
    public static let maxBytes = 256 << 20

    public struct Tensor: Codable, Sendable, Equatable {
        /// Global name and dataset path, the same in the main file and in the shard:
        /// `params/blocks.0.fc1.weight`, `optimizer/m/blocks.0.fc1.weight`.
        public var name: String
        /// The shard file holding it, relative to the checkpoint folder.
        public var file: String
        public var shape: [Int]
        public var dtype: String
        /// The CRC-32 (zlib's) of the dataset's chunk Fletcher32 sums, little-endian, in chunk
        /// order, as 8 hex digits (`HDF5File.writeTensor`).
        public var checksum: String
        /// A parameter kept at its initial value (it has no optimizer state); absent when not.
        public var frozen: Bool?
        public init(name: String, file: String, shape: [Int], dtype: String = "float32", checksum: UInt32, frozen: Bool = false) {
            self.name = name
            self.file = file
            self.shape = shape
            self.dtype = dtype
            self.checksum = String(format: "%08x", checksum)
            self.frozen = frozen ? true : nil
        }
        public var count: Int { shape.reduce(1, *) }
    }

    public struct Position: Codable, Sendable, Equatable {
        /// Optimizer steps taken.
        public var step: Int
        /// The epoch of the next batch (0-based), and the next batch within it.
        public var epoch: Int
        public var batch: Int
        /// Position of the next sample in the epoch's global order (`batch × batch_size`).
        public var sampleCursor: Int
        public init(step: Int, epoch: Int, batch: Int, sampleCursor: Int) {
            self.step = step
            self.epoch = epoch
            self.batch = batch
            self.sampleCursor = sampleCursor
        }
    }

    /// The counter-based RNG's state: its key and the counters the next step will use.
    /// Dropout draws are keyed by step and global row, the shuffle by epoch, initialization
    /// by parameter name, so these three numbers are the whole generator state.
    public struct RNG: Codable, Sendable, Equatable {
        public var seed: UInt64
        public var dropoutStep: Int
        public var shuffleEpoch: Int
        public init(seed: UInt64, dropoutStep: Int, shuffleEpoch: Int) {
            self.seed = seed
            self.dropoutStep = dropoutStep
            self.shuffleEpoch = shuffleEpoch
        }
    }

    public struct Placement: Codable, Sendable, Equatable {
        public var experts: Int
        public var ranks: Int
        /// Per rank, the experts it ran, as [first, end).
        public var expertsByRank: [[Int]]
        public init(experts: Int, ranks: Int, expertsByRank: [[Int]]) {
            self.experts = experts
            self.ranks = ranks
            self.expertsByRank = expertsByRank
        }
    }

    public struct Metrics: Codable, Sendable, Equatable {
        public var lastLoss: Double?
        public var testLoss: Double?
        public var testAccuracy: Double?
        /// Per MoE layer, tokens routed to each expert over the last logging interval.
        public var expertTokens: [[Int]]
        public init(lastLoss: Double?, testLoss: Double?, testAccuracy: Double?, expertTokens: [[Int]]) {
            self.lastLoss = lastLoss
            self.testLoss = testLoss
            self.testAccuracy = testAccuracy
            self.expertTokens = expertTokens
        }
    }

    public var format: Int
    /// Unique per save; every shard carries it too, so a shard from another save is caught.
    public var id: String
    public var programVersion: String
    /// UTC, ISO 8601.
    public var created: String
    public var position: Position
    public var rng: RNG
    public var worldSize: Int
    public var threads: Int
    public var placement: Placement?
    public var optimizer: String
    public var optimizerSteps: Int
    public var config: String
    public var metrics: Metrics
    /// Shard files, relative to the checkpoint folder.
    public var files: [String]
    public var tensors: [Tensor]

    public init(id: String, programVersion: String, created: String, position: Position, rng: RNG, worldSize: Int,
                threads: Int, placement: Placement?, optimizer: String, optimizerSteps: Int, config: String,
                metrics: Metrics, files: [String], tensors: [Tensor]) {
        format = Self.format
        self.id = id
        self.programVersion = programVersion
        self.created = created
        self.position = position
        self.rng = rng
        self.worldSize = worldSize
        self.threads = threads
        self.placement = placement
        self.optimizer = optimizer
        self.optimizerSteps = optimizerSteps
        self.config = config
        self.metrics = metrics
        self.files = files
        self.tensors = tensors
    }

    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return Array(try encoder.encode(self))
    }

    /// Writes the checkpoint's main file at `path`: this manifest, the save's id, step and
    /// program version as attributes, and an external link per tensor to its dataset in its
    /// shard, so HDF5 tools see the whole checkpoint under global names.
    public func writeMainFile(_ path: String) throws {
        let main = try HDF5File.create(path)
        try main.writeBytes(Self.manifestDataset, try encoded())
        try main.setAttribute("checkpoint_id", id)
        try main.setAttribute("step", String(position.step))
        try main.setAttribute("switchboard_version", programVersion)
        for t in tensors { try main.linkExternal(t.name, file: t.file, object: t.name) }
        try main.close()
    }

    /// Decodes and validates a manifest; `source` names the file in errors.
    public static func decode(_ bytes: [UInt8], source: String) throws -> CheckpointManifest {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let manifest: CheckpointManifest
        do { manifest = try decoder.decode(CheckpointManifest.self, from: Data(bytes)) } catch {
            throw CheckpointError(source, "the manifest is not valid JSON of the expected form (\(Self.describe(error)))")
        }
        let problems = manifest.problems()
        guard problems.isEmpty else { throw CheckpointError(source, problems.joined(separator: "; ")) }
        return manifest
    }

    /// A decoding error in a line: what was wrong and where.
    static func describe(_ error: any Error) -> String {
        func at(_ path: [any CodingKey]) -> String {
            path.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().drop { $0 == "." }.description
        }
        switch error as? DecodingError {
        case .keyNotFound(let key, let c): return "no key \"\(key.stringValue)\" at \(at(c.codingPath).isEmpty ? "the top" : at(c.codingPath))"
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c):
            return "\(c.debugDescription)\(c.codingPath.isEmpty ? "" : " at " + at(c.codingPath))"
        default: return "\(error)"
        }
    }

    /// Everything implausible or inconsistent in the manifest itself.
    public func problems() -> [String] {
        var out: [String] = []
        if format != Self.format { out.append("manifest format \(format), this program reads \(Self.format)") }
        if !(1...1 << 20).contains(worldSize) { out.append("world size \(worldSize) is implausible") }
        if position.step < 0 || position.epoch < 0 || position.batch < 0 || position.sampleCursor < 0 {
            out.append("negative training position \(position)")
        }
        for f in files where !Self.isPlainFileName(f) { out.append("shard file name \"\(f)\" is not a plain file name") }
        if Set(files).count != files.count { out.append("a shard file is listed twice") }
        var seen = Set<String>()
        for t in tensors {
            if !seen.insert(t.name).inserted { out.append("tensor \(t.name) is listed twice") }
            if t.name.isEmpty || t.name.hasPrefix("/") || t.name.contains("..") { out.append("tensor name \"\(t.name)\" is not a dataset path") }
            if !files.contains(t.file) { out.append("tensor \(t.name) is in \(t.file), which is not among the files") }
            if t.shape.isEmpty || t.shape.count > 8 || t.shape.contains(where: { $0 < 1 || $0 > 1 << 40 })
                || t.shape.reduce(1.0, { $0 * Double($1) }) > Double(1 << 40) {
                out.append("tensor \(t.name) has implausible shape \(t.shape)")
            }
            if t.dtype != "float32" { out.append("tensor \(t.name) has dtype \(t.dtype), expected float32") }
            if UInt32(t.checksum, radix: 16) == nil || t.checksum.count != 8 { out.append("tensor \(t.name) has checksum \"\(t.checksum)\", expected 8 hex digits") }
        }
        if let p = placement, p.expertsByRank.count != p.ranks || !(1...1 << 20).contains(p.experts) {
            out.append("expert placement lists \(p.expertsByRank.count) ranks for \(p.ranks)")
        }
        return out
    }

    static func isPlainFileName(_ name: String) -> Bool {
        !name.isEmpty && !name.contains("/") && name != "." && name != ".." && name.utf8.count < 256
    }
}

/// A checkpoint that cannot be written, found or trusted: the checkpoint (or file) and what
/// is wrong, naming tensors where one is involved.
public struct CheckpointError: SwitchboardError, CustomStringConvertible {
    public let path: String, problem: String
    public init(_ path: String, _ problem: String) { self.path = path; self.problem = problem }
    public var description: String { "\(path): \(problem)" }
    public var message: String { description }
    public var exitCode: Int32 { 1 }
}
