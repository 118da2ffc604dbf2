import Kernels

/// Which normalization a block uses.
public enum NormKind: String, CaseIterable, Sendable {
    case layerNorm = "layernorm"
    case rmsNorm = "rmsnorm"
}

/// LayerNorm (Ba et al. 2016): `y = ((x − mean) · rstd · g + b) · s` per row,
/// `rstd = 1/√(var + ε)` with the biased variance; `s` is 1, or 1/√ℓ in block ℓ for
/// LayerNorm Scaling (`Trunk.depthScaledNorm`).
public final class LayerNorm: Layer {
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    public let gain: Parameter
    public let shift: Parameter
    public let epsilon: Float
    public let scale: Float

    let y: Tensor      // [maxRows, C]
    let dx: Tensor     // [maxRows, C]
    let mean: Tensor   // [maxRows]
    let rstd: Tensor   // [maxRows]
    /// Where the gradients of frozen gains or shifts go (unused otherwise).
    let discard: Tensor
    var x: UnsafePointer<Float>?

    public init(_ name: String, width: Int, epsilon: Float = 1e-5, scale: Float = 1, in build: BuildContext) {
        inputWidth = width
        self.epsilon = epsilon
        self.scale = scale
        let store = build.store, maxRows = build.maxRows
        gain = store.register("\(name).weight", shape: [width], role: .normGain, initializer: .ones, freezable: build.freezable)
        shift = store.register("\(name).bias", shape: [width], role: .normBias, initializer: .zeros, freezable: build.freezable)
        y = build.tensor([maxRows, width])
        dx = build.tensor([maxRows, width])
        mean = build.tensor([maxRows])
        rstd = build.tensor([maxRows])
        discard = build.tensor([gain.frozen || shift.frozen ? width : 0])
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        self.x = x
        let c = inputWidth
        let g = UnsafePointer(gain.value!), b = UnsafePointer(shift.value!), k = scale
        for r in 0..<rows {
            let xr = x + r * c, yr = y.data + r * c
            let m = rowSum(xr, c) / Float(c)
            let v = rowSquaredDeviation(xr, c, m) / Float(c)
            let s = 1 / (v + epsilon).squareRoot()
            mean[r] = m
            rstd[r] = s
            var j = 0
            if k == 1 {
                while j + 8 <= c {
                    store8((load8(xr + j) - m) * s * load8(g + j) + load8(b + j), yr + j)
                    j += 8
                }
                while j < c { yr[j] = (xr[j] - m) * s * g[j] + b[j]; j += 1 }
            } else {
                while j + 8 <= c {
                    store8(((load8(xr + j) - m) * s * load8(g + j) + load8(b + j)) * k, yr + j)
                    j += 8
                }
                while j < c { yr[j] = ((xr[j] - m) * s * g[j] + b[j]) * k; j += 1 }
            }
        }
        return UnsafePointer(y.data)
    }

    // With gv = dy · s (the output scale): dxhat = gv ⊙ g;
    // dx = rstd · (dxhat − mean(dxhat) − xhat · mean(dxhat ⊙ xhat))
    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard let x else { preconditionFailure("LayerNorm.backward before forward") }
        let c = inputWidth, k = Float8(repeating: scale), k1 = scale
        let g = UnsafePointer(gain.value!), dg = gain.grad ?? discard.data, db = shift.grad ?? discard.data
        for r in 0..<rows {
            let xr = x + r * c, gr = dy + r * c, dxr = dx.data + r * c
            let m = mean[r], s = rstd[r]
            var sumD = Float8(), sumDX = Float8()
            var j = 0
            while j + 8 <= c {
                let xhat = (load8(xr + j) - m) * s, gv = load8(gr + j) * k
                let d = gv * load8(g + j)
                sumD += d
                sumDX += d * xhat
                store8(load8(dg + j) + gv * xhat, dg + j)
                store8(load8(db + j) + gv, db + j)
                j += 8
            }
            var tD = sumD.sum(), tDX = sumDX.sum()
            while j < c {
                let xhat = (xr[j] - m) * s, gv = gr[j] * k1, d = gv * g[j]
                tD += d
                tDX += d * xhat
                dg[j] += gv * xhat
                db[j] += gv
                j += 1
            }
            let meanD = tD / Float(c), meanDX = tDX / Float(c)
            j = 0
            while j + 8 <= c {
                let xhat = (load8(xr + j) - m) * s
                store8(s * (load8(gr + j) * k * load8(g + j) - meanD - xhat * meanDX), dxr + j)
                j += 8
            }
            while j < c {
                let xhat = (xr[j] - m) * s
                dxr[j] = s * (gr[j] * k1 * g[j] - meanD - xhat * meanDX)
                j += 1
            }
        }
        return UnsafePointer(dx.data)
    }
}

