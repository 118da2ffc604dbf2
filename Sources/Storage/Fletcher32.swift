/// HDF5's Fletcher32 checksum (`H5_checksum_fletcher32`, the `fletcher32` filter), bit for
/// bit: 16-bit big-endian words; `sum1` adds each word, `sum2` adds `sum1` after each; both
/// folded (`(s & 0xffff) + (s >> 16)`) after every block of 360 words and twice at the end.
/// HDF5's loop does this a word at a time; here a block is summed eight words per step with
/// the same result: over a block of n words starting from `sum1`, `sum2` gains
/// `n·sum1 + Σ (n − i)·wᵢ` and `sum1` gains `Σ wᵢ` (all modulo 2³², as in HDF5's uint32).
/// With words i = 8k + l, `Σ (n − i)·wᵢ = Σ_l (8·B_l − l·A_l)` where lane l accumulates
/// `A_l += w` and then `B_l += A_l` — no multiplications in the loop.
public enum Fletcher32 {
    static let block = 360

    public static func checksum(_ data: UnsafeRawPointer, bytes: Int) -> UInt32 {
        var words = bytes / 2
        var p = data
        var sum1: UInt32 = 0, sum2: UInt32 = 0
        while words > 0 {
            let n = min(words, block)
            let (s, w) = n % 8 == 0 ? blockSums(p, n) : scalarSums(p, n)
            sum2 = sum2 &+ UInt32(n) &* sum1 &+ w
            sum1 = sum1 &+ s
            sum1 = (sum1 & 0xffff) + (sum1 >> 16)
            sum2 = (sum2 & 0xffff) + (sum2 >> 16)
            words -= n
            p += 2 * n
        }
        if bytes % 2 == 1 {
            sum1 = sum1 &+ (UInt32(p.load(as: UInt8.self)) << 8)
            sum2 = sum2 &+ sum1
            sum1 = (sum1 & 0xffff) + (sum1 >> 16)
            sum2 = (sum2 & 0xffff) + (sum2 >> 16)
        }
        sum1 = (sum1 & 0xffff) + (sum1 >> 16)
        sum2 = (sum2 & 0xffff) + (sum2 >> 16)
        return (sum2 << 16) | sum1
    }

    /// (Σ wᵢ, Σ (n − i)·wᵢ) over n words, n a multiple of 8.
    @inline(__always)
    static func blockSums(_ p: UnsafeRawPointer, _ n: Int) -> (UInt32, UInt32) {
        var aLo = SIMD4<UInt32>(), aHi = SIMD4<UInt32>(), bLo = SIMD4<UInt32>(), bHi = SIMD4<UInt32>()
        var offset = 0
        while offset < 2 * n {
            let raw = p.loadUnaligned(fromByteOffset: offset, as: SIMD8<UInt16>.self)
            let w = (raw &<< 8) | (raw &>> 8)   // big-endian words
            aLo &+= SIMD4<UInt32>(truncatingIfNeeded: w.lowHalf)
            aHi &+= SIMD4<UInt32>(truncatingIfNeeded: w.highHalf)
            bLo &+= aLo
            bHi &+= aHi
            offset += 16
        }
        let lanesLo = SIMD4<UInt32>(0, 1, 2, 3), lanesHi = SIMD4<UInt32>(4, 5, 6, 7)
        let s = (aLo &+ aHi).wrappedSum()
        let w = ((bLo &<< 3) &- lanesLo &* aLo).wrappedSum() &+ ((bHi &<< 3) &- lanesHi &* aHi).wrappedSum()
        return (s, w)
    }

    static func scalarSums(_ p: UnsafeRawPointer, _ n: Int) -> (UInt32, UInt32) {
        var s: UInt32 = 0, w: UInt32 = 0
        for i in 0..<n {
            let word = UInt32(p.load(fromByteOffset: 2 * i, as: UInt8.self)) << 8 | UInt32(p.load(fromByteOffset: 2 * i + 1, as: UInt8.self))
            s = s &+ word
            w = w &+ UInt32(n - i) &* word
        }
        return (s, w)
    }
}
