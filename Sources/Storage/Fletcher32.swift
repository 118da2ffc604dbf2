import CChecksum

/// HDF5's Fletcher32 checksum (`H5_checksum_fletcher32`, the `fletcher32` filter), bit for
/// bit, vectorized in C (`CChecksum`: AVX2 when the CPU has it, chosen at run time). HDF5's
/// own loop goes a word at a time and checks at a third of the disk's read rate here.
public enum Fletcher32 {
    @inline(__always)
    public static func checksum(_ data: UnsafeRawPointer, bytes: Int) -> UInt32 {
        sb_fletcher32(data, bytes)
    }

    /// The same through the SSE2 path even where AVX2 exists (for tests of both paths).
    public static func checksumWithoutAVX2(_ data: UnsafeRawPointer, bytes: Int) -> UInt32 {
        sb_fletcher32_isa(data, bytes, 0)
    }
}
