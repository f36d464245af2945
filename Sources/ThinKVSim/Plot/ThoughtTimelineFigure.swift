import Foundation

/// The thought structure of a trace: reasoning / execution / transition bands from
/// `/tokens/thought`, under the full-cache attention sparsity of every decode step.
public enum ThoughtTimelineFigure {
    /// The x axis of every per-step figure: one decode step generates one token.
    public static let stepAxisTitle = "decode step (generated tokens)"

    /// Runs of equal types as segments in the thought colours (-1 and unknown types: none).
    static func segments(_ types: [Int8], opacity: Double) -> [Band] {
        guard !types.isEmpty else { return [] }
        var out: [Band] = []
        var start = 0
        for i in 1...types.count where i == types.count || types[i] != types[start] {
            let type = types[start]
            if type >= 0 && Int(type) < Palette.thoughts.count {
                let color = Palette.thoughts[Int(type)]
                out.append(Band(from: Double(start), to: Double(i), color: color, opacity: opacity))
            }
            start = i
        }
        return out
    }

    /// `labels`: one per decode step (-1 unknown); `sparsity`: mean over layers per decode
    /// step. Either may be missing, not both.
    /// With `thresholds`, θ1 and θ2 are drawn as dashed levels on the sparsity axis; `predicted`
    /// (the classifier's type of each step) is a strip of its own above the plot, next to a strip
    /// of the reference labels, so the two read side by side and no type sits on the sparsity axis.
    public static func figure(
        name: String, subtitle: String, labels: [Int8]?, sparsity: [Double]?,
        thresholds: ThoughtThresholds? = nil, predicted: [ThoughtType]? = nil
    ) -> Figure? {
        let steps = max(labels?.count ?? 0, sparsity?.count ?? 0, predicted?.count ?? 0)
        guard steps > 0 else { return nil }
        var bands: [Band] = []
        var strips: [Strip] = []
        var legend: [LegendEntry] = []
        let opacity = 0.35
        var shown = Set<Int8>()
        if let labels {
            bands = segments(labels, opacity: opacity)
            strips.append(Strip(label: "labels", segments: segments(labels, opacity: 0.9)))
            shown.formUnion(labels)
        }
        if let predicted, !predicted.isEmpty {
            let types = predicted.map(\.rawValue)
            strips.append(Strip(label: "classifier", segments: segments(types, opacity: 0.9)))
            shown.formUnion(types)
        }
        for t in ThoughtType.allCases where shown.contains(t.rawValue) {
            let color = Palette.thoughts[Int(t.rawValue)]
            legend.append(LegendEntry(label: "\(t.letter): \(t.name)", patch: color, opacity: opacity))
        }
        var series: [Series] = []
        if let sparsity {
            let style = SeriesStyle(color: "#1A1A1A", marker: nil, dash: nil, width: 1.1)
            series.append(
                Series(label: "sparsity", points: StepBytesFigure.decimate(sparsity, limit: 1400), style: style))
            legend.append(LegendEntry(label: "sparsity (mean over layers)", style: style))
        }
        if let thresholds {
            let t1 = Double(thresholds.theta1), t2 = Double(thresholds.theta2)
            for (label, level, dash) in [
                ("θ1 = \(Format.fixed(t1, 3))", t1, "7 4"), ("θ2 = \(Format.fixed(t2, 3))", t2, "2 3")
            ] {
                let style = SeriesStyle(color: "#7A7A7A", marker: nil, dash: dash, width: 1.2)
                series.append(Series(label: label, points: [(0, level), (Double(steps), level)], style: style))
                legend.append(LegendEntry(label: label, style: style))
            }
        }
        let x = Axis.linear(min: 0, max: Double(steps), title: stepAxisTitle, includeZero: true, tight: true)
        // Sparsity is a fraction: a fixed 0–1 axis keeps traces comparable.
        let y = Axis.linear(min: 0, max: 1, title: "sparsity (fraction of keys)", count: 6)
        var panel = Panel(title: nil, x: x, y: y, series: series, bands: bands, markers: false)
        panel.strips = strips
        var figure = Figure(
            title: "Thought timeline — \(name)",
            subtitle: subtitle,
            panels: [panel], legend: legend, legendTitle: shown.isEmpty ? nil : "thought")
        figure.panelWidth = 680
        figure.panelHeight = 220 + Figure.stripBlock(count: strips.count)
        return figure
    }
}
