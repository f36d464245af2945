import Foundation
import ThinKVSim

enum InspectCommand: Subcommand {
    static let spec = CommandSpec(
        name: "inspect",
        abstract: "describe a trace: shapes, layers, dtypes, attention sparsity, thought labels, timeline",
        positionals: [("trace", "a thinkv-trace HDF5 file")],
        options: [
            OptionDefinition("json", help: "print as JSON"),
            OptionDefinition("steps", value: "N", help: "profile sparsity over the first N decode steps only", default: "all"),
            OptionDefinition("no-sparsity", help: "skip the attention pass (structure and labels only)"),
            OptionDefinition("width", value: "N", help: "timeline width in characters", default: "80"),
            OptionDefinition("threads", value: "N", help: "worker threads", default: "all cores"),
        ])

    static func run(_ arguments: ParsedArguments) throws {
        // Options first: a usage mistake is exit 2 whatever the file.
        let steps = try arguments.int("steps", min: 1)
        let threads = try arguments.int("threads", min: 1)
        let width = try arguments.int("width", default: 80, min: 8)!
        let reader = try TraceReader(path: arguments.positionals[0])
        let profile = arguments.flag("no-sparsity") ? nil : try SparsityProfile.compute(
            reader, maxSteps: steps, threads: threads, progress: TerminalProgress(label: "inspect"))
        let summary = try TraceSummary(reader: reader, profile: profile, timelineWidth: width)
        print(arguments.flag("json") ? try ReplayReport.encodeJSON(summary) : summary.text)
    }
}
