import CKernels
/// Pointwise nonlinearities, with forward and derivative side by side.
public enum Activation: String, CaseIterable, Sendable {
    case identity
    case relu
    /// GELU, exact form `x · Φ(x) = ½x(1 + erf(x/√2))`.
    case gelu
    /// GELU, tanh approximation `½x(1 + tanh(√(2/π)(x + 0.044715x³)))`.
    case geluTanh = "gelu_tanh"
    /// SiLU / swish: `x · σ(x)`.
    case silu
    case sigmoid
}

/// One activation as a pair of 8-lane functions; a generic loop is specialized per kernel.
protocol ActivationKernel {
    static func f(_ z: Float8) -> Float8
    /// f'(z)
    static func df(_ z: Float8) -> Float8
}

enum IdentityKernel: ActivationKernel {
    @inline(__always) static func f(_ z: Float8) -> Float8 { z }
    @inline(__always) static func df(_ z: Float8) -> Float8 { Float8(repeating: 1) }
}

enum ReLUKernel: ActivationKernel {
    @inline(__always) static func f(_ z: Float8) -> Float8 { max8(z, Float8()) }
    @inline(__always) static func df(_ z: Float8) -> Float8 {
        Float8().replacing(with: 1, where: z .> Float8())
    }
}

enum GELUKernel: ActivationKernel {
    @inline(__always) static func f(_ z: Float8) -> Float8 {
        0.5 * z * (1 + erf8(z * 0.707_106_781))
    }
    @inline(__always) static func df(_ z: Float8) -> Float8 {
        // Φ(z) + z·φ(z), φ the standard normal density.
        0.5 * (1 + erf8(z * 0.707_106_781)) + z * 0.398_942_280 * exp8(-0.5 * z * z)
    }
}

enum GELUTanhKernel: ActivationKernel {
    @inline(__always) static func f(_ z: Float8) -> Float8 {
        0.5 * z * (1 + tanh8(0.797_884_561 * (z + 0.044_715 * z * z * z)))
    }
    @inline(__always) static func df(_ z: Float8) -> Float8 {
        let t = tanh8(0.797_884_561 * (z + 0.044_715 * z * z * z))
        let du = 0.797_884_561 * (1 + 3 * 0.044_715 * z * z)
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du
    }
}

enum SiLUKernel: ActivationKernel {
    @inline(__always) static func f(_ z: Float8) -> Float8 { z * sigmoid8(z) }
    @inline(__always) static func df(_ z: Float8) -> Float8 {
        let s = sigmoid8(z)
        return s * (1 + z * (1 - s))
    }
}

enum SigmoidKernel: ActivationKernel {
    @inline(__always) static func f(_ z: Float8) -> Float8 { sigmoid8(z) }
    @inline(__always) static func df(_ z: Float8) -> Float8 {
        let s = sigmoid8(z)
        return s * (1 - s)
    }
}

extension Activation {
    var kernel: any ActivationKernel.Type {
        switch self {
        case .identity: IdentityKernel.self
        case .relu: ReLUKernel.self
        case .gelu: GELUKernel.self
        case .geluTanh: GELUTanhKernel.self
        case .silu: SiLUKernel.self
        case .sigmoid: SigmoidKernel.self
        }
    }

    /// `z += bias` (per row, when given) then `y = f(z)`; z and y are `[rows, cols]`.
    /// z keeps the pre-activation for backward. y may equal z only for `.identity`.
    public func forward(
        z: UnsafeMutablePointer<Float>, bias: UnsafePointer<Float>?,
        y: UnsafeMutablePointer<Float>, rows: Int, cols: Int
    ) {
        switch self {
        case .identity: biasActivate(IdentityKernel.self, z, bias, y, rows, cols)
        case .relu: biasActivate(ReLUKernel.self, z, bias, y, rows, cols)
        case .gelu: sb_gelu_forward(z, bias, y, rows, cols)   // GELUKernel in C, with AVX
        case .geluTanh: biasActivate(GELUTanhKernel.self, z, bias, y, rows, cols)
        case .silu: biasActivate(SiLUKernel.self, z, bias, y, rows, cols)
        case .sigmoid: biasActivate(SigmoidKernel.self, z, bias, y, rows, cols)
        }
    }

    /// `dz = dy ⊙ f'(z)`; dz may alias dy. `dbias += Σ_rows dz` when given.
    public func backward(
        z: UnsafePointer<Float>, dy: UnsafePointer<Float>, dz: UnsafeMutablePointer<Float>,
        dbias: UnsafeMutablePointer<Float>?, rows: Int, cols: Int
    ) {
        switch self {
        case .identity: if dz != dy { dz.update(from: dy, count: rows * cols) }
        case .relu: activationGrad(ReLUKernel.self, z, dy, dz, rows * cols)
        case .gelu: sb_gelu_backward(z, dy, dz, rows * cols)
        case .geluTanh: activationGrad(GELUTanhKernel.self, z, dy, dz, rows * cols)
        case .silu: activationGrad(SiLUKernel.self, z, dy, dz, rows * cols)
        case .sigmoid: activationGrad(SigmoidKernel.self, z, dy, dz, rows * cols)
        }
        if let dbias { addColumnSums(dz, rows: rows, cols: cols, into: dbias) }
    }

