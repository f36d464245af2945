import Foundation

/// KV bytes over the decode steps of one trace, one line per policy at one budget, read from
/// the per-step CSVs of the runs.
public enum StepBytesFigure {
    /// Per decode step: attended bytes and full-cache bytes summed over the replayed layers,
    /// scaled to all `num_layers` (as the summaries are), and the mean sparsity over layers.
    public struct StepSeries {
        public var attended: [Double]
        public var full: [Double]
        public var sparsity: [Double]
    }

    /// Reads a per-step CSV (the columns of `replay --csv`).
    public static func load(_ path: String, numLayers: Int?) throws -> StepSeries {
        let table = try CSVTable.read(path: path).table
        guard let layer = table.index(of: "layer"), let step = table.index(of: "step"),
            let attended = table.index(of: "attended_bytes"), let full = table.index(of: "full_bytes"),
            let sparsity = table.index(of: "sparsity")
        else {
            throw CSVError("\(path): not a per-step CSV (needs layer, step, attended_bytes, full_bytes, sparsity)")
        }
        var steps = 0
        var layers = Set<String>()
        for (n, row) in table.rows.enumerated() {
            // Every step has a row per layer: a step beyond the row count is a damaged file.
            guard let s = Int(row[step]), s >= 0, s < table.rows.count else {
                throw CSVError(
                    "\(path): line \(n + 2): step '\(Format.excerpt(row[step]))' is not a decode step of this file")
            }
            steps = max(steps, s + 1)
            layers.insert(row[layer])
        }
        var out = StepSeries(
            attended: Array(repeating: 0, count: steps), full: Array(repeating: 0, count: steps),
            sparsity: Array(repeating: 0, count: steps))
        for row in table.rows {
            guard let s = Int(row[step]), s >= 0 else { throw CSVError("\(path): bad step '\(row[step])'") }
            out.attended[s] += Double(row[attended]) ?? 0
            out.full[s] += Double(row[full]) ?? 0
            out.sparsity[s] += Double(row[sparsity]) ?? 0
        }
        let replayed = Double(max(layers.count, 1))
        let scale = Double(numLayers ?? layers.count) / replayed
        out.attended = out.attended.map { $0 * scale }
        out.full = out.full.map { $0 * scale }
        out.sparsity = out.sparsity.map { $0 / replayed }
        return out
    }

    /// At most about `limit` points: the minimum and maximum of each bin, in step order, so
    /// spikes survive.
    static func decimate(_ values: [Double], limit: Int = 900) -> [(x: Double, y: Double)] {
        guard values.count > limit else { return values.enumerated().map { (Double($0), $1) } }
        let bins = limit / 2
        var out: [(x: Double, y: Double)] = []
        for b in 0..<bins {
            let lo = b * values.count / bins, hi = (b + 1) * values.count / bins
            guard hi > lo else { continue }
            var minIndex = lo, maxIndex = lo
            for i in lo..<hi {
                if values[i] < values[minIndex] { minIndex = i }
                if values[i] > values[maxIndex] { maxIndex = i }
            }
            for i in Set([minIndex, maxIndex]).sorted() { out.append((Double(i), values[i])) }
        }
        return out
    }

    /// The budget shown when none is asked for: the middle one of the trace's budgets.
    static func defaultBudget(_ data: PlotData, trace: String) -> Double? {
        let budgets = Array(Set(data.rows(of: trace).compactMap { data.number($0, "budget") })).sorted()
        return budgets.isEmpty ? nil : budgets[(budgets.count - 1) / 2]
    }

    public static func figure(
        _ data: PlotData, trace: String, budget requested: Double?, logBytes: Bool,
        load: (String) throws -> StepSeries?
    ) throws -> Figure? {
        guard data.hasColumn(SweepColumns.stepsFile) else { return nil }
        let budget = requested ?? defaultBudget(data, trace: trace)
        var series: [Series] = []
        var legend: [LegendEntry] = []
        var fullCache: [Double]?
        var hasFullPolicy = false
        for group in data.groups(of: trace, along: "budget") {
            // The run at the chosen budget (the nearest one on a log scale), or the policy's only run.
            let candidates = group.rows.filter { data.cell($0, SweepColumns.stepsFile) != nil }
            let withBudget = candidates.filter { data.number($0, "budget") != nil }
            let row: [String]?
            if let budget, !withBudget.isEmpty {
                row = withBudget.min {
                    abs(log(data.number($0, "budget")! / budget)) < abs(log(data.number($1, "budget")! / budget))
                }
            } else {
                row = candidates.first
            }
            guard let row, let file = data.cell(row, SweepColumns.stepsFile), let steps = try load(file) else {
                continue
            }
            fullCache = fullCache ?? steps.full
            if group.policy == "full" { hasFullPolicy = true }
            var label = group.label
            // no run at the chosen budget
            if let b = data.cell(row, "budget"), Double(b) != budget { label += " (budget \(b))" }
            var style = group.style
            style.width = 1.6
            // Thousands of points: the panel draws no markers, except a few on a line that
            // coincides with another (eviction policies at one budget hold the same bytes).
            series.append(Series(label: label, points: decimate(steps.attended), style: style))
            legend.append(LegendEntry(label: label, style: style))
        }
        guard !series.isEmpty else { return nil }
        if let fullCache, !hasFullPolicy {
            let style = SeriesStyle(color: Palette.reference, marker: nil, dash: "7 4", width: 1.4)
            series.insert(Series(label: "full cache (16-bit)", points: decimate(fullCache), style: style), at: 0)
            legend.insert(LegendEntry(label: "full cache (16-bit)", style: style), at: 0)
        }
        let steps = series.map { ($0.points.last?.x ?? 0) + 1 }.max() ?? 1
        let values = series.flatMap { $0.points.map(\.y) }
        let positive = values.filter { $0 > 0 }
        let y = Axis.bytes(
            min: logBytes ? (positive.min() ?? 1) : 0, max: values.max() ?? 1, title: "KV cache, all layers",
            log: logBytes && !positive.isEmpty)
        let x = Axis.linear(
            min: 0, max: steps, title: ThoughtTimelineFigure.stepAxisTitle, includeZero: true,
            tight: true)
        let panel = Panel(title: nil, x: x, y: y, series: series, markers: false)
        let rows = data.rows(of: trace)
        var figure = Figure(
            title: "KV cache over decode steps — \(data.shortName(trace))",
            subtitle: FidelityFigure.subtitle(
                data, rows: rows,
                extra: budget.map { "budget \(String(format: "%.0f", $0)) · attended bytes, all model layers" }
                    ?? "attended bytes, all model layers"),
            panels: [panel], legend: legend, legendTitle: "policy")
        figure.panelWidth = 620
        figure.panelHeight = 260
        return figure
    }
}
