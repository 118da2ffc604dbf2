import Errors
import Foundation
import Layers
import Storage

/// The trained parameters as one HDF5 file, `model.h5`: a float32 dataset per parameter
/// under its global name, with the program version, step and resolved config as attributes.
/// Readable by any HDF5 tool (`h5ls -r`, h5py). Not a resumable checkpoint: no optimizer
/// state or data position.
public enum ModelFile {
    /// Writes to `<path>.tmp`, flushes, then renames, so `path` is either absent or whole.
    public static func write(_ model: Model, to path: String, step: Int, configTOML: String) throws {
        try write(model.store.parameters, to: path, step: step, configTOML: configTOML) { UnsafePointer($0.value) }
    }

    /// Writes `parameters` as `write(_:to:…)` does, each from where `values` says, one after
    /// another; with `path` nil only `values` is called, for each parameter in the same order
    /// (a rank that sends its experts to the one that writes).
    public static func write(_ parameters: [Parameter], to path: String?, step: Int, configTOML: String,
                             values: (Parameter) throws -> UnsafePointer<Float>?) throws {
        guard let path else {
            for p in parameters { _ = try values(p) }
            return
        }
        let tmp = path + ".tmp"
        do {
            let file = try HDF5File.create(tmp)
            for p in parameters {
                guard let v = try values(p) else { preconditionFailure("no values for \(p.name) where model.h5 is written") }
                try file.writeFloats(p.name, shape: p.shape, v)
            }
            try file.setAttribute("switchboard_version", Switchboard.version)
            try file.setAttribute("step", String(step))
            try file.setAttribute("config", configTOML)
            try file.flush()
        }
        guard rename(tmp, path) == 0 else {
            throw DiskError(path, "cannot move \(tmp) into place (\(systemMessage()))")
        }
    }

    /// Loads every parameter of `model` from `path`, checking names and shapes.
    public static func read(_ model: Model, from path: String) throws {
        let file = try HDF5File.open(path)
        for p in model.store.parameters { try file.readFloats(p.name, shape: p.shape, into: p.value) }
    }
}
