import Kernels

/// The rows an MoE layer's experts work on, grouped by expert: expert e's rows are
/// `[start[e], start[e + 1])`. One set holds this rank's own tokens; under expert
/// parallelism a second holds the tokens other ranks sent to the experts this rank runs.
final class ExpertRows {
    let x: Tensor, z1: Tensor, h: Tensor, y: Tensor     // [rows, d], [rows, H1], [rows, H], [rows, d]
    let dy: Tensor, dh: Tensor, dz1: Tensor, dx: Tensor
    /// bf16 only: the inputs of the experts' products, rounded ([rows, d], [rows, H],
    /// [rows, d], [rows, H1]).
    let x16, h16, dy16, dz16: BFloat16Buffer?
    /// [E + 1] row offsets.
    let start: UnsafeMutablePointer<Int>

    init(rows: Int, width d: Int, hidden h: Int, firstWidth h1: Int, experts e: Int, precision: Precision) {
        x = Tensor(shape: [rows, d])
        z1 = Tensor(shape: [rows, h1])
        self.h = Tensor(shape: [rows, h])
        y = Tensor(shape: [rows, d])
        dy = Tensor(shape: [rows, d])
        dh = Tensor(shape: [rows, h])
        dz1 = Tensor(shape: [rows, h1])
        dx = Tensor(shape: [rows, d])
        let bf16 = precision.roundsToBFloat16
        x16 = bf16 ? BFloat16Buffer(count: rows * d, precision: precision) : nil
        h16 = bf16 ? BFloat16Buffer(count: rows * h, precision: precision) : nil
        dy16 = bf16 ? BFloat16Buffer(count: rows * d, precision: precision) : nil
        dz16 = bf16 ? BFloat16Buffer(count: rows * h1, precision: precision) : nil
        start = .allocate(capacity: e + 1)
        start.initialize(repeating: 0, count: e + 1)
    }

    deinit { start.deallocate() }
}