    /// f(x) for one scalar, through the same vector code (for tests and small work).
    public func callAsFunction(_ x: Float) -> Float { kernel.f(Float8(repeating: x))[0] }
    /// f'(x) for one scalar.
    public func derivative(_ x: Float) -> Float { kernel.df(Float8(repeating: x))[0] }
}

@inline(__always)
func biasActivate<K: ActivationKernel>(
    _: K.Type, _ z: UnsafeMutablePointer<Float>, _ bias: UnsafePointer<Float>?,
    _ y: UnsafeMutablePointer<Float>, _ rows: Int, _ cols: Int
) {
    for r in 0..<rows {
        let zr = z + r * cols, yr = y + r * cols
        var j = 0
        while j + 8 <= cols {
            var v = load8(zr + j)
            if let bias { v += load8(bias + j); store8(v, zr + j) }
            store8(K.f(v), yr + j)
            j += 8
        }
        if j < cols {
            let w = cols - j
            var v = loadPartial8(zr + j, w)
            if let bias { v += loadPartial8(bias + j, w); storePartial8(v, zr + j, w) }
            storePartial8(K.f(v), yr + j, w)
        }
    }
}

@inline(__always)
func activationGrad<K: ActivationKernel>(
    _: K.Type, _ z: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
    _ dz: UnsafeMutablePointer<Float>, _ n: Int
) {
    var i = 0
    while i + 8 <= n { store8(load8(dy + i) * K.df(load8(z + i)), dz + i); i += 8 }
    if i < n {
        let w = n - i
        storePartial8(loadPartial8(dy + i, w) * K.df(loadPartial8(z + i, w)), dz + i, w)
    }
}

/// Gated linear unit: `h = f(a) ⊙ b` where `ab = [a | b]` is `[rows, 2·hidden]`
/// (GLU with sigmoid, SwiGLU with SiLU, GEGLU with GELU; Shazeer 2020).
public struct GatedActivation: Sendable {
    public let gate: Activation
    public init(gate: Activation) { self.gate = gate }

    public func forward(ab: UnsafePointer<Float>, h: UnsafeMutablePointer<Float>, rows: Int, hidden: Int) {
        switch gate {
        case .identity: gluForward(IdentityKernel.self, ab, h, rows, hidden)
        case .relu: gluForward(ReLUKernel.self, ab, h, rows, hidden)
        case .gelu: gluForward(GELUKernel.self, ab, h, rows, hidden)
        case .geluTanh: gluForward(GELUTanhKernel.self, ab, h, rows, hidden)
        case .silu: gluForward(SiLUKernel.self, ab, h, rows, hidden)
        case .sigmoid: gluForward(SigmoidKernel.self, ab, h, rows, hidden)
        }
    }

    /// `da = dh ⊙ b ⊙ f'(a)`, `db = dh ⊙ f(a)`, written into `dab = [da | db]`.
    public func backward(
        ab: UnsafePointer<Float>, dh: UnsafePointer<Float>, dab: UnsafeMutablePointer<Float>,
        rows: Int, hidden: Int
    ) {
        switch gate {
        case .identity: gluBackward(IdentityKernel.self, ab, dh, dab, rows, hidden)
        case .relu: gluBackward(ReLUKernel.self, ab, dh, dab, rows, hidden)
        case .gelu: gluBackward(GELUKernel.self, ab, dh, dab, rows, hidden)
        case .geluTanh: gluBackward(GELUTanhKernel.self, ab, dh, dab, rows, hidden)
        case .silu: gluBackward(SiLUKernel.self, ab, dh, dab, rows, hidden)
        case .sigmoid: gluBackward(SigmoidKernel.self, ab, dh, dab, rows, hidden)
        }
    }
}

@inline(__always)
func gluForward<K: ActivationKernel>(
    _: K.Type, _ ab: UnsafePointer<Float>, _ h: UnsafeMutablePointer<Float>, _ rows: Int, _ hidden: Int
) {
    for r in 0..<rows {
        let a = ab + r * 2 * hidden, b = a + hidden, hr = h + r * hidden
        var j = 0
        while j + 8 <= hidden { store8(K.f(load8(a + j)) * load8(b + j), hr + j); j += 8 }
        if j < hidden {
            let w = hidden - j
            storePartial8(K.f(loadPartial8(a + j, w)) * loadPartial8(b + j, w), hr + j, w)
        }
    }
}

@inline(__always)
func gluBackward<K: ActivationKernel>(
    _: K.Type, _ ab: UnsafePointer<Float>, _ dh: UnsafePointer<Float>,
    _ dab: UnsafeMutablePointer<Float>, _ rows: Int, _ hidden: Int
) {
    for r in 0..<rows {
        let a = ab + r * 2 * hidden, b = a + hidden, g = dh + r * hidden
        let da = dab + r * 2 * hidden, db = da + hidden
        var j = 0
        while j + 8 <= hidden {
            let av = load8(a + j), gv = load8(g + j)
            store8(gv * load8(b + j) * K.df(av), da + j)
            store8(gv * K.f(av), db + j)
            j += 8
        }
        if j < hidden {
            let w = hidden - j
            let av = loadPartial8(a + j, w), gv = loadPartial8(g + j, w)
            storePartial8(gv * loadPartial8(b + j, w) * K.df(av), da + j, w)
            storePartial8(gv * K.f(av), db + j, w)
        }
    }
}
