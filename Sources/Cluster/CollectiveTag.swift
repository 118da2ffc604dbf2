/// Where a rank is in its sequence of collectives. Every collective carries one, so that a
/// hang report can say which call each rank is in, and which call a silent rank never reached.
///
/// Every rank makes the same collectives in the same order, so equal sequence numbers on two
/// ranks are the same call. Setting a tag allocates nothing: `phase` is a static string and
/// `detail` an existing one.
public struct CollectiveTag: Sendable, CustomStringConvertible {
    /// The optimizer step the trainer was on (-1 before training starts).
    public var step: Int
    /// What the collective is for: "gradient sync", "metrics", "evaluation", "preflight", …
    public var phase: StaticString
    /// Which part: a bucket and the parameters it holds, a layer.
    public var detail: String
    /// Position of this call in the rank's sequence of collectives, from 1.
    public var sequence: Int
    /// Bytes this rank contributes.
    public var bytes: Int

    public static let none = CollectiveTag(step: -1, phase: "none", detail: "", sequence: 0, bytes: 0)

    public var description: String {
        guard sequence > 0 else { return "no collective yet" }
        let at = step >= 0 ? "step \(step), " : ""
        return "collective #\(sequence) (\(at)\(phase)\(detail.isEmpty ? "" : ": " + detail), \(bytes) bytes)"
    }
}
