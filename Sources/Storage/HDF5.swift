import CHDF5
import Errors

/// A failed HDF5 call: what was being done, to which file or object, and HDF5's own
/// messages (its automatic printing to stderr is switched off).
public struct HDF5Error: SwitchboardError, CustomStringConvertible {
    public let path: String
    public let action: String
    public let details: String
    /// "`action` failed (`details`)", without the path.
    public var failure: String { failedCall(action, details) }
    public var description: String { "\(path): \(failure)" }
    public var message: String { description }
    public var exitCode: Int32 { 1 }
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
                // One line whatever HDF5 embeds: its open failures carry ctime()'s text,
                // newline included ("time = Mon Dec  7 15:38:04 2026\n, name = …").
                if let desc = err.pointee.desc {
                    let parts = String(cString: desc).split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                    lines.pointee.append(parts.joined(separator: " ").replacingOccurrences(of: " ,", with: ","))
                }
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
    private let closer: (hid_t) -> herr_t
    private var isOpen = true
    init(_ id: hid_t, close: @escaping (hid_t) -> herr_t) {
        self.id = id
        self.closer = close
    }
    /// Closes now (once); the result of HDF5's close call.
    func close() -> herr_t {
        guard isOpen else { return 0 }
        isOpen = false
        return closer(id)
    }
    deinit { _ = close() }
}

/// An HDF5 file opened for writing (created, truncating) or reading.
public final class HDF5File {
    public let path: String
    let handle: H5Handle
    /// The chunk `writeTensor` hands HDF5, one for the file's life: a buffer made per tensor
    /// was left behind in the heap by the metadata HDF5 allocates for the next dataset, so a
    /// checkpoint of many tensors grew the process by about its own size.
    private(set) var staging: UnsafeMutableRawPointer?
    private var stagingBytes = 0

    /// `staging`, at least `bytes` long.
    func stagingBuffer(_ bytes: Int) -> UnsafeMutableRawPointer {
        if bytes > stagingBytes {
            staging?.deallocate()
            staging = .allocate(byteCount: bytes, alignment: 64)
            stagingBytes = bytes
        }
        return staging!
    }

    deinit { staging?.deallocate() }

    /// Creates `path`, replacing a file of that name, in the file format of HDF5 1.10: its
    /// superblock, object headers and chunk indexes carry checksums, so a flipped bit in the
    /// metadata (a datatype's byte order, a link) fails HDF5's own reads instead of changing
    /// what they return. Readable by HDF5 1.10 (2016) and later, h5py's included.
    public static func create(_ path: String) throws -> HDF5File {
        _ = HDF5Library.quiet
        let access = H5Handle(try HDF5Library.check(H5Pcreate(sb_h5p_file_access()), path, "file access properties"), close: H5Pclose)
        try HDF5Library.check(H5Pset_libver_bounds(access.id, H5F_LIBVER_V110, H5F_LIBVER_V110), path, "choosing the file format")
        let id = try HDF5Library.check(H5Fcreate(path, sb_h5f_acc_trunc(), sb_h5p_default(), access.id), path, "creating the file")
        return HDF5File(path: path, handle: H5Handle(id, close: H5Fclose))
    }

    /// Opens `path` read-only.
    public static func open(_ path: String) throws -> HDF5File {
        _ = HDF5Library.quiet
        let id = try HDF5Library.check(H5Fopen(path, sb_h5f_acc_rdonly(), sb_h5p_default()), path, "opening the file")
        return HDF5File(path: path, handle: H5Handle(id, close: H5Fclose))
    }

