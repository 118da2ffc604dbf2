import Kernels
import Layers

/// The benchmark workloads of docs/BENCHMARKS.md, as job configs, so `bench` trains them through
/// the same code as `train`.
public enum Workload: String, CaseIterable, Sendable {
    case w1 = "W1"
    /// 784 → 256 → two residual MoE blocks (16 experts 256→512→256, GELU, top-2 softmax,
    /// renormalized, dropless, load-balancing loss 0.01) → LayerNorm → 10.
    case w2 = "W2"
    /// W1 data-parallel: 128 samples per rank per step, one BLAS thread per rank.
    case w3 = "W3"
    /// W2 expert-parallel: 256 samples per rank per step, the experts spread over the ranks,
    /// one BLAS thread per rank.
    case w4 = "W4"
    /// Checkpoint I/O: a stack of six 4096 → 4096 layers (100.7 M parameters) with AdamW
    /// state, saved and loaded (`bench W5`); no training.
    case w5 = "W5"

    /// Samples per rank per step of the scaling workloads (W3, W4).
    public var samplesPerRank: Int { self == .w3 ? 128 : 256 }

    /// W1: 784 → 1024 → 1024 → 1024 → 10, Linear + ReLU three times then Linear; batch 256;
    /// uniform ±1/√fan_in init; AdamW β (0.9, 0.999), ε 1e-8, decoupled weight decay 0.01 on
    /// every parameter, constant lr 1e-3; mean softmax cross-entropy.
    /// W3 is W1 with a global batch of 128 per rank: `ranks` sets it.
    public func config(dataDir: String, epochs: Int, seed: UInt64 = 1, ranks: Int = 1) throws -> JobConfig {
        let batch = self == .w3 || self == .w4 ? samplesPerRank * ranks : 256
        let common = """
            [train]
            epochs = \(epochs)
            batch_size = \(batch)
            threads = \(self == .w3 || self == .w4 ? 1 : 0)
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
            """
        let model: String
        switch self {
        case .w2, .w4:
            model = """
                [model]
                kind = "moe"
                width = 256
                depth = 2
                norm = "layernorm"
                [moe]
                experts = 16
                top_k = 2
                hidden = 512
                activation = "gelu"
                bias = true
                router = "softmax"
                renormalize = true
                balance_loss = 0.01
                dropless = true
                """
        case .w5:
            model = """
                [model]
                kind = "stack"
                hidden = [4096, 4096, 4096, 4096, 4096, 4096]
                activation = "relu"
                """
        case .w1, .w3:
            model = """
                [model]
                kind = "stack"
                hidden = [1024, 1024, 1024]
                activation = "relu"
                """
        }
        return try JobConfig.parse("""
            [run]
            name = "bench-\(rawValue.lowercased())"
            seed = \(seed)
            [data]
            dir = "\(dataDir)"
            \(model)
            \(common)
            """, source: "workload \(rawValue)")
    }

    /// The GEMMs one training step makes, as (transA, transB, m, n, k): for every weight
    /// matrix its forward, weight-gradient and input-gradient products (no input gradient for
    /// the first). An expert's products run on its share of the batch, T·k/E rows when the
    /// router balances perfectly.
    public static func gemmShapes(_ model: Model, rows: Int) -> [(Transpose, Transpose, Int, Int, Int)] {
        // The rows an expert takes, by its parameters.
        var expertRows: [ObjectIdentifier: Int] = [:]
        for moe in model.moeLayers {
            for i in 0..<moe.experts {
                for p in moe.expertParameters(i) { expertRows[ObjectIdentifier(p)] = max(1, rows * moe.expertsPerRow / moe.experts) }
            }
        }
        var shapes: [(Transpose, Transpose, Int, Int, Int)] = []
        for (i, p) in model.store.parameters.filter({ $0.role == .weight && $0.shape.count == 2 }).enumerated() {
            let out = p.shape[0], inp = p.shape[1], n = expertRows[ObjectIdentifier(p)] ?? rows
            shapes.append((.none, .transpose, n, out, inp))        // forward
            shapes.append((.transpose, .none, out, inp, n))        // weight gradient
            if i > 0 { shapes.append((.none, .none, n, inp, out)) } // input gradient
        }
        return shapes
    }
}
