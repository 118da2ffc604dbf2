import Foundation
import Kernels

/// A fast feedforward layer's shape and training terms (`FastFeedforward`).
public struct FFFSpec: Sendable, Equatable {
    /// Levels of node neurons: 2^depth − 1 nodes, 2^depth leaves.
    public var depth: Int
    /// Hidden width of each leaf FFN `d → leafWidth → d` (and of the master leaf).
    public var leafWidth: Int
    public var activation: Activation
    /// Weight of the hardening loss: the mean binary entropy of the node decisions.
    public var hardening: Float
    /// Weight of the leaf load-balancing loss `L · Σ_l f_l · P_l` (f_l: share of the batch
    /// whose hard descent ends at leaf l; P_l: batch mean of its soft path probability).
    public var balance: Float
    /// A master leaf every sample goes through, blended with the tree by a trained `k`.
    public var masterLeaf: Bool

    public init(depth: Int, leafWidth: Int, activation: Activation = .relu, hardening: Float = 0, balance: Float = 0,
                masterLeaf: Bool = false) {
        self.depth = depth
        self.leafWidth = leafWidth
        self.activation = activation
        self.hardening = hardening
        self.balance = balance
        self.masterLeaf = masterLeaf
    }

    public var leaves: Int { 1 << depth }
    public var nodes: Int { leaves - 1 }
    /// The width of the dense FFN that the soft layer computes: every leaf's hidden units.
    public var trainingWidth: Int { leaves * leafWidth }
}

/// A fast feedforward network layer (FFF; Belcak & Wattenhofer 2023, "Fast Feedforward
/// Networks"), with the load balancing and master leaf of Charalampopoulos et al. 2024.
///
/// A balanced binary tree in heap order: node n (a linear unit of the input, `a_n`, with
/// σ(a_n) the probability of going right) has children 2n+1 (left) and 2n+2 (right); heap
/// index N + l is leaf l, a small FFN `d → leafWidth → d`. The leaves' matrices are stacked
/// as one dense FFN of width L·leafWidth: `leaves.fc1.weight` [L·lw, d] and
/// `leaves.fc2.weight` [d, L·lw] in Linear's [out, in] layout, leaf l owning hidden units
/// l·lw ..< (l+1)·lw, plus a per-leaf output bias `leaves.fc2.bias` [L, d].
///
/// Training ("soft"): `y = Σ_l p_l · leaf_l(x)`, p_l the product of σ or 1 − σ along the
/// path to l; as one product pair, `y = (f(x·W1ᵀ + b1) ⊙ p̂) · W2ᵀ + p · B2` with p̂ each
/// p_l repeated over its leaf's hidden units. With a master leaf M,
/// `y = (1 − k) · y_tree + k · M(x)`, k a trained scalar starting at ½.
///
/// Inference with `ForwardContext.hardDecisions` ("hard"): each row descends the tree
/// (right where a_n > 0), evaluating `depth` node neurons and one leaf; rows are grouped by
/// leaf and each leaf's rows run as one product pair.
public final class FastFeedforward: Layer, AuxiliaryLoss, RankStatistics, HardInference, ReportsTelemetry {
    public let spec: FFFSpec
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    /// Node logits `a = x · Wnᵀ + bn`, [N].
    public let nodes: Linear
    /// Every leaf's first matrix with the activation fused, [L·lw, d].
    public let fc1: Linear
    /// Every leaf's second matrix, [d, L·lw], without bias (the leaf biases are `leafBias`).
    public let fc2: Linear
    /// `leaves.fc2.bias` [L, d].
    public let leafBias: Parameter
    public let master: (fc1: Linear, fc2: Linear, mix: Parameter)?
    /// Sums over the ranks that share a global batch, for the auxiliary losses' statistics.
    public var reduction: (any RankReduction)?
    /// The leaf balance is over the whole batch's descents.
    public var gradientsUseBatchStatistics: Bool { spec.balance != 0 }
    /// The auxiliary losses of the last training pass, coefficients applied.
    public private(set) var auxLoss = 0.0
    /// Whether the last pass computed auxiliary losses: a training pass with hardening or balance on.
    var computesAuxLoss: Bool { training && (spec.hardening > 0 || spec.balance > 0) }
    /// The rows of the last training pass's global batch whose hard descent ends in each leaf,
    /// when it computed its auxiliary losses (hardening or balance on); empty otherwise.
    public var leafDescents: [Int] {
        computesAuxLoss ? statistics.prefix(l).map { Int($0) } : []
    }

