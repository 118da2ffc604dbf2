import Cluster
import Layers
import Storage

/// Who writes which tensor of a checkpoint (named as `CheckpointNames` says). A parameter and its
/// optimizer state go to one shard file: experts that live only on their runner (E ≥ P) are
/// written by that runner, by global expert id; every other parameter is written once, by
/// the rank with the fewest bytes so far, so the shards come out about equal. The plan is a
/// pure function of the model, the placement and the world size: every rank computes the
/// same one without talking.
struct CheckpointPlan {
    /// Per parameter (store order), the rank that writes it.
    let writer: [Int]
    /// Per parameter, its expert's global id when only the expert's runners hold it.
    let expert: [Int?]

    init(model: Model, placement: ExpertPlacement?, ranks: Int, expertsLocal: Bool, stateCount: Int) {
        let parameters = model.store.parameters
        var expertOf: [ObjectIdentifier: Int] = [:]
        if expertsLocal {
            for moe in model.moeLayers {
                for e in 0..<moe.spec.experts {
                    for p in [moe.w1[e], moe.b1[e], moe.w2[e], moe.b2[e]].compactMap({ $0 }) { expertOf[ObjectIdentifier(p)] = e }
                }
            }
        }
        expert = parameters.map { expertOf[ObjectIdentifier($0)] }
        var load = [Int](repeating: 0, count: ranks)
        var writer = [Int](repeating: 0, count: parameters.count)
        let bytes = { (p: Parameter) in p.count * 4 * (1 + (p.frozen ? 0 : stateCount)) }
        for (i, p) in parameters.enumerated() {
            if let e = expert[i], let placement {
                writer[i] = placement.runners(of: e).lowerBound
                load[writer[i]] += bytes(p)
            }
        }
        for (i, p) in parameters.enumerated() where expert[i] == nil {
            let r = load.indices.min { load[$0] < load[$1] }!
            writer[i] = r
            load[r] += bytes(p)
        }
        self.writer = writer
    }
}
