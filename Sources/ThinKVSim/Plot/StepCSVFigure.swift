import Foundation

/// The figure of one `replay --csv` file (a per-step CSV holding every policy of a replay):
/// (a) attended KV bytes over decode steps, summed over the replayed layers, then one panel
/// per metric over steps (the mean over layers and query heads of each step, smoothed with a
/// centred moving average of `window` steps so the lines stay readable), one line per policy.
public enum StepCSVFigure {
    /// Per-step column of each metric (tools/end_to_end's --steps-csv names its own).
    static func column(_ metric: PlotMetric) -> String {
        switch metric {
        case .kl: return "attention_kl"
        case .outputError: return "output_error"
        case .massRecall: return "mass_recall"
        case .topKRecall: return "topk_recall"
        case .nextTokenKL: return "next_token_kl"
        case .top1: return "top1_agree"
        }
    }

    /// True when the table has the columns of a per-step CSV (and is not a results CSV).
    public static func isStepCSV(_ table: CSVTable) -> Bool {
        ["policy", "layer", "step", "attended_bytes"].allSatisfy { table.index(of: $0) != nil }
            && table.index(of: "run_key") == nil
    }

    public static let window = 16

    public static func figure(_ table: CSVTable, name: String, metrics: [PlotMetric], logBytes: Bool) -> Figure? {
        let p = table.index(of: "policy")!, s = table.index(of: "step")!, bytes = table.index(of: "attended_bytes")!
        var order: [String] = []
        var perPolicy: [String: [[String]]] = [:]
        for row in table.rows {
            if perPolicy[row[p]] == nil { order.append(row[p]) }
            perPolicy[row[p], default: []].append(row)
        }
        guard !order.isEmpty else { return nil }
        func series(_ rows: [[String]], _ column: Int, sum: Bool) -> [Double] {
            var total: [Double] = [], count: [Double] = []
            for row in rows {
                guard let step = Int(row[s]), step >= 0, let v = Double(row[column]), v.isFinite else { continue }
                if step >= total.count {
                    total += Array(repeating: 0, count: step + 1 - total.count)
                    count += Array(repeating: 0, count: step + 1 - count.count)
                }
                total[step] += v
                count[step] += 1
            }
            return zip(total, count).map { sum ? $0 : ($1 > 0 ? $0 / $1 : .nan) }
        }
        // A label is the policy with its parameters (`h2o(budget=8)`): styled as its policy.
        let policyNames = order.map { String($0.prefix { $0 != "(" }) }
        let styles = policyNames.map { name -> SeriesStyle in
            var style = Palette.style(ofPolicy: name, unregistered: policyNames)
            style.dash = nil
            style.width = 1.5
            return style
        }
        var panels: [Panel] = []
        let byteSeries = order.map { StepBytesFigure.decimate(series(perPolicy[$0]!, bytes, sum: true)) }
        let byteValues = byteSeries.flatMap { $0.map(\.y) }
        let positive = byteValues.filter { $0 > 0 }
        let steps = Double(byteSeries.map { ($0.last?.x ?? 0) + 1 }.max() ?? 1)
        let x = Axis.linear(
            min: 0, max: steps, title: ThoughtTimelineFigure.stepAxisTitle, includeZero: true,
            tight: true)
        panels.append(
            Panel(
                title: "(a) KV cache, replayed layers", x: x,
                y: Axis.bytes(
                    min: logBytes ? (positive.min() ?? 1) : 0, max: byteValues.max() ?? 1,
                    title: "attended KV", log: logBytes && !positive.isEmpty),
                series: zip(order, byteSeries).enumerated().map {
                    Series(label: $1.0, points: $1.1, style: styles[$0])
                },
                markers: false))
        for metric in metrics {
            guard let c = table.index(of: column(metric)) else { continue }
            let lines = order.map { smooth(series(perPolicy[$0]!, c, sum: false)) }
            guard lines.contains(where: { $0.contains { $0.isFinite } }) else { continue }
            let points = lines.map { line in StepBytesFigure.decimate(line).filter { $0.y.isFinite } }
            panels.append(
                Panel(
                    title: "\(FidelityFigure.letter(panels.count)) \(metric.title)", x: x,
                    y: FidelityFigure.yAxis(
                        metric.column, title: metric.axisTitle, values: points.flatMap { $0.map(\.y) }),
                    series: zip(order, points).enumerated().map {
                        Series(label: $1.0, points: $1.1, style: styles[$0])
                    },
                    markers: false))
        }
        return Figure(
            title: "Replay over decode steps — \(name)",
            subtitle: "per-step CSV of replay; metrics: mean over layers and heads, moving average of \(window) steps",
            panels: panels, legend: zip(order, styles).map { LegendEntry(label: $0, style: $1) }, legendTitle: "policy")
    }

    /// Centred moving average over `window` steps, ignoring non-finite values.
    static func smooth(_ values: [Double]) -> [Double] {
        let half = window / 2
        return values.indices.map { i in
            let slice = values[max(0, i - half)..<min(values.count, i + half)].filter(\.isFinite)
            return slice.isEmpty ? .nan : slice.reduce(0, +) / Double(slice.count)
        }
    }
}
