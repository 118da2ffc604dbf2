import Kernels

/// How a parameter is initialized; values are drawn from the keyed RNG by global name, so
/// every rank (and every world size) produces the same initial model.
public enum Initializer: Sendable, Equatable {
    case zeros
    case ones
    case constant(Float)
    /// Uniform in ±bound.
    case uniform(bound: Float)
    /// Normal with mean 0; with `equalRows`, each row of a matrix is then rescaled to the
    /// same norm, keeping the whole tensor's standard deviation (σ-MoE's router).
    case normal(std: Float, equalRows: Bool = false)
}

/// What a parameter is, so optimizers can treat kinds differently (weight decay).
public enum ParameterRole: String, Sendable {
    case weight, bias, normGain, normBias
    /// A scalar that mixes two paths (an FFF's master-leaf blend): never decayed.
    case coefficient
}

/// A named tensor of the model: a view into the store's flat value and gradient buffers.
///
/// Names are global and stable (`blocks.3.fc1.weight`); checkpoints, logs and gradient
/// buckets all use them.
public final class Parameter {
    public let name: String
    public let shape: [Int]
    public let count: Int
    public let role: ParameterRole
    public let initializer: Initializer
    /// Kept at its initial value (or the value loaded into it): no gradient (its layer skips
    /// the product that would make one, and `grad` is nil), no optimizer state, no sync.
    public let frozen: Bool
    /// Held by this process: false for an expert that lives on another rank (`BuildContext`
    /// ownership), which is registered (its name, shape and place in the model are known to
    /// every rank) but has no value, gradient or offset here.
    public let resident: Bool
    /// Position in the store's `parameters` (registration order).
    public fileprivate(set) var index = 0
    /// Offset of this parameter in the store's flat buffers.
    public fileprivate(set) var offset = 0
    public fileprivate(set) var value: UnsafeMutablePointer<Float>!
    public fileprivate(set) var grad: UnsafeMutablePointer<Float>!

    init(name: String, shape: [Int], role: ParameterRole, initializer: Initializer, frozen: Bool, resident: Bool) {
        self.name = name
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.role = role
        self.initializer = initializer
        self.frozen = frozen
        self.resident = resident
    }
}

/// Owns every parameter of a model in one contiguous value buffer and one gradient buffer.
///
/// Layers `register` their parameters while the model is built; `finalize` then lays them
/// out in registration order (which is forward order), allocates, and initializes.
/// One span lets the optimizer and the gradient all-reduce run over large contiguous ranges.
///
/// Frozen parameters (named by `frozen` patterns) are laid out after all the others, in
/// `[trainableCount, count)`: the gradient arena, the optimizer state and the sync cover
/// `[0, trainableCount)` only. Parameters that are not `resident` (experts owned by another
/// rank) take no room at all: the arena holds what this process holds.
public final class ParameterStore {
    public private(set) var parameters: [Parameter] = []
    /// Their names (a model of many experts registers many).
    private var names: Set<String> = []
    public private(set) var values: Tensor = Tensor(shape: [0])
    /// Gradients of the trainable parameters, `trainableCount` floats.
    public private(set) var grads: Tensor = Tensor(shape: [0])
    public private(set) var isFinalized = false
    public let seed: UInt64
    /// What to freeze: a parameter's global name, or a prefix of whole components
    /// (`embed` freezes `embed.weight` and `embed.bias`).
    public let frozenPatterns: [String]
    /// Parameters a pattern named whose layer cannot freeze them (they train).
    public private(set) var unfreezable: [String] = []

    public init(seed: UInt64, frozen: [String] = []) {
        self.seed = seed
        frozenPatterns = frozen
    }

    /// All parameters this process holds, trainable and frozen (the arena).
    public var count: Int { values.count }
    /// Every parameter of the model, held here or not.
    public private(set) var declaredCount = 0
    /// The trainable parameters come first: `[0, trainableCount)` of the arena.
    public private(set) var trainableCount = 0

    /// Whether `pattern` names `name`: the name itself or a prefix of whole components.
    public static func matches(_ pattern: String, _ name: String) -> Bool {
        name == pattern || name.hasPrefix(pattern + ".")
    }

    /// The frozen patterns that name no parameter of this store.
    public var unmatchedFrozenPatterns: [String] {
        frozenPatterns.filter { f in !parameters.contains { Self.matches(f, $0.name) } }
    }

