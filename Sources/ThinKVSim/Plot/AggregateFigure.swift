import Foundation

/// A fidelity metric a figure can show (`plot --metric`).
public enum PlotMetric: String, CaseIterable, Sendable {
    case kl, outputError = "output_error", massRecall = "mass_recall", topKRecall = "top_k_recall"
    /// End-to-end fidelity (tools/end_to_end): the model's next-token distribution.
    case nextTokenKL = "next_token_kl", top1 = "top1"

    /// Results-CSV column, panel title, axis title.
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
        case .kl: return "KL in nats (mean)"
        case .outputError: return "relative L2 error (mean)"
        case .massRecall: return "mass recall (mean)"
        case .topKRecall: return "top-k recall (mean)"
        case .nextTokenKL: return "KL in nats (mean over steps)"
        case .top1: return "fraction of steps"
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
        let table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                     2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                     2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
        precondition(df >= 1)
        return df <= table.count ? table[df - 1] : 1.960
    }
}

/// Figures over every trace of a results CSV: each point is the mean over the traces that have
/// the run, with its 95 % interval as an error bar.
public enum AggregateFigure {
    /// One aggregated point: the run's (policy variant, budget or target) over traces.
    struct Point {
        var x: [Double] = []
        var y: [Double] = []
        var budgets: Set<String> = []
    }

