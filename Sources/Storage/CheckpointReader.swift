import Foundation

/// An open checkpoint: its manifest, read and validated, and verified reads of its tensors
/// (each shard must carry the save's id; every chunk's Fletcher32 and the tensor's checksum
/// must match). Used by the trainer's load and by `switchboard inspect`.
public final class CheckpointReader {
    /// The checkpoint folder and its main file.
    public let folder: String, mainPath: String
    public let manifest: CheckpointManifest
    public let tensors: [String: CheckpointManifest.Tensor]
    var shards: [String: HDF5File] = [:]

    /// Opens the checkpoint at `path`: its folder, or its main file.
    public init(_ path: String) throws {
        folder = Self.folder(of: path)
        mainPath = "\(folder)/\(CheckpointManifest.mainFile)"
        guard FileManager.default.fileExists(atPath: mainPath) else {
            let what = FileManager.default.fileExists(atPath: folder) ? "no \(CheckpointManifest.mainFile): not a committed checkpoint (the manifest is written last)"
                : "no such checkpoint"
            throw CheckpointError(folder, what)
        }
        do {
            let main = try HDF5File.open(mainPath)
            manifest = try CheckpointManifest.decode(try main.readBytes(CheckpointManifest.manifestDataset, limit: CheckpointManifest.maxBytes),
                                                     source: mainPath)
        } catch let e as HDF5Error {
            throw CheckpointError(mainPath, "cannot read the manifest: \(e.failure)")
        }
        tensors = Dictionary(manifest.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
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
        shards[file] = opened
        return opened
    }
}
