import Foundation
import Layers
import Storage

/// The memory one rank of a job needs, estimated before the model is built: the parameters
/// and their gradients, the optimizer state, the layers' buffers for a rank's rows, the
/// training data held in memory, and the runtime (libraries, OpenBLAS's and MPI's buffers).
/// A job whose model would not fit is refused before anything is allocated; every run
/// prints the estimate on its `model:` line, and the program prints the measured peak at the
/// end, so the two can be compared (a test holds them within a stated margin).
public struct MemoryEstimate: Sendable {
    public var parameters: Double
    public var optimizer: Double
    public var buffers: Double
    public var data: Double
    /// What a process holds besides all of the above: Swift, OpenMPI and HDF5, and OpenBLAS's
    /// buffers per thread. Fitted at 2 threads, where the estimate came within 10% of the
    /// measured peak on Fashion-MNIST jobs from 0.1 M to 18 M parameters, dense and MoE.
    public var runtime: Double

    /// Bytes in all.
    public var total: Double { parameters + optimizer + buffers + data + runtime }
    /// Bytes still to be allocated once the data is loaded.
    public var model: Double { parameters + optimizer + buffers }

    /// The estimate for `config` on a rank that holds `maxRows` rows per pass, with the
    /// training and test data already loaded.
    public init(config: JobConfig, train: Dataset, test: Dataset, maxRows: Int, ranks: Int, threads: Int) {
        let size = config.model.size(inputs: train.width, classes: config.data.classes, maxRows: maxRows,
                                     precision: config.train.products, ranks: ranks, threads: threads,
                                     movesExperts: config.parallel.balanceExperts,
                                     updatesExpertsInBackward: config.optimizer.updateInBackward, frozen: config.frozen,
                                     trainingRows: config.train.passRows(ranks: ranks))
        if config.parallel.shardParameters && ranks > 1 {
            // Each rank keeps 1/P of the synced values and gradients; beyond that it holds the
            // values of up to three units (the one running, the next one's gather, and the
            // last one, kept whole after an evaluation) and the gradients of one, or all the
            // gradients where a step's passes add them up, and the ring's receive buffer. At
            // the start every value is written whole once (initialized or loaded) before the
            // rank gives back what it does not own: the larger of the two.
            let others = size.held - size.synced, shard = (size.synced / Double(ranks)).rounded(.up)
            let accumulates = config.train.passRows(ranks: ranks) < config.train.share(ranks: ranks)
            let unit = size.largestSyncedLayer
            let values = others + shard + 3 * unit
            let grads = accumulates ? size.held - size.heldFrozen : others - size.heldFrozen + shard + unit
            parameters = 4 * max(values + grads + unit / Double(ranks), size.held)
        } else {
            parameters = 4 * size.storeFloats                                 // values and gradients
        }
        // State for what this rank updates (ZeRO-1), and the scratch a checkpoint's save or
        // load gathers one sharded parameter's state in.
        optimizer = 4 * size.updatedPerRank * (config.optimizer.kind == .adamw ? 2 : 1) + 4 * size.largestShardedParameter
        // The batch and its logits' gradient, evaluation's own batch, the epoch's order.
        let trainer = Double(maxRows) * Double(2 * train.width + config.data.classes) + Double(train.count)
        // bf16 values take 2 bytes, or 4 where they are held widened (emulated bf16).
        let bf16Bytes: Double
        switch config.train.products { case .fp32: bf16Bytes = 0; case .bf16: bf16Bytes = 2; case .bf16Emulated: bf16Bytes = 4 }
        buffers = 4 * (size.buffers + trainer) + bf16Bytes * size.bf16Values
        // The training set is read first, then the test set: the peak is one of the two loads.
        data = Double(max(train.heldBytes + train.loadingBytes, train.heldBytes + test.heldBytes + test.loadingBytes))
        runtime = 40e6 + 10e6 * Double(threads)
    }

    /// "1.25 GB": decimal units, three significant digits.
    public static func text(_ bytes: Double) -> String {
        let units = ["B", "kB", "MB", "GB", "TB", "PB"]
        var v = bytes, u = 0
        while v >= 1000 && u < units.count - 1 { v /= 1000; u += 1 }
        return u == 0 ? "\(Int(v)) B" : String(format: v < 10 ? "%.2f %@" : v < 100 ? "%.1f %@" : "%.0f %@", v, units[u])
    }

