import Foundation

/// What `thinkv-sim plot` draws and where.
public struct PlotOptions: Sendable {
    public var outputDirectory: String
    /// Logarithmic byte axes (powers of two): policies span a factor of a hundred in bytes.
    public var logBytes = true
    /// Metrics of the fidelity figures (nil: KL, output error, mass recall).
    public var metrics: [PlotMetric]?
    /// Write each point's budget (or memory target) beside it in the aggregated figure.
    public var budgetLabels = false
    /// Also write PDF and PNG next to each SVG with this converter (`rsvg-convert`; nil: SVG only).
    public var converter: String?
    /// The bytes summary fidelity is plotted against: `kv_bytes_mean` or `kv_bytes_peak`.
    public var bytesColumn = "kv_bytes_mean"
    /// Budget of the runs in the bytes-over-steps figure (nil: the middle budget of the trace).
    public var budget: Double?
    /// Worker threads for a sparsity pass over a trace (only when no per-step CSV has it).
    public var threads: Int?
    /// Files the figures are drawn from, which no figure may replace (set by `Plotter`).
    public var inputs: [String] = []

    public init(outputDirectory: String) { self.outputDirectory = outputDirectory }
}

/// Writes every figure a results CSV supports, per trace:
/// - `<trace>.fidelity-budget.svg`: mass recall and output error against the budget;
/// - `<trace>.fidelity-bytes.svg`: the same against KV bytes;
/// - `<trace>.kv-steps.svg`: KV bytes over decode steps (needs per-step CSVs);
/// - `<trace>.thoughts.svg`: thought bands from the trace's `/tokens/thought` with the sparsity
///   of each step (from a per-step CSV, else computed from the trace).
public enum Plotter {
    public struct Outcome: Sendable {
        public var files: [String] = []
        /// Figures left out and why.
        public var notes: [String] = []
    }

