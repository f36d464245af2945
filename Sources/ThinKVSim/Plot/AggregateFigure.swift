import Foundation

/// A fidelity metric a figure can show (`plot --metric`).
public enum PlotMetric: String, CaseIterable, Sendable {
    case kl, outputError = "output_error", massRecall = "mass_recall", topKRecall = "top_k_recall"
    /// End-to-end fidelity (tools/end_to_end): the model's next-token distribution.
    case nextTokenKL = "next_token_kl", top1 = "top1"

    /// Results-CSV column, panel title, axis title (its unit in parentheses at the end).
    public var column: String {
        switch self {
        case .kl: return "attention_kl_mean"
        case .outputError: return "output_error_mean"
        case .massRecall: return "mass_recall_mean"
        case .topKRecall: return "topk_recall_mean"
        case .nextTokenKL: return "next_token_kl_mean"
        case .top1: return "top1_agreement"
        }
    }

    public var title: String {
        switch self {
        case .kl: return "Attention KL (policy ‖ full)"
        case .outputError: return "Attention output error"
        case .massRecall: return "Attention mass recall"
        case .topKRecall: return "Top-k recall"
        case .nextTokenKL: return "Next-token KL (full ‖ policy)"
        case .top1: return "Top-1 agreement with the full cache"
        }
    }

    public var axisTitle: String {
        switch self {
        case .kl: return "KL, mean (nats)"
        case .outputError: return "relative L2 error, mean (fraction of ‖o‖)"
        case .massRecall: return "mass recall, mean (fraction of attention)"
        case .topKRecall: return "top-k recall, mean (fraction of top k)"
        case .nextTokenKL: return "KL, mean over steps (nats)"
        case .top1: return "top-1 agreement (fraction of steps)"
        }
    }

    /// The metrics a figure shows by default, in order: fidelity first (KL, output error),
    /// mass recall after them (it cannot see quantization error).
    public static let defaultOrder: [PlotMetric] = [.kl, .outputError, .massRecall]
    /// For an end-to-end results file: the model's predictions first, attention KL beside them.
    public static let endToEndOrder: [PlotMetric] = [.nextTokenKL, .top1, .kl]
}

/// The mean of a metric over traces with a 95 % confidence interval: mean ± t(0.975, n − 1) · s / √n,
/// s the sample standard deviation (n − 1 in the denominator). One trace has no interval.
public struct MeanInterval: Equatable, Sendable {
    public let mean: Double
    public let lower: Double
    public let upper: Double
    public let count: Int

    public init?(_ values: [Double]) {
        let finite = values.filter(\.isFinite)
        guard !finite.isEmpty else { return nil }
        let n = Double(finite.count)
        let m = finite.reduce(0, +) / n
        mean = m
        count = finite.count
        guard finite.count > 1 else {
            lower = m
            upper = m
            return
        }
        let variance = finite.reduce(0) { $0 + ($1 - m) * ($1 - m) } / (n - 1)
        let half = Self.studentT975(degreesOfFreedom: finite.count - 1) * (variance / n).squareRoot()
        lower = m - half
        upper = m + half
    }

    /// The 0.975 quantile of Student's t (two-sided 95 %), tabulated to 3 decimals; the normal
    /// 1.960 beyond 30 degrees of freedom.
    public static func studentT975(degreesOfFreedom df: Int) -> Double {
        let table = [
            12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
            2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
            2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042
        ]
        precondition(df >= 1)
        return df <= table.count ? table[df - 1] : 1.960
    }
}

/// Figures over every trace of a results CSV: each point is the mean over the traces that have
/// the run, drawn with every trace's own value; a 95 % interval only from three traces on (with
/// two, t = 12.7 makes a bar wider than any difference between policies).
public enum AggregateFigure {
    /// Fewest traces for which a point gets its 95 % interval.
    public static let minimumTracesForInterval = 3

    /// One aggregated point: the run's (policy variant, budget or target) over traces.
    struct Point {
        var x: [Double] = []
        var y: [Double] = []
        var budgets: Set<String> = []
    }

