import CBLAS
import CDNNL

/// The library that runs a product.
public enum MatmulLibrary: String, Sendable {
    case openBLAS = "OpenBLAS"
    case oneDNN

    /// fp32 products go to oneDNN where its instruction set on this CPU is wider than the
    /// kernels OpenBLAS picked (OpenBLAS 0.3.21 falls back to its SSE3 "Prescott" kernels on
    /// CPUs newer than it knows, where oneDNN's AVX-512 matmul runs 4–5× faster at every
    /// workload shape: docs/BENCHMARKS.md); OpenBLAS otherwise. A function of the CPU alone,
    /// so every run on a machine makes the same choice and resumes bitwise. bf16 products
    /// always run on oneDNN.
    public static let fp32: MatmulLibrary = OneDNN.isaLevel > BLAS.isaLevel ? .oneDNN : .openBLAS

    /// Whether the experts' fp32 forward `x·Wᵀ` runs on oneDNN: where it has AVX-512, which
    /// beat ExpertGEMM.c's AVX2 kernel (`gemmExpert`, used otherwise) at W2's 16–64-row
    /// products (docs/BENCHMARKS.md).
    public static let expertForwardOnOneDNN = fp32 == .oneDNN && OneDNN.isaLevel >= 4
}

extension MatmulLibrary {
    /// Which library runs which products at `precision` (as this CPU runs it: `onThisCPU`),
    /// and why, for the start of a run.
    public static func summary(_ precision: Precision) -> String {
        let dnnl = "oneDNN \(OneDNN.version) \(OneDNN.isa)"
        let fp32Library = fp32 == .oneDNN ? dnnl : "OpenBLAS \(BLAS.coreName)"
        switch precision {
        case .fp32:
            let why = fp32 == .oneDNN ? "OpenBLAS's \(BLAS.coreName) kernels are narrower on this CPU"
                : "oneDNN's \(OneDNN.isa) is no wider here"
            let experts = expertForwardOnOneDNN ? "oneDNN" : gemmExpertHasOwnKernel ? "switchboard's AVX2 kernel" : "OpenBLAS"
            return "fp32 on \(fp32Library) (\(why)); experts' forward on \(experts)"
        case .bf16:
            return "bf16 on \(dnnl) (\(OneDNN.nativeBFloat16 ? "native bf16" : "bf16 emulated")); MoE routers in fp32 on \(fp32Library)"
        case .bf16Emulated:
            return "bf16 emulated on \(fp32Library) (inputs rounded to bf16, multiplied in fp32: \(dnnl) has no bf16 matmul); "
                + "MoE routers in fp32 on \(fp32Library)"
        }
    }
}

/// oneDNN's identity on this CPU.
public enum OneDNN {
    public static var version: String { String(cString: sb_dnnl_version()) }
    /// The instruction set oneDNN runs here ("avx512_core_bf16", "avx512_core_amx", …),
    /// lowered by the DNNL_MAX_CPU_ISA environment variable when set.
    public static var isa: String { String(cString: sb_dnnl_isa_name()) }
    /// Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX) for oneDNN.
    public static var nativeBFloat16: Bool { sb_dnnl_native_bf16() != 0 }
    /// Whether oneDNN 2.6 multiplies bf16 here at all: natively, or by emulation, which it
    /// has from AVX-512 on.
    public static var supportsBFloat16: Bool { isaLevel >= 4 }
    /// 1 SSE, 2 AVX, 3 AVX2, 4 AVX-512.
    static var isaLevel: Int {
        let isa = isa
        if isa.hasPrefix("avx512") { return 4 }
        if isa.hasPrefix("avx2") { return 3 }
        return isa == "avx" ? 2 : 1
    }
}

extension BLAS {
    /// The vector width of OpenBLAS's kernels for this CPU, from their family's name (1 SSE,
    /// 2 AVX, 3 AVX2, 4 AVX-512).
    static var isaLevel: Int {
        switch coreName.lowercased() {
        case "skylakex", "cooperlake", "sapphirerapids": return 4
        case "haswell", "zen", "zen2", "zen3", "zen4", "zen5": return 3
        case "sandybridge", "bulldozer", "piledriver", "steamroller", "excavator": return 2
        default: return 1
        }
    }
}

/// One matrix product of a layer, prepared when the layer is built:
/// `C[m, n] = op(A)[m, k] · op(B)[k, n]` (`+ C` when accumulating), row-major with fixed row
/// strides, where the rows of a batch are m or k and vary per call up to the bound given
/// (checked on every call: the bound is what the layer's buffers hold).
///
/// On oneDNN it is a matmul primitive made here, never per call; on OpenBLAS a `cblas_sgemm`.
/// bf16 products take bf16 A and B (`BFloat16Pointer`) and accumulate and return fp32: on
/// oneDNN's bf16 matmul, or, emulated (`Precision.bf16Emulated`), as the fp32 product of the
/// widened values on the library given.
public final class Matmul: @unchecked Sendable {
    public enum Rows: Sendable { case m, k }