    public var telemetryPrefix: String { "fff" }

    /// With auxiliary losses: the last pass's, and how its global batch's hard descents spread
    /// over the leaves (balance: their entropy over log L). Nothing without them.
    public func takeReport(rankLoad: (([Int]) -> (max: Double, mean: Double))?) -> TelemetryReport {
        var report = TelemetryReport()
        let counts = leafDescents
        guard !counts.isEmpty else { return report }
        report.fields = [("leaves", .counts(counts)), ("balance", .number(MoETelemetry.balance(counts))), ("aux", .number(auxLoss))]
        return report
    }

    let d: Int, n: Int, l: Int, lw: Int
    let sigma: Tensor       // [maxRows, N] σ(a)
    let reach: Tensor       // [maxRows, 2L−1] probability of reaching each heap index; p = the last L
    let gated: Tensor       // [maxRows, L·lw] h ⊙ p̂
    let tree: Tensor        // [maxRows, d] the tree's output (before the master blend)
    let y: Tensor           // [maxRows, d]
    let dTree: Tensor       // [maxRows, d] the tree's share of dy
    let dp: Tensor          // [maxRows, L]
    let dh: Tensor          // [maxRows, L·lw]
    let da: Tensor          // [maxRows, N]
    let up: Tensor          // [2L−1] per-row scratch of the tree backward
    let dx: Tensor          // [maxRows, d]
    /// Per leaf: hard descents that ended there (f·T) and Σ p (P·T); then Σ entropy. Over
    /// `statisticsRows` rows: the pass's, or the step's (`BatchStatistics.held`).
    var statistics: [Double]
    var statisticsRows = 0
    /// The same over the step's passes so far (`BatchStatistics.gather`), and their loss.
    var stepStatistics: [Double]
    var stepAux = 0.0
    var leafCounts: [Int]
    var x: UnsafePointer<Float>?
    /// This rank's rows in the pass; rows of the global batch, and of the pass, over all ranks.
    var rows = 0, globalRows = 0, passRows = 0, training = false
    // Hard inference: each row's leaf, rows grouped by leaf, and a leaf's rows gathered.
    var leafOf: [Int32], grouped: [Int32], groupStart: [Int]
    let xs: Tensor, zs: Tensor, hs: Tensor, ys: Tensor
    /// The layer's own products, fp32 in either precision (probabilities and hard inference):
    /// out += p·B2; dB2 += pᵀ·g; dp = g·B2ᵀ; a leaf's zs = xs·W1_leafᵀ and ys = hs·W2_leafᵀ.
    let mixLeafBias, leafBiasGradient, reachGradient, leafFirst, leafSecond: Matmul
    /// Hard inference's two parts as work for the worker pool.
    private(set) var hardPass: HardPass!

