import Foundation
import Kernels
import Layers
import Training

/// `switchboard bench kernels`: the elementwise kernels of a training step timed alone, at
/// W1's sizes, so a regression in one shows up without the GEMMs around it.
enum KernelBench {
    static func run() {
        print("switchboard \(Switchboard.version) bench kernels (single thread unless stated)")
        let n = 2_913_290   // W1's parameter count
        let store = ParameterStore(seed: 1)
        _ = store.register("w", shape: [n], role: .weight, initializer: .uniform(bound: 0.1))
        store.finalize()
        let adam = AdamW(count: n, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, decayBiasesAndNorms: true)
        for t in [1, 2] {
            BLAS.setThreads(t)
            report("AdamW step (p, g, m, v), \(t) thread\(t == 1 ? "" : "s")", bytes: 32 * Double(n), elements: Double(n)) {
                adam.step(store, lr: 1e-3, gradScale: 1)
            }
        }
        BLAS.setThreads(1)
        report("sum of squares (grad norm)", bytes: 4 * Double(n), elements: Double(n)) {
            _ = sumOfSquares(store.grads.data, count: n)
        }
        let rows = 256, cols = 1024
        let z = Tensor(shape: [rows, cols]), y = Tensor(shape: [rows, cols]), b = Tensor(shape: [cols])
        for i in 0..<z.count { z[i] = Float(i % 17) * 0.1 - 0.8 }
        for a in [Activation.relu, .gelu, .geluTanh, .silu] {
            report("bias + \(a.rawValue) forward [256, 1024]", bytes: 12 * Double(z.count), elements: Double(z.count)) {
                a.forward(z: z.data, bias: b.data, y: y.data, rows: rows, cols: cols)
            }
            report("\(a.rawValue) backward + bias grad [256, 1024]", bytes: 12 * Double(z.count), elements: Double(z.count)) {
                a.backward(z: z.data, dy: y.data, dz: y.data, dbias: b.data, rows: rows, cols: cols)
            }
        }
        let lnStore = ParameterStore(seed: 1)
        let ln = LayerNorm("ln", width: cols, in: BuildContext(store: lnStore, maxRows: rows))
        lnStore.finalize()
        report("layernorm forward [256, 1024]", bytes: 8 * Double(z.count), elements: Double(z.count)) {
            _ = ln.forward(z.data, rows: rows, context: .init(training: true))
        }
    }

    static func report(_ name: String, bytes: Double, elements: Double, _ body: () -> Void) {
        body()
        var best = Double.infinity
        for _ in 0..<5 {
            let t0 = ContinuousClock.now
            var reps = 0
            var s = 0.0
            repeat { body(); reps += 1; s = (ContinuousClock.now - t0).seconds } while s < 0.05
            best = min(best, s / Double(reps))
        }
        let pad = name.padding(toLength: 40, withPad: " ", startingAt: 0)
        print("\(pad) \(fixed(best * 1e3, 3)) ms  \(fixed(bytes / best / 1e9, 1)) GB/s  \(fixed(elements / best / 1e6, 0)) M elements/s")
    }
}
