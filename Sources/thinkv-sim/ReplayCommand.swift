import Foundation
import ThinKVSim

enum ReplayCommand: Subcommand {
    static let spec = CommandSpec(
        name: "replay",
        abstract: "replay a trace through one or more cache policies and report fidelity and memory",
        positionals: [("trace", "a thinkv-trace HDF5 file")],
        options: [
            OptionDefinition(
                "policy", short: "p", value: "NAME[:P=V...][,...]",
                help: "policies to compare (see 'thinkv-sim policies'), each with parameters of its own "
                    + "after ':'",
                default: "full", repeatable: true),
            OptionDefinition(
                "layers", value: "LIST", help: "recorded layers to replay, e.g. 0,3 or -1 (the last recorded)",
                default: "all recorded"),
            OptionDefinition("steps", value: "N", help: "replay only the first N decode steps", default: "all"),
            OptionDefinition(
                "topk", value: "K", help: "k of the top-k recall metric",
                default: String(TraceLimits.defaultTopK)),
            OptionDefinition(
                "metric-steps", value: "all|stride:N|random:N[:SEED]",
                help: "measure fidelity against the full-cache reference only on these decode "
                    + "steps (every N-th and the last, or N drawn at random); policies attend over "
                    + "their own caches on the others, and the report gives each mean with a 95 % "
                    + "confidence interval",
                default: "all"),
            OptionDefinition(
                "threads", value: "N", help: "worker threads; results do not depend on it", default: "all cores"),
            OptionDefinition(
                "paging", value: "ct|compact|none",
                help: "memory layout: Continuous-Thinking in-place reuse, dense compaction, or no "
                    + "pages", default: "ct"),
            OptionDefinition(
                "block-size", value: "N", help: "slots per PagedAttention block", default: "per policy: 16, thinkv 8"),
            OptionDefinition("json", help: "print the report as JSON"),
            OptionDefinition("csv", value: "FILE", help: "write one row per (policy, layer, decode step) to FILE"),
            OptionDefinition(
                "kept", value: "FILE", help: "write every compression event (kept positions) as JSON lines"),
            OptionDefinition(
                "cache-timeline", value: "FILE",
                help:
                    "write, per policy, layer and kv head, the step each position leaves the attended set and every "
                    + "quantization (JSON lines; tools/end_to_end reads it)"
            ),
            OptionDefinition(
                "shard-state", value: "FILE",
                help:
                    "also write what 'thinkv-sim merge' needs to join replays of other --layers of this trace into "
                    + "one report"
            ),
            OptionDefinition(
                "kv-percent", value: "P",
                help: "compare at equal memory: find each policy's budget whose KV is P % of the full cache"),
            OptionDefinition(
                "kv-bytes", value: "N",
                help: "as --kv-percent, with a target in bytes (all layers, metadata "
                    + "included)"),
            OptionDefinition(
                "kv-match", value: "mean|peak", help: "the KV figure --kv-percent/--kv-bytes match", default: "mean"),
            OptionDefinition(
                "kv-adapt",
                help:
                    "when a target is out of reach at a policy's compression cadence (R-KV's --divide, a press's "
                    + "--interval), run it at the largest halving of that parameter that reaches the target (the "
                    + "note says so)"
            )
        ],
        acceptsExtraOptions: true,
        discussion: """
            Policy parameters (--budget, --window, ...) follow the policy names and apply to every chosen
            policy that has them; 'thinkv-sim policies' lists them with defaults. Parameters written after a
            name, NAME:PARAM=VALUE[:PARAM=VALUE...], are that policy's alone and win over the shared ones,
            so one replay compares settings: --policy h2o:budget=64,rkv:budget=128:divide=8, or the same
            policy twice, h2o:budget=64,h2o:budget=128 (runs are told apart by their labels).

            With --kv-percent or --kv-bytes, every policy with a budget is replayed at the budget a
            bisection defines (found in one or two engine passes) whose mean (or peak) KV bytes meet the
            target within 1 point of the full cache; the
            others (full, kivi, thinkv-tbq) run as given and are marked 'not matched'. A budget is then refused,
            shared or after a name (h2o:budget=64): the target sets it. docs/metrics.md.

            Replay is teacher-forced: queries come from the recorded full-cache run, so errors do not compound.
            docs/metrics.md defines every reported number.

            examples:
              thinkv-sim replay traces/sample-synthetic.h5
              thinkv-sim replay traces/sample-synthetic.h5 --policy full,h2o,rkv --budget 256 --csv steps.csv
              thinkv-sim replay traces/sample-synthetic.h5 --policy h2o,rkv,snapkv,kivi --kv-percent 10
              thinkv-sim replay traces/sample-synthetic.h5 --policy h2o:budget=64,h2o:budget=128,rkv --budget 256
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let path = arguments.positionals[0]
        let items = try PolicyList.items(arguments.all("policy"))
        let target = try memoryTarget(arguments)
        let statistic = try memoryStatistic(arguments)
        let policies = items.isEmpty ? [PolicyItem(name: "full")] : items
        let (options, known) = (arguments.extra, spec.options.map(\.name))
        let specs =
            target == nil
            ? try PolicySpec.specs(items: policies, options: options, commandOptions: known)
            : try MemoryMatcher.specs(items: policies, options: options, commandOptions: known)
        // Every option is checked before the trace is opened: a usage mistake is exit 2 whatever the file.
        var configuration = ReplayConfiguration(policies: specs)
        let requestedLayers = try arguments.value("layers").map { try LayerSelection.parse($0, option: "--layers") }
        configuration.maxSteps = try arguments.int("steps", min: 1)
        configuration.topK = try arguments.int(
            "topk", default: TraceLimits.defaultTopK, min: 1,
            max: TraceLimits.maxTopK)!
        configuration.threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        if let raw = arguments.value("metric-steps") {
            configuration.metricSteps = try MetricStepSelection.parse(raw)
            if configuration.metricSteps != .all {
                if target != nil {
                    throw UsageError(
                        "--metric-steps \(raw) cannot be combined with a memory target yet; "
                            + "find the budgets with --metric-steps all, then replay at them")
                }
                for spec in specs {
                    if let reason = spec.type.fullReferenceNeed(spec.parameters) {
                        throw UsageError("--metric-steps \(raw): \(spec.label) \(reason); use --metric-steps all")
                    }
                }
            }
        }
        if let raw = arguments.value("paging") {
            guard let mode = PagingMode(rawValue: raw) else {
                throw UsageError("--paging must be ct, compact or none, got '\(raw)'")
            }
            configuration.paging = mode
        }
        configuration.blockSize = try arguments.int("block-size", min: 1, max: TraceLimits.maxBlockSize)
        for option in ["kept", "cache-timeline"] where target != nil && arguments.value(option) != nil {
            throw UsageError(
                "--\(option) cannot be combined with a memory target (the search replays each policy several times); "
                    + "replay at the budgets it found"
            )
        }
        // Outputs are checked and locked before the work: a missing directory, an output that is
        // the trace (or a calibration file) under another name, two outputs naming one file or
        // another replay writing the same file fails now, not after the replay.
        let inputs = [path] + specs.flatMap(\.parameters.inputFiles)
        let claim = try OutputClaim(
            ["csv", "kept", "cache-timeline", "shard-state"].map { arguments.value($0) }, protecting: inputs)
        defer { claim.release() }
        let reader = try TraceReader(path: path)
        configuration.layers = try requestedLayers.map {
            try LayerSelection.resolve($0, recorded: reader.recordedLayerIndices, option: "--layers", file: path)
        }
        // Combinations of parameters are refused now, before any policy prepares (ThinKV
        // calibrates on the trace first, which takes seconds).
        if let layer = (configuration.layers ?? reader.recordedLayerIndices).first.flatMap(reader.layerInfo) {
            for spec in specs { try spec.checkParameters(header: reader.header, layer: layer) }
        }

        if let target {
            let matcher = MemoryMatcher(
                reader: reader, configuration: configuration, target: target, statistic: statistic)
            matcher.adaptsCadence = arguments.flag("kv-adapt")
            matcher.progress = TerminalProgress(label: "replay")
            try report(matcher.run(), arguments, inputs: inputs)
            return
        }
        let engine = ReplayEngine(reader: reader, configuration: configuration)
        var keptWriter: JSONLinesFileWriter?, timelineWriter: JSONLinesFileWriter?
        if let keptPath = arguments.value("kept") {
            keptWriter = try JSONLinesFileWriter(path: keptPath, protecting: inputs)
            engine.keptSink = keptWriter
        }
        if let timelinePath = arguments.value("cache-timeline") {
            timelineWriter = try JSONLinesFileWriter(path: timelinePath, protecting: inputs)
            engine.timelineSink = timelineWriter
        }
        engine.progress = TerminalProgress(label: "replay")
        let result = try engine.run()
        try keptWriter?.close()
        try timelineWriter?.close()
        try report(result, arguments, inputs: inputs)
    }

    static func report(_ result: ReplayResult, _ arguments: ParsedArguments, inputs: [String]) throws {
        if let state = arguments.value("shard-state") {
            let reader = try TraceReader(path: result.tracePath)
            try ReplayShard(
                result, layersWithValues: result.layers.filter { reader.layerInfo($0)?.hasValues == true },
                tokenText: try reader.readTokenText()
            )
            .write(to: state, protecting: inputs)
        }
        // Notes change how results read (e.g. thresholds calibrated on the trace itself): say them
        // on stderr too, where a script that keeps only --json or the CSV still shows them (the
        // text report on a terminal already ends with them).
        if arguments.flag("json") || isatty(STDOUT_FILENO) == 0 {
            for note in result.notes { StandardError.write("note: \(note)\n") }
        }
        if let csvPath = arguments.value("csv") {
            let text = try TraceReader(path: result.tracePath).readTokenText()
            try OutputFile.write(ReplayReport.stepCSV(result, tokenText: text), to: csvPath, protecting: inputs)
        }
        print(arguments.flag("json") ? try ReplayReport.json(result) : ReplayReport.text(result))
    }

    static func memoryTarget(_ arguments: ParsedArguments) throws -> MemoryTarget? {
        func number(_ name: String) throws -> Double? {
            guard let raw = arguments.value(name) else { return nil }
            guard let v = Double(raw), v.isFinite else { throw UsageError("--\(name) must be a number, got '\(raw)'") }
            return v
        }
        let percent = try number("kv-percent"), bytes = try number("kv-bytes")
        switch (percent, bytes) {
        case (nil, nil): return nil
        case (.some, .some): throw UsageError("--kv-percent and --kv-bytes exclude each other")
        case (let p?, nil):
            guard p > 0 && p <= 100 else { throw UsageError("--kv-percent must be in (0, 100], got \(p)") }
            return .percent(p)
        case (nil, let b?):
            guard b > 0 else { throw UsageError("--kv-bytes must be positive, got \(b)") }
            return .bytes(b)
        }
    }

    static func memoryStatistic(_ arguments: ParsedArguments) throws -> MemoryStatistic {
        if arguments.flag("kv-adapt") && arguments.value("kv-percent") == nil && arguments.value("kv-bytes") == nil {
            throw UsageError("--kv-adapt needs --kv-percent or --kv-bytes")
        }
        guard let raw = arguments.value("kv-match") else { return .mean }
        guard let statistic = MemoryStatistic(rawValue: raw) else {
            throw UsageError("--kv-match must be mean or peak, got '\(raw)'")
        }
        if arguments.value("kv-percent") == nil && arguments.value("kv-bytes") == nil {
            throw UsageError("--kv-match needs --kv-percent or --kv-bytes")
        }
        return statistic
    }

}
