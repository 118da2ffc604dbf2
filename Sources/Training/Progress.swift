import Foundation

/// Progress while training. On a terminal: one live line redrawn in place (epoch, step, a
/// bar, loss, learning rate, samples/s, ETA). Otherwise (CI, mpirun, a log file): one plain
/// line every `logEvery` steps, so logs stay readable.
public final class ProgressReporter {
    public let live: Bool
    let totalSteps: Int
    let epochs: Int
    let logEvery: Int
    let start = ContinuousClock.now
    var lastDraw = ContinuousClock.now
    var windowStart = ContinuousClock.now
    var windowSamples = 0
    var lossSum = 0.0, lossCount = 0
    public private(set) var samplesPerSecond = 0.0

    /// A terminal, and not one a launcher made: OpenMPI gives ranks a pseudo-terminal even
    /// when mpirun's own output goes to a file, so under a launcher lines are plain.
    public static var outputIsInteractive: Bool {
        let launchers: [String] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"]
        let launched = launchers.contains { getenv($0) != nil }
        return isatty(STDOUT_FILENO) == 1 && !launched
    }

    public init(totalSteps: Int, epochs: Int, logEvery: Int, live: Bool = ProgressReporter.outputIsInteractive) {
        self.totalSteps = totalSteps
        self.epochs = epochs
        self.logEvery = logEvery
        self.live = live
    }

    /// Records a step; returns the mean loss and rate of the window when a log line is due.
    public func step(_ r: StepResult) -> (loss: Double, samplesPerSecond: Double)? {
        windowSamples += r.rows
        lossSum += r.loss
        lossCount += 1
        let now = ContinuousClock.now
        let due = isLoggedStep(r.step, every: logEvery, total: totalSteps)
        if due {
            let seconds = max((now - windowStart).seconds, 1e-9)
            samplesPerSecond = Double(windowSamples) / seconds
            let mean = lossSum / Double(lossCount)
            windowStart = now
            windowSamples = 0
            lossSum = 0
            lossCount = 0
            if live { draw(r, loss: mean, now: now) } else { print(line(r, loss: mean)) }
            return (mean, samplesPerSecond)
        }
        if live && (now - lastDraw).seconds > 0.1 {
            // Between log lines the bar shows the rate of the window so far.
            samplesPerSecond = Double(windowSamples) / max((now - windowStart).seconds, 1e-9)
            draw(r, loss: lossSum / Double(lossCount), now: now)
        }
        return nil
    }

    /// Prints a line that stays (an evaluation), clearing the live line first.
    public func message(_ text: String) {
        if live { print("\r\u{1B}[2K", terminator: "") }
        print(text)
        fflush(nil)
    }

    public func finish() {
        if live { print("\r\u{1B}[2K", terminator: ""); fflush(nil) }
    }

    public var elapsed: Double { (ContinuousClock.now - start).seconds }

    func eta(_ step: Int) -> String {
        guard step > 0 else { return "?" }
        return formatDuration(elapsed / Double(step) * Double(totalSteps - step))
    }

    func line(_ r: StepResult, loss: Double) -> String {
        "epoch \(r.epoch + 1)/\(epochs) step \(r.step)/\(totalSteps) loss \(fixed(loss, 4)) lr \(scientific(r.lr)) "
            + "\(Int(samplesPerSecond)) samples/s ETA \(eta(r.step))"
    }

    func draw(_ r: StepResult, loss: Double, now: ContinuousClock.Instant) {
        lastDraw = now
        let width = 24
        let filled = min(width, width * r.step / max(totalSteps, 1))
        let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
        print("\r\u{1B}[2K" + "epoch \(r.epoch + 1)/\(epochs) \(bar) \(r.step)/\(totalSteps) loss \(fixed(loss, 4)) "
              + "lr \(scientific(r.lr)) \(Int(samplesPerSecond)) samples/s ETA \(eta(r.step))", terminator: "")
        fflush(nil)
    }
}

/// Whether the 1-based step `step` gets a log line: every `every` steps and the last one.
/// The trainer uses the same rule to take the gradient norm only on those steps.
public func isLoggedStep(_ step: Int, every: Int, total: Int) -> Bool {
    step % every == 0 || step == total
}

extension Duration {
    /// The duration in seconds as a Double.
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

public func fixed(_ v: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", v) }
public func scientific(_ v: Double) -> String { String(format: "%.2e", v) }
public func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600)h\(String(format: "%02d", t / 60 % 60))m" : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
}
