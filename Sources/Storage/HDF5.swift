import CHDF5

/// A failed HDF5 call: what was being done, to which file or object, and HDF5's own
/// messages (its automatic printing to stderr is switched off).
public struct HDF5Error: Error, CustomStringConvertible {
    public let path: String
    public let action: String
    public let details: String
    public var description: String { "\(path): \(action) failed" + (details.isEmpty ? "" : " (\(details))") }
}

/// Process-wide HDF5 setup.
enum HDF5Library {
    /// Turns off HDF5's printing of error stacks; errors are reported as `HDF5Error`.
    static let quiet: Void = {
        H5open()
        H5Eset_auto2(sb_h5e_default(), nil, nil)
    }()

    /// The current error stack's messages, innermost last, as one line.
    static func messages() -> String {
        var lines: [String] = []
        withUnsafeMutablePointer(to: &lines) { box in
            _ = H5Ewalk2(sb_h5e_default(), H5E_WALK_DOWNWARD, { _, err, data in
                guard let err, let data else { return 0 }
                let lines = data.assumingMemoryBound(to: [String].self)
                if let desc = err.pointee.desc { lines.pointee.append(String(cString: desc)) }
                return 0
            }, box)
        }
        H5Eclear2(sb_h5e_default())
        return lines.joined(separator: "; ")
    }

    /// Throws unless `status` is non-negative.
    @discardableResult
    static func check<T: BinaryInteger>(_ status: T, _ path: String, _ action: @autoclosure () -> String) throws -> T {
        if status < 0 { throw HDF5Error(path: path, action: action(), details: messages()) }
        return status
    }
}

/// An owned HDF5 identifier, closed exactly once when the handle goes away.
final class H5Handle {
    let id: hid_t
    private let close: (hid_t) -> herr_t
    init(_ id: hid_t, close: @escaping (hid_t) -> herr_t) {
        self.id = id
        self.close = close
    }
    deinit { _ = close(id) }
}

/// An HDF5 file opened for writing (created, truncating) or reading.
public final class HDF5File {
    public let path: String
    let handle: H5Handle

    /// Creates `path`, replacing a file of that name.
    public static func create(_ path: String) throws -> HDF5File {
        _ = HDF5Library.quiet
        let id = try HDF5Library.check(H5Fcreate(path, sb_h5f_acc_trunc(), sb_h5p_default(), sb_h5p_default()), path, "creating the file")
        return HDF5File(path: path, handle: H5Handle(id, close: H5Fclose))
    }

    /// Opens `path` read-only.
    public static func open(_ path: String) throws -> HDF5File {
        _ = HDF5Library.quiet
        let id = try HDF5Library.check(H5Fopen(path, sb_h5f_acc_rdonly(), sb_h5p_default()), path, "opening the file")
        return HDF5File(path: path, handle: H5Handle(id, close: H5Fclose))
    }

    private init(path: String, handle: H5Handle) {
        self.path = path
        self.handle = handle
    }

    /// Writes a float32 dataset of `shape` at `name` (intermediate groups are created),
    /// chunked and protected by the Fletcher32 checksum, so a flipped byte fails the read.
    public func writeFloats(_ name: String, shape: [Int], _ data: UnsafePointer<Float>) throws {
        let count = shape.reduce(1, *)
        precondition(count > 0, "empty dataset \(name)")
        let dims = shape.map { hsize_t($0) }
        let space = H5Handle(try HDF5Library.check(H5Screate_simple(Int32(dims.count), dims, nil), path, "describing \(name)"), close: H5Sclose)
        let plist = H5Handle(try HDF5Library.check(H5Pcreate(sb_h5p_dataset_create()), path, "dataset properties for \(name)"), close: H5Pclose)
        // Chunks of about 1 MiB: whole rows, at least one.
        let rowElements = dims.dropFirst().reduce(1, *)
        var chunk = dims
        chunk[0] = max(1, min(dims[0], hsize_t(262_144) / max(rowElements, 1)))
        try HDF5Library.check(H5Pset_chunk(plist.id, Int32(chunk.count), chunk), path, "chunking \(name)")
        try HDF5Library.check(H5Pset_fletcher32(plist.id), path, "checksumming \(name)")
        let links = H5Handle(try HDF5Library.check(H5Pcreate(sb_h5p_link_create()), path, "link properties"), close: H5Pclose)
        try HDF5Library.check(H5Pset_create_intermediate_group(links.id, 1), path, "link properties")
        let dataset = H5Handle(try HDF5Library.check(
            H5Dcreate2(handle.id, name, sb_h5t_native_float(), space.id, links.id, plist.id, sb_h5p_default()),
            path, "creating dataset \(name)"), close: H5Dclose)
        try HDF5Library.check(H5Dwrite(dataset.id, sb_h5t_native_float(), sb_h5s_all(), sb_h5s_all(), sb_h5p_default(), data),
                              path, "writing dataset \(name)")
    }

    /// Reads the float32 dataset `name`, checking its shape is `shape` before reading.
    public func readFloats(_ name: String, shape: [Int], into data: UnsafeMutablePointer<Float>) throws {
        let dataset = H5Handle(try HDF5Library.check(H5Dopen2(handle.id, name, sb_h5p_default()), path, "opening dataset \(name)"), close: H5Dclose)
        let space = H5Handle(try HDF5Library.check(H5Dget_space(dataset.id), path, "reading the shape of \(name)"), close: H5Sclose)
        let rank = Int(try HDF5Library.check(H5Sget_simple_extent_ndims(space.id), path, "reading the shape of \(name)"))
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        guard rank <= 32 else { throw HDF5Error(path: path, action: "reading \(name)", details: "rank \(rank) is implausible") }
        try HDF5Library.check(H5Sget_simple_extent_dims(space.id, &dims, nil), path, "reading the shape of \(name)")
        let found = dims.prefix(rank).map { Int($0) }
        guard found == shape else {
            throw HDF5Error(path: path, action: "reading \(name)", details: "shape \(found), expected \(shape)")
        }
        try HDF5Library.check(H5Dread(dataset.id, sb_h5t_native_float(), sb_h5s_all(), sb_h5s_all(), sb_h5p_default(), data),
                              path, "reading dataset \(name)")
    }

    /// Sets a string attribute on the file's root group.
    public func setAttribute(_ name: String, _ value: String) throws {
        let type = H5Handle(try HDF5Library.check(H5Tcopy(sb_h5t_c_s1()), path, "string type"), close: H5Tclose)
        let bytes = Array(value.utf8)
        try HDF5Library.check(H5Tset_size(type.id, max(bytes.count, 1)), path, "string type")
        let space = H5Handle(try HDF5Library.check(H5Screate(H5S_SCALAR), path, "attribute \(name)"), close: H5Sclose)
        let attr = H5Handle(try HDF5Library.check(
            H5Acreate2(handle.id, name, type.id, space.id, sb_h5p_default(), sb_h5p_default()), path, "creating attribute \(name)"),
            close: H5Aclose)
        let padded = bytes.isEmpty ? [UInt8(0)] : bytes
        try HDF5Library.check(H5Awrite(attr.id, type.id, padded), path, "writing attribute \(name)")
    }

    /// Flushes the file's buffers to the operating system.
    public func flush() throws {
        try HDF5Library.check(H5Fflush(handle.id, H5F_SCOPE_GLOBAL), path, "flushing")
    }
}
