import Kernels
import Layers
import Storage

/// Where each parameter of a new run comes from when it starts from another run's weights
/// (`[init]`): the checkpoint's tensor of the same global name and shape, or, upcycling a
/// dense model into a mixture of experts, every expert of block b from the dense block b's
/// FFN (`blocks.b.fc1.weight` → `blocks.b.moe.experts.e.w1`, and so on). Everything else
/// starts as the job initializes it and is listed. Only parameters are read: the optimizer,
/// the schedule, the seed and the data position are the new run's own, from zero. The plan is
/// made from the manifest alone, so a strict job is refused before anything is loaded or any
/// run folder made; every rank makes the same plan and loads every parameter, so it works on
/// any number of ranks and any expert placement.
public struct InitPlan {
    public let checkpoint: CheckpointReader
    public let upcycle: Bool
    public let noise: Double
    /// (parameter, checkpoint tensor) pairs to load.
    public let loads: [(parameter: Parameter, tensor: String)]
    /// Parameters that start as the job initializes them, each with the reason.
    public let fresh: [String]
    /// Parameters of the checkpoint that nothing takes.
    public let unused: [String]

    /// Plans loading `model` from the checkpoint at `spec.from`; with `spec.strict`, any
    /// mismatch refuses the job (every one named). `source` is the job file.
    public init(_ spec: JobConfig.Initialization, model: Model, source: String) throws {
        guard CheckpointReader.hasMainFile(spec.from) else {
            throw ConfigError("\(source): [init] from = \"\(spec.from)\": \(CheckpointReader.notACheckpoint(spec.from))")
        }
        checkpoint = try CheckpointReader(spec.from)
        upcycle = spec.upcycle
        noise = spec.noise
        var loads: [(Parameter, String)] = [], fresh: [String] = [], mismatches: [String] = []
        var used = Set<String>()
        for p in model.store.parameters {
            guard let name = Self.source(of: p.name, upcycle: spec.upcycle) else {
                fresh.append("\(p.name) (the router starts as the job says)")
                continue
            }
            guard let t = checkpoint.tensors[CheckpointNames.parameter(name)] else {
                fresh.append("\(p.name) (\(name == p.name ? "" : "\(name) is ")not in the checkpoint)")
                mismatches.append("\(name == p.name ? p.name : "\(name), for \(p.name),") is not in the checkpoint")
                continue
            }
            used.insert(name)
            guard t.shape == p.shape else {
                fresh.append("\(p.name) (shape \(t.shape) in the checkpoint, \(p.shape) here)")
                mismatches.append("\(name) has shape \(t.shape) in the checkpoint, \(name == p.name ? "" : "\(p.name) ")\(p.shape) here")
                continue
            }
            loads.append((p, CheckpointNames.parameter(name)))
        }
        let unused = checkpoint.tensors.keys.compactMap(CheckpointNames.parameterName).filter { !used.contains($0) }.sorted()
        mismatches += unused.map { "\($0) is in the checkpoint but not in this model" }
        if spec.strict && !mismatches.isEmpty {
            throw ConfigError("\(source): [init] strict = true, and \(checkpoint.folder) does not fit this model: "
                              + mismatches.prefix(20).joined(separator: "; ")
                              + (mismatches.count > 20 ? "; and \(mismatches.count - 20) more" : "")
                              + " (strict = false starts those parameters fresh)")
        }
        self.loads = loads
        self.fresh = fresh
        self.unused = unused
    }

    /// The checkpoint tensor a parameter comes from: the same name, or upcycling, an expert's
    /// matrices from the dense block's; nil for the router, which starts as the job says.
    static func source(of name: String, upcycle: Bool) -> String? {
        guard upcycle else { return name }
        let parts = name.split(separator: ".").map(String.init)
        guard parts.count >= 4, parts[0] == "blocks", parts[2] == "moe" else { return name }
        let block = "blocks.\(parts[1])"
        if parts[3] == "router" { return nil }
        guard parts[3] == "experts", parts.count == 6 else { return name }
        switch parts[5] {
        case "w1": return "\(block).fc1.weight"
        case "b1": return "\(block).fc1.bias"
        case "w2": return "\(block).fc2.weight"
        case "b2": return "\(block).fc2.bias"
        default: return name
        }
    }

    /// Loads the planned tensors (each verified against its checksums); upcycling with noise,
    /// adds `noise · RMS · N(0, 1)` to each expert's copy, drawn by the expert parameter's name
    /// from `seed`.
    public func apply(seed: UInt64) throws {
        let rng = Philox(seed: seed)
        // An expert another rank owns is loaded there.
        for (p, tensor) in loads where p.resident {
            try checkpoint.read(tensor, into: p.value)
            guard upcycle, noise > 0, tensor != CheckpointNames.parameter(p.name) else { continue }
            var squares = 0.0
            for i in 0..<p.count { squares += Double(p.value[i]) * Double(p.value[i]) }
            let scale = Float(noise * (squares / Double(p.count)).squareRoot())
            let stream = RNGStream.initialization(name: "upcycle." + p.name)
            for i in 0..<p.count { p.value[i] += scale * rng.normal(stream: stream, index: UInt64(i)) }
        }
    }

    /// What the start line says: tensors loaded, and those that start fresh.
    public var summary: String {
        "initialized from \(checkpoint.folder) (step \(checkpoint.manifest.position.step)"
            + (upcycle ? ", upcycled dense → MoE\(noise > 0 ? " with noise \(noise)" : "")" : "") + "): "
            + "\(loads.count) parameter tensor\(loads.count == 1 ? "" : "s") loaded"
            + (fresh.isEmpty ? "" : "; fresh: " + fresh.joined(separator: ", "))
            + (unused.isEmpty ? "" : "; unused from the checkpoint: " + unused.joined(separator: ", "))
    }
}
