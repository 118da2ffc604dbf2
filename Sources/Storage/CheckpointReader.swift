import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An open checkpoint: its manifest, read and validated, and verified reads of its tensors
/// (each shard must carry the save's id; every chunk's Fletcher32 and the tensor's checksum
/// must match). Used by the trainer's load and by `switchboard inspect`.
public final class CheckpointReader {
    /// The checkpoint folder and its main file.
    public let folder: String, mainPath: String
    public let manifest: CheckpointManifest
    public let tensors: [String: CheckpointManifest.Tensor]
    let tensorsByFile: [String: [CheckpointManifest.Tensor]]
    var shards: [String: HDF5File] = [:]
    /// `checkpoint.h5`, opened by the HDF5 library for reads through its links.
    var main: HDF5File?

    /// Opens the checkpoint at `path`: its folder, or its main file.
    public init(_ path: String) throws {
        folder = Self.folder(of: path)
        mainPath = "\(folder)/\(CheckpointManifest.mainFile)"
        guard FileManager.default.fileExists(atPath: mainPath) else { throw CheckpointError(folder, Self.notACheckpoint(path)) }
        do {
            let main = try HDF5File.open(mainPath)
            // The manifest's bytes are in the file: it cannot be larger than the file.
            let limit = min(CheckpointManifest.maxBytes, Self.fileSize(mainPath) ?? 0)
            manifest = try CheckpointManifest.decode(try main.readBytes(CheckpointManifest.manifestDataset, limit: limit), source: mainPath)
        } catch let e as HDF5Error {
            throw CheckpointError(mainPath, "cannot read the manifest: \(e.failure)")
        }
        tensors = Dictionary(manifest.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        tensorsByFile = Dictionary(grouping: manifest.tensors, by: \.file)
    }

    /// The size of the file at `path`, or nil when there is none.
    static func fileSize(_ path: String) -> Int? {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG ? Int(info.st_size) : nil
    }

    /// Tensor `name`, read and verified into a new array. Its shard is opened and checked
    /// first (`shard`), so nothing is allocated from a size the file's bytes do not back.
    public func values(_ name: String) throws -> [Float] {
        let t = try checkedTensor(name)
        var out = [Float](repeating: 0, count: t.count)
        try out.withUnsafeMutableBufferPointer { try read(name, into: $0.baseAddress!) }
        return out
    }

    /// Tensor `name` from the manifest, its shard opened and checked (`shard`): after this its
    /// size may be allocated.
    func checkedTensor(_ name: String) throws -> CheckpointManifest.Tensor {
        guard let t = tensors[name] else { throw CheckpointError(mainPath, "no tensor \(name) in the manifest") }
        do { _ = try shard(t.file, for: name) } catch let e as HDF5Error {
            throw CheckpointError("\(folder)/\(t.file)", "tensor \(name): \(e.failure)")
        }
        return t
    }

    /// Tensor `name` as the HDF5 library itself reads it through `checkpoint.h5`: its external
    /// link resolved as HDF5 resolves it, the datatype converted to native floats, every
    /// chunk's Fletcher32 checked by HDF5's own filter. What h5py and h5dump would see.
    public func valuesThroughLinks(_ name: String) throws -> [Float] {
        let t = try checkedTensor(name)
        var out = [Float](repeating: 0, count: t.count)
        do {
            let main = try self.main ?? HDF5File.open(mainPath)
            self.main = main
            try out.withUnsafeMutableBufferPointer { try main.readFloats(name, shape: t.shape, into: $0.baseAddress!) }
        } catch let e as HDF5Error {
            throw CheckpointError(mainPath, "tensor \(name) through its link: \(e.failure)")
        }
        return out
    }

    /// The first tensor the HDF5 library cannot reach through `checkpoint.h5`'s link as the
    /// manifest gives it (damaged metadata, a broken link), found by opening each one, no data
    /// read: what `inspect verify` calls unhealthy although the shards read and verify.
    public func firstUnreachableLink() -> String? {
        for t in manifest.tensors {
            do {
                let main = try self.main ?? HDF5File.open(mainPath)
                self.main = main
                let shape = try main.shape(of: t.name)
                if shape != t.shape { return "\(mainPath): tensor \(t.name) through its link has shape \(shape), the manifest \(t.shape)" }
            } catch let e as HDF5Error {
                return "\(mainPath): tensor \(t.name) through its link: \(e.failure)"
            } catch {
                return "\(mainPath): tensor \(t.name) through its link: \(error)"
            }
        }
        return nil
    }

    /// Why `path`, which has no main file, is no checkpoint.
    public static func notACheckpoint(_ path: String) -> String {
        FileManager.default.fileExists(atPath: folder(of: path))
            ? "no \(CheckpointManifest.mainFile): not a committed checkpoint (the manifest is written last)" : "no such checkpoint"
    }

    /// Whether `path` (a checkpoint folder or its main file) has a main file at all: a folder
    /// without one is no checkpoint (the manifest is written last).
    public static func hasMainFile(_ path: String) -> Bool {
        FileManager.default.fileExists(atPath: "\(folder(of: path))/\(CheckpointManifest.mainFile)")
    }

    /// The folder of a checkpoint given as its folder or its main file.
    public static func folder(of path: String) -> String {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        return trimmed.hasSuffix(".h5") ? ((trimmed as NSString).deletingLastPathComponent.nonEmpty ?? ".") : trimmed
    }

    /// Reads tensor `name` (as the manifest lists it) into `data`, verified.
    public func read(_ name: String, into data: UnsafeMutablePointer<Float>) throws {
        guard let t = tensors[name] else { throw CheckpointError(mainPath, "no tensor \(name) in the manifest") }
        let filePath = "\(folder)/\(t.file)"
        do {
            let file = try shard(t.file, for: name)
            let sum = String(format: "%08x", try file.readTensor(name, shape: t.shape, into: data))
            guard sum == t.checksum else {
                throw CheckpointError(filePath, "tensor \(name): checksum \(sum), the manifest says \(t.checksum)")
            }
        } catch let e as HDF5Error {
            throw CheckpointError(filePath, "tensor \(name): \(e.failure)")
        }
    }

    /// Opens shard `file` and checks it belongs to this save, naming the tensors it holds
    /// when it does not.
    public func checkShard(_ file: String) throws {
        let held = manifest.tensors.filter { $0.file == file }
        do {
            _ = try shard(file, for: held.first?.name ?? "(none)")
        } catch let e as CheckpointError {
            throw CheckpointError(e.path, e.problem + (held.count > 1 ? " and \(held.count - 1) more" : ""))
        } catch let e as HDF5Error {
            let names = held.first.map { " (tensor \($0.name)" + (held.count > 1 ? " and \(held.count - 1) more)" : ")") } ?? ""
            throw CheckpointError(e.path, "\(e.failure); it holds \(held.count) tensors\(names)")
        }
    }

    /// The shard file `file`, opened once and checked to belong to this save.
    func shard(_ file: String, for name: String) throws -> HDF5File {
        if let open = shards[file] { return open }
        let filePath = "\(folder)/\(file)"
        guard FileManager.default.fileExists(atPath: filePath) else {
            throw CheckpointError(filePath, "missing: it holds tensor \(name)")
        }
        let opened = try HDF5File.open(filePath)
        let id = try opened.attribute("checkpoint_id")
        guard id == manifest.id else {
            throw CheckpointError(filePath, "belongs to save \(id), the manifest to \(manifest.id) (tensor \(name))")
        }
        // A shape is trusted only as far as the bytes on disk go: the tensors a shard holds
        // cannot take more bytes than the file has (its chunks hold every element, and more).
        let held = tensorsByFile[file] ?? []
        let declared = held.reduce(0.0) { $0 + 4 * Double($1.count) }
        let size = Self.fileSize(filePath) ?? 0
        guard declared <= Double(size) else {
            throw CheckpointError(filePath, "the manifest gives its \(held.count) tensors \(String(format: "%.0f", declared)) bytes, "
                                  + "the file holds \(size) (tensor \(name))")
        }
        shards[file] = opened
        return opened
    }
}