/// RMSNorm (Zhang & Sennrich 2019): `y = x · rrms · g · s`, `rrms = 1/√(mean(x²) + ε)`;
/// `s` is 1, or 1/√ℓ in block ℓ for LayerNorm Scaling (`Trunk.depthScaledNorm`).
public final class RMSNorm: Layer {
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    public let gain: Parameter
    public let epsilon: Float
    public let scale: Float

    let y: Tensor      // [maxRows, C]
    let dx: Tensor     // [maxRows, C]
    let rrms: Tensor   // [maxRows]
    /// Where the gradient of a frozen gain goes (unused otherwise).
    let discard: Tensor
    var x: UnsafePointer<Float>?

    public init(_ name: String, width: Int, epsilon: Float = 1e-6, scale: Float = 1, in build: BuildContext) {
        inputWidth = width
        self.epsilon = epsilon
        self.scale = scale
        let store = build.store, maxRows = build.maxRows
        gain = store.register("\(name).weight", shape: [width], role: .normGain, initializer: .ones, freezable: build.freezable)
        y = build.tensor([maxRows, width])
        dx = build.tensor([maxRows, width])
        rrms = build.tensor([maxRows])
        discard = build.tensor([gain.frozen ? width : 0])
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        self.x = x
        let c = inputWidth
        let g = UnsafePointer(gain.value!)
        for r in 0..<rows {
            let xr = x + r * c, yr = y.data + r * c
            let s = 1 / (rowSquaredDeviation(xr, c, 0) / Float(c) + epsilon).squareRoot()
            rrms[r] = s
            // The scale folds into the row's factor (exact when it is 1).
            let f = s * scale
            var j = 0
            while j + 8 <= c { store8(load8(xr + j) * f * load8(g + j), yr + j); j += 8 }
            while j < c { yr[j] = xr[j] * f * g[j]; j += 1 }
        }
        return UnsafePointer(y.data)
    }

    // With gv = dy · s (the output scale): dxhat = gv ⊙ g;
    // dx = rrms · (dxhat − xhat · mean(dxhat ⊙ xhat))
    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard let x else { preconditionFailure("RMSNorm.backward before forward") }
        let c = inputWidth, k = Float8(repeating: scale), k1 = scale
        let g = UnsafePointer(gain.value!), dg = gain.grad ?? discard.data
        for r in 0..<rows {
            let xr = x + r * c, gr = dy + r * c, dxr = dx.data + r * c
            let s = rrms[r]
            var sumDX = Float8()
            var j = 0
            while j + 8 <= c {
                let xhat = load8(xr + j) * s, gv = load8(gr + j) * k
                sumDX += gv * load8(g + j) * xhat
                store8(load8(dg + j) + gv * xhat, dg + j)
                j += 8
            }
            var tDX = sumDX.sum()
            while j < c {
                let xhat = xr[j] * s, gv = gr[j] * k1
                tDX += gv * g[j] * xhat
                dg[j] += gv * xhat
                j += 1
            }
            let meanDX = tDX / Float(c)
            j = 0
            while j + 8 <= c {
                store8(s * (load8(gr + j) * k * load8(g + j) - load8(xr + j) * s * meanDX), dxr + j)
                j += 8
            }
            while j < c { dxr[j] = s * (gr[j] * k1 * g[j] - xr[j] * s * meanDX); j += 1 }
        }
        return UnsafePointer(dx.data)
    }
}

/// Σ (x − m)²
@inline(__always) func rowSquaredDeviation(_ x: UnsafePointer<Float>, _ n: Int, _ m: Float) -> Float {
    var acc = Float8()
    var j = 0
    while j + 8 <= n { let d = load8(x + j) - m; acc += d * d; j += 8 }
    var t = acc.sum()
    while j < n { let d = x[j] - m; t += d * d; j += 1 }
    return t
}

/// A normalization layer of the given kind, its output times `scale`.
public func makeNorm(_ kind: NormKind, _ name: String, width: Int, scale: Float = 1, in build: BuildContext) -> any Layer {
    switch kind {
    case .layerNorm: LayerNorm(name, width: width, scale: scale, in: build)
    case .rmsNorm: RMSNorm(name, width: width, scale: scale, in: build)
    }
}