    public let precision: Precision
    public let library: MatmulLibrary
    let ta: Transpose, tb: Transpose
    let m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int
    let rowsAre: Rows
    let accumulate: Bool
    private let plan: OpaquePointer?

    public init(
        _ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int,
        rows: Rows, accumulate: Bool, precision: Precision, library: MatmulLibrary = .fp32, prepared: Bool = true
    ) {
        self.precision = precision
        self.library = precision == .bf16 ? .oneDNN : library
        self.ta = ta
        self.tb = tb
        (self.m, self.n, self.k, self.lda, self.ldb, self.ldc) = (m, n, k, lda, ldb, ldc)
        rowsAre = rows
        self.accumulate = accumulate
        // Unprepared (a model that is only counted): described, never run.
        guard prepared, self.library == .oneDNN, m > 0, n > 0, k > 0 else { plan = nil; return }
        var status: Int32 = 0
        plan = sb_matmul_create(
            precision == .bf16 ? 1 : 0, ta == .transpose ? 1 : 0, tb == .transpose ? 1 : 0, m, n, k, lda, ldb, ldc,
            accumulate ? 1 : 0, rows == .m ? 0 : 1, &status)
        // Shapes and strides come from the layer's own sizes, and a bf16 job was checked
        // against the CPU (`Precision.onThisCPU`): a refusal here is a bug, not input.
        // (`fatalError`, unlike `precondition`, stays in the -Ounchecked build.)
        if plan == nil { fatalError("oneDNN refused a \(precision) matmul \(m)×\(n)×\(k) (status \(status))") }
    }

    deinit { if let plan { sb_matmul_destroy(plan) } }

    /// oneDNN's implementation name ("gemm:jit"), or "OpenBLAS".
    public var implementation: String {
        plan.map { String(cString: sb_matmul_impl($0)) } ?? library.rawValue
    }

    /// An fp32 product over `rows` rows.
    @inline(__always)
    public func callAsFunction(rows: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>) {
        check(rows, bf16: false)
        fp32(rows: rows, a: a, b: b, c: c)
    }

    /// A bf16 product over `rows` rows.
    @inline(__always)
    public func callAsFunction(rows: Int, a: BFloat16Pointer, b: BFloat16Pointer, c: UnsafeMutablePointer<Float>) {
        check(rows, bf16: true)
        if precision == .bf16Emulated {
            if !a.widened || !b.widened { fatalError("an emulated bf16 matmul \(m)×\(n)×\(k) given bf16 values, not widened ones") }
            fp32(rows: rows, a: a.address.assumingMemoryBound(to: Float.self), b: b.address.assumingMemoryBound(to: Float.self), c: c)
            return
        }
        if a.widened || b.widened { fatalError("a bf16 matmul \(m)×\(n)×\(k) given widened values, not bf16 ones") }
        let (m, k) = rowsAre == .m ? (rows, self.k) : (self.m, rows)
        guard m > 0 else { return }
        guard let plan, k > 0 else {
            // k = 0: the product is zero; C keeps its sum or becomes zero.
            if !accumulate { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
            return
        }
        run(plan, rows, a.address, b.address, c)
    }

    @inline(__always)
    private func fp32(rows: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>) {
        let (m, k) = rowsAre == .m ? (rows, self.k) : (self.m, rows)
        guard let plan, m > 0, k > 0 else {
            gemm(ta, tb, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb, beta: accumulate ? 1 : 0, c: c, ldc: ldc)
            return
        }
        run(plan, rows, UnsafeRawPointer(a), UnsafeRawPointer(b), c)
    }

    /// The rows fit the buffers the product was prepared for, in the precision it was made for.
    @inline(__always)
    private func check(_ rows: Int, bf16: Bool) {
        if rows < 0 || rows > (rowsAre == .m ? m : k) || precision.roundsToBFloat16 != bf16 {
            fatalError("a \(precision) matmul prepared for \(rowsAre == .m ? m : k) rows called with \(rows) \(bf16 ? "bf16" : "fp32") rows")
        }
    }

    @inline(__always)
    private func run(_ plan: OpaquePointer, _ rows: Int, _ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ c: UnsafeMutablePointer<Float>) {
        let status = sb_matmul_run(plan, rows, a, b, c)
        if status != 0 { fatalError("oneDNN matmul \(m)×\(n)×\(k) failed at \(rows) rows (status \(status))") }
    }

    /// Products run on oneDNN so far by this process.
    public static var oneDNNRuns: Int { sb_matmul_runs() }
}
