import Foundation

/// The names inside a checkpoint, in one place: a parameter's values are the tensor
/// `params/<global name>`, its optimizer state `optimizer/<state>/<global name>` (state `m`,
/// `v` or `momentum`), and rank r's shard is the file `rank-0000r.h5`.
public enum CheckpointNames {
    public static let parameterPrefix = "params/"
    public static let statePrefix = "optimizer/"

    /// The tensor holding the values of the parameter with global name `name`.
    public static func parameter(_ name: String) -> String { parameterPrefix + name }

    /// The tensor holding optimizer state `state` of the parameter `name`.
    public static func state(_ state: String, _ name: String) -> String { "\(statePrefix)\(state)/\(name)" }

    /// Whether `tensor` holds a parameter's values (not optimizer state).
    public static func isParameter(_ tensor: String) -> Bool { tensor.hasPrefix(parameterPrefix) }

    /// The global parameter name whose values `tensor` holds; nil for optimizer state.
    public static func parameterName(of tensor: String) -> String? {
        isParameter(tensor) ? String(tensor.dropFirst(parameterPrefix.count)) : nil
    }

    /// The shard file rank `rank` writes.
    public static func shardFile(rank: Int) -> String { "rank-" + String(format: "%05d", rank) + ".h5" }
}
