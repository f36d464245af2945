import Foundation

/// Fidelity against the cache budget, and against the KV bytes a run needed: one line per
/// policy (and variant), mass recall and output error side by side.
public enum FidelityFigure {
    /// The y metrics: the chosen ones, else KL, output error (top-k recall when the trace has
    /// no values) and mass recall, fidelity first. A metric no row has is left out.
    static func metrics(_ data: PlotData, rows: [[String]], chosen: [PlotMetric]? = nil) -> [(
        column: String, title: String, axis: String
    )] {
        let has = { (m: PlotMetric) in data.hasColumn(m.column) && rows.contains { data.number($0, m.column) != nil } }
        let wanted = chosen ?? (has(.outputError) ? PlotMetric.defaultOrder : [.kl, .topKRecall, .massRecall])
        return wanted.filter(has).map { ($0.column, $0.title, $0.axisTitle) }
    }

    static func yAxis(_ column: String, title: String, values: [Double]) -> Axis {
        let finite = values.filter(\.isFinite)
        let lo = finite.min() ?? 0, hi = finite.max() ?? 1
        if column.contains("recall") || column.contains("agreement") {
            return Axis.linear(min: lo, max: hi, title: title, clampUpper: 1, pad: 0.04)
        }
        return Axis.linear(min: lo, max: hi, title: title, includeZero: true, pad: 0.04)
    }

    static func subtitle(_ data: PlotData, rows: [[String]], extra: String) -> String {
        var parts: [String] = []
        if let row = rows.first {
            if let model = data.cell(row, "model") { parts.append(model) }
            if let steps = data.cell(row, "decode_steps") { parts.append("\(steps) decode steps") }
            if let layers = data.cell(row, "layers") {
                parts.append(layers == "all" ? "all recorded layers" : "layers \(layers)")
            }
        }
        parts.append(extra)
        if !singleTypeCalibrations(data, rows: rows).isEmpty {
            parts.append("ThinKV: single-type fallback thresholds, one thought type")
        }
        return parts.joined(separator: " · ")
    }

    /// The calibration files named in `rows` whose thresholds are the single-type fallback
    /// (θ1 = 0, θ2 = 1): ThinKV then runs with one thought type, which a figure must say.
    static func singleTypeCalibrations(_ data: PlotData, rows: [[String]]) -> [String] {
        var files: [String] = []
        for row in rows {
            guard let path = data.cell(row, "calibration"), !path.isEmpty, !files.contains(path),
                let thresholds = try? ThoughtThresholds.load(path: path), thresholds.isSingleType
            else { continue }
            files.append(path)
        }
        return files
    }

    static func letter(_ i: Int) -> String { "(\(Character(UnicodeScalar(97 + i)!)))" }

    /// Fidelity against `budget`; nil when no run of the trace has a budget.
    public static func againstBudget(_ data: PlotData, trace: String, metrics chosen: [PlotMetric]? = nil) -> Figure? {
        let rows = data.rows(of: trace)
        let budgets = rows.compactMap { data.number($0, "budget") }
        guard !budgets.isEmpty else { return nil }
        let groups = data.groups(of: trace, along: "budget")
        let x = budgetAxis(budgets)
        var panels: [Panel] = []
        for (i, metric) in metrics(data, rows: rows, chosen: chosen).enumerated() {
            var series: [Series] = []
            for group in groups {
                let withBudget = group.rows.filter { data.number($0, "budget") != nil }
                if withBudget.isEmpty {
                    // No budget (the full cache, quantization only): a level across the axis.
                    guard let level = data.number(group.rows[0], metric.column), level.isFinite else { continue }
                    var style = group.style
                    style.dash = Palette.levelDashes[group.variantIndex % Palette.levelDashes.count]
                    style.marker = nil
                    series.append(Series(label: group.label, points: [], style: style, level: level))
                } else {
                    let points = withBudget.compactMap { row -> (x: Double, y: Double)? in
                        guard let b = data.number(row, "budget"), let y = data.number(row, metric.column) else {
                            return nil
                        }
                        return (b, y)
                    }.sorted { $0.x < $1.x }
                    series.append(Series(label: group.label, points: points, style: group.style))
                }
            }
            let values = series.flatMap { s in s.level.map { [$0] } ?? s.points.map(\.y) }
            panels.append(
                Panel(
                    title: "\(letter(i)) \(metric.title)", x: x,
                    y: yAxis(metric.column, title: metric.axis, values: values),
                    series: series))
        }
        guard !panels.isEmpty else { return nil }
        // The legend shows each series as the first panel draws it (levels are dashed, unmarked).
        let legend = panels[0].series.map { LegendEntry(label: $0.label, style: $0.style) }
        return Figure(
            title: "Fidelity vs. cache budget — \(data.shortName(trace))",
            subtitle: subtitle(data, rows: rows, extra: "dashed levels: policies without a budget"),
            panels: panels, legend: legend, legendTitle: "policy")
    }

    /// Log-2 when the budgets span a factor of four or more; ticks at the budgets themselves
    /// when there are few, so every swept value can be read off the axis.
    static func budgetAxis(_ budgets: [Double]) -> Axis {
        let title = "budget (tokens per kv head)"
        let distinct = Array(Set(budgets)).sorted()
        let lo = distinct.first!, hi = distinct.last!
        var axis =
            hi / lo >= 4
            ? Axis.logarithmic(min: lo, max: hi, base: 2, title: title) { String(format: "%.0f", $0) }
            : Axis.linear(min: lo, max: hi, title: title, tight: true, pad: 0.08)
        if distinct.count <= 8 {
            axis.ticks = distinct
            axis.labels = distinct.map { String(format: "%.0f", $0) }
        }
        return axis
    }

    /// Fidelity against KV bytes (mean or peak over steps, all model layers).
    public static func againstBytes(
        _ data: PlotData, trace: String, bytesColumn: String, logBytes: Bool,
        metrics chosen: [PlotMetric]? = nil
    ) -> Figure? {
        guard data.hasColumn(bytesColumn) else { return nil }
        let rows = data.rows(of: trace)
        let groups = data.groups(of: trace, along: "budget")
        let bytes = rows.compactMap { data.number($0, bytesColumn) }.filter { $0 > 0 }
        guard !bytes.isEmpty else { return nil }
        let kind = bytesColumn.hasSuffix("peak") ? "peak" : "mean"
        let x = Axis.bytes(min: bytes.min()!, max: bytes.max()!, title: "KV cache, \(kind) over steps", log: logBytes)
        var panels: [Panel] = []
        for (i, metric) in metrics(data, rows: rows, chosen: chosen).enumerated() {
            var series: [Series] = []
            for group in groups {
                let points = group.rows.compactMap { row -> (x: Double, y: Double)? in
                    guard let b = data.number(row, bytesColumn), let y = data.number(row, metric.column) else {
                        return nil
                    }
                    return (b, y)
                }.sorted { $0.x < $1.x }
                series.append(Series(label: group.label, points: points, style: group.style))
            }
            let values = series.flatMap { $0.points.map(\.y) }
            panels.append(
                Panel(
                    title: "\(letter(i)) \(metric.title)", x: x,
                    y: yAxis(metric.column, title: metric.axis, values: values),
                    series: series))
        }
        guard !panels.isEmpty else { return nil }
        return Figure(
            title: "Fidelity vs. KV cache size — \(data.shortName(trace))",
            subtitle: subtitle(data, rows: rows, extra: "bytes of all model layers, with quantization metadata"),
            panels: panels, legend: groups.map { LegendEntry(label: $0.label, style: $0.style) }, legendTitle: "policy")
    }
}