    public static func plot(results path: String, options: PlotOptions) throws -> Outcome {
        try PlotInputKind.check(path)
        if let steps = try plotStepCSV(path, options: options) { return steps }
        let data = try PlotData(path: path)
        var options = options
        if options.metrics == nil && data.hasColumn(PlotMetric.nextTokenKL.column) {
            options.metrics = PlotMetric.endToEndOrder
        }
        var outcome = Outcome()
        guard !data.table.rows.isEmpty else {
            outcome.notes.append("\(path): no rows to plot")
            return outcome
        }
        try makeOutputDirectory(options)
        // Figures never replace what they are drawn from: the results, traces, per-step CSVs
        // and calibration files they name (under whatever name: OutputFile compares files).
        let named = Set(
            data.table.rows.flatMap { row in [SweepColumns.stepsFile, "calibration"].compactMap { data.cell(row, $0) } }
        )
        options.inputs = [path] + data.traces.compactMap(data.resolve) + named.sorted().compactMap(data.resolve)
        if let requested = options.budget {
            let budgets = Set(data.table.rows.compactMap { data.number($0, "budget") })
            guard budgets.contains(requested) else {
                throw UsageError(
                    "--budget \(Int(requested)): no run at that budget (budgets in \(path): "
                        + "\(budgets.sorted().map { String(Int($0)) }.joined(separator: ", ")))"
                )
            }
        }
        var stepCache: [String: StepBytesFigure.StepSeries] = [:]
        for trace in data.traces {
            let name = data.shortName(trace)
            let rows = data.rows(of: trace)
            for file in FidelityFigure.singleTypeCalibrations(data, rows: rows) {
                outcome.notes.append(
                    "\(name): ThinKV's thresholds in \(file) are the single-type fallback (θ1 = 0, θ2 = 1): every "
                        + "step is one thought type"
                )
            }
            let numLayers = rows.first.flatMap { data.number($0, "num_layers") }.map { Int($0) }
            func write(_ figure: Figure?, _ kind: String, missing: String) throws {
                guard let figure else {
                    outcome.notes.append("\(name): no \(kind) figure (\(missing))")
                    return
                }
                let directory = options.outputDirectory
                let file = (directory.hasSuffix("/") ? directory : directory + "/") + "\(name).\(kind).svg"
                try OutputFile.write(figure.render(), to: file, protecting: options.inputs)
                outcome.files.append(file)
                outcome.files += try convert(file, options: options)
            }
            func steps(_ file: String) throws -> StepBytesFigure.StepSeries? {
                if let cached = stepCache[file] { return cached }
                guard let resolved = data.resolve(file) else {
                    outcome.notes.append("\(name): per-step CSV \(file) not found")
                    return nil
                }
                let series = try StepBytesFigure.load(resolved, numLayers: numLayers)
                stepCache[file] = series
                return series
            }

            try write(
                FidelityFigure.againstBudget(data, trace: trace, metrics: options.metrics), "fidelity-budget",
                missing: "no run has a budget")
            try write(
                FidelityFigure.againstBytes(
                    data, trace: trace, bytesColumn: options.bytesColumn, logBytes: options.logBytes,
                    metrics: options.metrics),
                "fidelity-bytes", missing: "no \(options.bytesColumn) column")
            try write(
                StepBytesFigure.figure(
                    data, trace: trace, budget: options.budget, logBytes: options.logBytes, load: steps),
                "kv-steps", missing: "no per-step CSVs: set step_csv_dir in the sweep config")
            try write(
                try timeline(data, trace: trace, name: name, options: options, steps: steps),
                "thoughts", missing: "neither the trace nor a per-step CSV is available")
        }

        // Over all traces: one figure for the sweep.
        let metrics = options.metrics ?? PlotMetric.defaultOrder
        let aggregates: [(Figure?, String)] = [
            (
                AggregateFigure.fidelityVsBytes(
                    data, metrics: metrics, bytesColumn: options.bytesColumn, logBytes: options.logBytes,
                    budgetLabels: options.budgetLabels), "fidelity-bytes"
            ),
            (AggregateFigure.equalMemory(data, metrics: metrics), "equal-memory")
        ]
        for (figure, kind) in aggregates {
            guard let figure else { continue }
            let directory = options.outputDirectory
            let file = (directory.hasSuffix("/") ? directory : directory + "/") + "all-traces.\(kind).svg"
            try OutputFile.write(figure.render(), to: file, protecting: options.inputs)
            outcome.files.append(file)
            outcome.files += try convert(file, options: options)
        }
        return outcome
    }

    /// A `replay --csv` file: `<stem>.steps.svg` (`StepCSVFigure`); nil for any other CSV.
    static func plotStepCSV(_ path: String, options: PlotOptions) throws -> Outcome? {
        let table = try CSVTable.read(path: path).table
        guard StepCSVFigure.isStepCSV(table) else { return nil }
        var options = options
        options.inputs = [path]
        var outcome = Outcome()
        let name = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        guard
            let figure = StepCSVFigure.figure(
                table, name: name, metrics: options.metrics ?? PlotMetric.defaultOrder,
                logBytes: options.logBytes)
        else {
            outcome.notes.append("\(path): no rows to plot")
            return outcome
        }
        try makeOutputDirectory(options)
        let directory = options.outputDirectory
        let file = (directory.hasSuffix("/") ? directory : directory + "/") + "\(name).steps.svg"
        try OutputFile.write(figure.render(), to: file, protecting: options.inputs)
        outcome.files = [file] + (try convert(file, options: options))
        return outcome
    }

    /// Creates the figures' directory (and its parents) if needed.
    static func makeOutputDirectory(_ options: PlotOptions) throws {
        do {
            try FileManager.default.createDirectory(atPath: options.outputDirectory, withIntermediateDirectories: true)
        } catch {
            throw CSVError("\(options.outputDirectory): cannot create directory (\(error.localizedDescription))")
        }
    }

