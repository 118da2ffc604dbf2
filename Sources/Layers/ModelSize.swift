/// What a model of an architecture will hold and compute, counted without building it, so
/// that a job can be checked against the machine's memory before anything is allocated. The
/// counts follow the layers' own buffers (a test builds architectures and compares with what
/// their tensors hold), in `Double`: any config value, however large, gives a number, never
/// an overflow.
public struct ModelSize: Sendable, Equatable {
    /// Parameters (each has a value; the trainable ones a gradient too).
    public var parameters: Double = 0
    /// Of those, the frozen ones: no gradient.
    public var frozen: Double = 0
    /// Floats of the layers' own buffers (activations, their gradients, routing), for
    /// `maxRows` rows per pass.
    public var buffers: Double = 0
    /// bf16 values a model with bf16 products adds (`BFloat16Buffer`: the rounded inputs of
    /// its products, 2 bytes each); none in fp32.
    public var bf16Values: Double = 0
    /// Floating-point operations of the matrix products for one sample: a training step's
    /// forward and backward (the soft tree of an FFF; every selected expert of an MoE,
    /// without capacity drops), and an inference forward pass (the hard descent of an FFF).
    /// Elementwise work (norms, activations, the optimizer) is not counted.
    public var trainingFlops: Double = 0
    public var inferenceFlops: Double = 0
    /// The `frozen` patterns that named a parameter, and the parameters named that cannot be
    /// frozen (an MoE layer's): what `Model.frozenProblems` reports, known before building.
    public var frozenMatched: Set<String> = []
    public var unfreezable: [String] = []

    /// Floats the parameter store allocates: every value and the trainable gradients.
    public var storeFloats: Double { 2 * parameters - frozen }
}

