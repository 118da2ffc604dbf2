#if canImport(Glibc)
import Glibc
#endif

/// Where the buffers of a model that is only counted point (`BuildContext`'s counting mode): a
/// reservation of address space that may not be read or written, so a layer that touches a
/// buffer it was only promised crashes at once instead of writing somewhere else.
///
/// 1 GiB of address space, no memory (PROT_NONE, MAP_NORESERVE); every placeholder starts at
/// its beginning, so an access within a placeholder's first 256 M floats traps. A process
/// whose address space is limited below that gets one page (`RLIMIT_AS`).
public enum Placeholder {
    nonisolated(unsafe) public static let address: UnsafeMutableRawPointer = {
        for bytes in [1 << 30, 1 << 16] {
            let p = mmap(nil, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            if let p, p != MAP_FAILED { return p }
        }
        fatalError("could not reserve address space for a counted model's placeholders: \(String(cString: strerror(errno)))")
    }()

    /// The number of elements of `shape`, or `Int.max` where that overflows (a counted model
    /// may be far larger than any machine: its size is counted in `Double`, not here).
    public static func count(_ shape: [Int]) -> Int {
        var n = 1
        for d in shape {
            let (p, overflow) = n.multipliedReportingOverflow(by: d)
            if overflow { return Int.max }
            n = p
        }
        return n
    }
}
