import Kernels
#if canImport(Glibc)
import Glibc
#endif

/// The router of an MoE layer: scores, top-k choices under capacity, gates and the
/// auxiliary losses in forward; their gradients into the router's weight and the input in
/// backward.
extension MoE {
    // MARK: - Forward

    /// logits[T, E] = x · Wrᵀ, probabilities by softmax (selection by sigmoid scores for
    /// σ-MoE), then the choices (unless held) and the gates.
    func routerForward(_ x: UnsafePointer<Float>, context: ForwardContext) {
        let t = tokens
        products.logits(rows: t, a: x, b: router.value, c: logits.data)
        softmaxRows(logits.data, probs.data, rows: t, cols: e)
        let selection: UnsafePointer<Float>
        switch spec.router {
        case .softmax: selection = UnsafePointer(probs.data)
        case .sigmoid:
            scores.data.update(from: logits.data, count: t * e)
            Activation.sigmoid.forward(z: scores.data, bias: nil, y: scores.data, rows: t, cols: e)
            selection = UnsafePointer(scores.data)
        }
        if !holdsRouting { route(selection, context: context) }
        computeGates()
    }

    /// Chooses each token's k experts (highest selection score first, lower index on ties,
    /// skipping experts dropped by expert dropout), then applies the capacity in global token
    /// order: this rank's assignments to expert e come after those of the ranks below it, and
    /// (capacity over the step) after those of the step's earlier passes.
    func route(_ selection: UnsafePointer<Float>, context: ForwardContext) {
        let t = tokens
        let dropping = context.training && spec.expertDropout > 0
        let rng = Philox(seed: seed)
        let stream = RNGStream.expertDropout(site: site, step: context.step)
        for i in 0..<e { routed[i] = 0; accepted[i] = 0 }
        for r in 0..<t {
            let row = selection + r * e
            let global = UInt64(context.rowOffset + r)
            // Which experts this token may not use (drawn once per token and expert).
            for j in 0..<e {
                excluded[j] = dropping && rng.uniform(stream: stream, index: global * UInt64(e) + UInt64(j)) < spec.expertDropout
            }
            for slot in 0..<k {
                var best = -1
                var bestScore = -Float.infinity
                for j in 0..<e {
                    if excluded[j] { continue }
                    var taken = false
                    for s in 0..<slot where choice[r * k + s] == Int32(j) { taken = true }
                    if taken { continue }
                    if row[j] > bestScore || best < 0 { best = j; bestScore = row[j] }
                }
                choice[r * k + slot] = Int32(best)
                if best >= 0 { routed[best] += 1 }
            }
        }
        // Capacity in global order (training passes of a data-parallel run ask the ranks below).
        let limited = spec.capacityFactor > 0 && context.training
        let capacity = limited ? spec.capacity(tokens: context.capacityOverStep ? globalTokens : passTokens) : Int.max
        if limited, let reduction {
            for i in 0..<e { below[i] = Double(routed[i]) }
            below.withUnsafeMutableBufferPointer { reduction.sumBelow($0.baseAddress!, count: e) }
        } else {
            for i in 0..<e { below[i] = 0 }
        }
        if limited && context.capacityOverStep { for i in 0..<e { below[i] += earlier[i] } }
        for a in 0..<(t * k) {
            let c = Int(choice[a])
            guard c >= 0 else { position[a] = -1; continue }
            // Position within the expert for now; made absolute once counts are known.
            if Int(below[c]) + accepted[c] < capacity {
                position[a] = Int32(accepted[c])
                accepted[c] += 1
            } else {
                position[a] = -1   // and so is every later one: the count only grows
            }
        }
        start[0] = 0
        for i in 0..<e { start[i + 1] = start[i] + accepted[i] }
        for a in 0..<(t * k) where position[a] >= 0 {
            position[a] += Int32(start[Int(choice[a])])
        }
    }

    /// Gates from the current probabilities or scores for the held or new choices (1 for each
    /// chosen expert with unit gates).
    func computeGates() {
        if spec.unitGates {
            for a in 0..<(tokens * k) { gate[a] = choice[a] >= 0 ? 1 : 0 }
            return
        }
        for r in 0..<tokens {
            var total: Float = 0
            for slot in 0..<k {
                let c = Int(choice[r * k + slot])
                let g: Float
                switch spec.router {
                case .softmax: g = c >= 0 ? probs[r * e + c] : 0
                case .sigmoid: g = c >= 0 ? scores[r * e + c] : 0
                }
                gate[r * k + slot] = g
                total += g
            }
            if case .softmax(true) = spec.router, total > 0 {
                for slot in 0..<k { gate[r * k + slot] /= total }
            }
        }
    }

