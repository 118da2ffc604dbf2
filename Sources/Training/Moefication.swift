import Foundation
import Kernels
import Layers

/// MoEfication (Zhang et al. 2022, "MoEfication: Transformer Feed-forward Layers are Mixtures
/// of Experts"): a trained dense FFN's hidden units split into E groups of equal size by
/// co-activation, each group an expert (its slice of W1, b1 and W2), and a router that predicts
/// which groups a token would activate most. `switchboard moefy` builds an MoE checkpoint
/// from a dense one with these pieces.
public enum Moefication {
    /// Groups of `units / experts` hidden units each, by co-activation: balanced k-means over
    /// each unit's activations on the samples (its column of `h` [samples, units], made unit
    /// length, so units that fire on the same samples are close). Each round assigns the most
    /// similar (unit, group) pairs first, a group taking no more than its share; starts from
    /// seeded farthest-first centres; at most `rounds` rounds. Groups come out in the order of
    /// their lowest unit, each sorted.
    public static func clusters(_ h: UnsafePointer<Float>, samples n: Int, units: Int, experts: Int, seed: UInt64,
                                rounds: Int = 20) -> [[Int]] {
        precondition(units % experts == 0)
        let size = units / experts
        // v [units, n]: each unit's activations, unit length.
        let v = Tensor(shape: [units, n])
        for i in 0..<units {
            var norm = 0.0
            for j in 0..<n { let a = h[j * units + i]; v[i * n + j] = a; norm += Double(a) * Double(a) }
            if norm > 0 { scaleCopy(Float(1 / norm.squareRoot()), v.data + i * n, v.data + i * n, n) }
        }
        let centres = Tensor(shape: [experts, n]), similarity = Tensor(shape: [units, experts])
        // Farthest-first: a seeded first unit, then each next the unit least like those chosen.
        var chosen = [Int(Philox(seed: seed).integer(below: units, stream: 7, index: 0))]
        var closest = [Float](repeating: -.infinity, count: units)
        while chosen.count < experts {
            let c = chosen.last!
            for i in 0..<units { closest[i] = max(closest[i], dot(v.data + i * n, v.data + c * n, n)) }
            for c in chosen { closest[c] = .infinity }
            chosen.append(closest.indices.min { closest[$0] < closest[$1] }!)
        }
        for (g, c) in chosen.enumerated() { (centres.data + g * n).update(from: v.data + c * n, count: n) }
        var group = [Int](repeating: -1, count: units)
        for _ in 0..<rounds {
            // similarity[units, E] = v · centresᵀ
            gemm(.none, .transpose, m: units, n: experts, k: n, a: v.data, lda: n, b: centres.data, ldb: n,
                 beta: 0, c: similarity.data, ldc: experts)
            let pairs = (0..<(units * experts)).sorted { similarity[$0] > similarity[$1] || (similarity[$0] == similarity[$1] && $0 < $1) }
            var next = [Int](repeating: -1, count: units), filled = [Int](repeating: 0, count: experts)
            for p in pairs {
                let (i, g) = (p / experts, p % experts)
                if next[i] < 0 && filled[g] < size { next[i] = g; filled[g] += 1 }
            }
            if next == group { break }
            group = next
            centres.zero()
            for i in 0..<units { axpy(1, v.data + i * n, centres.data + group[i] * n, n) }
            for g in 0..<experts {
                let c = centres.data + g * n
                let norm = dot(c, c, n).squareRoot()
                if norm > 0 { scaleCopy(1 / norm, c, c, n) }
            }
        }
        let groups = (0..<experts).map { g in (0..<units).filter { group[$0] == g } }
        return groups.sorted { $0[0] < $1[0] }
    }

    /// A linear router W [E, d] (no bias, as the MoE router has none) fitted by ridge
    /// regression to the targets s [samples, E] from the inputs u [samples, d]:
    /// `(uᵀu + λI) Wᵀ = uᵀs`, λ a thousandth of uᵀu's mean diagonal, solved by Cholesky in
    /// Double. The router's top-k then picks the groups predicted to activate most.
    public static func router(inputs u: UnsafePointer<Float>, samples n: Int, width d: Int, targets s: UnsafePointer<Float>,
                              experts e: Int) -> [Float] {
        let gram = Tensor(shape: [d, d]), cross = Tensor(shape: [d, e])
        gemm(.transpose, .none, m: d, n: d, k: n, a: u, lda: d, b: u, ldb: d, beta: 0, c: gram.data, ldc: d)
        gemm(.transpose, .none, m: d, n: e, k: n, a: u, lda: d, b: s, ldb: e, beta: 0, c: cross.data, ldc: e)
        var a = (0..<(d * d)).map { Double(gram[$0]) }
        let ridge = 1e-3 * max((0..<d).reduce(0.0) { $0 + a[$1 * d + $1] } / Double(d), 1e-12)
        for i in 0..<d { a[i * d + i] += ridge }
        // a = L·Lᵀ, L in the lower triangle.
        for j in 0..<d {
            var diagonal = a[j * d + j]
            for k in 0..<j { diagonal -= a[j * d + k] * a[j * d + k] }
            let l = max(diagonal, 1e-300).squareRoot()
            a[j * d + j] = l
            for i in (j + 1)..<max(j + 1, d) {
                var x = a[i * d + j]
                for k in 0..<j { x -= a[i * d + k] * a[j * d + k] }
                a[i * d + j] = x / l
            }
        }
        var w = [Float](repeating: 0, count: e * d)
        var y = [Double](repeating: 0, count: d)
        for g in 0..<e {
            // L·y = b, then Lᵀ·x = y.
            for i in 0..<d {
                var x = Double(cross[i * e + g])
                for k in 0..<i { x -= a[i * d + k] * y[k] }
                y[i] = x / a[i * d + i]
            }
            for i in stride(from: d - 1, through: 0, by: -1) {
                var x = y[i]
                for k in (i + 1)..<max(i + 1, d) { x -= a[k * d + i] * Double(w[g * d + k]) }
                w[g * d + i] = Float(x / a[i * d + i])
            }
        }
        return w
    }

    /// The job text of the MoE model made from a dense residual job's resolved config: the
    /// same run, data, training and trunk (nothing frozen), its blocks `experts` experts of `hidden` units
    /// chosen `experts` at a time by default (`evaluate --top-k` picks fewer), each chosen
    /// expert's output counting whole, the dense layer's second bias added once.
    public static func moeJob(fromDense text: String, source: String, experts: Int, hidden: Int, activation: String) throws -> String {
        var root = try ConfigValue.parse(text, source: source)
        root["init"] = nil
        guard case .table(var model) = root["model"] ?? .table([:]) else { throw ConfigError("\(source): [model] is not a section") }
        // The dense blocks' keys, and what was frozen: its names may be the dense blocks'.
        for key in ["block", "expansion", "hidden", "activation", "dropout", "rank", "bottleneck", "lift", "frozen"] { model[key] = nil }
        model["kind"] = .string("moe")
        root["model"] = .table(model)
        root["moe"] = .table([
            "experts": .int(experts), "top_k": .int(experts), "hidden": .int(hidden), "activation": .string(activation),
            "bias": .bool(true), "router": .string("softmax"), "renormalize": .bool(false), "balance_loss": .double(0),
            "gates": .string("one"), "output_bias": .bool(true), "dropless": .bool(true),
        ])
        return root.keys.sorted().map { section in
            guard case .table(let t) = root[section]! else { return "" }
            return "[\(section)]\n" + t.keys.sorted().map { "\($0) = \(t[$0]!.toml)\n" }.joined()
        }.joined(separator: "\n")
    }
}
