import Kernels

/// The matrix products of an MoE layer, prepared with it (`Matmul`), and in bf16 the experts'
/// weights rounded once per pass.
///
/// The router's products stay fp32 in a bf16 model: the routing decisions and the auxiliary
/// losses are where reduced precision hurts (Switch Transformer's "selective precision",
/// Fedus et al. 2022 §2.4), and at E outputs they are a few percent of the layer's work.
final class MoEProducts {
    /// logits[T, E] = x · Wrᵀ; dWr[E, d] += dlogitsᵀ · x; dx[T, d] += dlogits · Wr.
    let logits, routerGradient, routerInputGradient: Matmul
    /// Expert i over its n rows: z1[n, H1] = xs · W1ᵀ; ys[n, d] = h · W2ᵀ.
    let z1, ys: Matmul
    /// dW2[d, H] (+)= dysᵀ · h; dh[n, H] = dys · W2; dW1[H1, d] (+)= dz1ᵀ · xs; dxs[n, d] = dz1 · W1.
    /// Each weight gradient twice: added to the store's, or written to a thread's buffer.
    let dW2Add, dW2, dh, dW1Add, dW1, dxs: Matmul
    /// Whether the experts' forward products run on `Matmul` rather than `gemmExpert`.
    let expertForwardOnMatmul: Bool
    /// bf16 only: an expert's W1 `[H1, d]` and W2 `[d, H]`, rounded by its forward, one per
    /// expert this rank holds and one per visiting slot (`MoE.roundedCopy`).
    let w1: [BFloat16Buffer], w2: [BFloat16Buffer]

    /// `copies`: the rounded expert weights to hold. `reusing`: the layer's products so far,
    /// whose rounded weights (which do not depend on the rows) these take over, adding as
    /// many as `copies` asks for beyond them.
    init(tokens t: Int, rows a: Int, width d: Int, hidden h: Int, firstWidth h1: Int, experts e: Int, copies: Int,
         in build: BuildContext, reusing earlier: MoEProducts? = nil) {
        // The rows of a pass are t tokens; the experts' products hold their k rows each (a = t·k).
        logits = build.product(.none, .transpose, m: t, n: e, k: d, lda: d, ldb: d, ldc: e, rows: .m, accumulate: false,
                               precision: .fp32, work: .forward)
        routerGradient = build.product(.transpose, .none, m: e, n: d, k: t, lda: e, ldb: d, ldc: d, rows: .k, accumulate: true,
                                       precision: .fp32, work: .training)
        routerInputGradient = build.product(.none, .none, m: t, n: d, k: e, lda: e, ldb: d, ldc: d, rows: .m, accumulate: true,
                                            precision: .fp32, work: .training)
        func product(_ ta: Transpose, _ tb: Transpose, _ m: Int, _ n: Int, _ k: Int, lda: Int, ldb: Int, ldc: Int,
                     rows: Matmul.Rows, accumulate: Bool = false, work: BuildContext.Work) -> Matmul {
            build.product(ta, tb, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, rows: rows, accumulate: accumulate, work: work)
        }
        z1 = product(.none, .transpose, a, h1, d, lda: d, ldb: d, ldc: h1, rows: .m, work: .forward)
        ys = product(.none, .transpose, a, d, h, lda: h, ldb: h, ldc: d, rows: .m, work: .forward)
        dW2Add = product(.transpose, .none, d, h, a, lda: d, ldb: h, ldc: h, rows: .k, accumulate: true, work: .training)
        dW2 = product(.transpose, .none, d, h, a, lda: d, ldb: h, ldc: h, rows: .k, work: .uncounted)
        dh = product(.none, .none, a, h, d, lda: d, ldb: h, ldc: h, rows: .m, work: .training)
        dW1Add = product(.transpose, .none, h1, d, a, lda: h1, ldb: d, ldc: d, rows: .k, accumulate: true, work: .training)
        dW1 = product(.transpose, .none, h1, d, a, lda: h1, ldb: d, ldc: d, rows: .k, work: .uncounted)
        dxs = product(.none, .none, a, d, h1, lda: h1, ldb: d, ldc: d, rows: .m, work: .training)
        expertForwardOnMatmul = build.precision.roundsToBFloat16 || MatmulLibrary.expertForwardOnOneDNN
        let rounds = build.precision.roundsToBFloat16, had = earlier?.w1.count ?? 0
        w1 = (earlier?.w1 ?? []) + (rounds ? (had..<max(copies, had)).map { _ in build.bf16([h1, d])! } : [])
        w2 = (earlier?.w2 ?? []) + (rounds ? (had..<max(copies, had)).map { _ in build.bf16([d, h])! } : [])
    }
}