    /// f_e, P_e and Σ lse² over the pass (summed over the ranks in a data-parallel training
    /// pass), and from them or from the step's (`BatchStatistics`) the auxiliary loss.
    func computeAuxLoss(_ context: ForwardContext) {
        let t = tokens, training = context.training
        for i in 0..<e {
            statistics[i] = Double(routed[i])
            var s = 0.0
            for r in 0..<t { s += Double(probs[r * e + i]) }
            statistics[e + i] = s
        }
        var zSum = 0.0
        for r in 0..<t {
            let row = logits.data + r * e
            var m = -Float.infinity
            for j in 0..<e { m = Swift.max(m, row[j]) }
            var s: Float = 0
            for j in 0..<e { s += expf(row[j] - m) }
            lse[r] = m + logf(s)
            zSum += Double(lse[r] * lse[r])
        }
        statistics[2 * e] = zSum
        if training, let reduction {
            statistics.withUnsafeMutableBufferPointer { reduction.sum($0.baseAddress!, count: 2 * e + 1) }
        }
        guard training else {
            auxLoss = useStatistics(statistics, rows: t)
            return
        }
        // A pass's part of the step's loss is its share of the global batch's rows.
        let part = Double(passTokens) / Double(globalTokens)
        switch context.statistics {
        case .pass:
            auxLoss = useStatistics(statistics, rows: passTokens) * part
        case .gather:
            if context.microBatch == 0 { for i in stepStatistics.indices { stepStatistics[i] = 0 } }
            for i in stepStatistics.indices { stepStatistics[i] += statistics[i] }
            stepAux = useStatistics(stepStatistics, rows: globalTokens)
            auxLoss = 0
        case .held:
            auxLoss = stepAux * part
        }
    }

    /// Sets f_e and P_e, which backward reads, from statistics `s` over `rows` rows; returns
    /// the weighted sum of the auxiliary losses.
    func useStatistics(_ s: [Double], rows: Int) -> Double {
        let n = Double(max(rows, 1))
        var assignments = 0.0
        for i in 0..<e { assignments += s[i] }
        var balance = 0.0, entropy = 0.0
        for i in 0..<e {
            share[i] = s[i] / Swift.max(assignments, 1)
            meanProb[i] = s[e + i] / n
            balance += share[i] * meanProb[i]
            if meanProb[i] > 0 { entropy += meanProb[i] * log(meanProb[i]) }
        }
        return Double(spec.balanceCoefficient) * Double(e) * balance
            + Double(spec.zLossCoefficient) * s[2 * e] / n
            + Double(spec.entropyCoefficient) * entropy
    }

    // MARK: - Backward

    /// dlogits from the gates and the auxiliary losses, then the router's products:
    /// dWr[E, d] += dlogitsᵀ · x, dx += dlogits · Wr. Every term is scaled by 1/(the global
    /// batch's rows): over a pass of a step of several, a mean over the pass's n rows weighted
    /// by the pass's part n/B of the step's loss.
    func routerBackward(_ dy: UnsafePointer<Float>, x: UnsafePointer<Float>) {
        let t = tokens
        let inv = 1 / Float(globalTokens)
        // ∂aux/∂p[t, i] for the terms built on the batch-mean softmax P: one value per expert.
        for i in 0..<e {
            var g = spec.balanceCoefficient * Float(e) * Float(share[i]) * inv
            if spec.entropyCoefficient != 0 && meanProb[i] > 0 {
                g += spec.entropyCoefficient * (Float(log(meanProb[i])) + 1) * inv
            }
            dMean[i] = g
        }
        for r in 0..<t {
            let pr = probs.data + r * e, dp = dprobs.data + r * e, dz = dlogits.data + r * e
            for i in 0..<e {
                dp[i] = dMean[i]
                dz[i] = 0
            }
            // Gates (constant with unit gates: no gradient to the router through them).
            switch spec.unitGates ? nil : spec.router {
            case .softmax(let renormalize):
                var total: Float = 0, weighted: Float = 0
                for slot in 0..<k where choice[r * k + slot] >= 0 {
                    total += pr[Int(choice[r * k + slot])]
                    weighted += dgate[r * k + slot] * gate[r * k + slot]
                }
                for slot in 0..<k where choice[r * k + slot] >= 0 {
                    let c = Int(choice[r * k + slot])
                    dp[c] += renormalize ? (dgate[r * k + slot] - weighted) / total : dgate[r * k + slot]
                }
            case nil: break
            case .sigmoid:
                let sr = scores.data + r * e
                for slot in 0..<k where choice[r * k + slot] >= 0 {
                    let c = Int(choice[r * k + slot])
                    dz[c] += dgate[r * k + slot] * sr[c] * (1 - sr[c])
                }
            }
            // Softmax backward: dz += p ⊙ (dp − Σ dp·p); z-loss: dz += c·2·lse/T · p.
            var dotp: Float = 0
            for i in 0..<e { dotp += dp[i] * pr[i] }
            let zTerm = spec.zLossCoefficient * 2 * lse[r] * inv
            for i in 0..<e { dz[i] += pr[i] * (dp[i] - dotp) + zTerm * pr[i] }
        }
        products.routerGradient(rows: t, a: dlogits.data, b: x, c: router.grad)
        products.routerInputGradient(rows: t, a: dlogits.data, b: router.value, c: dx.data)
    }
}
