import Cluster
import Foundation
import Kernels
import Storage
import Training

/// `bench input`: the default job's model trained from Fashion-MNIST in memory (IDX) and from
/// the same samples in HDF5, one file and 8 files, in one run: each thread count times the
/// three sources in turn, repetition by repetition, and prints samples/s and the time a step
/// waited for its rows. The HDF5 files are written to `folder` first and removed after.
struct InputBench {
    let job: String
    let data: String
    let folder: String
    let threads: [Int]
    let warmup: Int, steps: Int, repeats: Int

    func run() throws {
        let comm = try MPIWorld.start()
        // The job's [data] dir would prefix a relative path.
        let folder = self.folder.hasPrefix("/") ? self.folder : FileManager.default.currentDirectoryPath + "/" + self.folder
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer {
            for f in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] where f.hasPrefix("input-") {
                try? FileManager.default.removeItem(atPath: "\(folder)/\(f)")
            }
        }
        let images = "\(data)/train-images-idx3-ubyte.gz", labels = "\(data)/train-labels-idx1-ubyte.gz"
        if comm.isCoordinator {
            _ = try ConvertCommand.convert(images: images, labels: labels, output: "\(folder)/input-one.h5", files: nil, samplesPerFile: nil)
            _ = try ConvertCommand.convert(images: images, labels: labels, output: "\(folder)/input-many.h5", files: 8, samplesPerFile: nil)
        }
        try comm.barrier("input bench files")
        let text = try JobFile.read(job)
        let idx = ["data.dir=\"\(data)\""]
        func hdf5(_ train: String) -> [String] {
            idx + ["data.format=\"hdf5\"", "data.train_file=\(train)", "data.test_file=\"\(folder)/input-one.h5\""]
        }
        let sources = [("in memory (IDX)", idx), ("HDF5, 1 file", hdf5("\"\(folder)/input-one.h5\"")),
                       ("HDF5, 8 files", hdf5("\"\(folder)/input-many-*.h5\""))]
        let configs = try sources.map { try JobConfig.parse(text, source: job, overrides: $0.1) }
        let sets = try configs.map { try $0.data.load() }
        if comm.isCoordinator {
            print("switchboard \(Switchboard.version) bench input; \(job) on \(comm.size) rank\(comm.size == 1 ? "" : "s"); "
                  + "batch \(configs[0].train.batchSize); reading ahead: \(RowPrefetcher.isAvailableText)")
        }
        for t in threads {
            BLAS.setThreads(t)
            let trainers = try zip(configs, sets).map { try Trainer(config: $0, comm: comm, train: $1.train, test: $1.test) }
            for trainer in trainers {
                for i in 0..<warmup { _ = try trainer.trainStep(epoch: 0, batch: i % trainer.order.batchesPerEpoch) }
            }
            var rates = [[Double]](repeating: [], count: trainers.count), waits = rates
            var batch = warmup
            for _ in 0..<repeats {
                for (s, trainer) in trainers.enumerated() {
                    var waited = 0.0
                    let t0 = ContinuousClock.now
                    for k in 0..<steps { waited += try trainer.trainStep(epoch: 0, batch: (batch + k) % trainer.order.batchesPerEpoch).inputWait }
                    let seconds = (ContinuousClock.now - t0).seconds
                    rates[s].append(Double(steps * configs[s].train.batchSize) / seconds)
                    waits[s].append(1000 * waited / Double(steps))
                }
                batch += steps
            }
            guard comm.isCoordinator else { continue }
            print("")
            print("threads \(t): samples/s (median of \(repeats) × \(steps) steps, the sources in turn), ms a step spent getting its rows "
                  + "(median; rank 0)")
            let base = median(rates[0])
            for (s, source) in sources.enumerated() {
                let rate = median(rates[s])
                let wait = median(waits[s]), stepMs = 1000 * Double(configs[s].train.batchSize) / rate
                print("  \(source.0): \(Int(rate)) samples/s (\(fixed(rate / base, 3)) of in memory; runs "
                      + "\(rates[s].map { String(Int($0)) }.joined(separator: ", "))), waited \(fixed(wait, 2)) ms per step")
                // Waiting is the copy of rows read ahead (~0.1 ms here) unless the reads fall behind.
                if wait > 0.05 * stepMs {
                    print("    the reads did not keep up: a step waited \(fixed(100 * wait / stepMs, 1))% of its \(fixed(stepMs, 1)) ms for its rows")
                }
            }
        }
    }
}
