import Foundation
import Storage

/// Refuses samples of `width` features (from `file`) that the model of `checkpoint` does not
/// take: the input width of its first matrix (`embed`, a stack's `layers.0`, or a bare head).
func checkFeatures(_ width: Int, of file: String, fit checkpoint: CheckpointReader) throws {
    guard let first = ["embed.weight", "layers.0.weight", "head.weight"].lazy.compactMap({ checkpoint.tensors[CheckpointNames.parameter($0)] }).first,
          first.shape.count == 2, first.shape[1] != width else { return }
    throw DataError(file, "has \(width) features per sample; the model of \(checkpoint.folder) takes \(first.shape[1])")
}

/// Refuses an output path whose folder does not exist (a disk problem: exit 1).
func checkOutputFolder(_ path: String) throws {
    let parent = (path as NSString).deletingLastPathComponent, folder = parent.isEmpty ? "." : parent
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder), isFolder.boolValue else {
        throw DiskError(path, "cannot write: the folder \(folder) does not exist")
    }
}
