import Foundation
import ThinKVSim

enum CalibrateCommand: Subcommand {
    static let spec = CommandSpec(
        name: "calibrate",
        abstract: "calibrate ThinKV's thought classifier (L*, θ1, θ2) from the sparsity densities of traces",
        positionals: [("trace...", "thinkv-trace HDF5 files of one model")],
        options: [
            OptionDefinition("output", short: "o", value: "FILE", help: "write the thresholds and diagnostics as JSON (e.g. configs/thinkv-<model>.json)"),
            OptionDefinition("layers-count", value: "N", help: "|L*|: tri-modal layers to average", default: "4"),
            OptionDefinition("tau", value: "N", help: "refresh interval τ written into the file, in decode steps", default: "128"),
            OptionDefinition("steps", value: "N", help: "use the first N decode steps of each trace", default: "all"),
            OptionDefinition("min-prominence", value: "R", help: "keep a density mode only if its prominence is at least R × the peak density",
                             default: "0.05"),
            OptionDefinition("threads", value: "N", help: "worker threads", default: "all cores"),
            OptionDefinition("json", help: "print the JSON written to FILE instead of the summary"),
        ],
        discussion: """
            Per recorded layer: a Gaussian kernel density estimate (Scott's bandwidth) of the per-step attention
            sparsity pooled over the traces; layers with three modes are candidates, L* is the N strongest, and
            θ1, θ2 are the valleys between the modes averaged over L*. When no layer is tri-modal the output
            says so and a documented fallback is used (docs/thinkv.md, "Thought decomposition").

            example:
              thinkv-sim calibrate traces/sample-synthetic.h5 -o configs/thinkv-synthetic.json
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let paths = arguments.positionals
        guard let output = arguments.value("output") else { throw UsageError("missing -o FILE (where to write the thresholds)") }
        var options = CalibrationOptions()
        options.layerCount = try arguments.int("layers-count", default: 4, min: 1)!
        options.refreshInterval = try arguments.int("tau", default: 128, min: 1)!
        if let raw = arguments.value("min-prominence") {
            guard let r = Double(raw), r >= 0, r < 1 else { throw UsageError("--min-prominence must be a number in [0, 1), got '\(raw)'") }
            options.minRelativeProminence = r
        }
        let steps = try arguments.int("steps", min: 1)
        let threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        // Refuse a bad output path (an input under any name, a missing directory, one another
        // process is writing) before the attention pass, not after it.
        let claim = try OutputClaim([output], protecting: paths)
        defer { claim.release() }

        let calibration = try ThoughtCalibration.calibrate(traces: paths, options: options, maxSteps: steps, threads: threads,
                                                           progress: TerminalProgress(label: "calibrate"))
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
