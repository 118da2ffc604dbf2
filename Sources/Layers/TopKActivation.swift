import Kernels

/// Keeps the k largest activations of each row and zeroes the rest: the top-k activation of
/// σ-MoE's dense baseline (Csordás et al. 2023, §3), placed after an FFN's activation, so a
/// block of hidden width H computes its second product from k of its H units per token.
///
/// Forward y = x ⊙ m, with m ∈ {0, 1} marking the row's k largest values (of equal values, the
/// first ones); backward dx = dy ⊙ m: the gradient flows through the kept units only (m is
/// piecewise constant in x, so this is the exact gradient wherever the k-th and (k+1)-th
/// values differ).
public final class TopKActivation: Layer {
    public let inputWidth: Int
    public var outputWidth: Int { inputWidth }
    /// The units kept per row.
    public let k: Int
    let mask: Tensor, y: Tensor, dx: Tensor     // [maxRows, H]
    /// The rows' selections as work for the worker pool (each row on its own: the same bits
    /// however the rows are split).
    private var selection: Selection!

    public init(width: Int, keep k: Int, in build: BuildContext) {
        precondition(k >= 1 && k <= width, "keep \(k) of \(width) units")
        inputWidth = width
        self.k = k
        mask = build.tensor([build.maxRows, width])
        y = build.tensor([build.maxRows, width])
        dx = build.tensor([build.maxRows, width])
        selection = Selection(self)
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        selection.x = x
        WorkerPool.shared.run(selection, count: rows, align: 1, minimum: 16)
        return UnsafePointer(y.data)
    }

    /// Row r's mask and output. Its output row first holds a copy of the row for the selection.
    func select(row r: Int, _ x: UnsafePointer<Float>) {
        let h = inputWidth, xr = x + r * h, mr = mask.data + r * h, yr = y.data + r * h
        yr.update(from: xr, count: h)
        let threshold = kthLargest(in: yr)
        // Every value above the threshold, then values equal to it in order until k are kept.
        var above = 0
        for j in 0..<h where xr[j] > threshold { above += 1 }
        var ties = k - above
        for j in 0..<h {
            var kept = xr[j] > threshold
            if !kept && xr[j] == threshold && ties > 0 { kept = true; ties -= 1 }
            mr[j] = kept ? 1 : 0
            yr[j] = kept ? xr[j] : 0
        }
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        multiply(dy, mask.data, into: dx.data, count: rows * inputWidth)
        return UnsafePointer(dx.data)
    }

    /// The k-th largest of `s`'s `inputWidth` values, reordering them: Hoare's selection in
    /// place (no allocation), expected O(H). A NaN compares false both ways, so the scans
    /// still stop.
    func kthLargest(in s: UnsafeMutablePointer<Float>) -> Float {
        var lo = 0, hi = inputWidth - 1
        let target = k - 1                      // the index of the k-th largest in descending order
        while lo < hi {
            let pivot = s[lo + (hi - lo) / 2]
            var i = lo, j = hi
            while i <= j {
                while i <= hi && s[i] > pivot { i += 1 }
                while j >= lo && s[j] < pivot { j -= 1 }
                if i <= j { s.swapAt(i, j); i += 1; j -= 1 }
            }
            // [lo, j] holds values ≥ pivot, [i, hi] values ≤ pivot.
            if target <= j { hi = j } else if target >= i { lo = i } else { return s[target] }
        }
        return s[target]
    }
}

/// The selections of a pass's rows, for the worker pool.
private final class Selection: RangeTask {
    unowned let layer: TopKActivation
    var x: UnsafePointer<Float>?
    init(_ layer: TopKActivation) { self.layer = layer }
    func run(_ range: Range<Int>) { for r in range { layer.select(row: r, x!) } }
}

private extension UnsafeMutablePointer where Pointee == Float {
    func swapAt(_ i: Int, _ j: Int) { let t = self[i]; self[i] = self[j]; self[j] = t }
}
