import Cluster
import Kernels
import Layers
import Storage

extension Moefication {
    /// The MoE model made from a dense residual model (`dense`, its weights loaded; its job
    /// `denseText`, its blocks' hidden width `h`): each block's hidden units clustered by co-activation into `experts` equal
    /// groups over the first `samples` of a seeded order of the training set, each group an
    /// expert holding its slice of W1, b1 and W2, the dense W2's bias as the layer's output
    /// bias, and a least-squares router that predicts each group's summed activation from the
    /// block's normalized input. Everything outside the blocks is copied. Returns the MoE job's
    /// trainer at step 0, holding the converted weights (to be saved), its config, and the
    /// samples clustered on.
    public static func convert(_ dense: Evaluator, denseText: String, source: String, activation: Activation, hidden h: Int, experts: Int,
                               samples: Int, train: Dataset, test: Dataset, comm: Communicator)
        throws -> (trainer: Trainer, config: JobConfig, samples: Int) {
        // 1. The dense model's blocks on the sample: each block's normalized input (the
        //    router's input) and its hidden activations.
        let chunk = 512
        let n = min(samples, train.count)
        let order = Philox(seed: dense.config.run.seed).permutation(train.count, stream: 0x4D4F_4546)
        let blocks = dense.model.network.layers.compactMap { ($0 as? Residual)?.branch.layers[1] as? Linear }
        let d = blocks.first?.inputWidth ?? 0
        let inputs = blocks.map { _ in Tensor(shape: [n, d]) }, hidden = blocks.map { _ in Tensor(shape: [n, h]) }
        let x = Tensor(shape: [chunk, train.width])
        var labels = [Int32](repeating: 0, count: chunk)
        for start in stride(from: 0, to: n, by: chunk) {
            let rows = min(chunk, n - start)
            try order.withUnsafeBufferPointer { o in
                try labels.withUnsafeMutableBufferPointer { y in
                    try train.gather(UnsafeBufferPointer(rebasing: o[start..<(start + rows)]), into: x.data, labels: y.baseAddress!)
                }
            }
            _ = dense.model.forward(x.data, rows: rows, context: ForwardContext(training: false))
            for (b, fc1) in blocks.enumerated() {
                (inputs[b].data + start * d).update(from: fc1.lastInput!, count: rows * d)
                (hidden[b].data + start * h).update(from: fc1.lastOutput, count: rows * h)
            }
        }

        // 2. The MoE job and its model, with everything outside the blocks copied by name.
        let moeText = try moeJob(fromDense: denseText, source: source, experts: experts, hidden: h / experts,
                                 activation: activation.rawValue)
        let moeConfig = try JobConfig.parse(moeText, source: "the MoE job made from \(source)")
        let trainer = try Trainer(config: moeConfig, comm: comm, train: train, test: test)
        let store = trainer.model.store, denseStore = dense.model.store
        for p in store.parameters {
            guard let q = denseStore[p.name] else { continue }
            p.value.update(from: q.value, count: p.count)
        }

        // 3. Each block's experts from its clusters, and its router.
        for (b, moe) in trainer.model.moeLayers.enumerated() {
            let groups = clusters(hidden[b].data, samples: n, units: h, experts: experts, seed: dense.config.run.seed &+ UInt64(b))
            let w1 = denseStore["blocks.\(b).fc1.weight"]!, b1 = denseStore["blocks.\(b).fc1.bias"]!
            let w2 = denseStore["blocks.\(b).fc2.weight"]!, b2 = denseStore["blocks.\(b).fc2.bias"]!
            let targets = Tensor(shape: [n, experts])
            for (e, units) in groups.enumerated() {
                for (j, unit) in units.enumerated() {
                    (moe.w1[e].value + j * d).update(from: w1.value + unit * d, count: d)
                    moe.b1[e]!.value[j] = b1.value[unit]
                    for o in 0..<d { moe.w2[e].value[o * units.count + j] = w2.value[o * h + unit] }
                    for r in 0..<n { targets[r * experts + e] += hidden[b][r * h + unit] }
                }
                moe.b2[e]!.value.update(repeating: 0, count: d)
            }
            moe.outputBias!.value.update(from: b2.value, count: d)
            let weights = router(inputs: inputs[b].data, samples: n, width: d, targets: targets.data, experts: experts)
            moe.router.value.update(from: weights, count: weights.count)
        }
        return (trainer, moeConfig, n)
    }
}