    /// Policy lines of all traces: the per-trace groups (`PlotData.groups`) matched by label.
    static func lines(_ data: PlotData, along axis: String, ignoring: [String]) -> [(
        label: String, style: SeriesStyle, rows: [[String]]
    )] {
        var order: [String] = []
        var byLabel: [String: (style: SeriesStyle, rows: [[String]])] = [:]
        for trace in data.traces {
            for group in data.groups(of: trace, along: axis, ignoring: ignoring) {
                if byLabel[group.label] == nil {
                    order.append(group.label)
                    byLabel[group.label] = (group.style, [])
                }
                byLabel[group.label]!.rows += group.rows
            }
        }
        return order.map { ($0, byLabel[$0]!.style, byLabel[$0]!.rows) }
    }

    /// A run's KV memory as % of its own trace's 16-bit full cache: the mean over steps of the
    /// per-step percentage (`percent_of_full_mean`), or the peak against the full cache's last
    /// step, as memory matching measures them. Without those columns, `achieved_percent` when it
    /// measured the same summary (tools/end_to_end writes the mean's), else the bytes over the
    /// full cache run's bytes on the same trace. nil when none is known.
    static func percentOfFull(_ data: PlotData, _ row: [String], bytesColumn: String) -> Double? {
        let peak = bytesColumn.hasSuffix("peak")
        if !peak, let percent = data.number(row, "percent_of_full_mean"), percent.isFinite { return percent }
        if peak, let bytes = data.number(row, bytesColumn), let full = data.number(row, "full_bytes_final"), full > 0 {
            return 100 * bytes / full
        }
        if (data.cell(row, "kv_match") ?? "mean") == (peak ? "peak" : "mean"),
            let percent = data.number(row, "achieved_percent"), percent.isFinite
        {
            return percent
        }
        guard let trace = data.cell(row, "trace"), let bytes = data.number(row, bytesColumn),
            let fullRow = data.rows(of: trace).first(where: { data.cell($0, "policy") == FullCachePolicy.name }),
            let full = data.number(fullRow, bytesColumn), full > 0
        else { return nil }
        return 100 * bytes / full
    }

    /// The range a metric can take: an interval is cut to it (a KL below 0 or a recall above 1
    /// is no value the metric has).
    static func bounds(_ metric: PlotMetric) -> ClosedRange<Double> {
        switch metric {
        case .massRecall, .topKRecall, .top1: return 0...1
        case .kl, .outputError, .nextTokenKL: return 0...Double.infinity
        }
    }

    /// What the figure's points and bars are, for its subtitle.
    static func describe(traces n: Int) -> String {
        let interval = "95 % Student-t interval of the mean"
        if n == 1 { return "one trace: its values" }
        if n < minimumTracesForInterval {
            return "line: mean of \(n) traces; hollow markers: each trace; "
                + "no interval (\(interval) drawn from n ≥ \(minimumTracesForInterval))"
        }
        return
            "line: mean over traces; hollow markers: each trace; bars: \(interval) where n ≥ "
            + "\(minimumTracesForInterval)"
    }

    /// Style of a trace's own value: a small hollow marker of its policy, no line.
    static func traceStyle(_ style: SeriesStyle) -> SeriesStyle {
        var out = style
        out.dash = nil
        out.hollow = true
        out.markerSize = 6
        out.width = 0
        return out
    }

    /// One entry per policy line, then the look of a trace's point and of an interval.
    static func legend(
        _ lines: [(label: String, style: SeriesStyle, rows: [[String]])], traces: Int,
        intervals: Bool
    ) -> [LegendEntry] {
        var legend = lines.map { LegendEntry(label: $0.label, style: $0.style) }
        if traces > 1 {
            legend.append(
                LegendEntry(label: "one trace", style: traceStyle(SeriesStyle(color: Palette.axis, marker: .circle))))
        }
        if intervals {
            legend.append(LegendEntry(label: "95 % interval", style: SeriesStyle(color: Palette.axis, width: 1.2)))
        }
        return legend
    }

    /// A percentage axis: logarithmic with ticks at 1, 2, 5 × powers of ten, or linear from 0.
    static func percentAxis(min: Double, max: Double, title: String, log: Bool) -> Axis {
        guard log, min > 0 else { return Axis.linear(min: 0, max: max, title: title, includeZero: true, pad: 0.03) }
        var axis = Axis.logarithmic(min: min, max: max, base: 10, title: title) { SweepColumns.number($0) }
        var ticks: [Double] = []
        var decade = pow(10, floor(log10(axis.lower)))
        while decade <= axis.upper {
            for m in [1.0, 2, 5] where decade * m >= axis.lower && decade * m <= axis.upper { ticks.append(decade * m) }
            decade *= 10
        }
        axis.ticks = ticks
        axis.labels = ticks.map { SweepColumns.number(($0 * 1e6).rounded() / 1e6) }
        return axis
    }

