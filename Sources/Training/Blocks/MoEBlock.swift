import Layers

/// `kind = "moe"`: every residual block a mixture of experts (`MoESpec`), its keys in `[moe]`. A
/// model kind, not a `block` kind (its blocks have no dense alternative to choose between),
/// read here beside the block kinds.
enum MoEBlock {
    static let section = "moe"

    static func read(_ r: ConfigReader, trunk t: Trunk, source: String) throws -> MoESpec {
        let experts = try r.int("moe", "experts", 16, min: 1, max: 1 << 16)
        let topK = try r.int("moe", "top_k", 2, min: 1)
        guard topK <= experts else {
            throw ConfigError("\(source): [moe] top_k = \(topK) is larger than experts = \(experts); a token cannot use more experts than exist")
        }
        let hidden = try r.int("moe", "hidden", 512, min: 1, max: Architecture.largestDimension)
        let activation = try r.string("moe", "activation", "gelu", oneOf: BlockActivation.names)
        let bias = try r.bool("moe", "bias", true)
        let routerName = try r.string("moe", "router", "softmax", oneOf: ["softmax", "sigmoid"])
        let router: RouterKind = routerName == "sigmoid" ? .sigmoid : .softmax(renormalize: try r.bool("moe", "renormalize", true))
        let balance = try r.double("moe", "balance_loss", 0.01, min: 0)
        let zLoss = try r.double("moe", "z_loss", 0, min: 0)
        let entropy = try r.double("moe", "entropy_loss", 0, min: 0)
        let dropless = try r.bool("moe", "dropless", true)
        // A capacity factor of 0 or less would drop every token: dropless says "no limit".
        let capacity = dropless ? 0 : try r.double("moe", "capacity_factor", 1.25, max: 1e6, above: 0)
        let expertDropout = try r.double("moe", "expert_dropout", 0, min: 0, below: 1)
        let shared = try r.int("moe", "shared_hidden", 0, min: 0, max: Architecture.largestDimension)
        let routerInit = try r.string("moe", "router_init", "uniform", oneOf: ["uniform", "zeros"])
        let initialization = try r.string("moe", "init", "per_expert", oneOf: ["per_expert", "sigma_moe"])
        let gates = try r.string("moe", "gates", "router", oneOf: ["router", "one"])
        let outputBias = try r.bool("moe", "output_bias", false)
        if initialization == "sigma_moe" && routerInit == "zeros" {
            throw ConfigError("\(source): [moe] init = \"sigma_moe\" initializes the router; it cannot be combined with router_init = \"zeros\"")
        }
        guard t.depth * experts <= Architecture.mostExperts else {
            throw ConfigError("\(source): [model] depth = \(t.depth) blocks of [moe] experts = \(experts) are "
                              + "\(t.depth * experts) experts, more than the \(Architecture.mostExperts) a model may have")
        }
        return MoESpec(experts: experts, topK: topK, hidden: hidden, activation: BlockActivation(name: activation)!, bias: bias,
                       router: router, balanceCoefficient: Float(balance), zLossCoefficient: Float(zLoss),
                       entropyCoefficient: Float(entropy), capacityFactor: Float(capacity),
                       expertDropout: Float(expertDropout), sharedHidden: shared, zeroRouterInit: routerInit == "zeros",
                       sigmaInit: initialization == "sigma_moe", unitGates: gates == "one", outputBias: outputBias)
    }
}
