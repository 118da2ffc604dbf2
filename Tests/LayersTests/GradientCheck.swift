import XCTest
import Kernels
@testable import Layers

/// Central finite differences for a layer under the scalar loss `L = Σ r ⊙ layer(x)` with a
/// fixed random projection r. L is accumulated in Double; the layer computes in Float, so the
/// step is 1e-2 and the tolerance is relative to the largest gradient entry.
struct GradientCheck {
    static let step: Float = 1e-2
    static let tolerance = 2e-3

    let layer: any Layer
    let store: ParameterStore
    let rows: Int
    let context: ForwardContext
    let x: Tensor
    let r: Tensor
    /// A loss the layer adds on its own after forward (an MoE layer's auxiliary loss), whose
    /// gradient its backward includes.
    let extraLoss: (() -> Double)?

    init(_ layer: any Layer, store: ParameterStore, rows: Int, context: ForwardContext = .init(training: true),
         input: ((Int) -> Float)? = nil, extraLoss: (() -> Double)? = nil) {
        self.extraLoss = extraLoss
        self.layer = layer
        self.store = store
        self.rows = rows
        self.context = context
        x = Tensor(shape: [rows, layer.inputWidth])
        r = Tensor(shape: [rows, layer.outputWidth])
        let rng = Philox(seed: 99)
        for i in 0..<x.count { x[i] = input?(i) ?? (rng.uniform(stream: 1, index: UInt64(i)) * 2 - 1) }
        for i in 0..<r.count { r[i] = rng.uniform(stream: 2, index: UInt64(i)) * 2 - 1 }
    }

    func loss() -> Double {
        let y = layer.forward(x.data, rows: rows, context: context)
        var s = 0.0
        for i in 0..<rows * layer.outputWidth { s += Double(y[i]) * Double(r[i]) }
        return s + (extraLoss?() ?? 0)
    }

    func numeric(_ p: UnsafeMutablePointer<Float>) -> Double {
        let saved = p.pointee
        p.pointee = saved + Self.step
        let plus = loss()
        p.pointee = saved - Self.step
        let minus = loss()
        p.pointee = saved
        return (plus - minus) / Double(2 * Self.step)
    }

    /// Checks dL/dx (when the layer returns one) and dL/dθ for every parameter, on up to
    /// `samples` entries of each tensor.
    func run(samples: Int = 64, file: StaticString = #filePath, line: UInt = #line) {
        store.zeroGrads()
        _ = loss()
        let dx = layer.backward(r.data, rows: rows)
        var analytic: [(String, Double, Double)] = []   // (where, analytic, numeric)
        if let dx {
            let dxCopy = (0..<x.count).map { Double(dx[$0]) }
            for i in indices(x.count, samples) { analytic.append(("x[\(i)]", dxCopy[i], numeric(x.data + i))) }
        }
        for p in store.parameters {
            for i in indices(p.count, samples) {
                analytic.append(("\(p.name)[\(i)]", Double(p.grad[i]), numeric(p.value + i)))
            }
        }
        let scale = max(analytic.map { abs($0.2) }.max() ?? 0, 1e-3)
        let worst = analytic.max { abs($0.1 - $0.2) < abs($1.1 - $1.2) }!
        let maxDiff = abs(worst.1 - worst.2)
        XCTAssertLessThan(maxDiff / scale, Self.tolerance,
            "max |analytic − numeric| = \(maxDiff) at \(worst.0) (analytic \(worst.1), numeric \(worst.2)), "
            + "gradient scale \(scale); first entries: "
            + analytic.prefix(4).map { "\($0.0): \($0.1) vs \($0.2)" }.joined(separator: ", "),
            file: file, line: line)
    }

    func indices(_ n: Int, _ k: Int) -> [Int] {
        n <= k ? Array(0..<n) : (0..<k).map { $0 * n / k }
    }
}