    /// Policy lines of all traces: the per-trace groups (`PlotData.groups`) matched by label.
    static func lines(_ data: PlotData, along axis: String, ignoring: [String]) -> [(label: String, style: SeriesStyle, rows: [[String]])] {
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

    /// Fidelity against KV bytes, aggregated over traces: per policy and budget (or memory
    /// target), mean bytes on x and the metric's mean and 95 % interval on y.
    public static func fidelityVsBytes(_ data: PlotData, metrics: [PlotMetric], bytesColumn: String, logBytes: Bool,
                                       budgetLabels: Bool) -> Figure? {
        guard data.hasColumn(bytesColumn) else { return nil }
        let matched = data.hasColumn("kv_percent")
        let axis = matched ? "kv_percent" : "budget"
        let lines = lines(data, along: axis, ignoring: matched ? ["budget"] : [])
        // The axis spans the points drawn: each the mean bytes of a run over the traces.
        var allBytes: [Double] = []
        for line in lines {
            var byKey: [String: [Double]] = [:]
            for row in line.rows { if let b = data.number(row, bytesColumn) { byKey[data.cell(row, axis) ?? "", default: []].append(b) } }
            allBytes += byKey.values.compactMap { MeanInterval($0)?.mean }.filter { $0 > 0 }
        }
        guard !allBytes.isEmpty else { return nil }
        let kind = bytesColumn.hasSuffix("peak") ? "peak" : "mean"
        let x = Axis.bytes(min: allBytes.min()!, max: allBytes.max()!, title: "KV cache, \(kind) over steps", log: logBytes)
        var panels: [Panel] = []
        for (i, metric) in metrics.enumerated() where data.hasColumn(metric.column)
            && data.table.rows.contains(where: { data.number($0, metric.column) != nil }) {
            var series: [Series] = []
            var errorBars: [Series] = []
            var notes: [Annotation] = []
            for line in lines {
                var points: [String: Point] = [:]
                var keys: [String] = []
                for row in line.rows {
                    let key = data.cell(row, axis) ?? ""
                    guard let b = data.number(row, bytesColumn), let y = data.number(row, metric.column) else { continue }
                    if points[key] == nil { keys.append(key) }
                    points[key, default: Point()].x.append(b)
                    points[key, default: Point()].y.append(y)
                    if let budget = data.cell(row, "budget") { points[key, default: Point()].budgets.insert(budget) }
                }
                var drawn: [(x: Double, y: Double)] = []
                for key in keys {
                    let p = points[key]!
                    guard let xm = MeanInterval(p.x), let ym = MeanInterval(p.y) else { continue }
                    drawn.append((xm.mean, ym.mean))
                    if ym.count > 1 {
                        var style = line.style
                        style.marker = nil
                        style.dash = nil
                        style.width = 1.2
                        errorBars.append(Series(label: "", points: [(xm.mean, ym.lower), (xm.mean, ym.upper)], style: style))
                    }
                    if budgetLabels {
                        let text = key.isEmpty ? "" : matched ? "\(key) %" : (p.budgets.count == 1 ? p.budgets.first! : key)
                        if !text.isEmpty { notes.append(Annotation(x: xm.mean, y: ym.mean, text: text, color: line.style.color)) }
                    }
                }
                series.append(Series(label: line.label, points: drawn.sorted { $0.x < $1.x }, style: line.style))
            }
            // The axis spans the means: with few traces an interval can be far wider than the
            // differences between policies (t = 12.7 for two), and its bar is cut at the edge.
            let values = series.flatMap { $0.points.map(\.y) }
            var panel = Panel(title: "\(FidelityFigure.letter(i)) \(metric.title)", x: x,
                              y: FidelityFigure.yAxis(metric.column, title: metric.axisTitle, values: values), series: series + errorBars)
            panel.annotations = notes
            panels.append(panel)
        }
        guard !panels.isEmpty else { return nil }
        let n = data.traces.count
        return Figure(title: "Fidelity vs. KV cache size — \(n) trace\(n == 1 ? "" : "s")",
                      subtitle: "mean over traces; bars: 95 % interval (Student t), cut at the panel's edge; bytes of all model layers with quantization metadata",
                      panels: panels, legend: lines.map { LegendEntry(label: $0.label, style: $0.style) }, legendTitle: "policy")
    }

    /// Fidelity at equal memory: one bar group per memory target (`kv_percent`), one bar per
    /// policy matched to it, the metric's mean over traces with its 95 % interval. Policies
    /// without a budget (not matched) are left out. nil without matched runs.
    public static func equalMemory(_ data: PlotData, metrics: [PlotMetric]) -> Figure? {
        guard data.hasColumn("kv_percent") else { return nil }
        let rows = data.table.rows.filter { data.number($0, "kv_percent") != nil }
        let targets = Array(Set(rows.compactMap { data.number($0, "kv_percent") })).sorted()
        guard !targets.isEmpty else { return nil }
        let lines = lines(data, along: "kv_percent", ignoring: ["budget"]).filter { line in
            line.rows.contains { data.number($0, "kv_percent") != nil }
        }
        let width = 0.8 / Double(max(lines.count, 1))
        var x = Axis.linear(min: -0.5, max: Double(targets.count) - 0.5, title: "KV memory target (% of the full cache)", tight: true)
        x.ticks = targets.indices.map(Double.init)
        x.labels = targets.map { SweepColumns.number($0) + " %" }
        var panels: [Panel] = []
        for (i, metric) in metrics.enumerated() where data.hasColumn(metric.column)
            && rows.contains(where: { data.number($0, metric.column) != nil }) {
            var bars: [Bar] = []
            var errorBars: [Series] = []
            var values: [Double] = [0]
            for (t, target) in targets.enumerated() {
                for (j, line) in lines.enumerated() {
                    let ys = line.rows.filter { data.number($0, "kv_percent") == target }.compactMap { data.number($0, metric.column) }
                    guard let m = MeanInterval(ys) else { continue }
                    let center = Double(t) + (Double(j) - Double(lines.count - 1) / 2) * width
                    bars.append(Bar(from: center - width * 0.45, to: center + width * 0.45, y0: 0, y1: m.mean, style: line.style))
                    values.append(m.mean)  // the axis spans the means; wider intervals are cut at the edge
                    if m.count > 1 {
                        errorBars.append(Series(label: "", points: [(center, m.lower), (center, m.upper)],
                                                style: SeriesStyle(color: Palette.axis, width: 1.2)))
                    }
                }
            }
            var panel = Panel(title: "\(FidelityFigure.letter(i)) \(metric.title)", x: x,
                              y: FidelityFigure.yAxis(metric.column, title: metric.axisTitle, values: values.filter(\.isFinite)),
                              series: errorBars, markers: false)
            panel.bars = bars
            panels.append(panel)
        }
        guard !panels.isEmpty else { return nil }
        let n = data.traces.count
        let kind = rows.first.flatMap { data.cell($0, "kv_match") } ?? "mean"
        return Figure(title: "Fidelity at equal KV memory — \(n) trace\(n == 1 ? "" : "s")",
                      subtitle: "each budget found so that the policy's \(kind) KV is the target; mean over traces, bars: 95 % interval, cut at the panel's edge",
                      panels: panels, legend: lines.map { LegendEntry(label: $0.label, style: $0.style) }, legendTitle: "policy")
    }
}
