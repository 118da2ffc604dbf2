import Layers

/// `block = "hourglass"`: a wide stream computing through a narrow bottleneck ("Rethinking
/// the shape convention of an MLP", Chen et al. 2025); the lift from the input may stay at
/// its random initialization.
enum HourglassBlock: BlockKind {
    static let name = "hourglass"
    static let section: String? = nil
    static let keys = "`bottleneck` (width / 4, narrower than `width`), `lift` (\"frozen\" or \"trained\"), "
        + "and mlp's `activation`, `dropout`, `rank`"

    static func read(_ r: ConfigReader, trunk t: Trunk, source: String) throws -> (block: FeedForward, frozen: [String]) {
        let bottleneck = try r.int("model", "bottleneck", max(1, t.width / 4), min: 1, max: Architecture.largestDimension)
        guard bottleneck < t.width else {
            throw ConfigError("\(source): [model] bottleneck = \(bottleneck) is not narrower than the stream (width = \(t.width)); "
                              + "an hourglass block computes through a bottleneck narrower than its stream")
        }
        let spec = try MLPBlock.spec(r, hidden: bottleneck, width: t.width, source: source)
        let frozen = try r.string("model", "lift", "frozen", oneOf: ["frozen", "trained"]) == "frozen" ? ["embed"] : []
        return (.mlp(spec), frozen)
    }
}
