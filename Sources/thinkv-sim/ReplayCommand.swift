import Foundation
import ThinKVSim

enum ReplayCommand: Subcommand {
    static let spec = CommandSpec(
        name: "replay",
        abstract: "replay a trace through one or more cache policies and report fidelity and memory",
        positionals: [("trace", "a thinkv-trace HDF5 file")],
        options: [
            OptionDefinition("policy", short: "p", value: "NAME[,NAME...]", help: "policies to compare (see 'thinkv-sim policies')",
                             default: "full", repeatable: true),
            OptionDefinition("layers", value: "LIST", help: "recorded layers to replay, e.g. 0,3", default: "all recorded"),
            OptionDefinition("steps", value: "N", help: "replay only the first N decode steps", default: "all"),
            OptionDefinition("topk", value: "K", help: "k of the top-k recall metric", default: "32"),
            OptionDefinition("threads", value: "N", help: "worker threads; results do not depend on it", default: "all cores"),
            OptionDefinition("paging", value: "ct|compact|none", help: "memory layout: Continuous-Thinking in-place reuse, dense compaction, or no pages", default: "ct"),
            OptionDefinition("block-size", value: "N", help: "slots per PagedAttention block", default: "per policy: 16, thinkv 8"),
            OptionDefinition("json", help: "print the report as JSON"),
            OptionDefinition("csv", value: "FILE", help: "write one row per (policy, layer, decode step) to FILE"),
            OptionDefinition("kept", value: "FILE", help: "write every compression event (kept positions) as JSON lines"),
        ],
        acceptsExtraOptions: true,
        discussion: """
            Policy parameters (--budget, --window, ...) follow the policy names and apply to every chosen
            policy that has them; 'thinkv-sim policies' lists them with defaults.

            Replay is teacher-forced: queries come from the recorded full-cache run, so errors do not compound.
            docs/metrics.md defines every reported number.

            examples:
              thinkv-sim replay traces/sample-synthetic.h5
              thinkv-sim replay traces/sample-synthetic.h5 --policy full,h2o,rkv --budget 256 --csv steps.csv
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let path = arguments.positionals[0]
        let names = listValues(arguments.all("policy"))
        let specs = try PolicySpec.specs(policies: names.isEmpty ? ["full"] : names, options: arguments.extra)
        // Every option is checked before the trace is opened: a usage mistake is exit 2 whatever the file.
        var configuration = ReplayConfiguration(policies: specs)
        configuration.layers = try parseLayerList(arguments.value("layers"))
        configuration.maxSteps = try arguments.int("steps", min: 1)
        configuration.topK = try arguments.int("topk", default: 32, min: 1)!
        configuration.threads = try arguments.int("threads", min: 1)
        if let raw = arguments.value("paging") {
            guard let mode = PagingMode(rawValue: raw) else { throw UsageError("--paging must be ct, compact or none, got '\(raw)'") }
            configuration.paging = mode
        }
        configuration.blockSize = try arguments.int("block-size", min: 1)
        let reader = try TraceReader(path: path)

        let engine = ReplayEngine(reader: reader, configuration: configuration)
        var keptWriter: KeptEventFileWriter?
        if let keptPath = arguments.value("kept") {
            try checkWritable(keptPath, inputs: [path])
            keptWriter = try KeptEventFileWriter(path: keptPath)
            engine.keptSink = keptWriter
        }
        engine.progress = TerminalProgress(label: "replay")
        let result = try engine.run()
        keptWriter?.close()
        // Notes change how results read (e.g. thresholds calibrated on the trace itself): say them
        // on stderr too, where a script that keeps only --json or the CSV still shows them.
        for note in result.notes { FileHandle.standardError.write(Data("note: \(note)\n".utf8)) }

        if let csvPath = arguments.value("csv") {
            try OutputFile.write(ReplayReport.stepCSV(result), to: csvPath, protecting: [path])
        }
        print(arguments.flag("json") ? try ReplayReport.json(result) : ReplayReport.text(result))
    }

    static func checkWritable(_ output: String, inputs: [String]) throws {
        let target = URL(fileURLWithPath: output).standardizedFileURL
        if inputs.contains(where: { URL(fileURLWithPath: $0).standardizedFileURL == target }) {
            throw UsageError("\(output): refusing to overwrite an input file")
        }
    }
}
