import CHDF5
import Foundation
import Kernels

/// Reads the next pass's rows on a thread of its own while the current pass computes: the
/// trainer names the rows it will ask for next (`start`), and `take` hands them over when
/// they are asked for, waiting only if the read is not done. One request at a time, into
/// buffers made here, so a step allocates nothing. Needs an HDF5 library built thread-safe
/// (`isAvailable`); the reads then never overlap another thread's HDF5 calls unsafely.
public final class RowPrefetcher: @unchecked Sendable {
    let files: SampleFiles
    let rows: Int
    /// The requested samples and their features, read.
    let indices: UnsafeMutablePointer<Int32>
    let x: Tensor
    let scratch: ReadScratch
    var count = 0
    /// Set while a request is out; its error, if the read failed.
    var pending = false
    var failure: (any Error)?
    /// Set by `close()`: the thread ends at its next request.
    var closing = false
    let request = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)

    /// Whether the HDF5 library may be called from two threads.
    public static var isAvailable: Bool {
        var safe: hbool_t = false
        return H5is_library_threadsafe(&safe) >= 0 && safe
    }

    public static var isAvailableText: String {
        isAvailable ? "on (HDF5 is thread-safe)" : "off (this HDF5 library is not built thread-safe)"
    }

    init(_ files: SampleFiles, rows: Int) {
        self.files = files
        self.rows = rows
        indices = .allocate(capacity: max(rows, 1))
        x = Tensor(shape: [max(rows, 1), files.width])
        scratch = files.scratch(rows: rows)
        // The thread holds the prefetcher until `close()` ends it.
        let thread = Thread {
            while true {
                self.request.wait()
                if self.closing { return }
                do {
                    try self.files.read(UnsafeBufferPointer(start: self.indices, count: self.count), into: self.x.data, scratch: self.scratch)
                } catch {
                    self.failure = error
                }
                self.done.signal()
            }
        }
        thread.name = "switchboard input"
        thread.start()
    }

    /// Ends the thread (after the read in progress, if any).
    func close() {
        if pending { done.wait() }
        pending = false
        closing = true
        request.signal()
    }

    /// Starts reading `next` (at most `rows` samples). A request still out is finished first.
    func start(_ next: UnsafeBufferPointer<Int32>) {
        precondition(next.count <= rows, "\(next.count) rows for a prefetcher of \(rows)")
        if pending { done.wait() }
        guard !next.isEmpty else { pending = false; return }
        indices.update(from: next.baseAddress!, count: next.count)
        count = next.count
        failure = nil
        pending = true
        request.signal()
    }

    /// Copies the rows read for `wanted` into `out` and returns true, or false when the
    /// request out was for other rows (or none is out). Either way no read is in progress
    /// after it: the caller may then read itself (the reads share a chunk cache). Throws the
    /// read's error.
    func take(_ wanted: UnsafeBufferPointer<Int32>, into out: UnsafeMutablePointer<Float>) throws -> Bool {
        guard pending else { return false }
        done.wait()
        pending = false
        guard !wanted.isEmpty, wanted.count == count, memcmp(wanted.baseAddress!, indices, count * 4) == 0 else { return false }
        if let failure { throw failure }
        out.update(from: x.data, count: count * files.width)
        return true
    }
}