    /// Refuses a model that would not fit in `available` bytes (this rank's share of what the
    /// machine has free), naming both numbers; `source` is the job file.
    public func check(available: Double, ranksOnHost: Int, source: String) throws {
        guard model > available else { return }
        throw ConfigError("\(source): the model needs about \(Self.text(model)) of memory per rank (parameters and gradients "
                          + "\(Self.text(parameters)), optimizer state \(Self.text(optimizer)), activations \(Self.text(buffers))), "
                          + "but \(ranksOnHost == 1 ? "this machine has" : "each of the \(ranksOnHost) ranks on this host has") "
                          + "\(Self.text(available)) available; make the model or the batch smaller")
    }
}

/// The memory of this machine, as Linux reports it.
public enum MachineMemory {
    /// Bytes this process can still allocate when `ranks` processes share this host:
    /// its share of `MemAvailable`, or less where a control group (a container, a Slurm or
    /// systemd job: shared by the ranks too) or a resource limit on the process itself
    /// (`ulimit -d`, `-v`: this process's alone) says so.
    public static func available(sharedBy ranks: Int) -> Double {
        var shared = meminfo("MemAvailable") ?? Double.infinity
        for (limit, used) in cgroupLimits() { shared = min(shared, max(limit - used, 0)) }
        var bytes = shared / Double(max(ranks, 1))
        // A limit counts what the kernel counts against it: the data segment and the private
        // writable mappings (`VmData`) for `ulimit -d`, every mapping (`VmSize`) for `-v`,
        // both of which run well ahead of what is resident.
        for (resource, used) in [(RLIMIT_DATA, "VmData"), (RLIMIT_AS, "VmSize")] {
            var limit = rlimit()
            if getrlimit(__rlimit_resource_t(resource.rawValue), &limit) == 0 && limit.rlim_cur != rlim_t.max {
                bytes = min(bytes, max(Double(limit.rlim_cur) - (status(used) ?? 0), 0))
            }
        }
        return bytes
    }

    /// (limit, usage) of every memory control group above this process: cgroup v2 from its
    /// own group up to the root, and cgroup v1's memory controller.
    static func cgroupLimits() -> [(Double, Double)] {
        guard let text = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8) else { return [] }
        var found: [(Double, Double)] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            if parts[0] == "0" && parts[1].isEmpty {
                var path = String(parts[2])
                while true {
                    let group = "/sys/fs/cgroup" + (path == "/" ? "" : path)
                    if let limit = number("\(group)/memory.max") { found.append((limit, number("\(group)/memory.current") ?? 0)) }
                    guard path != "/", !path.isEmpty else { break }
                    path = (path as NSString).deletingLastPathComponent
                }
            } else if parts[1].split(separator: ",").contains("memory") {
                let group = "/sys/fs/cgroup/memory" + parts[2]
                if let limit = number("\(group)/memory.limit_in_bytes") { found.append((limit, number("\(group)/memory.usage_in_bytes") ?? 0)) }
            }
        }
        return found
    }

    /// The most resident memory this process has held so far (`VmHWM`), in bytes.
    public static var peak: Double? { status("VmHWM") }

    /// Starts `peak` over from the memory resident now (Linux: `clear_refs` 5); false where
    /// that cannot be done.
    @discardableResult
    public static func resetPeak() -> Bool {
        guard let f = fopen("/proc/self/clear_refs", "w") else { return false }
        let written = fputs("5", f) >= 0
        return fclose(f) == 0 && written
    }

    static func meminfo(_ key: String) -> Double? { field(key, in: "/proc/meminfo") }
    static func status(_ key: String) -> Double? { field(key, in: "/proc/self/status") }

    /// A "Key:   123 kB" line of a /proc file, in bytes.
    static func field(_ key: String, in path: String) -> Double? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }),
              let kib = Double(line.dropFirst(key.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") else { return nil }
        return kib * 1024
    }

    /// A file holding one number ("max" and anything else that is not a number: nil).
    static func number(_ path: String) -> Double? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}