    public init(_ name: String, width: Int, spec: FFFSpec, in build: BuildContext) {
        let store = build.store, maxRows = build.maxRows
        precondition(spec.depth >= 1 && spec.leafWidth >= 1)
        // Backward reads the leaves' activations, which a fused identity does not keep.
        precondition(spec.activation != .identity, "an FFF's leaves need an activation")
        self.spec = spec
        inputWidth = width
        d = width; n = spec.nodes; l = spec.leaves; lw = spec.leafWidth
        let hidden = spec.trainingWidth
        // The reference implementation's initialization: node and first-layer parameters
        // uniform in ±1/√d, second-layer ones in ±1/√leafWidth.
        // The soft tree runs in training only; inference descends (`depth` node dots, counted
        // here) to one leaf (`leafFirst`, `leafSecond`).
        let share = build.inferenceShare
        build.inferenceShare = 0
        nodes = Linear("\(name).nodes", inputs: d, outputs: n, in: build)
        fc1 = Linear("\(name).leaves.fc1", inputs: d, outputs: hidden, activation: spec.activation, in: build)
        fc2 = Linear("\(name).leaves.fc2", inputs: hidden, outputs: d, bias: false, in: build, initBound: 1 / Float(lw).squareRoot())
        build.inferenceShare = share
        build.countFLOPs(inference: share * 2 * Double(d) * Double(spec.depth))
        leafBias = store.register("\(name).leaves.fc2.bias", shape: [l, d], role: .bias,
                                  initializer: .uniform(bound: 1 / Float(lw).squareRoot()), freezable: build.freezable)
        if spec.masterLeaf {
            master = (Linear("\(name).master.fc1", inputs: d, outputs: lw, activation: spec.activation, in: build),
                      Linear("\(name).master.fc2", inputs: lw, outputs: d, in: build),
                      store.register("\(name).master.mix", shape: [1], role: .coefficient, initializer: .constant(0.5), freezable: build.freezable))
        } else {
            master = nil
        }
        sigma = build.tensor([maxRows, n])
        reach = build.tensor([maxRows, 2 * l - 1])
        gated = build.tensor([maxRows, hidden])
        tree = build.tensor([spec.masterLeaf ? maxRows : 0, d])
        y = build.tensor([maxRows, d])
        dTree = build.tensor([spec.masterLeaf ? maxRows : 0, d])
        dp = build.tensor([maxRows, l])
        dh = build.tensor([maxRows, hidden])
        da = build.tensor([maxRows, n])
        up = build.tensor([2 * l - 1])
        dx = build.tensor([maxRows, d])
        statistics = [Double](repeating: 0, count: 2 * l + 1)
        stepStatistics = statistics
        leafCounts = [Int](repeating: 0, count: l + 1)
        leafOf = build.scratch(repeating: Int32(0), count: maxRows)
        grouped = build.scratch(repeating: Int32(0), count: maxRows)
        groupStart = [Int](repeating: 0, count: l + 1)
        xs = build.tensor([maxRows, d])
        zs = build.tensor([maxRows, lw])
        hs = build.tensor([maxRows, lw])
        ys = build.tensor([maxRows, d])
        let heap = 2 * l - 1
        mixLeafBias = build.product(.none, .none, m: maxRows, n: d, k: l, lda: heap, ldb: d, ldc: d, rows: .m, accumulate: true,
                                    precision: .fp32, work: .training)
        leafBiasGradient = build.product(.transpose, .none, m: l, n: d, k: maxRows, lda: heap, ldb: d, ldc: d, rows: .k,
                                         accumulate: true, precision: .fp32, work: leafBias.frozen ? .uncounted : .training)
        reachGradient = build.product(.none, .transpose, m: maxRows, n: l, k: d, lda: d, ldb: d, ldc: l, rows: .m,
                                      accumulate: false, precision: .fp32, work: .training)
        leafFirst = build.product(.none, .transpose, m: maxRows, n: lw, k: d, lda: d, ldb: d, ldc: lw, rows: .m,
                                  accumulate: false, precision: .fp32, work: .inference)
        leafSecond = build.product(.none, .transpose, m: maxRows, n: d, k: lw, lda: lw, ldb: l * lw, ldc: d, rows: .m,
                                   accumulate: false, precision: .fp32, work: .inference)
        hardPass = HardPass(self)
    }

    /// The blend's k: a trained scalar, started at ½.
    var mixValue: Float { master.map { $0.mix.value[0] } ?? 0 }

