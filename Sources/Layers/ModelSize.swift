/// What a model of an architecture will hold, counted without building it, so that a job can
/// be checked against the machine's memory before anything is allocated. The counts follow
/// the layers' own buffers (a test builds architectures and compares with what their tensors
/// hold), in `Double`: any config value, however large, gives a number, never an overflow.
public struct ModelSize: Sendable, Equatable {
    /// Parameters (each has a value and a gradient in the store).
    public var parameters: Double = 0
    /// Floats of the layers' own buffers (activations, their gradients, routing), for
    /// `maxRows` rows per pass.
    public var buffers: Double = 0
}

extension Architecture {
    /// The size of `Model(self, inputs:classes:maxRows:)`. `ranks` and `threads` size what an
    /// MoE layer adds under expert parallelism and for updating experts inside backward.
    public func size(inputs: Int, classes: Int, maxRows: Int, ranks: Int = 1, threads: Int = 1,
                     updatesExpertsInBackward: Bool = false) -> ModelSize {
        var s = ModelSize()
        let rows = Double(maxRows)
        func linear(_ i: Double, _ o: Double, bias: Bool = true, fused: Bool = false, inputGradient: Bool = true) {
            s.parameters += i * o + (bias ? o : 0)
            s.buffers += rows * o * (fused ? 3 : 1) + (inputGradient ? rows * i : 0)
        }
        func norm(_ kind: NormKind, _ w: Double) {
            s.parameters += kind == .layerNorm ? 2 * w : w
            s.buffers += 2 * rows * w + (kind == .layerNorm ? 2 * rows : rows)
        }
        func residual(_ w: Double) { s.buffers += 2 * rows * w }
        let input = Double(inputs), outputs = Double(classes)
        switch self {
        case .stack(let hidden, let activation):
            var width = input
            for (i, h) in hidden.enumerated() {
                linear(width, Double(h), fused: activation != .identity, inputGradient: i > 0)
                width = Double(h)
            }
            linear(width, outputs, inputGradient: !hidden.isEmpty)
        case let .residual(width, depth, expansion, normKind, mlp, dropout):
            let d = Double(width), hidden = Double(expansion) * d
            linear(input, d, inputGradient: false)
            for _ in 0..<depth {
                norm(normKind, d)
                switch mlp {
                case .pointwise(let f): linear(d, hidden, fused: f != .identity)
                case .gated:
                    linear(d, 2 * hidden)
                    s.buffers += 3 * rows * hidden   // GLU: h, dab
                }
                if dropout > 0 { s.buffers += 3 * rows * hidden }
                linear(hidden, d)
                residual(d)
            }
            norm(normKind, d)
            linear(d, outputs)
        case let .moe(width, depth, normKind, spec):
            let d = Double(width)
            linear(input, d, inputGradient: false)
            for _ in 0..<depth {
                norm(normKind, d)
                s.parameters += spec.parameters(width: d)
                s.buffers += spec.buffers(width: d, rows: rows, ranks: ranks, threads: threads,
                                          updatesInBackward: updatesExpertsInBackward)
                if spec.sharedHidden > 0 {
                    let sh = Double(spec.sharedHidden)
                    switch spec.activation {
                    case .pointwise(let f): linear(d, sh, bias: spec.bias, fused: f != .identity)
                    case .gated:
                        linear(d, 2 * sh, bias: spec.bias)
                        s.buffers += 3 * rows * sh
                    }
                    linear(sh, d, bias: spec.bias)
                }
                residual(d)
            }
            norm(normKind, d)
            linear(d, outputs)
        }
        return s
    }
}

extension MoESpec {
    /// H1: an expert's first width (doubled for a gated activation).
    var firstWidth: Double {
        if case .gated = activation { return 2 * Double(hidden) }
        return Double(hidden)
    }

    /// The router's and the experts' parameters (a shared expert is counted as its layers).
    func parameters(width d: Double) -> Double {
        let e = Double(experts), h = Double(hidden), h1 = firstWidth
        return e * d + e * (h1 * d + h * d + (bias ? h1 + d : 0))
    }

    /// The layer's own buffers for `rows` tokens (`MoE.init`, `attach`): router scores and
    /// their gradients, gates, the grouped rows of this rank's assignments and, under expert
    /// parallelism, of every rank's, the exchange's staging and moved experts.
    func buffers(width d: Double, rows: Double, ranks: Int, threads: Int, updatesInBackward: Bool) -> Double {
        let e = Double(experts), k = Double(topK), h = Double(hidden), h1 = firstWidth
        let perRow = 4 * d + 2 * h1 + 2 * h            // ExpertRows: x, z1, h, y, dy, dh, dz1, dx
        var floats = 5 * rows * e + 2 * rows * k + rows * k * perRow + 2 * rows * d
        if ranks > 1 {
            let owned = Double(ranks) * rows * k
            floats += owned * perRow + owned * d        // the rows others send here, and staging
            if experts >= ranks { floats += parameters(width: d) - e * d }   // moved experts, at most all
        }
        if updatesInBackward { floats += Double(max(threads, 1)) * max(h1 * d, d * h) }
        return floats
    }
}
