import Foundation
import ThinKVSim

enum InspectCommand: Subcommand {
    static let spec = CommandSpec(
        name: "inspect",
        abstract: "describe a trace: shapes, layers, dtypes, attention sparsity, thought labels, timeline",
        positionals: [("trace", "a thinkv-trace HDF5 file")],
        options: [
            OptionDefinition("json", help: "print as JSON"),
            OptionDefinition(
                "steps", value: "N", help: "profile sparsity over the first N decode steps only", default: "all"),
            OptionDefinition("no-sparsity", help: "skip the attention pass (structure and labels only)"),
            OptionDefinition("width", value: "N", help: "timeline width in characters", default: "80"),
            OptionDefinition("threads", value: "N", help: "worker threads", default: "all cores"),
            OptionDefinition(
                "thoughts",
                help:
                    "thought decomposition: per-layer sparsity modes, classified timeline, accuracy against "
                    + "/tokens/thought"
            ),
            OptionDefinition(
                "calibration", value: "FILE", help: "with --thoughts: thresholds from 'thinkv-sim calibrate'",
                default: "calibrate on this trace"),
            OptionDefinition(
                "tau", value: "N", help: "with --thoughts: refresh interval τ in decode steps",
                default: "the file's, else 128"),
            OptionDefinition(
                "text",
                help: "with --thoughts: list each predicted segment with the text of its tokens "
                    + "(/tokens/text)"),
            OptionDefinition(
                "sparsity-gqa", value: "max-pool|mean-heads",
                help: "how a GQA group's query heads make one attention row for the sparsity",
                default: "the calibration's, else max-pool")
        ],
        discussion: """
            --thoughts classifies every profiled decode step as reasoning, execution or transition from its
            attention sparsity averaged over L* (docs/thinkv.md, "Thought decomposition"). With labels it prints
            the confusion matrix and token-level accuracy at τ and at τ = 1.
            """)

    static func run(_ arguments: ParsedArguments) throws {
        // Options first: a usage mistake is exit 2 whatever the file.
        let steps = try arguments.int("steps", min: 1)
        let threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        let width = try arguments.int("width", default: 80, min: 8)!
        let tau = try arguments.int("tau", min: 1)
        let thoughts = arguments.flag("thoughts")
        if !thoughts {
            if arguments.value("calibration") != nil { throw UsageError("--calibration needs --thoughts") }
            if tau != nil { throw UsageError("--tau needs --thoughts") }
            if arguments.flag("text") { throw UsageError("--text needs --thoughts") }
        }
        if thoughts && arguments.flag("no-sparsity") {
            throw UsageError("--thoughts needs the sparsity pass; drop --no-sparsity")
        }
        var gqa = GQASparsity.maxPool
        if let raw = arguments.value("sparsity-gqa") {
            guard let chosen = GQASparsity(rawValue: raw) else {
                throw UsageError(
                    "--sparsity-gqa must be one of \(GQASparsity.allCases.map(\.rawValue).joined(separator: ", ")), "
                        + "got '\(raw)'"
                )
            }
            gqa = chosen
        } else if thoughts, let file = arguments.value("calibration") {
            gqa = try ThoughtThresholds.load(path: file).gqa  // measure sparsity as the thresholds were calibrated
        }
        let reader = try TraceReader(path: arguments.positionals[0])
        let profile =
            arguments.flag("no-sparsity")
            ? nil
            : try SparsityProfile.compute(
                reader, maxSteps: steps, threads: threads, progress: TerminalProgress(label: "inspect"), gqa: gqa)
        var summary = try TraceSummary(reader: reader, profile: profile, timelineWidth: width)
        if thoughts, let profile {
            summary.thoughts = try ThoughtInspection(
                reader: reader, profile: profile, calibrationFile: arguments.value("calibration"),
                refreshInterval: tau, timelineWidth: width)
            if arguments.flag("text") {
                guard let text = try reader.readTokenText() else {
                    throw TraceError(
                        file: reader.path, object: "/tokens/text", "missing: --text shows the recorded token text")
                }
                let steps = summary.thoughts!.steps
                summary.thoughts?.segmentTexts = ThoughtInspection.segmentTexts(
                    steps: steps, tokenText: text, promptLength: reader.header.promptLength)
            }
        }
        print(arguments.flag("json") ? try ReplayReport.encodeJSON(summary) : summary.text)
    }
}