extension Architecture {
    /// The size of `Model(self, inputs:classes:maxRows:frozen:)`. `ranks` and `threads` size
    /// what an MoE layer adds under expert parallelism and for updating experts inside backward.
    public func size(inputs: Int, classes: Int, maxRows: Int, ranks: Int = 1, threads: Int = 1,
                     updatesExpertsInBackward: Bool = false, frozen: [String] = []) -> ModelSize {
        var s = ModelSize()
        let rows = Double(maxRows)
        func parameter(_ name: String, _ count: Double) -> Bool {
            s.parameters += count
            let matching = frozen.filter { ParameterStore.matches($0, name) }
            s.frozenMatched.formUnion(matching)
            if !matching.isEmpty { s.frozen += count }
            return !matching.isEmpty
        }
        /// A Linear layer; `perSample` scales its FLOPs (a leaf's share of the rows, k experts).
        func linear(_ name: String, _ i: Double, _ o: Double, bias: Bool = true, fused: Bool = false,
                    inputGradient: Bool = true, inference: Double = 1) {
            let weightFrozen = parameter("\(name).weight", i * o)
            if bias { _ = parameter("\(name).bias", o) }
            s.buffers += rows * o * (fused ? 3 : 1) + (inputGradient ? rows * i : 0)
            s.bf16Values += rows * i + i * o + rows * o        // x, W, g
            let product = 2 * i * o
            s.trainingFlops += product * (1 + (weightFrozen ? 0 : 1) + (inputGradient ? 1 : 0))
            s.inferenceFlops += product * inference
        }
        func matrix(_ name: String, _ i: Double, _ o: Double, fused: Bool = false, rank: Int) {
            if rank > 0 {
                let r = Double(rank)
                linear("\(name).v", i, r, bias: false)
                linear("\(name).u", r, o, fused: fused)
            } else {
                linear(name, i, o, fused: fused)
            }
        }
        func norm(_ kind: NormKind, _ name: String, _ w: Double) {
            let gainFrozen = parameter("\(name).weight", w)
            let shiftFrozen = kind == .layerNorm && parameter("\(name).bias", w)
            s.buffers += 2 * rows * w + (kind == .layerNorm ? 2 * rows : rows) + (gainFrozen || shiftFrozen ? w : 0)
        }
        func residual(_ w: Double) { s.buffers += 2 * rows * w }
        /// `FastFeedforward`: its Linears, the per-leaf output bias, and its own buffers. Soft
        /// in training (every leaf); hard in inference (`depth` nodes and one leaf).
        func fastFeedforward(_ name: String, _ spec: FFFSpec, _ d: Double) {
            let n = Double(spec.nodes), l = Double(spec.leaves), lw = Double(spec.leafWidth), h = l * lw
            let depth = Double(spec.depth)
            linear("\(name).nodes", d, n, inference: depth / n)
            linear("\(name).leaves.fc1", d, h, fused: spec.activation != .identity, inference: 1 / l)
            linear("\(name).leaves.fc2", h, d, bias: false, inference: 1 / l)
            let biasFrozen = parameter("\(name).leaves.fc2.bias", l * d)
            s.trainingFlops += 2 * l * d * (biasFrozen ? 2 : 3)   // p · B2, its gradient, dp
            if spec.masterLeaf {
                linear("\(name).master.fc1", d, lw, fused: spec.activation != .identity)
                linear("\(name).master.fc2", lw, d)
                _ = parameter("\(name).master.mix", 1)
            }
            let master = spec.masterLeaf ? 2 * rows * d : 0
            // σ, reach, gated, dh, dp, da, y, dx, and the hard pass's xs, zs, hs, ys
            s.buffers += rows * (2 * n + (2 * l - 1) + 2 * h + l + 4 * d + 2 * lw) + (2 * l - 1) + master
        }
        let input = Double(inputs), outputs = Double(classes)
        switch self {
        case .stack(let hidden, let activation):
            var width = input
            for (i, h) in hidden.enumerated() {
                linear("layers.\(i)", width, Double(h), fused: activation != .identity, inputGradient: i > 0)
                width = Double(h)
            }
            linear("head", width, outputs, inputGradient: !hidden.isEmpty)
        case let .residual(trunk, ffn):
            let d = Double(trunk.width)
            linear("embed", input, d, inputGradient: false)
            for i in 0..<trunk.depth {
                let name = "blocks.\(i)"
                norm(trunk.norm, "\(name).norm", d)
                switch ffn {
                case .mlp(let m):
                    let hidden = Double(m.hidden)
                    switch m.activation {
                    case .pointwise(let f): matrix("\(name).fc1", d, hidden, fused: f != .identity, rank: m.rank)
                    case .gated:
                        matrix("\(name).fc1", d, 2 * hidden, rank: m.rank)
                        s.buffers += 3 * rows * hidden   // GLU: h, dab
                    }
                    if m.dropout > 0 { s.buffers += 3 * rows * hidden }
                    matrix("\(name).fc2", hidden, d, rank: m.rank)
                case .fff(let spec): fastFeedforward("\(name).fff", spec, d)
                }
                residual(d)
            }
            norm(trunk.norm, "norm", d)
            linear("head", d, outputs)
        case let .moe(trunk, spec):
            let d = Double(trunk.width)
            linear("embed", input, d, inputGradient: false)
            for i in 0..<trunk.depth {
                norm(trunk.norm, "blocks.\(i).norm", d)
                s.parameters += spec.parameters(width: d)
                // Every parameter of the layer is under `blocks.i.moe`; a pattern there must
                // name one of them (the names are listed only when a pattern is there).
                let layer = "blocks.\(i).moe"
                for f in frozen where ParameterStore.matches(f, layer)
                    || (f.hasPrefix(layer + ".") && spec.parameterNames(layer).contains { ParameterStore.matches(f, $0) }) {
                    s.frozenMatched.insert(f)
                    s.unfreezable.append(f)
                }
                s.buffers += spec.buffers(width: d, rows: rows, ranks: ranks, threads: threads,
                                          updatesInBackward: updatesExpertsInBackward)
                s.bf16Values += spec.bf16Values(width: d, rows: rows, ranks: ranks)
                let perToken = spec.flops(width: d)
                s.trainingFlops += 3 * perToken
                s.inferenceFlops += perToken
                if spec.sharedHidden > 0 {
                    let sh = Double(spec.sharedHidden), name = "blocks.\(i).moe.shared"
                    switch spec.activation {
                    case .pointwise(let f): linear("\(name).fc1", d, sh, bias: spec.bias, fused: f != .identity)
                    case .gated:
                        linear("\(name).fc1", d, 2 * sh, bias: spec.bias)
                        s.buffers += 3 * rows * sh
                    }
                    linear("\(name).fc2", sh, d, bias: spec.bias)
                }
                if spec.outputBias { s.parameters += d }
                residual(d)
            }
            norm(trunk.norm, "norm", d)
            linear("head", d, outputs)
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

    /// The global names of an MoE layer's parameters (`MoE.init`), under `layer`.
    func parameterNames(_ layer: String) -> [String] {
        var names = ["\(layer).router.weight"]
        for e in 0..<experts {
            names += ["w1", "w2"].map { "\(layer).experts.\(e).\($0)" }
            if bias { names += ["b1", "b2"].map { "\(layer).experts.\(e).\($0)" } }
        }
        if sharedHidden > 0 {
            for fc in ["fc1", "fc2"] { names += (bias ? ["weight", "bias"] : ["weight"]).map { "\(layer).shared.\(fc).\($0)" } }
        }
        if outputBias { names.append("\(layer).bias") }
        return names
    }

    /// One token's forward products: the router's, and those of its k experts.
    func flops(width d: Double) -> Double {
        2 * d * Double(experts) + Double(topK) * 2 * d * (firstWidth + Double(hidden))
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

    /// `MoEProducts` and `ExpertRows` in bf16: every expert's W1 and W2, and the grouped rows'
    /// xs, h, dys and dz1 (again for the rows other ranks send here, under expert parallelism).
    func bf16Values(width d: Double, rows: Double, ranks: Int) -> Double {
        let e = Double(experts), k = Double(topK), h = Double(hidden), h1 = firstWidth
        let perRow = 2 * d + h + h1
        return e * (h1 * d + d * h) + rows * k * perRow + (ranks > 1 ? Double(ranks) * rows * k * perRow : 0)
    }
}
