import Foundation
import ThinKVSim

enum CalibrateCommand: Subcommand {
    static let spec = CommandSpec(
        name: "calibrate",
        abstract: "calibrate ThinKV's thought classifier (L*, θ1, θ2) from the sparsity densities of traces",
        positionals: [("trace...", "thinkv-trace HDF5 files of one model")],
        options: [
            OptionDefinition(
                "output", short: "o", value: "FILE",
                help: "write the thresholds and diagnostics as JSON (e.g. configs/thinkv-<model>.json)"),
            OptionDefinition("layers-count", value: "N", help: "|L*|: tri-modal layers to average", default: "4"),
            OptionDefinition(
                "tau", value: "N", help: "refresh interval τ written into the file, in decode steps", default: "128"),
            OptionDefinition("steps", value: "N", help: "use the first N decode steps of each trace", default: "all"),
            OptionDefinition(
                "min-prominence", value: "R",
                help: "keep a density mode only if its prominence is at least R × the peak density",
                default: "0.05"),
            OptionDefinition(
                "kde", value: "per-prompt|pooled",
                help:
                    "one density per trace and layer (a layer must qualify on every trace; valleys averaged over "
                    + "traces), or one per layer over all traces pooled",
                default: "per-prompt"),
            OptionDefinition(
                "modes", value: "exactly-3|at-least-3",
                help: "modes a layer's density needs to be a candidate (at-least-3 uses the three most prominent)",
                default: "exactly-3"),
            OptionDefinition(
                "sparsity-gqa", value: "max-pool|mean-heads",
                help:
                    "how a GQA group's query heads make one attention row: max-pooled logits (ThinKV) or every "
                    + "head's softmax averaged",
                default: "max-pool"),
            OptionDefinition(
                "budget", value: "B",
                help:
                    "calibrate on the sparsity over thinkv's own cache at budget B (what its classifier reads), not "
                    + "the full cache's",
                default: "the full cache"),
            OptionDefinition("threads", value: "N", help: "worker threads", default: "all cores"),
            OptionDefinition("json", help: "print the JSON written to FILE instead of the summary")
        ],
        discussion: """
            Per trace and recorded layer: a Gaussian kernel density estimate (Scott's bandwidth) of the per-step
            attention sparsity; layers whose density has exactly three modes on every trace are candidates, L*
            is the N strongest, and θ1, θ2 are the valleys between the modes averaged over the traces and L*.
            --kde pooled --modes at-least-3 gives the earlier rule (one density per layer over all traces, three
            or more modes). When no layer qualifies the output says so and a documented fallback is used
            (docs/thinkv.md, "Thought decomposition").

            example:
              thinkv-sim calibrate traces/sample-synthetic.h5 -o configs/thinkv-synthetic.json
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let paths = arguments.positionals
        guard let output = arguments.value("output") else {
            throw UsageError("missing -o FILE (where to write the thresholds)")
        }
        var options = CalibrationOptions()
        options.layerCount = try arguments.int("layers-count", default: 4, min: 1)!
        options.refreshInterval = try arguments.int("tau", default: 128, min: 1)!
        if let raw = arguments.value("min-prominence") {
            guard let r = Double(raw), r >= 0, r < 1 else {
                throw UsageError("--min-prominence must be a number in [0, 1), got '\(raw)'")
            }
            options.minRelativeProminence = r
        }
        if let raw = arguments.value("kde") {
            guard let densities = CalibrationDensities(rawValue: raw) else {
                throw UsageError("--kde must be per-prompt or pooled, got '\(raw)'")
            }
            options.densities = densities
        }
        if let raw = arguments.value("modes") {
            guard let rule = CalibrationModeRule(rawValue: raw) else {
                throw UsageError("--modes must be exactly-3 or at-least-3, got '\(raw)'")
            }
            options.modeRule = rule
        }
        if let raw = arguments.value("sparsity-gqa") {
            guard let gqa = GQASparsity(rawValue: raw) else {
                throw UsageError("--sparsity-gqa must be max-pool or mean-heads, got '\(raw)'")
            }
            options.gqa = gqa
        }
        let budget = try arguments.int("budget", min: 1)
        let steps = try arguments.int("steps", min: 1)
        if budget != nil && steps != nil { throw UsageError("--budget replays whole traces; drop --steps") }
        let threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        // Refuse a bad output path (an input under any name, a missing directory, one another
        // process is writing) before the attention pass, not after it.
        let claim = try OutputClaim([output], protecting: paths)
        defer { claim.release() }

        var calibration = try ThoughtCalibration.calibrate(
            traces: paths, options: options, maxSteps: steps, threads: threads,
            progress: TerminalProgress(label: "calibrate"))
        if let budget {
            let readers = try paths.map { try TraceReader(path: $0) }
            let parameters = try PolicyParameters(
                policy: ThinKVPolicy.name, specs: ThinKVPolicy.parameters,
                values: ["budget": String(budget), "sparsity-gqa": options.gqa.rawValue])
            calibration = try CacheDomainCalibration.calibrate(
                readers: readers, policyType: ThinKVPolicy.self, parameters: parameters,
                options: options, full: calibration,
                progress: TerminalProgress(label: "calibrate (cache domain)"))
        }
        let json = try calibration.json()
        try OutputFile.write(json, to: output, protecting: paths)
        if arguments.flag("json") {
            print(json, terminator: "")
        } else {
            print(calibration.text)
            print("wrote \(output)")
        }
    }
}
