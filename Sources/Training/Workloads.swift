import Kernels
import Layers

/// The benchmark workloads of WORKLOADS.md, as job configs, so `bench` trains them through
/// the same code as `train`.
public enum Workload: String, CaseIterable, Sendable {
    case w1 = "W1"
    /// W1 data-parallel: 128 samples per rank per step, one BLAS thread per rank.
    case w3 = "W3"

    /// W1: 784 → 1024 → 1024 → 1024 → 10, Linear + ReLU three times then Linear; batch 256;
    /// uniform ±1/√fan_in init; AdamW β (0.9, 0.999), ε 1e-8, decoupled weight decay 0.01 on
    /// every parameter, constant lr 1e-3; mean softmax cross-entropy.
    /// W3 is W1 with a global batch of 128 per rank: `ranks` sets it.
    public func config(dataDir: String, epochs: Int, seed: UInt64 = 1, ranks: Int = 1) throws -> JobConfig {
        let batch = self == .w3 ? 128 * ranks : 256
        switch self {
        case .w1, .w3:
            return try JobConfig.parse("""
                [run]
                name = "bench-\(rawValue.lowercased())"
                seed = \(seed)
                [data]
                dir = "\(dataDir)"
                [model]
                kind = "stack"
                hidden = [1024, 1024, 1024]
                activation = "relu"
                [train]
                epochs = \(epochs)
                batch_size = \(batch)
                threads = \(self == .w3 ? 1 : 0)
                [optimizer]
                name = "adamw"
                lr = 1e-3
                beta1 = 0.9
                beta2 = 0.999
                eps = 1e-8
                weight_decay = 0.01
                decay_biases_and_norms = true
                [schedule]
                kind = "constant"
                """, source: "workload \(rawValue)")
        }
    }

    /// Training FLOPs per sample: forward, weight-gradient and input-gradient products of
    /// every matmul, except the input gradient of the first layer.
    public static func trainingFLOPs(_ model: Model) -> Double {
        var macs = 0.0, first = 0.0
        for p in model.store.parameters where p.role == .weight && p.shape.count == 2 {
            let m = Double(p.shape[0] * p.shape[1])
            if first == 0 { first = m }
            macs += m
        }
        return 2 * (3 * macs - first)
    }

    /// The GEMMs one training step of a plain Linear stack makes, as (transA, transB, m, n, k).
    public static func gemmShapes(_ model: Model, rows: Int) -> [(Transpose, Transpose, Int, Int, Int)] {
        var shapes: [(Transpose, Transpose, Int, Int, Int)] = []
        for (i, p) in model.store.parameters.filter({ $0.role == .weight && $0.shape.count == 2 }).enumerated() {
            let out = p.shape[0], inp = p.shape[1]
            shapes.append((.none, .transpose, rows, out, inp))        // forward
            shapes.append((.transpose, .none, out, inp, rows))        // weight gradient
            if i > 0 { shapes.append((.none, .none, rows, inp, out)) } // input gradient
        }
        return shapes
    }
}
