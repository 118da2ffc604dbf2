import Kernels

/// A standalone pointwise activation `y = f(x)`. Inside Linear the same kernel is fused
/// with the bias; this layer serves where nothing precedes it to fuse with.
public final class ActivationLayer: Layer {
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    public let activation: Activation
    let z: Tensor, y: Tensor, dx: Tensor
    var rows = 0

    public init(_ activation: Activation, width: Int, in build: BuildContext) {
        let maxRows = build.maxRows
        self.activation = activation
        inputWidth = width
        z = build.tensor([maxRows, width])
        y = build.tensor([maxRows, width])
        dx = build.tensor([maxRows, width])
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        z.data.update(from: x, count: rows * inputWidth)
        activation.forward(z: z.data, bias: nil, y: y.data, rows: rows, cols: inputWidth)
        return UnsafePointer(y.data)
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        activation.backward(z: z.data, dy: dy, dz: dx.data, dbias: nil, rows: rows, cols: inputWidth)
        return UnsafePointer(dx.data)
    }
}

/// Gated linear unit `[a | b] ↦ f(a) ⊙ b`, halving the width (SwiGLU, GEGLU, GLU).
public final class GLULayer: Layer {
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth / 2 }
    public let gated: GatedActivation
    let h: Tensor, dab: Tensor
    var ab: UnsafePointer<Float>?

    public init(gate: Activation, hidden: Int, in build: BuildContext) {
        let maxRows = build.maxRows
        gated = GatedActivation(gate: gate)
        inputWidth = 2 * hidden
        h = build.tensor([maxRows, hidden])
        dab = build.tensor([maxRows, 2 * hidden])
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        ab = x
        gated.forward(ab: x, h: h.data, rows: rows, hidden: outputWidth)
        return UnsafePointer(h.data)
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard let ab else { preconditionFailure("GLU.backward before forward") }
        gated.backward(ab: ab, dh: dy, dab: dab.data, rows: rows, hidden: outputWidth)
        return UnsafePointer(dab.data)
    }
}

/// Inverted dropout: in training, each element is kept with probability 1 − p and scaled
/// by 1/(1 − p). The mask of a row is drawn from the keyed RNG at the row's global position
/// in the batch and the step, so it does not depend on which rank holds the row.
public final class Dropout: Layer {
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    public let probability: Float
    /// Distinguishes the dropout layers of one model in the RNG stream.
    public let site: Int
    let seed: UInt64
    let mask: Tensor, y: Tensor, dx: Tensor
    var active = false

    public init(probability: Float, width: Int, site: Int, in build: BuildContext) {
        let maxRows = build.maxRows, seed = build.seed
        precondition(probability >= 0 && probability < 1)
        self.probability = probability
        self.site = site
        self.seed = seed
        inputWidth = width
        mask = build.tensor([maxRows, width])
        y = build.tensor([maxRows, width])
        dx = build.tensor([maxRows, width])
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        active = context.training && probability > 0
        guard active else { return x }
        fillMask(rows: rows, context: context)
        multiply(x, mask.data, into: y.data, count: rows * inputWidth)
        return UnsafePointer(y.data)
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard active else { return dy }
        multiply(dy, mask.data, into: dx.data, count: rows * inputWidth)
        return UnsafePointer(dx.data)
    }

    func fillMask(rows: Int, context: ForwardContext) {
        let rng = Philox(seed: seed)
        let stream = RNGStream.dropout(site: site, step: context.step)
        let keep = 1 / (1 - probability)
        // Compare the 24-bit draw with p·2^24 as integers: one block gives four elements.
        let threshold = UInt32(probability * 16_777_216)
        let start = context.rowOffset * inputWidth, n = rows * inputWidth
        var i = 0
        while i < n {
            let e = UInt64(start + i)
            let w = rng.words(stream: stream, block: e >> 2)
            var lane = Int(e & 3)
            while lane < 4 && i < n {
                mask[i] = (w[lane] >> 8) >= threshold ? keep : 0
                lane += 1
                i += 1
            }
        }
    }
}
