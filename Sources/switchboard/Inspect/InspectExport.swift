import ArgumentParser
import Errors
import Foundation
import Storage
import Training

/// `inspect export`: the checkpoint in another format.
struct InspectExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Write the checkpoint's tensors as a safetensors file.",
        discussion: """
            safetensors as published: an 8-byte little-endian header length, a JSON header (each \
            tensor's dtype F32, shape and data_offsets; __metadata__ with the config, step and \
            program version), then the data, little-endian, row-major. Parameters keep their \
            global names (blocks.0.fc1.weight); with --with-optimizer the state follows as \
            optimizer.m.blocks.0.fc1.weight and so on.
            """)

    @Argument(help: "The checkpoint.") var checkpoint: String
    @Option(help: "The output format (safetensors).") var format = "safetensors"
    @Argument(help: "The file to write.") var output: String
    @Flag(name: .customLong("with-optimizer"), help: "Include the optimizer state.") var withOptimizer = false
    @OptionGroup var options: InspectOptions

    func run() throws {
        guard format == "safetensors" else { throw ValidationError("--format: \(format) is not supported (safetensors is)") }
        let reader = try openCheckpoint(checkpoint)
        let m = reader.manifest
        let chosen = m.tensors.filter { withOptimizer || CheckpointNames.isParameter($0.name) }
        var entries: [(String, JSONValue)] = [("__metadata__", .object([
            ("format", .string("switchboard")), ("step", .string(String(m.position.step))),
            ("switchboard_version", .string(m.programVersion)), ("optimizer", .string(m.optimizer)), ("config", .string(m.config)),
        ]))]
        var offset = 0
        for t in chosen {
            entries.append((Self.exportName(t.name), .object([("dtype", .string("F32")), ("shape", .array(t.shape.map { .int($0) })),
                                                             ("data_offsets", .array([.int(offset), .int(offset + t.count * 4)]))])))
            offset += t.count * 4
        }
        var header = Array(JSONValue.object(entries).text.utf8)
        // Padded with spaces so the data starts 8-byte aligned, as the reference writer does.
        while (8 + header.count) % 8 != 0 { header.append(0x20) }
        let tmp = output + ".tmp"
        guard let file = fopen(tmp, "wb") else { throw DiskError(tmp, "cannot create (\(systemMessage()))") }
        var ok = true
        var length = UInt64(header.count).littleEndian
        ok = ok && fwrite(&length, 8, 1, file) == 1
        ok = ok && fwrite(header, 1, header.count, file) == header.count
        do {
            for t in chosen where ok {
                let values = try reader.values(t.name)
                // Little-endian, as on every platform this builds for (x86-64).
                ok = values.withUnsafeBytes { fwrite($0.baseAddress!, 1, $0.count, file) == $0.count }
            }
        } catch {
            // A tensor that does not read leaves no half-written file behind.
            fclose(file)
            unlink(tmp)
            throw error
        }
        ok = fclose(file) == 0 && ok
        guard ok else {
            let reason = systemMessage()
            unlink(tmp)
            throw DiskError(tmp, failedCall("write", reason))
        }
        try DurableFiles.rename(tmp, output)
        let bytes = 8 + header.count + offset
        if options.json {
            printJSON(.object([("output", .string(output)), ("tensors", .int(chosen.count)), ("bytes", .int(bytes))]))
        } else {
            print("wrote \(output): \(chosen.count) tensors, \(byteSize(bytes)) (safetensors, F32)")
        }
    }

    /// `params/x` → `x`; `optimizer/m/x` → `optimizer.m.x`.
    static func exportName(_ name: String) -> String {
        CheckpointNames.parameterName(of: name) ?? name.replacingOccurrences(of: "/", with: ".")
    }
}
