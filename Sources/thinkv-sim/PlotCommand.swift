import Foundation
import ThinKVSim

enum PlotCommand: Subcommand {
    static let spec = CommandSpec(
        name: "plot",
        abstract:
            "draw SVG figures from a sweep's results CSV: fidelity vs budget and bytes, KV bytes over steps, thought "
            + "timeline",
        positionals: [("results.csv", "results of 'thinkv-sim sweep' (or 'merge')")],
        options: [
            OptionDefinition(
                "output", short: "o", value: "DIR",
                help: "directory for the SVG "
                    + "files", default: "the CSV's directory"),
            OptionDefinition("log-bytes", help: "logarithmic byte axes (powers of two; the default)"),
            OptionDefinition("linear-bytes", help: "linear byte axes"),
            OptionDefinition(
                "metric", value: PlotMetric.allCases.map(\.rawValue).joined(separator: "|") + "[,...]",
                help: "fidelity metric(s) of the figures", default: "kl,output_error,mass_recall"),
            OptionDefinition(
                "budget-labels", help: "write each point's budget (or memory target) beside it in the all-traces figure"
            ),
            OptionDefinition(
                "format", value: "svg|all",
                help: "svg only, or also PDF and PNG through rsvg-convert (all: when it is installed)", default: "all"),
            OptionDefinition(
                "bytes", value: "mean|peak", help: "KV bytes summary fidelity is plotted against", default: "mean"),
            OptionDefinition(
                "budget", value: "N", help: "budget of the runs in the KV-over-steps figure",
                default: "the middle budget"),
            OptionDefinition(
                "threads", value: "N", help: "worker threads for a sparsity pass over a trace", default: "all cores")
        ],
        discussion: """
            Over all traces: all-traces.fidelity-bytes.svg (x: KV as % of each trace's full cache; per policy
            and budget the mean over traces, each trace's point, a 95 % interval from three traces on) and,
            for a sweep with kv_percent, all-traces.equal-memory.svg (bar groups per memory target). PDF and PNG
            beside each SVG when rsvg-convert is installed (apt-get install librsvg2-bin). docs/plots.md.

            Per trace: <trace>.fidelity-budget.svg, <trace>.fidelity-bytes.svg, <trace>.kv-steps.svg (needs
            per-step CSVs: step_csv_dir in the sweep config) and <trace>.thoughts.svg (labels from the trace's
            /tokens/thought; sparsity from a per-step CSV, else computed from the trace). Paths in the CSV are
            resolved from the working directory, then from the CSV's directory.

            example:
              thinkv-sim plot out/budget-sweep.csv -o out/ --log-bytes
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let path = arguments.positionals[0]
        let beside = (path as NSString).deletingLastPathComponent
        var options = PlotOptions(outputDirectory: arguments.value("output") ?? (beside.isEmpty ? "." : beside))
        if arguments.flag("log-bytes") && arguments.flag("linear-bytes") {
            throw UsageError("--log-bytes and --linear-bytes exclude each other")
        }
        options.logBytes = !arguments.flag("linear-bytes")
        if let raw = arguments.value("metric") {
            options.metrics = try CommaList.items(raw, of: "--metric", error: UsageError.init).map { name in
                guard let metric = PlotMetric(rawValue: String(name)) else {
                    throw UsageError(
                        "--metric must be one of \(PlotMetric.allCases.map(\.rawValue).joined(separator: ", ")), got "
                            + "'\(name)'"
                    )
                }
                return metric
            }
        }
        options.budgetLabels = arguments.flag("budget-labels")
        switch arguments.value("format") ?? "all" {
        case "svg": options.converter = nil
        case "all": options.converter = Plotter.findConverter()
        case let other: throw UsageError("--format must be svg or all, got '\(other)'")
        }
        switch arguments.value("bytes") ?? "mean" {
        case "mean": options.bytesColumn = "kv_bytes_mean"
        case "peak": options.bytesColumn = "kv_bytes_peak"
        case let other: throw UsageError("--bytes must be mean or peak, got '\(other)'")
        }
        options.budget = try arguments.int("budget", min: 1).map(Double.init)
        options.threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        let outcome = try Plotter.plot(results: path, options: options)
        for note in outcome.notes { printError("thinkv-sim plot: note: \(note)") }
        for file in outcome.files { print(file) }
    }
}