    /// Fidelity against KV memory, aggregated over traces. x is each run's KV as % of its own
    /// trace's full cache (traces of different lengths have full caches of very different
    /// sizes, so their bytes cannot be averaged); per policy and budget (or memory target) the
    /// line goes through the mean over traces, each trace's own point is drawn, and from three
    /// traces on a 95 % interval of the mean.
    public static func fidelityVsBytes(
        _ data: PlotData, metrics: [PlotMetric], bytesColumn: String, logBytes: Bool,
        budgetLabels: Bool
    ) -> Figure? {
        guard data.hasColumn(bytesColumn) else { return nil }
        let matched = data.hasColumn("kv_percent")
        let axis = matched ? "kv_percent" : "budget"
        let lines = lines(data, along: axis, ignoring: matched ? ["budget"] : [])
        let allPercents = data.table.rows.compactMap { percentOfFull(data, $0, bytesColumn: bytesColumn) }
            .filter { $0 > 0 && $0.isFinite }
        guard !allPercents.isEmpty else { return nil }
        let kind = bytesColumn.hasSuffix("peak") ? "peak" : "mean over steps"
        let x = percentAxis(
            min: allPercents.min()!, max: allPercents.max()!,
            title: "KV cache, \(kind) (% of each trace's full cache)", log: logBytes)
        let n = data.traces.count
        var intervalsDrawn = false
        var panels: [Panel] = []
        for (i, metric) in metrics.enumerated()
        where data.hasColumn(metric.column)
            && data.table.rows.contains(where: { data.number($0, metric.column) != nil })
        {
            var series: [Series] = []
            var tracePoints: [Series] = []
            var intervals: [Series] = []
            var notes: [Annotation] = []
            var values: [Double] = []
            for line in lines {
                var points: [String: Point] = [:]
                var keys: [String] = []
                var own: [(x: Double, y: Double)] = []
                for row in line.rows {
                    let key = data.cell(row, axis) ?? ""
                    guard let p = percentOfFull(data, row, bytesColumn: bytesColumn), p > 0 || !logBytes,
                        let y = data.number(row, metric.column), y.isFinite
                    else { continue }
                    if points[key] == nil { keys.append(key) }
                    points[key, default: Point()].x.append(p)
                    points[key, default: Point()].y.append(y)
                    if let budget = data.cell(row, "budget") { points[key, default: Point()].budgets.insert(budget) }
                    own.append((p, y))
                }
                var drawn: [(x: Double, y: Double)] = []
                for key in keys {
                    let p = points[key]!
                    guard let xm = MeanInterval(p.x), let ym = MeanInterval(p.y) else { continue }
                    drawn.append((xm.mean, ym.mean))
                    values.append(ym.mean)
                    if ym.count >= minimumTracesForInterval {
                        let range = bounds(metric)
                        let lower = Swift.max(ym.lower, range.lowerBound), upper = Swift.min(ym.upper, range.upperBound)
                        var style = line.style
                        style.marker = nil
                        style.dash = nil
                        style.width = 1.2
                        intervals.append(
                            Series(
                                label: line.label, points: [(xm.mean, lower), (xm.mean, upper)],
                                style: style, role: "interval"))
                        values += [lower, upper]
                        intervalsDrawn = true
                    }
                    if budgetLabels {
                        let text =
                            key.isEmpty ? "" : matched ? "\(key) %" : (p.budgets.count == 1 ? p.budgets.first! : key)
                        if !text.isEmpty {
                            notes.append(Annotation(x: xm.mean, y: ym.mean, text: text, color: line.style.color))
                        }
                    }
                }
                series.append(Series(label: line.label, points: drawn.sorted { $0.x < $1.x }, style: line.style))
                if n > 1 && !own.isEmpty {
                    tracePoints.append(
                        Series(
                            label: line.label, points: own, style: traceStyle(line.style),
                            role: "trace-points", connect: false))
                    values += own.map(\.y)
                }
            }
            var panel = Panel(
                title: "\(FidelityFigure.letter(i)) \(metric.title)", x: x,
                y: FidelityFigure.yAxis(metric.column, title: metric.axisTitle, values: values),
                series: tracePoints + intervals + series)
            panel.annotations = notes
            panels.append(panel)
        }
        guard !panels.isEmpty else { return nil }
        let entries = Self.legend(lines, traces: n, intervals: intervalsDrawn)
        return Figure(
            title: "Fidelity vs. KV cache size — \(n) trace\(n == 1 ? "" : "s")",
            subtitle: "\(describe(traces: n)); bytes of all model layers with quantization metadata",
            panels: panels, legend: entries, legendTitle: "policy")
    }

