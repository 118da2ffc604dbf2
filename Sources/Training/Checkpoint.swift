import Cluster
import Foundation
import Kernels
import Layers
import Storage

/// Saving and loading checkpoints (docs/ARCHITECTURE.md, "Checkpoints"). Both are collective.
extension Trainer {
    /// Experts that only their owner holds (E ≥ P on several ranks).
    var expertsLocal: Bool { !ownExpertSpans.isEmpty }

    /// The ranges of this rank's arena that rank `q` updates and holds optimizer state for:
    /// its chunks of the sync's buckets (which lie alike in every rank's arena), and for this
    /// rank also the experts it owns (another rank's experts are not in this arena).
    func heldRanges(of q: Int) -> [Range<Int>] {
        q == comm.rank ? updateRanges : gradientSync.ownedRanges(of: q)
    }

    /// Saves the current state as `<run>/step-NNNNNN/` and applies retention; returns the
    /// checkpoint's path on the coordinator, nil elsewhere.
    ///
    /// 1. The coordinator makes `step-NNNNNN.tmp/` and sends every rank the save's id.
    /// 2. Each rank writes its tensors (`CheckpointPlan`) to `rank-RRRRR.h5`, closes and
    ///    fsyncs it. A parameter's optimizer state, which the ranks hold in shards (ZeRO-1),
    ///    and with `shard_parameters` its values, first travel to its writer (`StateGather`). A rank that fails throws, which aborts
    ///    every rank before any commit.
    /// 4. The tensors' checksums reach the coordinator in one sum (each is non-zero on its
    ///    writer only), which doubles as "every rank has written and synced".
    /// 5. The coordinator writes the main file (manifest, external links), fsyncs it, and
    ///    commits the folder by rename (`CheckpointFolder.commit`).
    public func saveCheckpoint(in run: String, keepLast: Int, threads: Int) throws -> String? {
        let final = "\(run)/\(CheckpointFolder.name(step: step))"
        let tmp = final + ".tmp"
        var id: [UInt8] = []
        if comm.isCoordinator {
            try DurableFiles.remove(tmp)
            try DurableFiles.makeFolder(tmp)
            id = Array("\(CheckpointFolder.name(step: step))-\(UInt64(Date().timeIntervalSince1970 * 1e6))-\(getpid())".utf8)
        }
        try comm.broadcastBytes(&id, "checkpoint start")
        let saveID = String(decoding: id, as: UTF8.self)

        let parameters = model.store.parameters
        let states = optimizer.state
        let plan = CheckpointPlan(model: model, placement: placement, ranks: comm.size, expertsLocal: expertsLocal,
                                  stateCount: states.count)
        let perParameter = 1 + states.count
        var crcs = [Double](repeating: 0, count: parameters.count * perParameter)
        let path = "\(tmp)/\(CheckpointNames.shardFile(rank: comm.rank))"
        var file: HDF5File?
        if plan.writer.contains(comm.rank) {
            file = try HDF5File.create(path)
            try file!.setAttribute("checkpoint_id", saveID)
            try file!.setAttribute("rank", String(comm.rank))
        }
        let gather = StateGather(self)
        // Every rank goes through every parameter in store order: the gathers are collective.
        for (i, p) in parameters.enumerated() {
            let writes = plan.writer[i] == comm.rank
            precondition(!writes || p.resident, "\(p.name) is written by a rank that does not hold it")
            let values = try gather.values(of: p, to: plan.writer[i])
            if writes {
                crcs[i * perParameter] = Double(try file!.writeTensor(CheckpointNames.parameter(p.name), shape: p.shape, values!))
            }
            // A frozen parameter has no optimizer state.
            for (s, state) in states.enumerated() where !p.frozen {
                let values = try gather.state(state.values, of: p, to: plan.writer[i])
                if writes {
                    crcs[i * perParameter + 1 + s] = Double(try file!.writeTensor(CheckpointNames.state(state.name, p.name), shape: p.shape,
                                                                                  values!))
                }
            }
        }
        if let file {
            try file.close()
            try DurableFiles.sync(path)
        }
        FaultInjection.checkInSave(rank: comm.rank, step: step)
        try crcs.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: $0.count, "checkpoint checksums") }
        guard comm.isCoordinator else { return nil }

        var tensors: [CheckpointManifest.Tensor] = []
        for (i, p) in parameters.enumerated() {
            let file = CheckpointNames.shardFile(rank: plan.writer[i])
            tensors.append(.init(name: CheckpointNames.parameter(p.name), file: file, shape: p.shape, checksum: UInt32(crcs[i * perParameter]),
                                 frozen: p.frozen))
            for (s, state) in states.enumerated() where !p.frozen {
                tensors.append(.init(name: CheckpointNames.state(state.name, p.name), file: file, shape: p.shape,
                                     checksum: UInt32(crcs[i * perParameter + 1 + s])))
            }
        }
        let files = Set(plan.writer).sorted().map { CheckpointNames.shardFile(rank: $0) }
        let manifest = CheckpointManifest(
            id: saveID, programVersion: Switchboard.version, created: ISO8601DateFormatter().string(from: Date()),
            position: position, rng: .init(seed: config.run.seed, dropoutStep: step, shuffleEpoch: position.epoch),
            worldSize: comm.size, threads: threads,
            placement: placement.map { p in .init(experts: p.experts, ranks: p.ranks,
                                                 expertsByRank: (0..<p.ranks).map { [p.experts(on: $0).lowerBound, p.experts(on: $0).upperBound] }) },
            optimizer: optimizer.name, optimizerSteps: optimizer.steps, config: config.resolvedTOML,
            metrics: .init(lastLoss: lastLoss, testLoss: lastEvaluation?.loss, testAccuracy: lastEvaluation?.accuracy,
                           expertTokens: lastExpertTokens),
            files: files, tensors: tensors)
        let mainPath = "\(tmp)/\(CheckpointManifest.mainFile)"
        try manifest.writeMainFile(mainPath)
        try DurableFiles.sync(mainPath)
        // A rank orphaned by its launcher's death commits nothing (the watch may not have
        // looked yet); the `.tmp` folder is removed by the next start.
        if LauncherWatch.isOrphaned { _exit(1) }
        try CheckpointFolder.commit(tmp, as: final)
        try CheckpointFolder.retain(keepLast, in: run, keep: final)
        return final
    }

    /// Writes the trained parameters as `model.h5` (`ModelFile`) at `path` on the coordinator
    /// (nil on the other ranks). Collective: an expert only its owner holds travels from there
    /// to the coordinator, one parameter at a time, so no rank ever holds them all.
    public func writeModel(to path: String?, step: Int) throws {
        let parameters = model.store.parameters
        let plan = CheckpointPlan(model: model, placement: placement, ranks: comm.size, expertsLocal: expertsLocal, stateCount: 0)
        let index = Dictionary(uniqueKeysWithValues: parameters.enumerated().map { (ObjectIdentifier($1), $0) })
        let gather = StateGather(self)
        var scratch: Tensor?
        try ModelFile.write(parameters, to: path, step: step, configTOML: config.resolvedTOML) { p in
            let i = index[ObjectIdentifier(p)]!
            // The owner of an owner-only expert is its checkpoint writer; every rank holds the
            // rest, or with the parameters in shards its chunks.
            let holder = plan.expert[i] == nil ? 0 : plan.writer[i]
            if holder == 0 { return try gather.values(of: p, to: 0) }
            guard comm.isCoordinator else {
                try comm.gatherRuns(holder == comm.rank ? [(UnsafePointer(p.value), p.count)] : [], root: 0,
                                    places: { _ in [] }, "model.h5: experts", p.name)
                return nil
            }
            if (scratch?.count ?? 0) < p.count { scratch = Tensor(shape: [p.count]) }
            let into = scratch!.data
            try comm.gatherRuns([], root: 0, places: { $0 == holder ? [(into, p.count)] : [] }, "model.h5: experts", p.name)
            return UnsafePointer(into)
        }
    }

    /// Where training stands: the next batch is `batch` of `epoch` (every epoch has the same
    /// number of batches, so the step count says it).
    var position: CheckpointManifest.Position {
        let perEpoch = order.batchesPerEpoch
        return .init(step: step, epoch: step / perEpoch, batch: step % perEpoch,
                     sampleCursor: (step % perEpoch) * config.train.batchSize)
    }

    /// Loads the checkpoint at `path` (its folder or main file) on every rank: all ranks
    /// succeed, or all throw the same `CheckpointError` with the first failing rank's reason.
    public func loadCheckpoint(_ path: String) throws -> CheckpointManifest {
        var result: Result<CheckpointManifest, any Error>
        do { result = .success(try readCheckpoint(path)) } catch { result = .failure(error) }
        var failed = [0.0]
        if case .failure = result { failed[0] = 1 }
        try comm.allreduceSum(&failed, count: 1, "checkpoint load")
        if failed[0] == 0, case .success(let manifest) = result { return manifest }
        // Every rank's reason, on the coordinator, in rank order; the first one is reported.
        var mine = ""
        let folder = Self.folder(of: path)
        if case .failure(let error) = result {
            // Name the file inside the checkpoint where it is not the checkpoint itself.
            if let e = error as? CheckpointError {
                mine = e.path == folder ? e.problem : "\(e.path.hasPrefix(folder + "/") ? String(e.path.dropFirst(folder.count + 1)) : e.path): \(e.problem)"
            } else {
                mine = "\(error)"
            }
        }
        let width = 2048
        let padded = Array(mine.utf8.prefix(width)) + [UInt8](repeating: 0, count: max(0, width - mine.utf8.count))
        let all = try comm.gatherBytes(padded, "checkpoint load")
        var reason = "another rank could not load it"
        if let all {
            for r in 0..<comm.size {
                let text = String(decoding: all[(r * width)..<((r + 1) * width)].prefix { $0 != 0 }, as: UTF8.self)
                if !text.isEmpty { reason = comm.size > 1 ? "rank \(r): \(text)" : text; break }
            }
        }
        throw CheckpointError(folder, reason)
    }

    public static func folder(of path: String) -> String { CheckpointReader.folder(of: path) }

    /// This rank's part of a load: the manifest, checked against the model as a whole; then
    /// the tensors this rank needs, every chunk checked against its Fletcher32 sum and each
    /// tensor against the manifest's checksum.
    func readCheckpoint(_ path: String) throws -> CheckpointManifest {
        let reader = try CheckpointReader(path)
        let manifest = reader.manifest
        try checkFits(manifest, reader.tensors, source: reader.mainPath)
        let parameters = model.store.parameters
        // Experts that live on their owners are read by their owners only.
        for p in parameters where p.resident {
            try reader.read(CheckpointNames.parameter(p.name), into: p.value)
        }
        // The optimizer state of what this rank updates: a parameter it holds whole is read in
        // place, one it holds part of through a scratch tensor of its size.
        let layout = optimizer.layout
        var scratch: Tensor?
        for state in optimizer.state {
            for p in parameters where !p.frozen && p.resident {
                let span = p.offset..<(p.offset + p.count)
                let pieces = layout.pieces(of: span)
                if let at = layout.run(of: span) {
                    try reader.read(CheckpointNames.state(state.name, p.name), into: state.values.data + at)
                } else if !pieces.isEmpty {
                    if (scratch?.count ?? 0) < p.count { scratch = Tensor(shape: [p.count]) }
                    try reader.read(CheckpointNames.state(state.name, p.name), into: scratch!.data)
                    for (arena, at) in pieces {
                        (state.values.data + at).update(from: scratch!.data + arena.lowerBound - p.offset, count: arena.count)
                    }
                }
            }
        }
        if comm.isCoordinator { resumeWarning = reader.firstUnreachableLink() }
        try parametersWritten()
        step = manifest.position.step
        optimizer.steps = manifest.optimizerSteps
        lastLoss = manifest.metrics.lastLoss
        return manifest
    }

    /// Every way the manifest does not fit this model and job, reported at once.
    func checkFits(_ m: CheckpointManifest, _ byName: [String: CheckpointManifest.Tensor], source: String) throws {
        var problems: [String] = []
        var expected: [String: [Int]] = [:]
        for p in model.store.parameters {
            expected[CheckpointNames.parameter(p.name)] = p.shape
            if m.optimizer == optimizer.name && !p.frozen {
                for s in optimizer.state { expected[CheckpointNames.state(s.name, p.name)] = p.shape }
            }
        }
        if m.optimizer != optimizer.name { problems.append("optimizer \(m.optimizer) in the checkpoint, \(optimizer.name) in the job") }
        for (name, shape) in expected.sorted(by: { $0.key < $1.key }) {
            guard let t = byName[name] else { problems.append("\(name) is missing"); continue }
            if t.shape != shape { problems.append("\(name) has shape \(t.shape), the model \(shape)") }
        }
        for t in m.tensors where expected[t.name] == nil && m.optimizer == optimizer.name {
            problems.append("\(t.name) is not in this model")
        }
        let perEpoch = order.batchesPerEpoch
        let p = m.position
        if p.batch >= perEpoch || p.epoch * perEpoch + p.batch != p.step || p.sampleCursor != p.batch * config.train.batchSize {
            problems.append("training position \(p) does not fit \(perEpoch) batches of \(config.train.batchSize) per epoch "
                            + "(is the batch size or the dataset different?)")
        }
        if m.rng.seed != config.run.seed { problems.append("seed \(m.rng.seed) in the checkpoint, \(config.run.seed) in the job") }
        guard !problems.isEmpty else { return }
        let shown = problems.prefix(20).joined(separator: "; ")
        throw CheckpointError(source, "does not fit this job: \(shown)\(problems.count > 20 ? "; and \(problems.count - 20) more" : "")")
    }

    /// Resumes from `path`, or with `path == "auto"` from the newest checkpoint in `run` that
    /// loads, falling back to older ones with a line (through `log`, on the coordinator)
    /// saying why. Returns nil when `auto` finds no checkpoint at all.
    public func resume(_ path: String, run: String, log: (String) -> Void) throws -> CheckpointManifest? {
        let auto = path == "auto"
        var list: [UInt8] = []
        if comm.isCoordinator {
            let candidates = auto ? CheckpointFolder.list(in: run).map(\.path) : [path]
            list = Array(candidates.joined(separator: "\n").utf8)
        }
        try comm.broadcastBytes(&list, "checkpoint candidates")
        let candidates = String(decoding: list, as: UTF8.self).split(separator: "\n").map(String.init)
        var reasons: [String] = []
        for candidate in candidates {
            do {
                return try loadCheckpoint(candidate)
            } catch let e as CheckpointError where auto {
                log("checkpoint \(candidate) does not load: \(e.problem)"
                    + (candidate == candidates.last ? "" : "; trying the one before"))
                reasons.append(e.description)
            }
        }
        if candidates.isEmpty { return nil }
        throw CheckpointError(run, "no checkpoint loads (\(reasons.count) tried); the newest: \(reasons[0])")
    }
}
