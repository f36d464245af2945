import Foundation
import ThinKVSim

enum ValidateCommand: Subcommand {
    static let spec = CommandSpec(
        name: "validate",
        abstract: "check traces against the format (structure and every value); exit 1 on the first problem",
        positionals: [("trace...", "thinkv-trace HDF5 files")],
        options: [])

    static func run(_ arguments: ParsedArguments) throws {
        for path in arguments.positionals {
            let reader = try TraceReader(path: path)
            let progress = TerminalProgress(label: "validate")
            defer { progress.finish() }  // also on failure, so the error starts on a clean line
            try reader.checkValues { progress.update(fraction: $0, detail: path) }
            try AttentionCrossCheck.check(reader)
            progress.finish()
            let h = reader.header
            print(
                "\(path): ok (thinkv-trace v1, \(Format.printable(h.model)), \(h.numTokens) tokens, layers "
                    + "\(reader.recordedLayerIndices.map(String.init).joined(separator: ",")))"
            )
        }
    }
}
