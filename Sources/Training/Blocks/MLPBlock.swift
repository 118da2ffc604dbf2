import Layers

/// `block = "mlp"`: the two-matrix FFN, `W2·drop(f(W1·x))`, its hidden width given as an
/// expansion of the stream or directly.
enum MLPBlock: BlockKind {
    static let name = "mlp"
    static let section: String? = nil
    static let keys = "`expansion` (4) or `hidden` (the hidden width directly; not both), `activation` (\"gelu\"; also relu, "
        + "gelu_tanh, silu, swiglu, geglu, reglu, glu), `dropout` (0), `rank` (0 = dense; r: W1 and W2 each factored U·V of rank r)"

    static func read(_ r: ConfigReader, trunk t: Trunk, source: String) throws -> (block: FeedForward, frozen: [String]) {
        if r.has("model", "hidden") && r.has("model", "expansion") {
            throw ConfigError("\(source): [model] sets both hidden and expansion; give the hidden width one way")
        }
        let hidden: Int
        if r.has("model", "hidden") {
            hidden = try r.int("model", "hidden", 0, min: 1, max: Architecture.largestDimension)
        } else {
            let expansion = try r.int("model", "expansion", 4, min: 1)
            // Checked before multiplying: a product that overflows is not a width.
            let (product, overflow) = expansion.multipliedReportingOverflow(by: t.width)
            guard !overflow, product <= Architecture.largestDimension else {
                throw ConfigError("\(source): [model] expansion = \(expansion) × width = \(t.width) is a hidden width above "
                                  + "\(Architecture.largestDimension), the largest a model may have")
            }
            hidden = product
        }
        return (.mlp(try spec(r, hidden: hidden, width: t.width, source: source)), [])
    }

    /// The keys of a two-matrix block besides its hidden width (also the hourglass's):
    /// activation, dropout and the factorization rank.
    static func spec(_ r: ConfigReader, hidden: Int, width: Int, source: String) throws -> MLPSpec {
        let activation = try r.string("model", "activation", "gelu", oneOf: BlockActivation.names)
        let dropout = try r.double("model", "dropout", 0, min: 0, below: 1)
        let rank = try r.int("model", "rank", 0, min: 0)
        // Each block matrix is hidden × width (or 2·hidden × width for a GLU): a factorization
        // of rank ≥ the smaller side saves nothing.
        let side = min(width, hidden)
        guard rank < side else {
            throw ConfigError("\(source): [model] rank = \(rank) is not below the block matrices' smaller side (\(side) = min(width \(width), "
                              + "hidden \(hidden))); a factorization U·V of that rank has at least the dense matrix's parameters")
        }
        return MLPSpec(hidden: hidden, activation: BlockActivation(name: activation)!, dropout: Float(dropout), rank: rank)
    }
}
