// Elementwise building blocks over raw buffers, written with 8-lane SIMD because the
// compiler does not vectorize plain loops over pointers here (docs/BENCHMARKS.md).

/// Loads `n < 8` floats into the low lanes, zeros elsewhere.
@inline(__always) public func loadPartial8(_ p: UnsafePointer<Float>, _ n: Int) -> Float8 {
    var v = Float8()
    for i in 0..<n { v[i] = p[i] }
    return v
}

/// Stores the low `n < 8` lanes.
@inline(__always) public func storePartial8(_ v: Float8, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
    for i in 0..<n { p[i] = v[i] }
}

/// x *= s
public func scale(_ x: UnsafeMutablePointer<Float>, count n: Int, by s: Float) {
    var i = 0
    while i + 8 <= n { store8(load8(x + i) * s, x + i); i += 8 }
    while i < n { x[i] *= s; i += 1 }
}

/// c = a + b (a residual connection); c may alias a or b.
public func add(
    _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into c: UnsafeMutablePointer<Float>, count n: Int
) {
    var i = 0
    while i + 8 <= n { store8(load8(a + i) + load8(b + i), c + i); i += 8 }
    while i < n { c[i] = a[i] + b[i]; i += 1 }
}

/// Σ x², accumulated in 8 lanes in a fixed order (deterministic), returned in Double.
public func sumOfSquares(_ x: UnsafePointer<Float>, count n: Int) -> Double {
    var acc = Float8()
    var total = 0.0
    var i = 0
    // Fold the Float lanes into Double every 4096 elements so long buffers keep precision.
    while i < n {
        let end = min(n, i + 4096)
        acc = Float8()
        while i + 8 <= end { let v = load8(x + i); acc += v * v; i += 8 }
        while i < end { acc[0] += x[i] * x[i]; i += 1 }
        total += Double(acc.sum())
    }
    return total
}

/// out[j] += Σ_r x[r, j] for a row-major `[rows, cols]` matrix (the bias gradient).
public func addColumnSums(
    _ x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>
) {
    var j = 0
    while j + 8 <= cols {
        var acc = load8(out + j)
        for r in 0..<rows { acc += load8(x + r * cols + j) }
        store8(acc, out + j)
        j += 8
    }
    if j < cols {
        let w = cols - j
        var acc = loadPartial8(out + j, w)
        for r in 0..<rows { acc += loadPartial8(x + r * cols + j, w) }
        storePartial8(acc, out + j, w)
    }
}

/// c = a ⊙ b (a dropout mask); c may alias a or b.
@inlinable @inline(__always) public func multiply(
    _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into c: UnsafeMutablePointer<Float>, count n: Int
) {
    var i = 0
    while i + 8 <= n { store8(load8(a + i) * load8(b + i), c + i); i += 8 }
    while i < n { c[i] = a[i] * b[i]; i += 1 }
}

/// y += a · x
@inlinable @inline(__always) public func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { store8(load8(y + i) + a * load8(x + i), y + i); i += 8 }
    while i < n { y[i] += a * x[i]; i += 1 }
}

/// y = a · x
@inlinable @inline(__always) public func scaleCopy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    while i + 8 <= n { store8(a * load8(x + i), y + i); i += 8 }
    while i < n { y[i] = a * x[i]; i += 1 }
}

/// Σ x·y, in 8 lanes then the tail (a fixed order).
@inlinable @inline(__always) public func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Float8()
    var i = 0
    while i + 8 <= n { acc += load8(x + i) * load8(y + i); i += 8 }
    var s = acc.sum()
    while i < n { s += x[i] * y[i]; i += 1 }
    return s
}

/// Σ x, in 8 lanes then the tail (a fixed order).
@inlinable @inline(__always) public func rowSum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Float8()
    var j = 0
    while j + 8 <= n { acc += load8(x + j); j += 8 }
    var t = acc.sum()
    while j < n { t += x[j]; j += 1 }
    return t
}
