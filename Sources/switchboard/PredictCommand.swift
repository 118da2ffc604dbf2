import ArgumentParser
import Cluster
import Errors
import Foundation
import Kernels
import Layers
import Storage
import Training

/// `switchboard predict`: a checkpoint's model on new samples, the logits and predicted class
/// of each written to an HDF5 file.
struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Run a checkpoint's model on samples and write their logits and predicted labels.",
        discussion: """
            INPUT is an IDX image file (gzip or plain) or an HDF5 file with a dataset x \
            ([samples, features…], float32 or uint8; uint8 and IDX pixels are scaled to [0, 1] as \
            in training). OUT gets logits (float32 [samples, classes]) and label (int32 [samples], \
            the argmax). Samples are read, run and written a batch at a time, so memory does not \
            grow with their number. OUT is written as OUT.partial, synced and renamed: it is \
            either absent or whole. An FFF model predicts with hard decisions (one leaf per \
            sample) unless --soft. Runs on one process.
            """)

    @Argument(help: "The checkpoint: a step-NNNNNN folder or its checkpoint.h5.") var checkpoint: String
    @Argument(help: "The samples: an IDX image file or an HDF5 file with x.") var input: String
    @Argument(help: "The HDF5 file to write.") var output: String
    @Option(help: "The dataset holding the samples in an HDF5 INPUT.") var x = "x"
    @Option(parsing: .unconditional, help: "Samples per batch (default: the config's [train] eval_batch_size).") var batch: Int?
    @Flag(help: "FFF models: the soft mixture of every leaf, as trained, instead of hard decisions.") var soft = false
    @OptionGroup var products: PrecisionOption
    @OptionGroup var threads: ThreadsOption

    func validate() throws {
        if let batch, batch < 1 { throw ValidationError("--batch \(batch): must be at least 1") }
    }

    func run() throws {
        let reader = try openCheckpoint(checkpoint)
        var config = try JobConfig.parse(reader.manifest.config, source: "\(reader.mainPath) (its config)")
        config = products.applied(to: config)
        let comm = try CommandStart.world("predict", alone: true)
        try CommandStart.threads(threads.threads, comm: comm)

        let stream = try SampleStream(input, x: x)
        try checkFeatures(stream.width, of: input, fit: reader)
        try checkOutputFolder(output)
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isFolder), isFolder.boolValue {
            throw DiskError(output, "cannot write: it is a folder")
        }
        let rows = min(batch ?? config.train.evalBatchSize, max(stream.count, 1))
        let evaluator = try Evaluator(config: config, comm: comm, inputs: stream.width, maxRows: rows)
        try evaluator.load(reader)
        let model = evaluator.model, classes = model.classes
        let hard = !soft && model.hasHardInference

        let partial = output + ".partial"
        try DurableFiles.removeStale(partial)
        let started = ContinuousClock.now
        do {
            let file = try HDF5File.create(partial)
            let logits = try HDF5RowWriter(file, "logits", rows: stream.count, columns: classes, element: .float32, chunkRows: rows)
            let labels = try HDF5RowWriter(file, "label", rows: stream.count, columns: nil, element: .int32, chunkRows: rows)
            let xs = Tensor(shape: [rows, stream.width])
            var predicted = [Int32](repeating: 0, count: rows)
            var done = 0, batchIndex = 0
            while done < stream.count {
                if StopRequest.isRequested { throw StoppedBySignal(signal: StopRequest.signal) }
                let n = try stream.read(rows, into: xs.data)
                let z = model.forward(xs.data, rows: n, context: ForwardContext(training: false, hardDecisions: hard))
                for r in 0..<n {
                    var best = 0
                    for j in 1..<classes where z[r * classes + j] > z[r * classes + best] { best = j }
                    predicted[r] = Int32(best)
                }
                try logits.write(first: done, count: n, z)
                try predicted.withUnsafeBytes { try labels.write(first: done, count: n, $0.baseAddress!) }
                done += n
                FaultInjection.checkInPredict(batch: batchIndex)
                batchIndex += 1
            }
            try file.setAttribute("checkpoint", reader.folder)
            try file.setAttribute("step", String(reader.manifest.position.step))
            try file.setAttribute("switchboard_version", Switchboard.version)
            if model.hasHardInference { try file.setAttribute("decisions", hard ? "hard" : "soft") }
            try logits.close()
            try labels.close()
            try file.close()
        } catch {
            // Nothing half-written stays: the partial file goes, whatever ended the writing.
            try? DurableFiles.remove(partial)
            if let stop = error as? StoppedBySignal {
                print("stopped by \(stop.signal == SIGINT ? "SIGINT" : "SIGTERM"); removed \(partial), \(output) not written")
            }
            throw error
        }
        do {
            try DurableFiles.sync(partial)
            try DurableFiles.rename(partial, output)
        } catch {
            try? DurableFiles.remove(partial)
            throw error
        }
        let seconds = (ContinuousClock.now - started).seconds
        let peak = MachineMemory.peak.map { "; peak memory \(MemoryEstimate.text($0))" } ?? ""
        print("wrote \(output): logits and labels of \(stream.count) samples (\(stream.width) features, \(classes) classes)"
              + "\(model.hasHardInference ? (hard ? ", hard decisions" : ", soft") : ""); \(Int(Double(stream.count) / max(seconds, 1e-9))) samples/s\(peak)")
    }
}