    // MARK: - Forward

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        self.x = x
        self.rows = rows
        training = context.training
        globalRows = context.globalRows > 0 ? context.globalRows : rows
        passRows = context.passRows > 0 ? context.passRows : globalRows
        if context.hardDecisions && !context.training { return hardForward(x, rows: rows) }
        softForward(x, rows: rows)
        if computesAuxLoss { computeAuxLoss(context) } else { auxLoss = 0 }
        return UnsafePointer(y.data)
    }

    /// The mixture of every leaf, weighted by the path probabilities.
    func softForward(_ x: UnsafePointer<Float>, rows: Int) {
        let a = nodes.forward(x, rows: rows, context: .init(training: true))
        let heap = 2 * l - 1
        for r in 0..<rows {
            let ar = a + r * n, sr = sigma.data + r * n, q = reach.data + r * heap
            q[0] = 1
            for i in 0..<n {
                let s = 1 / (1 + expf(-ar[i]))
                sr[i] = s
                q[2 * i + 1] = q[i] * (1 - s)
                q[2 * i + 2] = q[i] * s
            }
        }
        let h = fc1.forward(x, rows: rows, context: .init(training: true))
        // gated[r, leaf·lw + j] = h[r, leaf·lw + j] · p[r, leaf]
        for r in 0..<rows {
            let p = reach.data + r * heap + n
            for leaf in 0..<l {
                scaleCopy(p[leaf], h + (r * l + leaf) * lw, gated.data + (r * l + leaf) * lw, lw)
            }
        }
        let out = spec.masterLeaf ? tree.data : y.data
        let leafPart = fc2.forward(gated.data, rows: rows, context: .init(training: true))
        out.update(from: leafPart, count: rows * d)
        // out[rows, d] += p[rows, L] · B2[L, d]
        mixLeafBias(rows: rows, a: reach.data + n, b: leafBias.value, c: out)
        if let master { blend(master, x, rows: rows) }
    }

    /// y = (1 − k) · tree + k · M(x)
    func blend(_ master: (fc1: Linear, fc2: Linear, mix: Parameter), _ x: UnsafePointer<Float>, rows: Int) {
        let m = master.fc2.forward(master.fc1.forward(x, rows: rows, context: .init(training: true)), rows: rows,
                                   context: .init(training: true))
        let k = mixValue
        let from = UnsafePointer(spec.masterLeaf ? tree.data : y.data)
        for i in 0..<(rows * d) { y[i] = (1 - k) * from[i] + k * m[i] }
    }

    /// The hardening and balance losses over the pass (statistics summed over the ranks of a
    /// data-parallel pass) or over the step (`BatchStatistics`); the loss is this pass's part
    /// of the step's.
    func computeAuxLoss(_ context: ForwardContext) {
        let part = Double(passRows) / Double(globalRows)
        if context.statistics == .held {
            for i in statistics.indices { statistics[i] = stepStatistics[i] }
            statisticsRows = globalRows
            auxLoss = stepAux * part
            return
        }
        let heap = 2 * l - 1
        for i in 0..<statistics.count { statistics[i] = 0 }
        let a = UnsafePointer(nodes.z.data)
        for r in 0..<rows {
            let ar = a + r * n, sr = sigma.data + r * n, p = reach.data + r * heap + n
            statistics[Int(descend(ar))] += 1
            for leaf in 0..<l { statistics[l + leaf] += Double(p[leaf]) }
            // Binary entropy from the logit: H(σ(a)) = softplus(a) − σ(a)·a.
            var e = 0.0
            for i in 0..<n { e += Double(softplus(ar[i]) - sr[i] * ar[i]) }
            statistics[2 * l] += e
        }
        if let reduction { statistics.withUnsafeMutableBufferPointer { reduction.sum($0.baseAddress!, count: 2 * l + 1) } }
        statisticsRows = passRows
        if context.statistics == .gather {
            if context.microBatch == 0 { for i in stepStatistics.indices { stepStatistics[i] = 0 } }
            for i in stepStatistics.indices { stepStatistics[i] += statistics[i] }
            stepAux = auxLoss(stepStatistics, rows: globalRows)
            auxLoss = 0
        } else {
            auxLoss = auxLoss(statistics, rows: passRows) * part
        }
    }

    /// The weighted hardening and balance losses of statistics `s` over `rows` rows.
    func auxLoss(_ s: [Double], rows: Int) -> Double {
        let t = Double(rows)
        var balance = 0.0
        for leaf in 0..<l { balance += s[leaf] / t * s[l + leaf] / t }
        return Double(spec.hardening) * s[2 * l] / (t * Double(n)) + Double(spec.balance) * Double(l) * balance
    }

    /// The leaf a row's hard descent reaches, from its node logits (right where a > 0).
    @inline(__always) func descend(_ a: UnsafePointer<Float>) -> Int32 {
        var i = 0
        while i < n { i = a[i] > 0 ? 2 * i + 2 : 2 * i + 1 }
        return Int32(i - n)
    }

    /// Each row evaluates `depth` node neurons and one leaf.
    func hardForward(_ x: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float> {
        // Rows descend, and then leaves run, side by side on the worker pool once the batch is
        // large enough to share (each row and each leaf writes only its own memory, so the
        // split changes no bit); the products then run one thread each, as the experts' do.
        let pass = hardPass!
        pass.x = x
        let pool = WorkerPool.shared, shared = rows >= Self.hardParallelFrom && pool.threads > 1
        pass.descending = true
        if shared { pool.run(pass, count: rows, align: 1, minimum: 1) } else { pass.run(0..<rows) }
        // Counting sort: the rows of leaf 0, then of leaf 1, … (in row order within a leaf).
        for i in 0...l { leafCounts[i] = 0 }
        for r in 0..<rows { leafCounts[Int(leafOf[r]) + 1] += 1 }
        for i in 0..<l { leafCounts[i + 1] += leafCounts[i] }
        for i in 0...l { groupStart[i] = leafCounts[i] }
        for r in 0..<rows {
            let leaf = Int(leafOf[r])
            grouped[leafCounts[leaf]] = Int32(r)
            leafCounts[leaf] += 1
        }
        pass.descending = false
        if shared {
            BLAS.singleThreaded { pool.run(pass, count: l, align: 1, minimum: 1) }
        } else {
            pass.run(0..<l)
        }
        if let master { blend(master, x, rows: rows) }
        return UnsafePointer(y.data)
    }

    /// Rows from which hard inference shares its work over the worker pool.
    static let hardParallelFrom = 64

    /// Hard inference, rows `range`: each row's leaf, from `depth` dot products.
    func descend(rows range: Range<Int>, _ x: UnsafePointer<Float>) {
        let wn = UnsafePointer(nodes.weight.value!), bn = UnsafePointer(nodes.bias!.value!)
        for r in range {
            let xr = x + r * d
            var i = 0
            while i < n { i = dot(xr, wn + i * d, d) + bn[i] > 0 ? 2 * i + 2 : 2 * i + 1 }
            leafOf[r] = Int32(i - n)
        }
    }

    /// Hard inference, one leaf: its rows (grouped at `groupStart[leaf]`) through its slices
    /// of W1 and W2, into their places in the output.
    func runLeaf(_ leaf: Int, _ x: UnsafePointer<Float>) {
        let first = groupStart[leaf], count = groupStart[leaf + 1] - first
        guard count > 0 else { return }
        let out = spec.masterLeaf ? tree.data : y.data
        let w1 = UnsafePointer(fc1.weight.value!), b1 = UnsafePointer(fc1.bias!.value!)
        let w2 = UnsafePointer(fc2.weight.value!), b2 = UnsafePointer(leafBias.value!)
        let xs = xs.data + first * d, zs = zs.data + first * lw, hs = hs.data + first * lw, ys = ys.data + first * d
        for i in 0..<count { (xs + i * d).update(from: x + Int(grouped[first + i]) * d, count: d) }
        // hs[count, lw] = f(xs · W1_leafᵀ + b1_leaf), W1_leaf the rows leaf·lw ..< (leaf+1)·lw
        leafFirst(rows: count, a: xs, b: w1 + leaf * lw * d, c: zs)
        spec.activation.forward(z: zs, bias: b1 + leaf * lw, y: hs, rows: count, cols: lw)
        // ys[count, d] = hs · W2_leafᵀ, W2_leaf the columns leaf·lw ..< (leaf+1)·lw of W2
        leafSecond(rows: count, a: hs, b: w2 + leaf * lw, c: ys)
        for i in 0..<count {
            add(ys + i * d, b2 + leaf * d, into: out + Int(grouped[first + i]) * d, count: d)
        }
    }

    // MARK: - Backward

    // Tree backward, per row: with u_leaf = ∂L/∂p_leaf and, going up,
    // u_i = (1 − σ_i)·u_left + σ_i·u_right (= ∂L/∂q_i, q_i the probability of reaching i),
    // ∂L/∂σ_i = q_i · (u_right − u_left) and
    // ∂L/∂a_i = ∂L/∂σ_i · σ_i(1 − σ_i) − (h/(T·N)) · a_i · σ_i(1 − σ_i) for the hardening term.
    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard x != nil else { preconditionFailure("FastFeedforward.backward before forward") }
        precondition(training, "FastFeedforward.backward after an inference pass")
        let heap = 2 * l - 1
        // The master blend: dk = Σ dy ⊙ (M − tree); the tree gets (1 − k)·dy, M gets k·dy.
        var g = dy
        var masterDx: UnsafePointer<Float>?
        if let master {
            let k = mixValue
            let m = UnsafePointer(master.fc2.z.data)   // M(x): fc2 has no activation
            var dk = 0.0
            for i in 0..<(rows * d) {
                dk += Double(dy[i]) * Double(m[i] - tree[i])
                dTree[i] = (1 - k) * dy[i]
                dx[i] = k * dy[i]
            }
            if let grad = master.mix.grad { grad[0] += Float(dk) }
            let dm = master.fc2.backward(dx.data, rows: rows)!
            masterDx = master.fc1.backward(dm, rows: rows)
            g = UnsafePointer(dTree.data)
        }
        // dB2[L, d] += pᵀ · g;  dp[rows, L] = g · B2ᵀ
        if let db2 = leafBias.grad {
            leafBiasGradient(rows: rows, a: reach.data + n, b: g, c: db2)
        }
        reachGradient(rows: rows, a: g, b: leafBias.value, c: dp.data)
        // dgated = g · W2 (fc2's input gradient), dW2 += gᵀ · gated
        let dGated = fc2.backward(g, rows: rows)!
        let h = UnsafePointer(fc1.y.data)
        // Means over the global batch's rows; the balance term's f over the statistics' rows.
        let t = Float(globalRows)
        let balanceScale = spec.balance * Float(l) / (t * Float(statisticsRows))
        for r in 0..<rows {
            let p = reach.data + r * heap + n, dpr = dp.data + r * l
            for leaf in 0..<l {
                let at = (r * l + leaf) * lw
                // dp += Σ_j dgated ⊙ h over the leaf's units; dh = dgated · p
                dpr[leaf] += dot(dGated + at, h + at, lw)
                scaleCopy(p[leaf], dGated + at, dh.data + at, lw)
                // ∂(α·L·Σ f_l·P_l)/∂p[r, l] = α·L·f_l/B, f_l = count_l/S over the statistics'
                // S rows (S = B, the global batch, unless statistics are per pass).
                if spec.balance > 0 { dpr[leaf] += balanceScale * Float(statistics[leaf]) }
            }
        }
        let dx1 = fc1.backward(dh.data, rows: rows)!
        let a = UnsafePointer(nodes.z.data)
        let hardening = spec.hardening / (t * Float(n))
        for r in 0..<rows {
            let sr = sigma.data + r * n, q = reach.data + r * heap, ar = a + r * n, dar = da.data + r * n
            let u = up.data
            (u + n).update(from: dp.data + r * l, count: l)
            for i in stride(from: n - 1, through: 0, by: -1) {
                let s = sr[i], left = u[2 * i + 1], right = u[2 * i + 2]
                u[i] = (1 - s) * left + s * right
                let slope = s * (1 - s)
                dar[i] = q[i] * (right - left) * slope - hardening * ar[i] * slope
            }
        }
        let dxn = nodes.backward(da.data, rows: rows)!
        add(dx1, dxn, into: dx.data, count: rows * d)
        if let masterDx { add(UnsafePointer(dx.data), masterDx, into: dx.data, count: rows * d) }
        return UnsafePointer(dx.data)
    }
}

/// log(1 + eᵃ) without overflow.
@inline(__always) func softplus(_ a: Float) -> Float { a > 0 ? a + log1pf(expf(-a)) : log1pf(expf(a)) }

/// Hard inference's parts as work for the worker pool: rows' descents, then leaves.
final class HardPass: RangeTask {
    unowned let layer: FastFeedforward
    var x: UnsafePointer<Float>?
    var descending = true
    init(_ layer: FastFeedforward) { self.layer = layer }
    func run(_ range: Range<Int>) {
        if descending {
            layer.descend(rows: range, x!)
        } else {
            for leaf in range { layer.runLeaf(leaf, x!) }
        }
    }
}
