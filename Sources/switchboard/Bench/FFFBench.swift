import Foundation
import Kernels
import Layers
import Training

/// `switchboard bench W6`: forward-only inference of a fast feedforward layer with hard
/// decisions against the dense FFN of the same training width (docs/BENCHMARKS.md, W6).
/// At batch 1 each call takes one sample (the rows in turn, so the descents reach different
/// leaves); at batch B a call takes B samples. Repetitions alternate FFF and dense; medians
/// are reported.
struct FFFBench {
    let width = 384, depth = 6, leafWidth = 16
    let batches = [1, 1000]
    let threads: [Int]
    let repeats: Int

    func run() {
        let spec = FFFSpec(depth: depth, leafWidth: leafWidth, activation: .relu)
        let rows = batches.max()!, hidden = spec.trainingWidth
        // The two blocks as a model makes them (their norms and residuals aside).
        let fffBlock = FeedForward.fff(spec), denseBlock = FeedForward.mlp(MLPSpec(hidden: hidden, activation: .pointwise(.relu)))
        let store = ParameterStore(seed: 1)
        let build = BuildContext(store: store, maxRows: rows)
        let fff = fffBlock.layers("fff", width: width, site: 0, in: build)
        let dense = denseBlock.layers("dense", width: width, site: 0, in: build)
        store.finalize()
        let x = Tensor(shape: [rows, width])
        let rng = Philox(seed: 2)
        for i in 0..<x.count { x[i] = rng.normal(stream: 0, index: UInt64(i)) }
        let context = ForwardContext(training: false, hardDecisions: true)
        // Each side's FLOPs, counted by declaring its layers in a counting build.
        func inferenceFLOPs(_ declare: (BuildContext) -> Void) -> Double {
            let counting = BuildContext(seed: 1, maxRows: 1, counting: true)
            declare(counting)
            return counting.count.inferenceFLOPs
        }
        let fffFLOPs = inferenceFLOPs { _ = fffBlock.layers("fff", width: width, site: 0, in: $0) }
        let denseFLOPs = inferenceFLOPs { _ = denseBlock.layers("dense", width: width, site: 0, in: $0) }
        let flopRatio = denseFLOPs / fffFLOPs
        print("switchboard \(Switchboard.version) bench W6: FFF depth \(depth), leaf width \(leafWidth), width \(width) "
              + "(hard inference) against the dense FFN \(width) → \(hidden) → \(width) (ReLU), forward only")
        print("machine: \(cpuModel()), \(ProcessInfo.processInfo.activeProcessorCount) cores; OpenBLAS \(BLAS.coreName)")
        print("FLOPs per sample: dense \(Int(denseFLOPs)), FFF \(Int(fffFLOPs)) (ratio \(fixed(flopRatio, 1)))")
        for t in threads {
            BLAS.setThreads(t)
            for batch in batches {
                let calls = rows / batch
                func pass(_ layers: [any Layer]) {
                    for c in 0..<calls {
                        var h = UnsafePointer(x.data + c * batch * width)
                        for layer in layers { h = layer.forward(h, rows: batch, context: context) }
                    }
                }
                func fffPass() { pass(fff) }
                func densePass() { pass(dense) }
                fffPass()
                densePass()
                var fffRates: [Double] = [], denseRates: [Double] = []
                for _ in 0..<repeats {
                    fffRates.append(Double(rows) / Self.seconds(fffPass))
                    denseRates.append(Double(rows) / Self.seconds(densePass))
                }
                let f = median(fffRates), d = median(denseRates)
                print("threads \(t), batch \(batch): FFF \(Int(f)) samples/s, dense \(Int(d)) samples/s: "
                      + "FFF \(fixed(f / d, 1))× faster (FLOP ratio \(fixed(flopRatio, 1)); median of \(repeats))")
            }
        }
    }

    /// Seconds per pass, timing passes for at least 0.2 s.
    static func seconds(_ pass: () -> Void) -> Double {
        let t0 = ContinuousClock.now
        var n = 0, s = 0.0
        repeat { pass(); n += 1; s = (ContinuousClock.now - t0).seconds } while s < 0.2
        return s / Double(n)
    }
}
