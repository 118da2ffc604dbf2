import XCTest
import Kernels
import TestSupport
@testable import Layers

/// The whole model plus softmax cross-entropy against finite differences of the loss.
final class ModelGradientTests: XCTestCase {
    func check(_ arch: Architecture, frozen: [String] = [], file: StaticString = #filePath, line: UInt = #line) {
        let rows = 6, inputs = 12, classes = 5
        let model = Model(arch, inputs: inputs, classes: classes, maxRows: rows, seed: 11, frozen: frozen)
        let x = Tensor(shape: [rows, inputs]), dlogits = Tensor(shape: [rows, classes])
        for i in 0..<x.count { x[i] = Philox(seed: 3).uniform(stream: 0, index: UInt64(i)) }
        var labels: [Int32] = (0..<rows).map { Int32($0 % classes) }
        let ctx = ForwardContext(training: true, step: 2)
        func loss(_ grad: Bool) -> Double {
            let logits = model.forward(x.data, rows: rows, context: ctx)
            let out = labels.withUnsafeMutableBufferPointer {
                softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, rows: rows, classes: classes,
                                    smoothing: 0.1, gradScale: 1 / Float(rows), dlogits: grad ? dlogits.data : nil)
            }
            return out.lossSum / Double(rows) + model.auxLoss
        }
        model.store.zeroGrads()
        _ = loss(true)
        model.backward(dlogits.data, rows: rows)
        let h: Float = 1e-2
        var worst = (0.0, "", 0.0, 0.0), scale = 1e-4
        for p in model.store.parameters where !p.frozen {
            for i in stride(from: 0, to: p.count, by: max(1, p.count / 16)) {
                let saved = p.value[i]
                p.value[i] = saved + h; let plus = loss(false)
                p.value[i] = saved - h; let minus = loss(false)
                p.value[i] = saved
                let numeric = (plus - minus) / Double(2 * h), analytic = Double(p.grad[i])
                scale = max(scale, abs(numeric))
                if abs(numeric - analytic) > worst.0 { worst = (abs(numeric - analytic), "\(p.name)[\(i)]", analytic, numeric) }
            }
        }
        XCTAssertLessThan(worst.0 / scale, 5e-3,
            "\(arch): max |analytic − numeric| = \(worst.0) at \(worst.1) (analytic \(worst.2), numeric \(worst.3)), scale \(scale)",
            file: file, line: line)
    }

    func testResidualFamilies() {
        // Low-rank block matrices, depth-scaled norms, an hourglass with its lift frozen.
        check(.residual(Trunk(width: 16, depth: 2, norm: .layerNorm, depthScaledNorm: true),
                        .mlp(MLPSpec(hidden: 24, activation: .pointwise(.gelu), rank: 5))))
        check(.residual(Trunk(width: 16, depth: 3, norm: .rmsNorm, depthScaledNorm: true),
                        .mlp(MLPSpec(hidden: 8, activation: .gated(.silu), rank: 3))))
        check(.residual(Trunk(width: 16, depth: 2), .mlp(MLPSpec(hidden: 4, activation: .pointwise(.gelu)))), frozen: ["embed"])
        // Fast feedforward blocks, soft, with every training term.
        check(.residual(Trunk(width: 12, depth: 2), .fff(FFFSpec(depth: 2, leafWidth: 3, activation: .gelu, hardening: 0.3,
                                                                balance: 0.2, masterLeaf: true))))
    }

    func testStackModel() { check(.stack(hidden: [16, 16], activation: .gelu)) }

    func testResidualModels() {
        check(.residual(Trunk(width: 16, depth: 2, norm: .layerNorm), .mlp(MLPSpec(hidden: 32, activation: .pointwise(.gelu), dropout: 0.1))))
        check(.residual(Trunk(width: 16, depth: 2, norm: .rmsNorm), .mlp(MLPSpec(hidden: 32, activation: .gated(.silu), dropout: 0))))
        check(.residual(Trunk(width: 16, depth: 1, norm: .layerNorm), .mlp(MLPSpec(hidden: 64, activation: .pointwise(.geluTanh), dropout: 0))))
    }

    func testParameterNamesAreGlobalAndInitializationIsKeyed() {
        let arch = Architecture.residual(Trunk(width: 8, depth: 2, norm: .layerNorm), .mlp(MLPSpec(hidden: 16, activation: .pointwise(.relu), dropout: 0)))
        let a = Model(arch, inputs: 4, classes: 3, maxRows: 2, seed: 5)
        let b = Model(arch, inputs: 4, classes: 3, maxRows: 64, seed: 5)
        let c = Model(arch, inputs: 4, classes: 3, maxRows: 2, seed: 6)
        XCTAssertEqual(a.store.parameters.map(\.name), [
            "embed.weight", "embed.bias",
            "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.fc1.weight", "blocks.0.fc1.bias",
            "blocks.0.fc2.weight", "blocks.0.fc2.bias",
            "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.fc1.weight", "blocks.1.fc1.bias",
            "blocks.1.fc2.weight", "blocks.1.fc2.bias",
            "norm.weight", "norm.bias", "head.weight", "head.bias"])
        assertBitwiseEqual(a.store.values, b.store.values, "initialization must not depend on buffer sizes")
        XCTAssertNotEqual(a.store.values.array, c.store.values.array)
        let bound = 1 / Float(4).squareRoot()
        XCTAssertTrue(a.store["embed.weight"]!.value.withMemoryRebound(to: Float.self, capacity: 32) { p in
            (0..<32).allSatisfy { abs(p[$0]) <= bound }
        })
    }
}
