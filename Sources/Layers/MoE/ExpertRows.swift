import Kernels

/// The rows an MoE layer's experts work on, grouped by expert: expert e's rows are
/// `[start[e], start[e + 1])`. One set holds this rank's own tokens; under expert
/// parallelism a second holds the tokens other ranks sent to the experts this rank runs.
/// Backward's buffers hold the rows of a training pass (`backwardRows`), which evaluation's
/// larger chunks never reach.
final class ExpertRows {
    let x: Tensor, z1: Tensor, h: Tensor, y: Tensor     // [rows, d], [rows, H1], [rows, H], [rows, d]
    let dy: Tensor, dh: Tensor, dz1: Tensor, dx: Tensor
    /// bf16 only: the inputs of the experts' products, rounded ([rows, d], [rows, H],
    /// [rows, d], [rows, H1]).
    let x16, h16, dy16, dz16: BFloat16Buffer?
    /// [E + 1] row offsets.
    let start: UnsafeMutablePointer<Int>

    init(rows: Int, backwardRows: Int, width d: Int, hidden h: Int, firstWidth h1: Int, experts e: Int, in build: BuildContext) {
        x = build.tensor([rows, d])
        z1 = build.tensor([rows, h1])
        self.h = build.tensor([rows, h])
        y = build.tensor([rows, d])
        dy = build.tensor([backwardRows, d])
        dh = build.tensor([backwardRows, h])
        dz1 = build.tensor([backwardRows, h1])
        dx = build.tensor([backwardRows, d])
        x16 = build.bf16([rows, d])
        h16 = build.bf16([rows, h])
        dy16 = build.bf16([backwardRows, d])
        dz16 = build.bf16([backwardRows, h1])
        start = .allocate(capacity: e + 1)
        start.initialize(repeating: 0, count: e + 1)
    }

    deinit { start.deallocate() }
}
