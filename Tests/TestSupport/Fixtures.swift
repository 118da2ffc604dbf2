import Foundation
import Kernels

/// Small synthetic IDX datasets written to a temporary folder, so data tests and training
/// tests run without the Fashion-MNIST package and in well under a second.
public enum Fixtures {
    /// The `switchboard` executable built beside the test bundle.
    public static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("switchboard").path
    }

    public static func temporaryDirectory() -> String {
        let dir = NSTemporaryDirectory() + "switchboard-tests-\(UUID().uuidString)"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    /// An IDX file of unsigned bytes with the given dimensions.
    public static func idx(_ dims: [Int], _ bytes: [UInt8], magicType: UInt8 = 0x08) -> [UInt8] {
        var out: [UInt8] = [0, 0, magicType, UInt8(dims.count)]
        for d in dims { out += [UInt8(d >> 24 & 255), UInt8(d >> 16 & 255), UInt8(d >> 8 & 255), UInt8(d & 255)] }
        return out + bytes
    }

    public static func write(_ bytes: [UInt8], to path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    }

    /// A learnable toy problem: `count` images of side×side pixels whose class is the
    /// quadrant holding the brightest blob, plus noise. Files: train/test images/labels.
    public static func dataset(in dir: String, train: Int = 512, test: Int = 128, side: Int = 8) {
        func make(_ n: Int, _ seed: UInt64) -> ([UInt8], [UInt8]) {
            let rng = Philox(seed: seed)
            var pixels = [UInt8](repeating: 0, count: n * side * side), labels = [UInt8](repeating: 0, count: n)
            for i in 0..<n {
                let c = rng.integer(below: 4, stream: 1, index: UInt64(i))
                labels[i] = UInt8(c)
                for p in 0..<side * side {
                    let (r, col) = (p / side, p % side)
                    let inQuadrant = (r < side / 2) == (c < 2) && (col < side / 2) == (c % 2 == 0)
                    let noise = rng.uniform(stream: 2, index: UInt64(i * side * side + p)) * 120
                    pixels[i * side * side + p] = UInt8(min(255, (inQuadrant ? 120 : 0) + noise))
                }
            }
            return (pixels, labels)
        }
        let (tx, ty) = make(train, 1), (vx, vy) = make(test, 2)
        write(idx([train, side, side], tx), to: "\(dir)/train-images")
        write(idx([train], ty), to: "\(dir)/train-labels")
        write(idx([test, side, side], vx), to: "\(dir)/test-images")
        write(idx([test], vy), to: "\(dir)/test-labels")
    }

    /// The toy job over `dataset(in:)`, with `model` as its network and `settings` applied by
    /// name: `"train.epochs": "3"` sets a key (TOML text; added, with its section, where
    /// missing), `"data.train_images": nil` removes one. `extra` is appended as it is.
    public static func job(dir: String, model: ToyModel = .residual, settings: KeyValuePairs<String, String?> = [:],
                           extra: String = "") -> String {
        var text = """
            [run]
            name = "toy"
            seed = 5
            output = "\(dir)/runs"
            [data]
            dir = "\(dir)"
            train_images = "train-images"
            train_labels = "train-labels"
            test_images = "test-images"
            test_labels = "test-labels"
            classes = 4
            \(model.sections)
            [train]
            epochs = 2
            batch_size = 48
            eval_batch_size = 50
            label_smoothing = 0.1
            threads = 1
            log_every = 5
            [optimizer]
            lr = 3e-3
            clip_norm = 1.0
            [schedule]
            kind = "cosine"
            warmup_steps = 4

            """
        for (path, value) in settings { text = set(path, value, in: text) }
        return text + extra
    }

    /// `text` (a job file) with `section.key` set to `value` (TOML text), or removed for nil.
    public static func set(_ path: String, _ value: String?, in text: String) -> String {
        let parts = path.split(separator: ".", maxSplits: 1).map(String.init)
        precondition(parts.count == 2, "a setting is section.key: \(path)")
        let (section, key) = (parts[0], parts[1])
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let header = lines.firstIndex(of: "[\(section)]") else {
            return value.map { text + "[\(section)]\n\(key) = \($0)\n" } ?? text
        }
        let end = lines[(header + 1)...].firstIndex { $0.hasPrefix("[") } ?? lines.endIndex
        if let at = lines[(header + 1)..<end].firstIndex(where: { $0.hasPrefix("\(key) = ") }) {
            if let value { lines[at] = "\(key) = \(value)" } else { lines.remove(at: at) }
        } else if let value {
            lines.insert("\(key) = \(value)", at: header + 1)
        }
        return lines.joined(separator: "\n")
    }

    /// A tool on `PATH` (`mpirun`, `h5ls`), or nil when none is installed.
    public static func tool(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

/// The network of a toy job: its `[model]` section, and `[moe]` for a mixture of experts.
public enum ToyModel: Sendable {
    /// A residual MLP: width 32, two blocks of expansion 2, dropout 0.1.
    case residual
    /// A mixture of experts of `width` and `depth` whose `[moe]` section is `moe`
    /// ("experts = 4\nhidden = 8").
    case moe(width: Int = 16, depth: Int = 2, _ moe: String)
    /// Any `[model]` section body.
    case custom(String)

    /// A fast feedforward tree in each of two blocks, with every training term.
    public static let fff = ToyModel.custom(
        "kind = \"residual\"\nwidth = 16\ndepth = 2\nblock = \"fff\"\n"
        + "[fff]\ndepth = 2\nleaf_width = 4\nhardening = 0.1\nload_balance = 0.05\nmaster_leaf = true")
    /// Wide stream, narrow bottleneck, the lift frozen at its initialization.
    public static let hourglass = ToyModel.custom("kind = \"residual\"\nwidth = 32\ndepth = 2\nblock = \"hourglass\"\nbottleneck = 8")
    /// Low-rank block matrices and depth-scaled RMSNorm.
    public static let lowRank = ToyModel.custom(
        "kind = \"residual\"\nwidth = 32\ndepth = 3\nhidden = 48\nrank = 6\nnorm = \"rmsnorm\"\ndepth_scaled_norm = true")
    /// σ-MoE: sigmoid router, ReLU experts without bias, entropy regularization, expert
    /// dropout, the paper's initialization.
    public static let sigmaMoE = ToyModel.moe(
        "experts = 4\ntop_k = 2\nhidden = 8\nrouter = \"sigmoid\"\nactivation = \"relu\"\nbias = false\nbalance_loss = 0\n"
        + "entropy_loss = 0.01\nexpert_dropout = 0.1\ninit = \"sigma_moe\"")

    var sections: String {
        switch self {
        case .residual: "[model]\nkind = \"residual\"\nwidth = 32\ndepth = 2\nexpansion = 2\ndropout = 0.1"
        case let .moe(width, depth, moe): "[model]\nkind = \"moe\"\nwidth = \(width)\ndepth = \(depth)\n[moe]\n\(moe)"
        case .custom(let body): "[model]\n\(body)"
        }
    }
}

/// Runs a program and collects its output (stdout and stderr together), killing it after a
/// deadline: a hang (the failure the multi-rank tests guard against) must fail the test,
/// not stall CI.
public enum Launcher {
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                           deadline: Double = 30) throws -> (code: Int32, output: String, seconds: Double) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        let start = Date()
        try p.run()
        DispatchQueue.global().asyncAfter(deadline: .now() + deadline) { if p.isRunning { p.terminate() } }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text, Date().timeIntervalSince(start))
    }

    /// The same, with standard output and standard error apart, and whether a signal (or the
    /// deadline, which kills with SIGKILL: `train` takes SIGTERM as a request to save and
    /// stop) ended it. With `dataLimit`, the program runs under that resource limit on its
    /// heap (`ulimit -d`), so an allocation beyond it fails (and kills it) instead of passing.
    public static func runApart(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                                directory: String? = nil, deadline: Double = 30, dataLimit: Int? = nil)
        throws -> (code: Int32, out: String, err: String, signaled: Bool) {
        let p = Process()
        if let dataLimit {
            p.executableURL = URL(fileURLWithPath: "/bin/sh")
            p.arguments = ["-c", "ulimit -d \(dataLimit / 1024) && exec \"$0\" \"$@\"", executable] + arguments
        } else {
            p.executableURL = URL(fileURLWithPath: executable)
            p.arguments = arguments
        }
        p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let pid = p.processIdentifier
        DispatchQueue.global().asyncAfter(deadline: .now() + deadline) { if p.isRunning { kill(pid, SIGKILL) } }
        // Read both pipes at once: a program that fills one while the other is read would stall.
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box(), group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async { errBox.data = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errBox.data, as: UTF8.self),
                p.terminationReason == .uncaughtSignal)
    }
}

extension Launcher {
    /// `run` for a program that leaves daemons behind (`cluster/slurm/harness.sh up`):
    /// Foundation's `Process.waitUntilExit` returns only once every process the child
    /// started has ended, so this spawns and waits for the child alone.
    public static func runLeavingDaemons(_ executable: String, _ arguments: [String], environment: [String: String] = [:],
                                         deadline: Double = 30) throws -> (code: Int32, output: String) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw POSIXError(.EMFILE) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addclose(&actions, fds[1])
        let env = ProcessInfo.processInfo.environment.merging(environment) { $1 }.map { "\($0.key)=\($0.value)" }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup($0) } + [nil]
        defer { for p in argv + envp { free(p) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        close(fds[1])
        guard spawned == 0 else { close(fds[0]); throw POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EINVAL) }
        final class Reaped: @unchecked Sendable { var done = false }
        let reaped = Reaped(), child = pid
        DispatchQueue.global().asyncAfter(deadline: .now() + deadline) { if !reaped.done { kill(child, SIGKILL) } }
        let output = FileHandle(fileDescriptor: fds[0], closeOnDealloc: true).readDataToEndOfFile()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped.done = true
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, String(decoding: output, as: UTF8.self))
    }
}
