import Foundation
import Layers

/// Test hook: `SWITCHBOARD_ROUTING_TRACE=<folder>` makes each rank write, after every training
/// pass's forward, the assignments that MoE capacity dropped, one line `step layer sample
/// expert` each (sample: the training set's index), to `<folder>/rank-<r>.txt`. Runs that
/// split a batch differently (ranks, micro-batches) can then compare their dropped sets.
/// Unset, it costs a nil check per pass.
final class RoutingTrace {
    let file: UnsafeMutablePointer<FILE>

    private init(file: UnsafeMutablePointer<FILE>) { self.file = file }
    deinit { fclose(file) }

    /// The trace for rank `rank`, or nil when the variable is unset or the file cannot be made.
    static func open(rank: Int) -> RoutingTrace? {
        guard let folder = getenv("SWITCHBOARD_ROUTING_TRACE"), let file = fopen("\(String(cString: folder))/rank-\(rank).txt", "w")
        else { return nil }
        return RoutingTrace(file: file)
    }

    /// The dropped assignments of `model`'s last pass; `samples(row)` is a row's sample index.
    func record(_ model: Model, step: Int, samples: (Int) -> Int32) {
        for (l, moe) in model.moeLayers.enumerated() {
            moe.forEachDroppedAssignment { row, expert in
                fputs("\(step) \(l) \(samples(row)) \(expert)\n", file)
            }
        }
        fflush(file)
    }
}
