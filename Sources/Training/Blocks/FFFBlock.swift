import Kernels
import Layers

/// `block = "fff"`: a fast feedforward tree (`FastFeedforward`), its keys in `[fff]`.
enum FFFBlock: BlockKind {
    static let name = "fff"
    static let section: String? = "fff"
    static let keys = "`depth` (3; 1–16), `leaf_width` (32), `activation` (\"relu\", gelu, gelu_tanh, silu), `hardening` (0: weight "
        + "of the mean binary entropy of the node decisions), `load_balance` (0: weight of `L · Σ f_l · P_l` over the leaves), "
        + "`master_leaf` (false)"

    static func read(_ r: ConfigReader, trunk t: Trunk, source: String) throws -> (block: FeedForward, frozen: [String]) {
        let spec = FFFSpec(depth: try r.int("fff", "depth", 3, min: 1, max: 16),
                           leafWidth: try r.int("fff", "leaf_width", 32, min: 1, max: Architecture.largestDimension),
                           activation: Activation(rawValue: try r.string("fff", "activation", "relu", oneOf: ["relu", "gelu", "gelu_tanh", "silu"]))!,
                           hardening: Float(try r.double("fff", "hardening", 0, min: 0)),
                           balance: Float(try r.double("fff", "load_balance", 0, min: 0)),
                           masterLeaf: try r.bool("fff", "master_leaf", false))
        guard spec.trainingWidth <= Architecture.largestDimension else {
            throw ConfigError("\(source): [fff] depth = \(spec.depth) gives \(spec.leaves) leaves of leaf_width = \(spec.leafWidth), "
                              + "\(spec.trainingWidth) in all, more than \(Architecture.largestDimension), the largest hidden width a model may have")
        }
        return (.fff(spec), [])
    }
}
