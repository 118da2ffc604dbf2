import Foundation

/// Learning rate as a function of the optimizer step: linear warmup from 0 over
/// `warmupSteps`, then constant, cosine or linear decay to `finalFraction · lr` at `totalSteps`.
public struct LearningRateSchedule: Sendable {
    public let base: Double
    public let kind: JobConfig.ScheduleKind
    public let warmupSteps: Int
    public let totalSteps: Int
    public let finalFraction: Double

    public init(base: Double, kind: JobConfig.ScheduleKind, warmupSteps: Int, totalSteps: Int, finalFraction: Double) {
        self.base = base
        self.kind = kind
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
        self.finalFraction = finalFraction
    }

    /// The rate for step `step` (0-based: the first update uses `rate(0)`).
    public func rate(_ step: Int) -> Double {
        if step < warmupSteps { return base * Double(step + 1) / Double(warmupSteps) }
        let span = max(totalSteps - warmupSteps, 1)
        let t = min(Double(step - warmupSteps) / Double(span), 1)
        let floor = base * finalFraction
        switch kind {
        case .constant: return base
        case .linear: return floor + (base - floor) * (1 - t)
        case .cosine: return floor + (base - floor) * 0.5 * (1 + cos(Double.pi * t))
        }
    }
}
