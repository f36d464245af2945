import Foundation

/// The thought structure of a trace: reasoning / execution / transition bands from
/// `/tokens/thought`, under the full-cache attention sparsity of every decode step.
public enum ThoughtTimelineFigure {
    /// `labels`: one per decode step (-1 unknown); `sparsity`: mean over layers per decode
    /// step. Either may be missing, not both.
    public static func figure(name: String, subtitle: String, labels: [Int8]?, sparsity: [Double]?) -> Figure? {
        let steps = max(labels?.count ?? 0, sparsity?.count ?? 0)
        guard steps > 0 else { return nil }
        var bands: [Band] = []
        var legend: [LegendEntry] = []
        let opacity = 0.35
        if let labels {
            var start = 0
            for i in 1...labels.count where i == labels.count || labels[i] != labels[start] {
                let label = labels[start]
                if label >= 0 && Int(label) < Palette.thoughts.count {
                    bands.append(Band(from: Double(start), to: Double(i), color: Palette.thoughts[Int(label)], opacity: opacity))
                }
                start = i
            }
            for t in ThoughtType.allCases where labels.contains(t.rawValue) {
                legend.append(LegendEntry(label: "\(t.letter): \(t.name)", patch: Palette.thoughts[Int(t.rawValue)], opacity: opacity))
            }
        }
        var series: [Series] = []
        if let sparsity {
            let style = SeriesStyle(color: "#1A1A1A", marker: nil, dash: nil, width: 1.1)
            series.append(Series(label: "sparsity", points: StepBytesFigure.decimate(sparsity, limit: 1400), style: style))
            legend.append(LegendEntry(label: "sparsity (mean over layers)", style: style))
        }
        let x = Axis.linear(min: 0, max: Double(steps), title: "decode step", includeZero: true, tight: true)
        // Sparsity is a fraction: a fixed 0–1 axis keeps traces comparable.
        let y = Axis.linear(min: 0, max: 1, title: "attention sparsity", count: 6)
        let panel = Panel(title: nil, x: x, y: y, series: series, bands: bands, markers: false)
        var figure = Figure(title: "Thought timeline — \(name)",
                            subtitle: subtitle,
                            panels: [panel], legend: legend, legendTitle: labels == nil ? nil : "thought")
        figure.panelWidth = 680
        figure.panelHeight = 220
        return figure
    }
}
