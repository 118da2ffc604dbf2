#if canImport(Glibc)
import Glibc
#endif

/// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11):
/// a counter-based generator. Every number is a pure function of `(seed, stream, index)`,
/// so any rank draws the same value for the same global sample or parameter element
/// without communication, and nothing needs to be saved beyond the seed and counters.
public struct Philox: Sendable {
    public let seed: UInt64

    public init(seed: UInt64) { self.seed = seed }

    /// The raw block for counter `(c0, c1, c2, c3)` under this seed.
    public func block(_ c0: UInt32, _ c1: UInt32, _ c2: UInt32, _ c3: UInt32) -> SIMD4<UInt32> {
        var c = SIMD4<UInt32>(c0, c1, c2, c3)
        var k0 = UInt32(truncatingIfNeeded: seed), k1 = UInt32(truncatingIfNeeded: seed >> 32)
        for _ in 0..<10 {
            let p0 = UInt64(0xD251_1F53) &* UInt64(c[0])
            let p1 = UInt64(0xCD9E_8D57) &* UInt64(c[2])
            c = SIMD4(
                UInt32(truncatingIfNeeded: p1 >> 32) ^ c[1] ^ k0, UInt32(truncatingIfNeeded: p1),
                UInt32(truncatingIfNeeded: p0 >> 32) ^ c[3] ^ k1, UInt32(truncatingIfNeeded: p0))
            k0 &+= 0x9E37_79B9
            k1 &+= 0xBB67_AE85
        }
        return c
    }

    /// Four 32-bit words for element block `index` of `stream`.
    @inline(__always)
    public func words(stream: UInt64, block index: UInt64) -> SIMD4<UInt32> {
        block(
            UInt32(truncatingIfNeeded: index), UInt32(truncatingIfNeeded: index >> 32),
            UInt32(truncatingIfNeeded: stream), UInt32(truncatingIfNeeded: stream >> 32))
    }

    /// Uniform in [0, 1) with 24 random bits, for element `index` of `stream`.
    @inline(__always)
    public func uniform(stream: UInt64, index: UInt64) -> Float {
        let w = words(stream: stream, block: index >> 2)[Int(index & 3)]
        return Float(w >> 8) * 0x1p-24
    }

    /// Fills `out` with uniforms in [lo, hi) for elements `first ..< first + n` of `stream`.
    public func fillUniform(
        _ out: UnsafeMutablePointer<Float>, count n: Int, stream: UInt64, first: UInt64 = 0,
        lo: Float = 0, hi: Float = 1
    ) {
        for i in 0..<n { out[i] = lo + (hi - lo) * uniform(stream: stream, index: first + UInt64(i)) }
    }

    /// Standard normal for element `index` of `stream` (Box–Muller on two words of a block).
    public func normal(stream: UInt64, index: UInt64) -> Float {
        let w = words(stream: stream, block: index)
        let u1 = (Double(w[0]) + 1) * 0x1p-32, u2 = Double(w[1]) * 0x1p-32
        return Float((-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
    }

    /// An integer uniform in `0 ..< bound` (bound > 0) from 64 random bits; the modulo bias
    /// is below 2^-32 for any bound used here (dataset sizes).
    public func integer(below bound: Int, stream: UInt64, index: UInt64) -> Int {
        let w = words(stream: stream, block: index)
        let x = UInt64(w[0]) | UInt64(w[1]) << 32
        return Int(x % UInt64(bound))
    }

    /// A permutation of `0 ..< n` (Fisher–Yates, the swap at position i drawn from element i).
    public func permutation(_ n: Int, stream: UInt64) -> [Int32] {
        var p = (0..<Int32(n)).map { $0 }
        fillPermutation(&p, stream: stream)
        return p
    }

    /// Overwrites `p` with a permutation of `0 ..< p.count`; no allocation.
    public func fillPermutation(_ p: inout [Int32], stream: UInt64) {
        for i in 0..<p.count { p[i] = Int32(i) }
        var i = p.count - 1
        while i > 0 {
            let j = integer(below: i + 1, stream: stream, index: UInt64(i))
            p.swapAt(i, j)
            i -= 1
        }
    }
}

/// Named RNG streams, so that draws for different purposes never share counters.
public enum RNGStream {
    /// Stream for the epoch's sample order.
    public static func shuffle(epoch: Int) -> UInt64 { 0x5348_0000_0000_0000 | UInt64(epoch) }
    /// Stream for a parameter's initial values, from its global name.
    public static func initialization(name: String) -> UInt64 { 0x494E_0000_0000_0000 ^ fnv1a(name) >> 16 }
    /// Stream for a dropout site at a step.
    public static func dropout(site: Int, step: Int) -> UInt64 {
        0x4452_0000_0000_0000 | UInt64(site) << 40 | UInt64(step & 0xFF_FFFF_FFFF)
    }

    /// Stream for the expert dropout of MoE layer `site` at a step (σ-MoE).
    public static func expertDropout(site: Int, step: Int) -> UInt64 {
        0x4544_0000_0000_0000 | UInt64(site) << 40 | UInt64(step & 0xFF_FFFF_FFFF)
    }

    /// 64-bit FNV-1a of a string's UTF-8 bytes; stable across runs and platforms.
    public static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h
    }
}
