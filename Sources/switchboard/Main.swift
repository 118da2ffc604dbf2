import ArgumentParser
import Cluster
import Errors
import Foundation
import Storage
import Training

@main
struct SwitchboardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "Train MLP and mixture-of-experts models on CPUs, alone or under mpirun.",
        version: Switchboard.version,
        subcommands: [TrainCommand.self, EvaluateCommand.self, PredictCommand.self, MoefyCommand.self, InspectCommand.self, ReportCommand.self, BenchCommand.self, ConvertCommand.self])

    /// Runs the command; every error becomes one line on stderr and an exit code:
    /// 2 for usage and config errors, 1 for data and runtime failures. No stack traces.
    static func main() {
        LaunchEnvironment.prepare()
        // `train` takes SIGTERM as a request to stop from its first moment: a rank signalled
        // while it is still starting (a preemption, a launcher ending the step) then stops
        // after its first step with a checkpoint, or ends with its own error, rather than
        // dying killed before anything is saved.
        // `predict` takes them too: it stops between batches and removes its partial output.
        if ["train", "predict"].contains(CommandLine.arguments.dropFirst().first) { StopRequest.install() }
        let code: Int32
        do {
            var command = try parseAsRoot()
            try command.run()
            code = 0
        } catch let e as any SwitchboardError {
            code = e.message.isEmpty ? e.exitCode : report(e.message, e.exitCode)
        } catch {
            let exit = exitCode(for: error)
            if exit == .success || error is CleanExit {
                self.exit(withError: error)   // --help, --version
            }
            // ArgumentParser's text starts "Error: " and ends with a usage hint; keep the hint.
            var text = fullMessage(for: error)
            if text.hasPrefix("Error: ") { text.removeFirst(7) }
            code = report(text, exit == .validationFailure ? 2 : 1)
        }
        MPIWorld.finish()
        Foundation.exit(code)
    }

    /// Prints the error; in a world of several ranks it names the rank and aborts them all,
    /// since the others would otherwise wait in their next collective forever.
    static func report(_ message: String, _ code: Int32) -> Int32 {
        let many = MPIWorld.size > 1
        FileHandle.standardError.write(Data("switchboard: error: \(many ? "rank \(MPIWorld.rank): " : "")\(message)\n".utf8))
        if many { MPIWorld.abort(code: code) }
        return code
    }
}
