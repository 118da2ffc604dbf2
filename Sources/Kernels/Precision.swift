/// The number format of a model's matrix products: fp32, or bf16 inputs with fp32
/// accumulation and output (weights, activations and output gradients rounded to bf16 just
/// before the product; everything else stays fp32).
///
/// bf16 runs one of two ways, with the same inputs: oneDNN's bf16 matmul where oneDNN has one
/// (`bf16`: natively with AVX512-BF16 or AMX-BF16, by oneDNN's own emulation on other AVX-512
/// CPUs), or, below AVX-512, the emulated path (`bf16Emulated`): the inputs are rounded to bf16
/// exactly as for oneDNN, held as the fp32 numbers they equal, and multiplied by the fp32
/// library. A product of two bf16 values is exact in fp32 (8 + 8 significant bits) unless it
/// falls below fp32's normal range (2⁻¹²⁶), which the native instruction flushes to zero; so
/// the two differ only in the order of the fp32 sums, as two thread counts do, and in such
/// vanishing products.
public enum Precision: String, Sendable, CaseIterable, CustomStringConvertible {
    case fp32
    case bf16
    case bf16Emulated = "bf16 emulated"

    /// What a job may ask for (`[train] precision`, `--precision`); `bf16Emulated` is how this
    /// CPU runs bf16 (`onThisCPU`), not a choice of its own.
    public static let requestable: [Precision] = [.fp32, .bf16]

    public var description: String { rawValue }

    /// Whether the products' inputs are rounded to bf16.
    public var roundsToBFloat16: Bool { self != .fp32 }

    /// How this CPU runs the products of a job that asks for `self`: bf16 on oneDNN from
    /// AVX-512 on, emulated below it (oneDNN 2.6 has no bf16 matmul there). A function of the
    /// CPU as oneDNN sees it (after ONEDNN_MAX_CPU_ISA), so a run resumes bitwise on the machine.
    public var onThisCPU: Precision {
        self == .bf16 && !OneDNN.supportsBFloat16 ? .bf16Emulated : self
    }
}