    /// Registers a parameter. `freezable`: its layer honours `Parameter.frozen` (skips its
    /// gradient); a frozen pattern naming any other parameter is recorded in `unfreezable`.
    public func register(
        _ name: String, shape: [Int], role: ParameterRole, initializer: Initializer, freezable: Bool = false,
        resident: Bool = true
    ) -> Parameter {
        precondition(!isFinalized, "parameter \(name) registered after finalize")
        let (new, _) = names.insert(name)
        precondition(new, "duplicate parameter name \(name)")
        let named = frozenPatterns.contains { Self.matches($0, name) }
        if named && !freezable { unfreezable.append(name) }
        let p = Parameter(name: name, shape: shape, role: role, initializer: initializer, frozen: named && freezable,
                          resident: resident)
        declaredCount += p.count
        p.index = parameters.count
        parameters.append(p)
        return p
    }

    public func finalize() {
        precondition(!isFinalized)
        isFinalized = true
        let held = parameters.filter(\.resident)
        let total = held.reduce(0) { $0 + $1.count }
        trainableCount = held.reduce(0) { $0 + ($1.frozen ? 0 : $1.count) }
        values = Tensor(shape: [total])
        grads = Tensor(shape: [trainableCount])
        var offset = 0
        for p in parameters where !p.resident { p.offset = -1 }
        for p in held where !p.frozen {
            p.offset = offset
            p.value = values.data + offset
            p.grad = grads.data + offset
            offset += p.count
        }
        for p in held where p.frozen {
            p.offset = offset
            p.value = values.data + offset
            offset += p.count
        }
        initialize()
    }

    /// Sets every parameter to its initial value (a pure function of seed and name).
    public func initialize() {
        let rng = Philox(seed: seed)
        for p in parameters where p.resident {
            switch p.initializer {
            case .zeros: p.value.update(repeating: 0, count: p.count)
            case .ones: p.value.update(repeating: 1, count: p.count)
            case .constant(let c): p.value.update(repeating: c, count: p.count)
            case .uniform(let bound):
                rng.fillUniform(
                    p.value, count: p.count, stream: RNGStream.initialization(name: p.name),
                    lo: -bound, hi: bound)
            case .normal(let std, let equalRows):
                let stream = RNGStream.initialization(name: p.name)
                for i in 0..<p.count { p.value[i] = std * rng.normal(stream: stream, index: UInt64(i)) }
                if equalRows, p.shape.count == 2 { Self.equalizeRows(p) }
            }
        }
    }

    /// Divides each row of `p` by its norm, then scales the whole by the factor that restores
    /// its standard deviation.
    static func equalizeRows(_ p: Parameter) {
        let rows = p.shape[0], cols = p.shape[1]
        func std() -> Double {
            var s = 0.0, s2 = 0.0
            for i in 0..<p.count { s += Double(p.value[i]); s2 += Double(p.value[i]) * Double(p.value[i]) }
            let mean = s / Double(p.count)
            return (s2 / Double(p.count) - mean * mean).squareRoot()
        }
        let before = std()
        for r in 0..<rows {
            let row = p.value + r * cols
            var n = 0.0
            for j in 0..<cols { n += Double(row[j]) * Double(row[j]) }
            let inv = n > 0 ? Float(1 / n.squareRoot()) : 0
            for j in 0..<cols { row[j] *= inv }
        }
        let after = std()
        guard after > 0 else { return }
        let k = Float(before / after)
        for i in 0..<p.count { p.value[i] *= k }
    }

    public func zeroGrads() { grads.zero() }

    public subscript(name: String) -> Parameter? { parameters.first { $0.name == name } }
}

/// Applies the optimizer's update to a parameter inside backward, from a gradient that is
/// final as soon as a layer computes it (an MoE expert's, when no other rank adds to it and
/// no global-norm clip scales it): the layer then keeps the gradient in a buffer that stays
/// in cache instead of the store's, and the update reads it there while the parameter is
/// still warm from backward. The optimizer's step after backward skips what was updated here.
public protocol UpdateInBackward: AnyObject {
    /// Updates `parameter` from `grads` (its `count` floats, not the store's), which may be
    /// overwritten. Called from the worker pool's threads, for different parameters at once.
    func update(_ parameter: Parameter, from grads: UnsafeMutablePointer<Float>)
}
