import Kernels
import Synchronization

/// The experts of an MoE layer: each an MLP `d → H → d` run as one GEMM pair over its
/// contiguous grouped rows, forward and backward, side by side on the worker pool with one
/// single-threaded GEMM pair each (at T·k/E rows, 32 in W2, OpenBLAS's own threading costs
/// more than it gains). Each expert touches only its own rows and gradients, so which thread
/// runs it changes no result.
extension MoE {
    // MARK: - Scheduling

    func runExperts() {
        queue.fill(work.start) { _ in false }
        BLAS.singleThreaded { WorkerPool.shared.run(forwardPass, count: min(WorkerPool.shared.threads, queue.count), align: 1, minimum: 2) }
    }

    /// In backward the queue also holds the experts this rank updates that got no rows (last:
    /// their zero-gradient update fills the gaps at the end of the loop).
    func expertsBackward() {
        queue.fill(work.start) { updater(of: $0) != nil }
        var parts = min(WorkerPool.shared.threads, queue.count)
        if updateInBackward != nil { parts = min(parts, gradientBuffers.count) }
        BLAS.singleThreaded { WorkerPool.shared.run(backwardPass, count: parts, align: 1, minimum: 2) }
    }

    // MARK: - Forward

    /// Expert i: h = f(xs·W1ᵀ + b1), ys = h·W2ᵀ + b2, over its contiguous rows.
    func expertForward(_ i: Int) {
        let w = work, o = w.start[i], n = w.start[i + 1] - o
        guard n > 0 else { return }
        let xr = w.x.data + o * d, zr = w.z1.data + o * h1, hr = w.h.data + o * h
        let yr = w.y.data + o * d
        gemmExpert(m: n, n: h1, k: d, a: xr, lda: d, b: w1[i].value, ldb: d, c: zr, ldc: h1)
        if let pointwise {
            pointwise.forward(z: zr, bias: b1[i]?.value, y: hr, rows: n, cols: h)
        } else {
            if let b = b1[i] { Activation.identity.forward(z: zr, bias: b.value, y: zr, rows: n, cols: h1) }
            gated!.forward(ab: zr, h: hr, rows: n, hidden: h)
        }
        gemmExpert(m: n, n: d, k: h, a: hr, lda: h, b: w2[i].value, ldb: h, c: yr, ldc: d)
        if let b = b2[i] { Activation.identity.forward(z: yr, bias: b.value, y: yr, rows: n, cols: d) }
    }

    // MARK: - Backward

    /// Who updates expert i inside backward: nil unless this rank owns it and ran it on every
    /// rank's tokens in this pass.
    func updater(of i: Int) -> (any UpdateInBackward)? {
        (exchange?.updatesHere(i) ?? true) ? updateInBackward : nil
    }

