import CHDF5
import Foundation

/// A dataset `[rows, columns]` (or `[rows]`) of float32 or int32 written a batch of rows at a
/// time, in chunks of `chunkRows` rows with Fletcher32 sums, so a writer of many rows holds
/// only its batch.
public final class HDF5RowWriter {
    public enum Element { case float32, int32 }
    let path: String, name: String
    let dataset: H5Handle, space: H5Handle
    let type: hid_t
    let columns: Int
    let rank: Int32

    /// `columns` nil: a one-dimensional dataset of `rows`.
    public init(_ file: HDF5File, _ name: String, rows: Int, columns: Int?, element: Element, chunkRows: Int) throws {
        path = file.path
        self.name = name
        self.columns = columns ?? 1
        type = element == .float32 ? sb_h5t_native_float() : sb_h5t_native_int32()
        let shape = columns.map { [rows, $0] } ?? [rows]
        rank = Int32(shape.count)
        dataset = try file.createDataset(name, shape: shape, type: type, elementBytes: 4, chunkBytes: max(1, chunkRows) * self.columns * 4).dataset
        space = H5Handle(try HDF5Library.check(H5Dget_space(dataset.id), path, "the shape of \(name)"), close: H5Sclose)
    }

    /// Closes the dataset, checking the result: its last chunks are written here, so a full
    /// disk shows up as an error before the file is committed.
    public func close() throws {
        try HDF5Library.check(space.close(), path, "closing the shape of \(name)")
        try HDF5Library.check(dataset.close(), path, "closing dataset \(name)")
    }

    /// Writes rows `first ..< first + count` from `data` (`count × columns` elements).
    public func write(first: Int, count: Int, _ data: UnsafeRawPointer) throws {
        guard count > 0 else { return }
        let start: [hsize_t] = rank == 2 ? [hsize_t(first), 0] : [hsize_t(first)]
        let block: [hsize_t] = rank == 2 ? [hsize_t(count), hsize_t(columns)] : [hsize_t(count)]
        try HDF5Library.check(H5Sselect_hyperslab(space.id, H5S_SELECT_SET, start, nil, block, nil), path, "selecting rows of \(name)")
        let memory = H5Handle(try HDF5Library.check(H5Screate_simple(rank, block, nil), path, "a batch of \(name)"), close: H5Sclose)
        try HDF5Library.check(H5Dwrite(dataset.id, type, memory.id, space.id, sb_h5p_default(), data), path,
                              "writing rows \(first)..<\(first + count) of \(name)")
    }
}
