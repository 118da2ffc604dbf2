import CMPI
import Errors
import Foundation
import Kernels

/// A rank's preflight report does not fit the room the gather gives it.
public struct PreflightError: SwitchboardError {
    public let rank: Int, bytes: Int, limit: Int
    public var message: String { "preflight: rank \(rank)'s report is \(bytes) bytes, more than the \(limit) the gather holds" }
    public var exitCode: Int32 { 1 }
}

/// What one rank reports about itself before training.
public struct RankReport: Codable, Sendable, Equatable {
    public var rank: Int
    public var host: String
    public var cores: Int
    /// The CPUs this process may run on (`sched_getaffinity`), as a list like "0-3,8".
    public var binding: [Int]
    public var blasThreads: Int
    public var blasCore: String
    /// The instruction set oneDNN runs on this rank's CPU ("avx512_core_bf16", "avx512_core_amx").
    public var onednnISA: String
    /// A 512³ fp32 product on the library that runs this rank's fp32 products.
    public var matmulGFLOPs: Double
    public var binaryHash: String
    public var configHash: String
}

/// The start-of-run check of a multi-rank job: every rank reports, the coordinator prints one
/// table, refuses to start when binaries or configs differ, and warns about
/// oversubscription, overlapping bindings and slow ranks.
public enum Preflight {
    /// The verdict on a set of reports: problems stop the run, warnings do not.
    public struct Verdict: Sendable, Equatable {
        public var problems: [String] = []
        public var warnings: [String] = []
    }

    /// This host's short name (up to the first dot).
    public static var hostName: String { ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "?" }

    /// This rank's report. `blasThreads` is the count the run uses.
    public static func report(rank: Int, blasThreads: Int, configText: String) -> RankReport {
        RankReport(
            rank: rank, host: hostName,
            cores: ProcessInfo.processInfo.activeProcessorCount, binding: affinity(), blasThreads: blasThreads,
            blasCore: BLAS.coreName, onednnISA: OneDNN.isa, matmulGFLOPs: matmulProbe(),
            binaryHash: hex(hashFile("/proc/self/exe")), configHash: hex(RNGStream.fnv1a(configText)))
    }

    /// Room for one rank's report in the gather: a report lists the CPUs the rank may run
    /// on, about 5 bytes each, so this holds a binding to 3000 CPUs.
    static let reportBytes = 16 << 10

    /// Gathers every rank's report on the coordinator (nil elsewhere).
    public static func gather(_ mine: RankReport, on comm: Communicator) throws -> [RankReport]? {
        let slot = reportBytes
        guard let all = try comm.gatherBytes(try encode(mine), "preflight") else { return nil }
        return try (0..<comm.size).map { r in
            let raw = all[(r * slot)..<((r + 1) * slot)].prefix { $0 != 0 }
            return try JSONDecoder().decode(RankReport.self, from: Data(raw))
        }
    }

    /// A report as it travels: JSON, padded with zeros to `reportBytes`.
    static func encode(_ report: RankReport) throws -> [UInt8] {
        let bytes = [UInt8](try JSONEncoder().encode(report))
        guard bytes.count < reportBytes else { throw PreflightError(rank: report.rank, bytes: bytes.count, limit: reportBytes) }
        return bytes + [UInt8](repeating: 0, count: reportBytes - bytes.count)
    }

