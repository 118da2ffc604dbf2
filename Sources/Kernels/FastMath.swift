// Vectorized approximations of exp, erf and tanh on 8 lanes. libm's scalar `expf`,
// `erff` and `tanhf` run at ~95 M elements/s here, which would make GELU and softmax cost
// more than the GEMMs around them. Each is tested against libm in KernelsTests.

public typealias Float8 = SIMD8<Float>

@inline(__always) public func load8(_ p: UnsafePointer<Float>) -> Float8 {
    UnsafeRawPointer(p).loadUnaligned(as: Float8.self)
}

@inline(__always) public func store8(_ v: Float8, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Float8.self)
}

/// Lane-wise max and min. The standard library's `pointwiseMax` is generic and is not
/// specialized here (a call per vector, measured at 2.5% of a W1 step in ReLU alone).
@inline(__always) public func max8(_ a: Float8, _ b: Float8) -> Float8 { a.replacing(with: b, where: a .< b) }
@inline(__always) public func min8(_ a: Float8, _ b: Float8) -> Float8 { a.replacing(with: b, where: b .< a) }

/// e^x, relative error below 2e-7 for x in [-87, 88]; inputs outside are clamped, so the
/// result is never inf or NaN for finite x (e^-87 ≈ 1.6e-38 stands in for underflow).
@inline(__always) public func exp8(_ x: Float8) -> Float8 {
    let x = max8(min8(x, Float8(repeating: 88)), Float8(repeating: -87))
    // Round x·log2(e) to the nearest integer n with the 1.5·2^23 shifter; its low bits
    // then hold n as an integer.
    let shifter = Float8(repeating: 12_582_912)
    let t = x * 1.442_695_04 + shifter
    let n = t - shifter
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6
    var p = Float8(repeating: 1.0 / 40320)
    p = p * r + 1.0 / 5040
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000
    let scale = unsafeBitCast((ni &+ 127) &<< 23, to: Float8.self)
    return p * scale
}

/// erf(x), absolute error below 3e-7: Abramowitz & Stegun 7.1.26 for |x| ≥ 0.75, where it
/// is accurate; its `1 − p·t·e^{−x²}` cancels near 0, so there the Maclaurin series is used.
@inline(__always) public func erf8(_ x: Float8) -> Float8 {
    let x2 = x * x
    var s = Float8(repeating: 1.0 / 685_440)
    s = s * x2 - 1.0 / 75600
    s = s * x2 + 1.0 / 9360
    s = s * x2 - 1.0 / 1320
    s = s * x2 + 1.0 / 216
    s = s * x2 - 1.0 / 42
    s = s * x2 + 1.0 / 10
    s = s * x2 - 1.0 / 3
    s = s * x2 + 1
    let series = 1.128_379_167 * x * s
    let a = max8(x, -x)
    let t = 1 / (1 + 0.327_591_1 * a)
    var p = Float8(repeating: 1.061_405_429)
    p = p * t - 1.453_152_027
    p = p * t + 1.421_413_741
    p = p * t - 0.284_496_736
    p = p * t + 0.254_829_592
    let y: Float8 = 1 - p * t * exp8(-(a * a))
    return y.replacing(with: -y, where: x .< Float8()).replacing(with: series, where: a .< Float8(repeating: 0.75))
}

/// tanh(x), absolute error below 3e-7.
@inline(__always) public func tanh8(_ x: Float8) -> Float8 {
    1 - 2 / (exp8(2 * x) + 1)
}

/// The logistic function 1 / (1 + e^-x).
@inline(__always) public func sigmoid8(_ x: Float8) -> Float8 {
    1 / (1 + exp8(-x))
}
