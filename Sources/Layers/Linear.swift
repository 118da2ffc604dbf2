import Kernels

/// `y = f(x · Wᵀ + b)`, W `[out, in]`, with an optional fused pointwise activation f.
///
/// Layout by measurement (OpenBLAS, Zen, 1–2 threads): all four transpose combinations of
/// W1's shapes run within 3% of each other, so weights stay `[out, in]` as in the papers:
/// forward is (N,T), the input gradient (N,N), the weight gradient (T,N).
///
/// In bf16 the three products read bf16 copies of x, W and the output gradient, rounded just
/// before the first product that needs each (x and W in forward, g in backward); the
/// products accumulate in fp32, and everything around them stays fp32.
public final class Linear: Layer {
    public let inputWidth: Int
    public let outputWidth: Int
    public let weight: Parameter
    public let bias: Parameter?
    public let activation: Activation
    /// Without it backward returns nil and skips the `dz · W` product (the first layer).
    public let computesInputGradient: Bool

    let z: Tensor       // [maxRows, out] pre-activation (x·Wᵀ + b)
    let y: Tensor       // [maxRows, out] f(z); unused for identity
    let dz: Tensor      // [maxRows, out] dy ⊙ f'(z); unused for identity
    let dx: Tensor      // [maxRows, in]
    var x: UnsafePointer<Float>?

    let forwardProduct, weightGradientProduct, inputGradientProduct: Matmul
    /// bf16 only: x [maxRows, in], W [out, in] and g [maxRows, out] rounded.
    let x16, w16, g16: BFloat16Buffer?

    /// Weights and biases uniform in ±1/√fan_in (PyTorch's default, and the benchmark workloads').
    public init(
        _ name: String, inputs: Int, outputs: Int, bias: Bool = true, activation: Activation = .identity,
        computesInputGradient: Bool = true, in build: BuildContext, initBound: Float? = nil, biasBound: Float? = nil
    ) {
        inputWidth = inputs
        outputWidth = outputs
        self.activation = activation
        self.computesInputGradient = computesInputGradient
        let bound = initBound ?? 1 / Float(inputs).squareRoot()
        let store = build.store, maxRows = build.maxRows
        weight = store.register(
            "\(name).weight", shape: [outputs, inputs], role: .weight, initializer: .uniform(bound: bound), freezable: build.freezable)
        self.bias = bias
            ? store.register("\(name).bias", shape: [outputs], role: .bias, initializer: .uniform(bound: biasBound ?? bound),
                             freezable: build.freezable)
            : nil
        let fused = activation != .identity
        z = build.tensor([maxRows, outputs])
        y = build.tensor([fused ? maxRows : 0, outputs])
        dz = build.tensor([fused ? maxRows : 0, outputs])
        dx = build.tensor([computesInputGradient ? maxRows : 0, inputs])
        forwardProduct = build.product(.none, .transpose, m: maxRows, n: outputs, k: inputs, lda: inputs, ldb: inputs,
                                       ldc: outputs, rows: .m, accumulate: false, work: .forward)
        weightGradientProduct = build.product(.transpose, .none, m: outputs, n: inputs, k: maxRows, lda: outputs, ldb: inputs,
                                              ldc: inputs, rows: .k, accumulate: true, work: weight.frozen ? .uncounted : .training)
        inputGradientProduct = build.product(.none, .none, m: maxRows, n: inputs, k: outputs, lda: outputs, ldb: inputs,
                                             ldc: inputs, rows: .m, accumulate: false,
                                             work: computesInputGradient ? .training : .uncounted)
        x16 = build.bf16([maxRows, inputs])
        w16 = build.bf16([outputs, inputs])
        g16 = build.bf16([maxRows, outputs])
    }

    /// The input and the output of the last forward pass (for reading activations: `moefy`).
    public var lastInput: UnsafePointer<Float>? { x }
    public var lastOutput: UnsafePointer<Float> { UnsafePointer(activation == .identity ? z.data : y.data) }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        self.x = x
        // z[rows, out] = x[rows, in] · Wᵀ
        if let x16, let w16 {
            x16.round(x, count: rows * inputWidth, onPool: true)
            w16.round(weight.value, count: outputWidth * inputWidth, onPool: true)
            forwardProduct(rows: rows, a: x16.data, b: w16.data, c: z.data)
        } else {
            forwardProduct(rows: rows, a: x, b: weight.value, c: z.data)
        }
        let out = activation == .identity ? z.data : y.data
        activation.forward(z: z.data, bias: bias?.value, y: out, rows: rows, cols: outputWidth)
        return UnsafePointer(out)
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard let x else { preconditionFailure("Linear.backward before forward") }
        // A frozen parameter has no gradient: its product is skipped (`grad` is nil).
        let dbias = bias?.grad
        if weight.grad == nil && dbias == nil && !computesInputGradient { return nil }
        let g: UnsafePointer<Float>
        if activation == .identity {
            g = dy
            if let dbias { addColumnSums(dy, rows: rows, cols: outputWidth, into: dbias) }
        } else {
            activation.backward(z: z.data, dy: dy, dz: dz.data, dbias: dbias, rows: rows, cols: outputWidth)
            g = UnsafePointer(dz.data)
        }
        if let g16, let x16, let w16 {
            if weight.grad == nil && !computesInputGradient { return nil }
            g16.round(g, count: rows * outputWidth, onPool: true)
            if let dw = weight.grad { weightGradientProduct(rows: rows, a: g16.data, b: x16.data, c: dw) }
            guard computesInputGradient else { return nil }
            inputGradientProduct(rows: rows, a: g16.data, b: w16.data, c: dx.data)
            return UnsafePointer(dx.data)
        }
        // dW[out, in] += gᵀ · x
        if let dw = weight.grad { weightGradientProduct(rows: rows, a: g, b: x, c: dw) }
        guard computesInputGradient else { return nil }
        // dx[rows, in] = g · W
        inputGradientProduct(rows: rows, a: g, b: weight.value, c: dx.data)
        return UnsafePointer(dx.data)
    }
}
