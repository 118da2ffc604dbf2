#pragma once
#include <stddef.h>
#include <stdint.h>

/// HDF5's Fletcher32 (`H5_checksum_fletcher32`, the `fletcher32` filter), bit for bit, with
/// AVX2 where the CPU has it (chosen at run time) and SSE2 otherwise.
uint32_t sb_fletcher32(const void *data, size_t bytes);

/// The same, with AVX2 only if `avx2` is non-zero and the CPU has it (tests run both paths).
uint32_t sb_fletcher32_isa(const void *data, size_t bytes, int avx2);
