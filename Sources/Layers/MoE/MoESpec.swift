/// How a mixture-of-experts layer routes tokens.
public enum RouterKind: Sendable, Equatable {
    /// Softmax over the experts, the k largest probabilities taken; with `renormalize` the k
    /// gates are divided by their sum (GShard, Mixtral), without it they are the
    /// probabilities themselves (Switch with k = 1).
    case softmax(renormalize: Bool)
    /// Independent sigmoid scores, the k largest taken as gates without normalization
    /// (σ-MoE, Csordás, Irie & Schmidhuber 2023).
    case sigmoid
}

/// A mixture-of-experts feedforward layer: `E` expert MLPs `d → hidden → d`, each token
/// sent to `k` of them and their outputs mixed by the gates.
public struct MoESpec: Sendable, Equatable {
    public var experts: Int
    public var topK: Int
    /// Hidden width of one expert (doubled inside its first matrix for a GLU variant).
    public var hidden: Int
    public var activation: BlockActivation
    public var bias: Bool
    public var router: RouterKind
    /// Switch load-balancing loss `E · Σ_e f_e · P_e` (f_e: share of assignments routed to e,
    /// P_e: mean router probability of e over the batch).
    public var balanceCoefficient: Float
    /// Router z-loss `mean_t (logsumexp_e z_te)²` (ST-MoE).
    public var zLossCoefficient: Float
    /// σ-MoE's regularizer `Σ_e p̄_e log p̄_e` (the negative entropy of the batch-mean softmax
    /// over experts): minimizing it spreads the batch over the experts.
    public var entropyCoefficient: Float
    /// An expert takes at most ⌈factor · T·k / E⌉ assignments of a batch of T tokens, in
    /// token order; later ones are dropped (they add zero; the residual carries the token).
    /// 0 means dropless: no limit.
    public var capacityFactor: Float
    /// In training, each (token, expert) pair is excluded from selection with this
    /// probability (σ-MoE's expert dropout).
    public var expertDropout: Float
    /// Hidden width of a shared expert every token goes through (0: none).
    public var sharedHidden: Int
    /// Start the router at zero: every expert scores the same, ties go to the lowest index,
    /// so at first all tokens go to experts 0..<k (uniform gates). Used to test skewed
    /// routing; the router learns its way out.
    public var zeroRouterInit: Bool
    /// σ-MoE's initialization (Csordás, Irie & Schmidhuber 2023): instead of each expert as a
    /// small layer of its own (uniform in ±1/√fan_in), the statistics of the parameter-equal
    /// dense layer of width E·H: W1 normal with std 1/√d, W2 normal with std 1/√(E·H),
    /// biases zero, and the router normal with std 1/√d, its rows rescaled to one norm.
    public var sigmaInit: Bool
    /// Each chosen expert's output counts whole (gate 1), as in MoEfication, where the experts
    /// are slices of a dense layer whose units add up; the router then only chooses (it learns
    /// from the auxiliary losses alone).
    public var unitGates: Bool
    /// A bias added to the layer's output once, whichever experts ran (a dense layer's second
    /// bias, when the experts are its slices).
    public var outputBias: Bool

    public init(experts: Int, topK: Int, hidden: Int, activation: BlockActivation, bias: Bool = true,
                router: RouterKind = .softmax(renormalize: true), balanceCoefficient: Float = 0,
                zLossCoefficient: Float = 0, entropyCoefficient: Float = 0, capacityFactor: Float = 0,
                expertDropout: Float = 0, sharedHidden: Int = 0, zeroRouterInit: Bool = false, sigmaInit: Bool = false,
                unitGates: Bool = false, outputBias: Bool = false) {
        self.experts = experts
        self.topK = topK
        self.hidden = hidden
        self.activation = activation
        self.bias = bias
        self.router = router
        self.balanceCoefficient = balanceCoefficient
        self.zLossCoefficient = zLossCoefficient
        self.entropyCoefficient = entropyCoefficient
        self.capacityFactor = capacityFactor
        self.expertDropout = expertDropout
        self.sharedHidden = sharedHidden
        self.zeroRouterInit = zeroRouterInit
        self.sigmaInit = sigmaInit
        self.unitGates = unitGates
        self.outputBias = outputBias
    }

    /// The most assignments one expert accepts from a batch of `tokens` tokens.
    public func capacity(tokens: Int) -> Int {
        guard capacityFactor > 0 else { return tokens * topK }
        return Int((Double(capacityFactor) * Double(tokens * topK) / Double(experts)).rounded(.up))
    }
}
