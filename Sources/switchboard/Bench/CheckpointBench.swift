import Cluster
import Errors
import Foundation
import Kernels
import Storage
import Training

/// `bench W5` (docs/BENCHMARKS.md): saves the W5 model (100.7 M parameters, 4096 inputs) with its
/// AdamW state as a checkpoint, durable (fsync) before the clock stops, and loads it back;
/// beside them, in the same run and folder, a plain `write` + `fsync` of as many bytes to one
/// file and a plain `read` of it. Before every read, the files' pages are dropped from the
/// page cache (`posix_fadvise`), so both reads come from the disk, as a restarted job's do.
/// Repetitions alternate the four; medians are reported.
struct CheckpointBench {
    let directory: String
    let repeats: Int
    /// Leave the last checkpoint in place (for `inspect` on a 100 M-parameter checkpoint).
    let keep: Bool

    func run() throws {
        let comm = try MPIWorld.start()
        let threads = ProcessInfo.processInfo.activeProcessorCount
        BLAS.setThreads(threads)
        let config = try Workload.w5.config(dataDir: "(synthetic)", epochs: 1)
        // The model needs a dataset to exist; W5 never trains, so a small synthetic one.
        let data = Dataset(features: Tensor(shape: [256, 4096]), labels: [Int32](repeating: 0, count: 256), classes: 10)
        let trainer = try Trainer(config: config, comm: comm, train: data, test: data)
        let store = trainer.model.store
        let states = trainer.optimizer.state
        // Its sizes below are the arena's: W5 has no frozen parameters, and on one process the
        // optimizer state covers the whole arena (on several, a rank holds its shard only).
        precondition(store.count == store.trainableCount, "W5's model has no frozen parameters")
        guard comm.size == 1 else { throw ConfigError("bench W5 runs on one process, not under mpirun -np \(comm.size)") }
        // Optimizer state as big and as incompressible as real state.
        for s in states { s.values.data.update(from: store.values.data, count: store.count) }
        let floats = store.count * (1 + states.count)
        let bytes = Double(floats * 4)
        try DurableFiles.makeFolder(directory)
        print("switchboard \(Switchboard.version) bench W5: \(store.count.formatted()) parameters + AdamW m, v = "
              + "\(fixed(bytes / 1e9, 3)) GB; folder \(directory); \(repeats) repetitions")
        let buffers = [store.values.data] + states.map(\.values.data)
        let destinations = [store.grads.data] + states.map(\.values.data)
        var write: [Double] = [], read: [Double] = [], save: [Double] = [], load: [Double] = []
        let plain = "\(directory)/plain-write.bin"
        let run = "\(directory)/run"
        for r in 0..<repeats {
            write.append(bytes / (try time { try Self.writeAndSync(plain, buffers, count: store.count) }))
            DurableFiles.evictFromCache(plain)
            read.append(bytes / (try time { try Self.read(plain, into: destinations, count: store.count) }))
            try DurableFiles.remove(plain)
            // The plain read overwrote m and v with the parameters' bytes: the same as before.

            try DurableFiles.remove(run)
            try DurableFiles.makeFolder(run)
            var path: String?
            save.append(bytes / (try time { path = try trainer.saveCheckpoint(in: run, keepLast: 1, threads: threads) }))
            guard let path else { continue }
            for f in try FileManager.default.contentsOfDirectory(atPath: path) { DurableFiles.evictFromCache("\(path)/\(f)") }
            load.append(bytes / (try time { _ = try trainer.loadCheckpoint(path) }))
            print("  repetition \(r + 1): write+fsync \(gbs(write.last!)), read \(gbs(read.last!)), "
                  + "save \(gbs(save.last!)), load \(gbs(load.last!))")
        }
        if keep { print("kept the checkpoint: \(run)/\(CheckpointFolder.name(step: 0))") } else { try DurableFiles.remove(run) }
        let w = median(write), rd = median(read), s = median(save), l = median(load)
        print("")
        print("save: \(gbs(s)) against plain write + fsync \(gbs(w)) → fraction \(fixed(s / w, 3))")
        print("load: \(gbs(l)) against plain read \(gbs(rd)) → fraction \(fixed(l / rd, 3))")
    }


    func gbs(_ rate: Double) -> String { "\(fixed(rate / 1e9, 3)) GB/s" }

    func time(_ body: () throws -> Void) throws -> Double {
        let t0 = ContinuousClock.now
        try body()
        return (ContinuousClock.now - t0).seconds
    }

    /// Writes each buffer of `count` floats to one new file in 16 MiB calls, then fsyncs.
    static func writeAndSync(_ path: String, _ buffers: [UnsafeMutablePointer<Float>], count: Int) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw DiskError(path, "cannot create (\(systemMessage()))") }
        defer { close(fd) }
        for b in buffers {
            let raw = UnsafeRawPointer(b)
            var done = 0
            while done < count * 4 {
                let n = Foundation.write(fd, raw + done, min(16 << 20, count * 4 - done))
                guard n > 0 else { throw DiskError(path, failedCall("write", systemMessage())) }
                done += n
            }
        }
        guard fsync(fd) == 0 else { throw DiskError(path, failedCall("fsync", systemMessage())) }
    }

    /// Reads the file back into the buffers, in 16 MiB calls.
    static func read(_ path: String, into buffers: [UnsafeMutablePointer<Float>], count: Int) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw DiskError(path, "cannot open (\(systemMessage()))") }
        defer { close(fd) }
        for b in buffers {
            let raw = UnsafeMutableRawPointer(b)
            var done = 0
            while done < count * 4 {
                let n = Foundation.read(fd, raw + done, min(16 << 20, count * 4 - done))
                guard n > 0 else { throw DiskError(path, failedCall("read", systemMessage())) }
                done += n
            }
        }
    }
}
