import Kernels
import Layers

/// The optimizer's update inside backward (`UpdateInBackward`), for the MoE experts this rank
/// owns and runs, on runs without global-norm clipping: each expert parameter is updated as
/// soon as its gradient is whole, from a buffer still in cache. The gradients of those
/// parameters then never reach the store, and the optimizer's pass over it, which reads and
/// writes parameters, gradients and two moments from memory, skips them: in W2 that is 97%
/// of the parameters.
///
/// Notes which parameters it updated (the pass after backward skips them) and, when asked,
/// the sums of their gradients' squares for the global norm. The result is the same bits as
/// updating after backward: the same gradients (a GEMM into a zeroed store writes what one
/// with beta 0 writes), and an elementwise update.
final class BackwardUpdates: UpdateInBackward {
    let optimizer: any Optimizer
    let store: ParameterStore
    /// Per parameter (store order): updated in this step's backward.
    let updated: UnsafeMutablePointer<Bool>
    /// Per parameter: Σ gradient², when `measures`.
    let squares: UnsafeMutablePointer<Double>
    /// Whether this step needs the gradient norm (a logged step).
    var measures = false

    /// Attaches itself to every expert layer of `model`, each with a gradient buffer for each
    /// of `threads` worker threads.
    init(optimizer: any Optimizer, model: Model, threads: Int) {
        self.optimizer = optimizer
        store = model.store
        let n = store.parameters.count
        updated = .allocate(capacity: n)
        updated.initialize(repeating: false, count: n)
        squares = .allocate(capacity: n)
        squares.initialize(repeating: 0, count: n)
        for layer in model.layers((any ExpertLayer).self) { layer.attach(updates: self, threads: threads) }
    }

    deinit {
        updated.deallocate()
        squares.deallocate()
    }

    /// Starts a step's updates at learning rate `lr` (no clipping: that would need every
    /// gradient first); `measuring` takes the gradients' squares for the global norm.
    func begin(lr: Float, measuring: Bool) {
        optimizer.begin(lr: lr, gradScale: 1)
        measures = measuring
    }

    func update(_ parameter: Parameter, from grads: UnsafeMutablePointer<Float>) {
        if measures { squares[parameter.index] = sumOfSquares(grads, count: parameter.count) }
        optimizer.update(parameter, in: store, from: grads)
        updated[parameter.index] = true
    }

    /// Σ gradient² of the parameters updated in this backward, summed in store order (so the
    /// same for any thread count).
    var squareSum: Double {
        var total = 0.0
        for i in 0..<store.parameters.count where updated[i] { total += squares[i] }
        return total
    }

    /// Clears the step's notes, after the optimizer's pass has skipped what they name.
    func endStep() {
        updated.update(repeating: false, count: store.parameters.count)
        squares.update(repeating: 0, count: store.parameters.count)
    }
}