    /// Judges the reports of all ranks.
    public static func judge(_ reports: [RankReport]) -> Verdict {
        var v = Verdict()
        let first = reports[0]
        let otherBinaries = reports.filter { $0.binaryHash != first.binaryHash }.map(\.rank)
        if !otherBinaries.isEmpty {
            v.problems.append("\(ranks(otherBinaries)) \(otherBinaries.count == 1 ? "runs" : "run") a different switchboard binary than rank 0 (hash \(first.binaryHash))")
        }
        let otherConfigs = reports.filter { $0.configHash != first.configHash }.map(\.rank)
        if !otherConfigs.isEmpty {
            v.problems.append("\(ranks(otherConfigs)) resolved a different config than rank 0 (job file or --set differ)")
        }
        for (host, ranks) in Dictionary(grouping: reports, by: \.host).sorted(by: { $0.key < $1.key }) {
            let threads = ranks.reduce(0) { $0 + $1.blasThreads }
            if threads > ranks[0].cores {
                v.warnings.append("host \(host): \(ranks.count) ranks × BLAS threads = \(threads) threads on \(ranks[0].cores) cores (oversubscribed: expect slow steps)")
            }
            // Explicit bindings (narrower than the machine) that share a CPU.
            for (i, a) in ranks.enumerated() where a.binding.count < a.cores {
                for b in ranks[(i + 1)...] where b.binding.count < b.cores && !Set(a.binding).isDisjoint(with: b.binding) {
                    v.warnings.append("host \(host): ranks \(a.rank) and \(b.rank) are bound to overlapping CPUs (\(cpuList(a.binding)) and \(cpuList(b.binding)))")
                }
            }
        }
        let rates = reports.map(\.matmulGFLOPs).sorted()
        let median = rates[rates.count / 2]
        for r in reports where r.matmulGFLOPs < median / 2 {
            v.warnings.append("rank \(r.rank) on \(r.host): fp32 matmul \(String(format: "%.1f", r.matmulGFLOPs)) GFLOP/s is under half the median \(String(format: "%.1f", median)) (a busy node or a mis-detected CPU?)")
        }
        return v
    }

    /// The table the coordinator prints.
    public static func table(_ reports: [RankReport]) -> String {
        let header = ["rank", "host", "cores", "bound to", "BLAS threads", "OpenBLAS core", "oneDNN ISA", "matmul GFLOP/s", "binary",
                      "config"]
        let rows = reports.map {
            [String($0.rank), $0.host, String($0.cores), cpuList($0.binding), String($0.blasThreads), $0.blasCore, $0.onednnISA,
             String(format: "%.1f", $0.matmulGFLOPs), String($0.binaryHash.prefix(8)), String($0.configHash.prefix(8))]
        }
        let widths = header.indices.map { c in ([header] + rows).map { $0[c].count }.max()! }
        func line(_ cells: [String]) -> String {
            zip(cells, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }

    // MARK: measurements

    /// The CPUs this process may run on, from `Cpus_allowed_list` in /proc/self/status.
    static func affinity() -> [Int] {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") })
        else { return [] }
        return parseCPUList(String(line.dropFirst("Cpus_allowed_list:".count)))
    }

    /// [0, 1, 2, 3, 8] for "0-3,8".
    static func parseCPUList(_ text: String) -> [Int] {
        text.split(separator: ",").flatMap { part -> [Int] in
            let ends = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if ends.count == 2, ends[0] <= ends[1] { return Array(ends[0]...ends[1]) }
            return ends.count == 1 ? ends : []
        }
    }

    /// GFLOP/s of a 512³ fp32 product at the current thread count, on the library that runs
    /// the fp32 products (`MatmulLibrary.fp32`), best of a few (~20 ms).
    static func matmulProbe() -> Double {
        let n = 512
        let a = Tensor(shape: [n, n]), c = Tensor(shape: [n, n])
        a.fill(0.5)
        let product = Matmul(.none, .none, m: n, n: n, k: n, lda: n, ldb: n, ldc: n, rows: .m, accumulate: false, precision: .fp32)
        var best = 0.0
        for _ in 0..<4 {
            let t0 = ContinuousClock.now
            product(rows: n, a: a.data, b: a.data, c: c.data)
            let d = ContinuousClock.now - t0
            let s = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
            best = max(best, 2 * Double(n * n * n) / s / 1e9)
        }
        return best
    }

    /// 64-bit FNV-1a of a file's bytes.
    static func hashFile(_ path: String) -> UInt64 {
        guard let f = fopen(path, "rb") else { return 0 }
        defer { fclose(f) }
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n == 0 { break }
            for i in 0..<n { h = (h ^ UInt64(buf[i])) &* 0x100_0000_01B3 }
        }
        return h
    }

    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    /// "rank 3" or "ranks 1, 2".
    static func ranks(_ list: [Int]) -> String {
        (list.count == 1 ? "rank " : "ranks ") + list.map(String.init).joined(separator: ", ")
    }

    /// "0-3,8" for [0, 1, 2, 3, 8].
    static func cpuList(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        while i < cpus.count {
            var j = i
            while j + 1 < cpus.count && cpus[j + 1] == cpus[j] + 1 { j += 1 }
            parts.append(i == j ? "\(cpus[i])" : "\(cpus[i])-\(cpus[j])")
            i = j + 1
        }
        return parts.isEmpty ? "?" : parts.joined(separator: ",")
    }
}
