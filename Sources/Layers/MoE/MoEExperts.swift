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

    // MARK: - Where an expert's parameters are

    /// Expert i's parameters and their gradients in this pass, laid out as registered (W1, b1,
    /// W2, b2 in one span): in the store for an expert held here, in the exchange's visiting
    /// slot for one that runs here for its owner (`ExchangeBuffers.sendParameters`).
    struct ExpertPointers {
        let w1, w2, gw1, gw2: UnsafeMutablePointer<Float>
        let b1, b2, gb1, gb2: UnsafeMutablePointer<Float>?
    }

    /// Which of the products' rounded bf16 weights expert i uses: its own where held here,
    /// else its visiting slot's.
    func roundedCopy(_ i: Int) -> Int {
        w1[i].resident ? i - held.lowerBound : held.count + exchange!.slot(of: i)
    }

    func pointers(_ i: Int) -> ExpertPointers {
        let (v, g) = w1[i].resident ? (w1[i].value!, w1[i].grad!) : exchange!.visiting(i)
        let ob1 = h1 * d, ow2 = ob1 + (b1[i] == nil ? 0 : h1), ob2 = ow2 + d * h
        let bias = b1[i] != nil
        return ExpertPointers(w1: v, w2: v + ow2, gw1: g, gw2: g + ow2,
                              b1: bias ? v + ob1 : nil, b2: bias ? v + ob2 : nil, gb1: bias ? g + ob1 : nil, gb2: bias ? g + ob2 : nil)
    }

    // MARK: - Forward

    /// Expert i: h = f(xs·W1ᵀ + b1), ys = h·W2ᵀ + b2, over its contiguous rows. In bf16 the
    /// expert's weights are rounded here, once per pass, for its forward and backward products.
    func expertForward(_ i: Int) {
        let w = work, o = w.start[i], n = w.start[i + 1] - o
        guard n > 0 else { return }
        let xr = w.x.data + o * d, zr = w.z1.data + o * h1, hr = w.h.data + o * h
        let yr = w.y.data + o * d
        let p = products, at = pointers(i)
        if let x16 = w.x16 {
            let xs = x16.round(xr, count: n * d, at: o * d)
            p.z1(rows: n, a: xs, b: p.w1[roundedCopy(i)].round(at.w1, count: h1 * d), c: zr)
        } else if p.expertForwardOnMatmul {
            p.z1(rows: n, a: xr, b: at.w1, c: zr)
        } else {
            gemmExpert(m: n, n: h1, k: d, a: xr, lda: d, b: at.w1, ldb: d, c: zr, ldc: h1)
        }
        if let pointwise {
            pointwise.forward(z: zr, bias: at.b1, y: hr, rows: n, cols: h)
        } else {
            if let b = at.b1 { Activation.identity.forward(z: zr, bias: b, y: zr, rows: n, cols: h1) }
            gated!.forward(ab: zr, h: hr, rows: n, hidden: h)
        }
        if let h16 = w.h16 {
            let hs = h16.round(hr, count: n * h, at: o * h)
            p.ys(rows: n, a: hs, b: p.w2[roundedCopy(i)].round(at.w2, count: d * h), c: yr)
        } else if p.expertForwardOnMatmul {
            p.ys(rows: n, a: hr, b: at.w2, c: yr)
        } else {
            gemmExpert(m: n, n: d, k: h, a: hr, lda: h, b: at.w2, ldb: h, c: yr, ldc: d)
        }
        if let b = at.b2 { Activation.identity.forward(z: yr, bias: b, y: yr, rows: n, cols: d) }
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
        // Where a gradient goes, and whether its product adds to it: the store's is added to
        // (earlier passes of the step may have added theirs); the update's buffer and a
        // visiting slot (one pass, one backward) are overwritten, biases, which are sums,
        // from zero. A GEMM with beta 0 writes the bits one adding into zeros writes.
        let at = pointers(i)
        let overwrite = buffer != nil || !w1[i].resident
        func weightGradient(_ g: UnsafeMutablePointer<Float>) -> (UnsafeMutablePointer<Float>, add: Bool) { (buffer ?? g, !overwrite) }
        func biasGradient(_ g: UnsafeMutablePointer<Float>, count: Int) -> UnsafeMutablePointer<Float> {
            guard overwrite else { return g }
            let into = buffer ?? g
            into.update(repeating: 0, count: count)
            return into
        }
        let p = products
        if let b = b2[i], let gb = at.gb2 {
            let g = biasGradient(gb, count: d)
            addColumnSums(dyr, rows: n, cols: d, into: g)
            updater?.update(b, from: g)
        }
        // dW2[d, H] += dysᵀ · h;  dh = dys · W2
        let (g2, add2) = weightGradient(at.gw2)
        if let dy16 = w.dy16, let h16 = w.h16 {
            let dys = dy16.round(dyr, count: n * d, at: o * d)
            (add2 ? p.dW2Add : p.dW2)(rows: n, a: dys, b: h16.data + o * h, c: g2)
            p.dh(rows: n, a: dys, b: p.w2[roundedCopy(i)].data, c: dhr)
        } else {
            (add2 ? p.dW2Add : p.dW2)(rows: n, a: dyr, b: hr, c: g2)
            p.dh(rows: n, a: dyr, b: at.w2, c: dhr)
        }
        updater?.update(w2[i], from: g2)
        let gb1 = at.gb1.map { biasGradient($0, count: h1) }
        if let pointwise {
            pointwise.backward(z: zr, dy: dhr, dz: dzr, dbias: gb1, rows: n, cols: h)
        } else {
            gated!.backward(ab: zr, dh: dhr, dab: dzr, rows: n, hidden: h)
            if let gb1 { addColumnSums(dzr, rows: n, cols: h1, into: gb1) }
        }
        if let b = b1[i], let gb1 { updater?.update(b, from: gb1) }
        // dW1[H1, d] += dz1ᵀ · xs;  dxs = dz1 · W1
        let (g1, add1) = weightGradient(at.gw1)
        if let dz16 = w.dz16, let x16 = w.x16 {
            let dzs = dz16.round(dzr, count: n * h1, at: o * h1)
            (add1 ? p.dW1Add : p.dW1)(rows: n, a: dzs, b: x16.data + o * d, c: g1)
            p.dxs(rows: n, a: dzs, b: p.w1[roundedCopy(i)].data, c: dxr)
        } else {
            (add1 ? p.dW1Add : p.dW1)(rows: n, a: dzr, b: xr, c: g1)
            p.dxs(rows: n, a: dzr, b: at.w1, c: dxr)
        }
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
