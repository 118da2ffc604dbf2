import Kernels

/// `y = f(x · Wᵀ + b)`, W `[out, in]`, with an optional fused pointwise activation f.
///
/// Layout by measurement (OpenBLAS, Zen, 1–2 threads): all four transpose combinations of
/// W1's shapes run within 3% of each other, so weights stay `[out, in]` as in the papers:
/// forward is (N,T), the input gradient (N,N), the weight gradient (T,N).
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

    /// Weights and biases uniform in ±1/√fan_in (PyTorch's default, and the benchmark workloads').
    public init(
        _ name: String, inputs: Int, outputs: Int, bias: Bool = true,
        activation: Activation = .identity, computesInputGradient: Bool = true,
        maxRows: Int, store: ParameterStore, initBound: Float? = nil, biasBound: Float? = nil
    ) {
        inputWidth = inputs
        outputWidth = outputs
        self.activation = activation
        self.computesInputGradient = computesInputGradient
        let bound = initBound ?? 1 / Float(inputs).squareRoot()
        weight = store.register(
            "\(name).weight", shape: [outputs, inputs], role: .weight, initializer: .uniform(bound: bound), freezable: true)
        self.bias = bias
            ? store.register("\(name).bias", shape: [outputs], role: .bias, initializer: .uniform(bound: biasBound ?? bound),
                             freezable: true)
            : nil
        let fused = activation != .identity
        z = Tensor(shape: [maxRows, outputs])
        y = Tensor(shape: [fused ? maxRows : 0, outputs])
        dz = Tensor(shape: [fused ? maxRows : 0, outputs])
        dx = Tensor(shape: [computesInputGradient ? maxRows : 0, inputs])
    }

    /// The input and the output of the last forward pass (for reading activations: `moefy`).
    public var lastInput: UnsafePointer<Float>? { x }
    public var lastOutput: UnsafePointer<Float> { UnsafePointer(activation == .identity ? z.data : y.data) }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        self.x = x
        // z[rows, out] = x[rows, in] · Wᵀ
        gemm(.none, .transpose, m: rows, n: outputWidth, k: inputWidth,
             a: x, lda: inputWidth, b: weight.value, ldb: inputWidth, beta: 0, c: z.data, ldc: outputWidth)
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
        if let dw = weight.grad {
            // dW[out, in] += gᵀ · x
            gemm(.transpose, .none, m: outputWidth, n: inputWidth, k: rows,
                 a: g, lda: outputWidth, b: x, ldb: inputWidth, beta: 1, c: dw, ldc: inputWidth)
        }
        guard computesInputGradient else { return nil }
        // dx[rows, in] = g · W
        gemm(.none, .none, m: rows, n: inputWidth, k: outputWidth,
             a: g, lda: outputWidth, b: weight.value, ldb: inputWidth, beta: 0, c: dx.data, ldc: inputWidth)
        return UnsafePointer(dx.data)
    }
}
