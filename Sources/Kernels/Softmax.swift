#if canImport(Glibc)
import Glibc
#endif

/// Row-wise softmax, log-softmax and softmax cross-entropy over `[rows, cols]` matrices.

@inline(__always) func rowMax(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var m = -Float.infinity
    var j = 0
    if n >= 8 {
        var v = load8(x)
        j = 8
        while j + 8 <= n { v = max8(v, load8(x + j)); j += 8 }
        m = v.max()
    }
    while j < n { m = max(m, x[j]); j += 1 }
    return m
}

/// y = exp(x − shift), returns Σ y. y may alias x.
@inline(__always) func expShifted(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int, _ shift: Float
) -> Float {
    var acc = Float8()
    var j = 0
    while j + 8 <= n { let e = exp8(load8(x + j) - shift); store8(e, y + j); acc += e; j += 8 }
    var total = acc.sum()
    if j < n {
        let w = n - j
        let e = exp8(loadPartial8(x + j, w) - shift)
        storePartial8(e, y + j, w)
        for i in 0..<w { total += e[i] }
    }
    return total
}

/// y = softmax(x) per row. y may alias x.
public func softmaxRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows {
        let xr = x + r * cols, yr = y + r * cols
        let s = expShifted(xr, yr, cols, rowMax(xr, cols))
        scale(yr, count: cols, by: 1 / s)
    }
}

/// y = log softmax(x) = x − logsumexp(x) per row. y may alias x.
public func logSoftmaxRows(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows {
        let xr = x + r * cols, yr = y + r * cols
        let m = rowMax(xr, cols)
        var s: Float = 0
        for j in 0..<cols { s += exp8(Float8(repeating: xr[j] - m))[0] }
        let lse = m + log(s)
        for j in 0..<cols { yr[j] = xr[j] - lse }
    }
}

/// The result of a cross-entropy pass over some rows.
public struct LossCounts: Sendable, Equatable {
    /// Σ over rows of the per-row loss (not yet divided by anything).
    public var lossSum: Double
    /// Rows whose argmax equals the label (ties go to the lowest class index).
    public var correct: Int
    public init(lossSum: Double = 0, correct: Int = 0) { self.lossSum = lossSum; self.correct = correct }
}

/// Softmax cross-entropy with label smoothing ε: the target is `q = (1−ε)·onehot(y) + ε/C`,
/// the row loss `logsumexp(z) − Σ_j q_j z_j`. When `dlogits` is given it receives
/// `(softmax(z) − q) · gradScale` (gradScale is 1/B for a mean over the global batch).
public func softmaxCrossEntropy(
    logits: UnsafePointer<Float>, labels: UnsafePointer<Int32>, rows: Int, classes: Int,
    smoothing: Float, gradScale: Float, dlogits: UnsafeMutablePointer<Float>?
) -> LossCounts {
    var out = LossCounts()
    let off = smoothing / Float(classes), on = 1 - smoothing + off
    for r in 0..<rows {
        let z = logits + r * classes
        let y = Int(labels[r])
        let m = rowMax(z, classes)
        var argmax = 0
        for j in 1..<classes where z[j] > z[argmax] { argmax = j }
        if argmax == y { out.correct += 1 }
        var zsum: Float = 0
        for j in 0..<classes { zsum += z[j] }
        let s: Float
        if let dlogits {
            let d = dlogits + r * classes
            s = expShifted(z, d, classes, m)
            let inv = gradScale / s
            for j in 0..<classes { d[j] = d[j] * inv - off * gradScale }
            d[y] -= (on - off) * gradScale
        } else {
            var t: Float = 0
            for j in 0..<classes { t += exp8(Float8(repeating: z[j] - m))[0] }
            s = t
        }
        let lse = m + log(s)
        out.lossSum += Double(lse - (on - off) * z[y] - off * zsum)
    }
    return out
}