    /// Fidelity at equal memory: one bar group per memory target (`kv_percent`), one bar per
    /// policy matched to it at the metric's mean over traces, each trace's value as a marker on
    /// it and, from three traces on, the 95 % interval. Policies without a budget (not matched)
    /// are left out. nil without matched runs.
    public static func equalMemory(_ data: PlotData, metrics: [PlotMetric]) -> Figure? {
        guard data.hasColumn("kv_percent") else { return nil }
        let rows = data.table.rows.filter { data.number($0, "kv_percent") != nil }
        let targets = Array(Set(rows.compactMap { data.number($0, "kv_percent") })).sorted()
        guard !targets.isEmpty else { return nil }
        let lines = lines(data, along: "kv_percent", ignoring: ["budget"]).filter { line in
            line.rows.contains { data.number($0, "kv_percent") != nil }
        }
        let width = 0.8 / Double(max(lines.count, 1))
        var x = Axis.linear(
            min: -0.5, max: Double(targets.count) - 0.5, title: "KV memory target (% of the full cache)", tight: true)
        x.ticks = targets.indices.map(Double.init)
        x.labels = targets.map { SweepColumns.number($0) + " %" }
        let n = data.traces.count
        var intervalsDrawn = false
        var panels: [Panel] = []
        for (i, metric) in metrics.enumerated()
        where data.hasColumn(metric.column)
            && rows.contains(where: { data.number($0, metric.column) != nil })
        {
            var bars: [Bar] = []
            var marks: [Series] = []
            var values: [Double] = [0]
            for (t, target) in targets.enumerated() {
                for (j, line) in lines.enumerated() {
                    let ys = line.rows.filter { data.number($0, "kv_percent") == target }.compactMap {
                        data.number($0, metric.column)
                    }
                    .filter(\.isFinite)
                    guard let m = MeanInterval(ys) else { continue }
                    let center = Double(t) + (Double(j) - Double(lines.count - 1) / 2) * width
                    bars.append(
                        Bar(
                            from: center - width * 0.45, to: center + width * 0.45, y0: 0, y1: m.mean, style: line.style
                        ))
                    values.append(m.mean)
                    if n > 1 {
                        var style = traceStyle(SeriesStyle(color: Palette.axis, marker: line.style.marker))
                        style.markerSize = 5
                        marks.append(
                            Series(
                                label: line.label, points: ys.map { (center, $0) }, style: style,
                                role: "trace-points", connect: false))
                        values += ys
                    }
                    if m.count >= minimumTracesForInterval {
                        let range = bounds(metric)
                        let lower = Swift.max(m.lower, range.lowerBound), upper = Swift.min(m.upper, range.upperBound)
                        marks.append(
                            Series(
                                label: line.label, points: [(center, lower), (center, upper)],
                                style: SeriesStyle(color: Palette.axis, width: 1.2), role: "interval"))
                        values += [lower, upper]
                        intervalsDrawn = true
                    }
                }
            }
            var panel = Panel(
                title: "\(FidelityFigure.letter(i)) \(metric.title)", x: x,
                y: FidelityFigure.yAxis(metric.column, title: metric.axisTitle, values: values.filter(\.isFinite)),
                series: marks)
            panel.bars = bars
            panels.append(panel)
        }
        guard !panels.isEmpty else { return nil }
        let kind = rows.first.flatMap { data.cell($0, "kv_match") } ?? "mean"
        let entries = Self.legend(lines, traces: n, intervals: intervalsDrawn)
        let what = describe(traces: n).replacingOccurrences(of: "line: mean", with: "bar: mean")
        return Figure(
            title: "Fidelity at equal KV memory — \(n) trace\(n == 1 ? "" : "s")",
            subtitle: "each budget found so that the policy's \(kind) KV is the target; \(what)",
            panels: panels, legend: entries, legendTitle: "policy")
    }
}