    /// `rsvg-convert` on PATH, if any.
    public static func findConverter() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/rsvg-convert"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// PDF and PNG (144 dpi) beside an SVG, through the converter; the files written.
    static func convert(_ svg: String, options: PlotOptions) throws -> [String] {
        guard let converter = options.converter else { return [] }
        let stem = String(svg.dropLast(4))
        var written: [String] = []
        for (format, extra) in [("pdf", [String]()), ("png", ["--dpi-x", "144", "--dpi-y", "144", "--zoom", "1.5"])] {
            let output = "\(stem).\(format)"
            try OutputFile.checkWritable(output, protecting: options.inputs)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: converter)
            process.arguments = ["--format", format] + extra + ["--output", output, svg]
            process.standardError = FileHandle.nullDevice
            do {
                try process.run()
            } catch {
                throw CSVError("\(converter): cannot run (\(error.localizedDescription))")
            }
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw CSVError("\(svg): \(converter) failed to write \(output) (exit \(process.terminationStatus))")
            }
            written.append(output)
        }
        return written
    }

    /// Labels come from the trace; sparsity from any per-step CSV of the trace (every policy
    /// records the same full-cache sparsity), else from a sparsity pass over the trace.
    static func timeline(
        _ data: PlotData, trace: String, name: String, options: PlotOptions,
        steps: (String) throws -> StepBytesFigure.StepSeries?
    ) throws -> Figure? {
        let rows = data.rows(of: trace)
        let decodeSteps = rows.first.flatMap { data.number($0, "decode_steps") }.map { Int($0) }
        var sparsity: [Double]?
        if data.hasColumn(SweepColumns.stepsFile),
            let file = rows.lazy.compactMap({ data.cell($0, SweepColumns.stepsFile) }).first(where: {
                data.resolve($0) != nil
            })
        {
            sparsity = try steps(file)?.sparsity
        }
        var labels: [Int8]?
        if let resolved = data.resolve(trace) {
            let reader = try TraceReader(path: resolved)
            let P = reader.header.promptLength
            let G = min(decodeSteps ?? reader.header.generatedLength, reader.header.generatedLength)
            labels = try reader.readThoughtLabels().map { Array($0[P..<(P + G)]) }
            if sparsity == nil {
                let layers = rows.first.flatMap { data.cell($0, "layers") }.flatMap {
                    $0 == "all" ? nil : $0.split(separator: ",").compactMap { Int($0) }
                }
                let profile = try SparsityProfile.compute(reader, layers: layers, maxSteps: G, threads: options.threads)
                sparsity = profile.averaged().map(Double.init)
            }
        }
        guard labels != nil || sparsity != nil else { return nil }
        // The thresholds ThinKV ran with (a calibration file named in the results), and the types
        // its full-cache classifier gives every step.
        var thresholds: ThoughtThresholds?, predicted: [ThoughtType]?
        if let file = rows.lazy.compactMap({ data.cell($0, "calibration") }).first(where: {
            (try? ThoughtThresholds.load(path: $0)) != nil
        }),
            var loaded = try? ThoughtThresholds.load(path: file)
        {
            if let resolved = data.resolve(trace), let reader = try? TraceReader(path: resolved) {
                let recorded = reader.recordedLayerIndices
                if let (mapped, _) = ThinKVParameters.nearestRecorded(loaded.layers, recorded: recorded) {
                    loaded.layers = mapped
                }
                let G = min(decodeSteps ?? reader.header.generatedLength, reader.header.generatedLength)
                if let profile = try? SparsityProfile.compute(
                    reader, layers: loaded.layers, maxSteps: G, threads: options.threads)
                {
                    predicted = ThoughtClassifier.timeline(
                        averagedSparsity: profile.averaged(over: loaded.layers), thresholds: loaded)
                }
            }
            thresholds = loaded
        }
        var parts = [
            labels == nil
                ? "full-cache attention sparsity (the trace has no thought labels)"
                : "bands and 'labels' strip: the trace's thought labels; line: full-cache attention sparsity"
        ]
        if predicted != nil {
            parts.append("'classifier' strip: ThinKV's type of each step (full cache, held τ steps)")
        }
        let subtitle = FidelityFigure.subtitle(data, rows: rows, extra: parts.joined(separator: "; "))
        return ThoughtTimelineFigure.figure(
            name: name, subtitle: subtitle, labels: labels, sparsity: sparsity,
            thresholds: thresholds, predicted: predicted)
    }
}