    /// Expert i's backward over its contiguous rows. Its weight and bias gradients go to the
    /// store's gradients, or, when this rank updates the expert in backward, to thread `part`'s
    /// buffer one parameter at a time, each updated as soon as backward no longer reads it.
    func expertBackward(_ i: Int, part: Int) {
        let w = work, o = w.start[i], n = w.start[i + 1] - o
        let updater = updater(of: i)
        let buffer = updater == nil ? nil : gradientBuffers[part].data
        guard n > 0 else {
            // No rows: the update from a zero gradient, as the pass after backward would do.
            guard let updater, let buffer else { return }
            func update(_ p: Parameter?) {
                guard let p else { return }
                buffer.update(repeating: 0, count: p.count)
                updater.update(p, from: buffer)
            }
            update(w1[i]); update(b1[i]); update(w2[i]); update(b2[i])
            return
        }
        let xr = w.x.data + o * d, zr = w.z1.data + o * h1, hr = w.h.data + o * h
        let dyr = w.dy.data + o * d, dhr = w.dh.data + o * h, dzr = w.dz1.data + o * h1, dxr = w.dx.data + o * d
        // Where a gradient goes, and the beta of a GEMM that writes it: the buffer is
        // overwritten (biases are sums, so theirs starts at zero), the store's added to.
        func weightGradient(_ p: Parameter) -> (UnsafeMutablePointer<Float>, beta: Float) { (buffer ?? p.grad, buffer == nil ? 1 : 0) }
        func biasGradient(_ p: Parameter) -> UnsafeMutablePointer<Float> {
            guard let buffer else { return p.grad }
            buffer.update(repeating: 0, count: p.count)
            return buffer
        }
        if let b = b2[i] {
            let g = biasGradient(b)
            addColumnSums(dyr, rows: n, cols: d, into: g)
            updater?.update(b, from: g)
        }
        // dW2[d, H] += dysᵀ · h;  dh = dys · W2
        let (g2, beta2) = weightGradient(w2[i])
        gemm(.transpose, .none, m: d, n: h, k: n, a: dyr, lda: d, b: hr, ldb: h, beta: beta2, c: g2, ldc: h)
        gemm(.none, .none, m: n, n: h, k: d, a: dyr, lda: d, b: w2[i].value, ldb: h, beta: 0, c: dhr, ldc: h)
        updater?.update(w2[i], from: g2)
        let gb1 = b1[i].map(biasGradient)
        if let pointwise {
            pointwise.backward(z: zr, dy: dhr, dz: dzr, dbias: gb1, rows: n, cols: h)
        } else {
            gated!.backward(ab: zr, dh: dhr, dab: dzr, rows: n, hidden: h)
            if let gb1 { addColumnSums(dzr, rows: n, cols: h1, into: gb1) }
        }
        if let b = b1[i], let gb1 { updater?.update(b, from: gb1) }
        // dW1[H1, d] += dz1ᵀ · xs;  dxs = dz1 · W1
        let (g1, beta1) = weightGradient(w1[i])
        gemm(.transpose, .none, m: h1, n: d, k: n, a: dzr, lda: h1, b: xr, ldb: d, beta: beta1, c: g1, ldc: d)
        gemm(.none, .none, m: n, n: d, k: h1, a: dzr, lda: h1, b: w1[i].value, ldb: d, beta: 0, c: dxr, ldc: d)
        updater?.update(w1[i], from: g1)
    }
}

/// The experts of one pass in the order the worker threads take them: those with rows, most
/// rows first (an expert costs its rows plus a fixed part, so a static split by rows leaves
/// one thread longer than the other; taking them one at a time also absorbs a thread that the
/// machine preempts), then those that only need an update.
final class ExpertQueue {
    private var order: [Int]
    private(set) var count = 0
    private let next = Atomic<Int>(0)

    init(experts: Int) { order = [Int](repeating: 0, count: experts) }

    /// The experts with rows under `start` (`[E + 1]` offsets), by rows descending (ties in
    /// index order), and those without rows that `withoutRows` accepts.
    func fill(_ start: UnsafeMutablePointer<Int>, withoutRows: (Int) -> Bool) {
        count = 0
        for i in order.indices where start[i + 1] > start[i] || withoutRows(i) {
            // Insertion by rows, descending; ties keep index order.
            var j = count
            let rows = start[i + 1] - start[i]
            while j > 0 && start[order[j - 1] + 1] - start[order[j - 1]] < rows {
                order[j] = order[j - 1]
                j -= 1
            }
            order[j] = i
            count += 1
        }
        next.store(0, ordering: .relaxed)
    }

    /// The next expert for a thread to run, or nil when none is left.
    func take() -> Int? {
        let n = next.wrappingAdd(1, ordering: .relaxed).oldValue
        return n < count ? order[n] : nil
    }
}

/// The experts' forward pass as work for the pool: each thread runs experts until the queue
/// is empty.
final class ExpertForwardPass: RangeTask {
    unowned let layer: MoE
    init(_ layer: MoE) { self.layer = layer }
    func run(_ range: Range<Int>) {
        while let i = layer.queue.take() { layer.expertForward(i) }
    }
}

/// The experts' backward pass as work for the pool; `range` is the thread's part number,
/// which picks its gradient buffer.
final class ExpertBackwardPass: RangeTask {
    unowned let layer: MoE
    init(_ layer: MoE) { self.layer = layer }
    func run(_ range: Range<Int>) {
        while let i = layer.queue.take() { layer.expertBackward(i, part: range.lowerBound) }
    }
}
