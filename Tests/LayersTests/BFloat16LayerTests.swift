import XCTest
import Kernels
@testable import Layers

/// Each layer in bf16 against the same layer in fp32, both given bf16-representable weights,
/// inputs and output gradients. A bf16 × bf16 product is exact in fp32 (8 + 8 significant
/// bits), so where the only rounding is of those inputs (a Linear) the two differ only in the
/// order of fp32 sums: within `tight` of the largest output. Where a layer rounds its own
/// intermediates (h before the second product of an expert, the low-rank middle, the FFF's
/// gated leaves), each rounding is at most half a bf16 ulp (2⁻⁹ relative), carried through
/// one more product; cancellation there can make that larger against the largest output, so
/// `loose`, 2⁻⁶ of the largest value (8 such half-ulps), is a margin that held with room in
/// every case here, not a proof.
///
/// Every bf16 path this CPU has is compared, with the same bounds: oneDNN's bf16 matmul from
/// AVX-512 on, and the emulated path (inputs rounded alike, multiplied by the fp32 library)
/// everywhere.
final class BFloat16LayerTests: XCTestCase {
    static let tight = 1e-5
    static let loose = 1.0 / 64

    /// The bf16 paths of this CPU.
    static let paths: [Precision] = OneDNN.supportsBFloat16 ? [.bf16, .bf16Emulated] : [.bf16Emulated]

    /// Builds the layer in fp32 and on each bf16 path (same seed), rounds every store's
    /// parameters to bf16 values, and compares each bf16 path's forward outputs, input
    /// gradients and parameter gradients with fp32's.
    func compare(rows: Int = 24, tolerance: Double, context: ForwardContext = .init(training: true),
                 file: StaticString = #filePath, line: UInt = #line,
                 _ build: (ParameterStore, Precision) -> any Layer) {
        var outputs: [[Float]] = [], inputGradients: [[Float]] = [], gradients: [[Float]] = []
        var names: [String] = []
        for precision in [.fp32] + Self.paths {
            let store = ParameterStore(seed: 7)
            let layer = build(store, precision)
            store.finalize()
            for p in store.parameters { round(p.value, p.count) }
            let rng = Philox(seed: 5)
            let x = Tensor(shape: [rows, layer.inputWidth]), dy = Tensor(shape: [rows, layer.outputWidth])
            for i in 0..<x.count { x[i] = rng.uniform(stream: 1, index: UInt64(i)) * 2 - 1 }
            for i in 0..<dy.count { dy[i] = rng.uniform(stream: 2, index: UInt64(i)) * 2 - 1 }
            round(x.data, x.count)
            round(dy.data, dy.count)
            store.zeroGrads()
            let y = layer.forward(x.data, rows: rows, context: context)
            outputs.append(Array(UnsafeBufferPointer(start: y, count: rows * layer.outputWidth)))
            let dx = layer.backward(dy.data, rows: rows)
            inputGradients.append(dx.map { Array(UnsafeBufferPointer(start: $0, count: rows * layer.inputWidth)) } ?? [])
            gradients.append(store.parameters.filter { !$0.frozen }.flatMap { Array(UnsafeBufferPointer(start: $0.grad, count: $0.count)) })
            names = store.parameters.map(\.name)
        }
        func check(_ what: String, _ ref: [Float], _ got: [Float], _ path: Precision) {
            XCTAssertEqual(ref.count, got.count, what, file: file, line: line)
            let scale = ref.map { Double(abs($0)) }.max() ?? 0
            var worst = 0.0, at = 0
            for i in ref.indices where Double(abs(ref[i] - got[i])) > worst { worst = Double(abs(ref[i] - got[i])); at = i }
            XCTAssertLessThanOrEqual(worst, tolerance * max(scale, 1e-30),
                                     "\(path), \(what): max |bf16 − fp32| \(worst) at \(at) (fp32 \(ref[at]), bf16 \(got[at])), "
                                     + "more than \(tolerance) × the largest \(scale); parameters \(names)",
                                     file: file, line: line)
            XCTAssertGreaterThan(scale, 0, "\(what) is all zeros: nothing was compared", file: file, line: line)
        }
        for (i, path) in Self.paths.enumerated() {
            check("forward", outputs[0], outputs[i + 1], path)
            if !inputGradients[0].isEmpty { check("input gradient", inputGradients[0], inputGradients[i + 1], path) }
            check("parameter gradients", gradients[0], gradients[i + 1], path)
        }
    }

    func round(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        let r = roundedToBFloat16(Array(UnsafeBufferPointer(start: p, count: n)))
        p.update(from: r, count: n)
    }

    func testLinearIsExactUpToSummationOrder() {
        compare(tolerance: Self.tight) { Linear("fc", inputs: 37, outputs: 29, in: BuildContext(store: $0, maxRows: 24, precision: $1)) }
        compare(tolerance: Self.tight) { Linear("fc", inputs: 16, outputs: 8, bias: false, in: BuildContext(store: $0, maxRows: 24, precision: $1)) }
    }

    /// With a fused activation the output gradient the products see is dy ⊙ f'(z), rounded.
    func testLinearWithActivation() {
        compare(tolerance: Self.loose) { Linear("fc", inputs: 37, outputs: 29, activation: .gelu, in: BuildContext(store: $0, maxRows: 24, precision: $1)) }
    }

    func testLowRankLinear() {
        compare(tolerance: Self.loose) { LowRankLinear("fc", inputs: 31, outputs: 23, rank: 5, in: BuildContext(store: $0, maxRows: 24, precision: $1)) }
    }

    func testFastFeedforward() {
        let spec = FFFSpec(depth: 2, leafWidth: 6, activation: .gelu, masterLeaf: true)
        compare(tolerance: Self.loose) { FastFeedforward("fff", width: 12, spec: spec, in: BuildContext(store: $0, maxRows: 24, precision: $1)) }
    }

    /// The router is fp32 in both, so both route alike; the experts' products are bf16.
    func testMoEExperts() {
        for spec in [
            MoESpec(experts: 4, topK: 2, hidden: 10, activation: .pointwise(.gelu)),
            MoESpec(experts: 3, topK: 1, hidden: 8, activation: .gated(.silu), bias: false, sharedHidden: 6),
        ] {
            compare(tolerance: Self.loose) { MoE("moe", width: 16, spec: spec, site: 0, in: BuildContext(store: $0, maxRows: 24, precision: $1)) }
        }
    }
}
