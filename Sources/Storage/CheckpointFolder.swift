import Foundation

/// The checkpoints of one run folder: `step-NNNNNN/` folders, committed by rename from
/// `step-NNNNNN.tmp/` (docs/ARCHITECTURE.md, "Checkpoints"). A folder without a main file is not a
/// checkpoint; a `.tmp` folder is an interrupted save.
public enum CheckpointFolder {
    public static func name(step: Int) -> String { "step-" + String(format: "%06d", step) }

    /// The step a checkpoint folder's name says, or nil for anything else.
    public static func step(ofName name: String) -> Int? {
        guard name.hasPrefix("step-") else { return nil }
        let digits = name.dropFirst(5)
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber) else { return nil }
        return Int(digits)
    }

    /// Checkpoint folders in `run` (committed names, whether or not they verify), newest first.
    public static func list(in run: String) -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: run)) ?? []
        return names.compactMap { n in step(ofName: n).map { ($0, "\(run)/\(n)") } }.sorted { $0.step > $1.step }
    }

    /// Removes interrupted saves (`*.tmp` folders) left by a run that was killed; returns them.
    @discardableResult
    public static func removeOrphans(in run: String) throws -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: run)) ?? []
        let orphans = names.filter { $0.hasPrefix("step-") && $0.hasSuffix(".tmp") }.sorted()
        for o in orphans { try DurableFiles.remove("\(run)/\(o)") }
        return orphans
    }

    /// Makes `tmp` the checkpoint `final`: its contents are synced already; the folder is
    /// synced, renamed and the run folder synced. A checkpoint already at `final` (a run that
    /// went back to an older checkpoint and reached this step again) is moved aside first and
    /// removed after, so at every moment a crash leaves either of them whole.
    public static func commit(_ tmp: String, as final: String) throws {
        try DurableFiles.sync(tmp)
        let aside = final + ".replaced.tmp"
        let replacing = FileManager.default.fileExists(atPath: final)
        if replacing {
            try DurableFiles.remove(aside)
            try DurableFiles.rename(final, aside)
        }
        try DurableFiles.rename(tmp, final)
        if replacing { try DurableFiles.remove(aside) }
    }

    /// Keeps the newest `keepLast` checkpoints of `run`, and always `keep` (the one just
    /// committed, even when older ones carry higher step numbers); returns what it removed.
    @discardableResult
    public static func retain(_ keepLast: Int, in run: String, keep: String) throws -> [String] {
        guard keepLast > 0 else { return [] }
        let all = list(in: run)
        let removed = all.dropFirst(keepLast).map(\.path).filter { $0 != keep }
        for path in removed {
            // Renamed first, so a removal cut short leaves an orphan, never half a checkpoint.
            let doomed = path + ".removing.tmp"
            try DurableFiles.rename(path, doomed)
            try DurableFiles.remove(doomed)
        }
        return removed
    }
}
