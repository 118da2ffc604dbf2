import Layers

/// `block = "topk"`: the top-k activation FFN, σ-MoE's dense baseline (Csordás et al. 2023,
/// §3): an mlp block that keeps only the `[topk] k` largest hidden activations of each token.
enum TopKBlock: BlockKind {
    static let name = "topk"
    static let section: String? = "topk"
    static let keys = "`k` (the hidden units kept per token, 1 up to the hidden width), with mlp's keys in `[model]`"

    static func read(_ r: ConfigReader, trunk: Trunk, source: String) throws -> (block: FeedForward, frozen: [String]) {
        guard case .mlp(var spec) = try MLPBlock.read(r, trunk: trunk, source: source).block else { preconditionFailure("an mlp block") }
        guard r.has("topk", "k") else {
            throw ConfigError("\(source): [topk] k is missing: block = \"topk\" keeps the k largest of the \(spec.hidden) hidden units")
        }
        spec.keep = try r.int("topk", "k", 0, min: 1, max: spec.hidden)
        return (.mlp(spec), [])
    }
}