    /// A datatype as an error names it: "float32, big-endian", "integer of 2 bytes".
    static func describe(type: hid_t) -> String {
        let bits = H5Tget_size(type) * 8
        let order = H5Tget_order(type) == H5T_ORDER_BE ? ", big-endian" : ""
        switch H5Tget_class(type) {
        case H5T_FLOAT: return "float\(bits)\(order)"
        case H5T_INTEGER: return "\(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int")\(bits)\(order)"
        case H5T_STRING: return "a string"
        default: return "a compound or other non-numeric type"
        }
    }

    private init(path: String, handle: H5Handle) {
        self.path = path
        self.handle = handle
    }

    /// Writes a float32 dataset of `shape` at `name` (intermediate groups are created),
    /// chunked and protected by the Fletcher32 checksum, so a flipped byte fails the read.
    public func writeFloats(_ name: String, shape: [Int], _ data: UnsafePointer<Float>) throws {
        try write(name, shape: shape, type: sb_h5t_native_float(), elementBytes: 4, data)
    }

    /// Writes bytes as a one-dimensional uint8 dataset (chunked, Fletcher32).
    public func writeBytes(_ name: String, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write(name, shape: [max(bytes.count, 1)], type: sb_h5t_native_uint8(), elementBytes: 1, $0.baseAddress!) }
    }

    /// Reads a one-dimensional uint8 dataset of at most `limit` bytes.
    public func readBytes(_ name: String, limit: Int) throws -> [UInt8] {
        let shape = try shape(of: name)
        guard shape.count == 1, shape[0] <= limit else {
            throw HDF5Error(path: path, action: "reading \(name)", details: "shape \(shape), expected at most \(limit) bytes")
        }
        var out = [UInt8](repeating: 0, count: shape[0])
        let dataset = try openDataset(name)
        try out.withUnsafeMutableBytes { buffer in
            _ = try HDF5Library.check(H5Dread(dataset.id, sb_h5t_native_uint8(), sb_h5s_all(), sb_h5s_all(), sb_h5p_default(), buffer.baseAddress!),
                                  path, "reading dataset \(name)")
        }
        return out
    }

    /// Writes a uint8 dataset of `shape` (chunks of about `chunkBytes`, Fletcher32).
    public func writeUInt8(_ name: String, shape: [Int], _ data: UnsafePointer<UInt8>, chunkBytes: Int = 1 << 20) throws {
        try write(name, shape: shape, type: sb_h5t_native_uint8(), elementBytes: 1, data, chunkBytes: chunkBytes)
    }

    private func write(_ name: String, shape: [Int], type: hid_t, elementBytes: Int, _ data: UnsafeRawPointer,
                       chunkBytes: Int = 1 << 20) throws {
        let dataset = try createDataset(name, shape: shape, type: type, elementBytes: elementBytes, chunkBytes: chunkBytes).dataset
        try HDF5Library.check(H5Dwrite(dataset.id, type, sb_h5s_all(), sb_h5s_all(), sb_h5p_default(), data),
                              path, "writing dataset \(name)")
    }

    /// Creates a chunked, Fletcher32-checksummed dataset: chunks of whole rows, about
    /// `chunkBytes` (1 MiB by default).
    func createDataset(_ name: String, shape: [Int], type: hid_t, elementBytes: Int, chunkBytes: Int = 1 << 20) throws
        -> (dataset: H5Handle, chunkRows: Int) {
        let count = shape.reduce(1, *)
        precondition(count > 0, "empty dataset \(name)")
        let dims = shape.map { hsize_t($0) }
        let space = H5Handle(try HDF5Library.check(H5Screate_simple(Int32(dims.count), dims, nil), path, "describing \(name)"), close: H5Sclose)
        let plist = H5Handle(try HDF5Library.check(H5Pcreate(sb_h5p_dataset_create()), path, "dataset properties for \(name)"), close: H5Pclose)
        let rowElements = dims.dropFirst().reduce(1, *)
        var chunk = dims
        chunk[0] = Self.chunkRows(rows: dims[0], rowElements: rowElements, elementBytes: elementBytes, chunkBytes: chunkBytes)
        try HDF5Library.check(H5Pset_chunk(plist.id, Int32(chunk.count), chunk), path, "chunking \(name)")
        try HDF5Library.check(H5Pset_fletcher32(plist.id), path, "checksumming \(name)")
        let links = try intermediateGroups()
        let dataset = H5Handle(try HDF5Library.check(
            H5Dcreate2(handle.id, name, type, space.id, links.id, plist.id, sb_h5p_default()),
            path, "creating dataset \(name)"), close: H5Dclose)
        return (dataset, Int(chunk[0]))
    }

    /// Rows per chunk: about `chunkBytes` of whole rows, at least one row, at most all of them.
    static func chunkRows(rows: hsize_t, rowElements: hsize_t, elementBytes: Int, chunkBytes: Int) -> hsize_t {
        max(1, min(rows, hsize_t(chunkBytes / elementBytes) / max(rowElements, 1)))
    }

    /// Link-creation properties that make missing groups on the way.
    private func intermediateGroups() throws -> H5Handle {
        let links = H5Handle(try HDF5Library.check(H5Pcreate(sb_h5p_link_create()), path, "link properties"), close: H5Pclose)
        try HDF5Library.check(H5Pset_create_intermediate_group(links.id, 1), path, "link properties")
        return links
    }

    /// Opens dataset `name`; `cacheBytes` sizes its chunk cache (HDF5's default is 1 MiB).
    func openDataset(_ name: String, cacheBytes: Int? = nil) throws -> H5Handle {
        var access = sb_h5p_default()
        var properties: H5Handle?
        if let cacheBytes {
            let p = H5Handle(try HDF5Library.check(H5Pcreate(sb_h5p_dataset_access()), path, "dataset access properties"), close: H5Pclose)
            try HDF5Library.check(H5Pset_chunk_cache(p.id, 12_421, cacheBytes, 0.75), path, "sizing the chunk cache of \(name)")
            access = p.id
            properties = p
        }
        defer { withExtendedLifetime(properties) {} }
        return H5Handle(try HDF5Library.check(H5Dopen2(handle.id, name, access), path, "opening dataset \(name)"), close: H5Dclose)
    }

    /// The shape of dataset `name` (following links), without reading its data.
    public func shape(of name: String) throws -> [Int] {
        let dataset = try openDataset(name)
        let space = H5Handle(try HDF5Library.check(H5Dget_space(dataset.id), path, "reading the shape of \(name)"), close: H5Sclose)
        let rank = Int(try HDF5Library.check(H5Sget_simple_extent_ndims(space.id), path, "reading the shape of \(name)"))
        guard rank <= 32 else { throw HDF5Error(path: path, action: "reading \(name)", details: "rank \(rank) is implausible") }
        var dims = [hsize_t](repeating: 0, count: max(rank, 1))
        try HDF5Library.check(H5Sget_simple_extent_dims(space.id, &dims, nil), path, "reading the shape of \(name)")
        return dims.prefix(rank).map { Int($0) }
    }

    /// Reads the float32 dataset `name`, checking its shape is `shape` before reading.
    public func readFloats(_ name: String, shape: [Int], into data: UnsafeMutablePointer<Float>) throws {
        let found = try self.shape(of: name)
        guard found == shape else {
            throw HDF5Error(path: path, action: "reading \(name)", details: "shape \(found), expected \(shape)")
        }
        let dataset = try openDataset(name)
        try HDF5Library.check(H5Dread(dataset.id, sb_h5t_native_float(), sb_h5s_all(), sb_h5s_all(), sb_h5p_default(), data),
                              path, "reading dataset \(name)")
    }

    /// Reads the integer dataset `name` of shape `[count]` as int32, checking the shape first.
    public func readInt32(_ name: String, count: Int, into data: UnsafeMutablePointer<Int32>) throws {
        let found = try shape(of: name)
        guard found == [count] else {
            throw HDF5Error(path: path, action: "reading \(name)", details: "shape \(found), expected [\(count)]")
        }
        let dataset = try openDataset(name)
        try HDF5Library.check(H5Dread(dataset.id, sb_h5t_native_int32(), sb_h5s_all(), sb_h5s_all(), sb_h5p_default(), data),
                              path, "reading dataset \(name)")
    }

    /// Makes `name` a link to `object` in the HDF5 file `file` (a path relative to this
    /// file's folder, where HDF5 looks first), creating groups on the way.
    public func linkExternal(_ name: String, file: String, object: String) throws {
        let links = try intermediateGroups()
        try HDF5Library.check(H5Lcreate_external(file, object, handle.id, name, links.id, sb_h5p_default()),
                              path, "linking \(name) to \(file):\(object)")
    }

    /// Whether a link `name` exists (each group on the way must exist too).
    public func contains(_ name: String) -> Bool {
        var prefix = ""
        for part in name.split(separator: "/") {
            prefix += "/" + part
            guard H5Lexists(handle.id, prefix, sb_h5p_default()) > 0 else { H5Eclear2(sb_h5e_default()); return false }
        }
        return true
    }

    /// The string attribute `name` of the root group, at most `limit` bytes.
    public func attribute(_ name: String, limit: Int = 1 << 20) throws -> String {
        let attr = H5Handle(try HDF5Library.check(H5Aopen(handle.id, name, sb_h5p_default()), path, "opening attribute \(name)"), close: H5Aclose)
        let type = H5Handle(try HDF5Library.check(H5Aget_type(attr.id), path, "attribute \(name)"), close: H5Tclose)
        guard H5Tget_class(type.id) == H5T_STRING, H5Tis_variable_str(type.id) == 0 else {
            throw HDF5Error(path: path, action: "reading attribute \(name)", details: "not a fixed-length string")
        }
        let size = H5Tget_size(type.id)
        guard size > 0, size <= limit else {
            throw HDF5Error(path: path, action: "reading attribute \(name)", details: "\(size) bytes, expected at most \(limit)")
        }
        var bytes = [UInt8](repeating: 0, count: size)
        try HDF5Library.check(H5Aread(attr.id, type.id, &bytes), path, "reading attribute \(name)")
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
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

    /// Closes the file now, reporting a failed close (the last buffered writes happen here).
    public func close() throws {
        try HDF5Library.check(handle.close(), path, "closing")
    }
}
