import CKernels

/// Runs `body`, a call into a library that may allocate inside (OpenBLAS, OpenMPI), with the
/// test suite's allocation counter told so: it counts those allocations apart from ours.
/// Elsewhere it only runs `body`.
@inline(__always)
public func libraryCall<T>(_ body: () throws -> T) rethrows -> T {
    sb_inside_library(1)
    defer { sb_inside_library(0) }
    return try body()
}
