import Foundation

/// The thought structure of a trace: reasoning / execution / transition bands from
/// `/tokens/thought`, under the full-cache attention sparsity of every decode step.
public enum ThoughtTimelineFigure {
    /// `labels`: one per decode step (-1 unknown); `sparsity`: mean over layers per decode
    /// step. Either may be missing, not both.
    /// With `thresholds`, θ1 and θ2 are drawn as dashed levels and `predicted` (the classifier's
    /// type of each step) as a step line in the middle of its type's zone (E below θ1, R
    /// between, T above θ2).
    public static func figure(name: String, subtitle: String, labels: [Int8]?, sparsity: [Double]?,
                              thresholds: ThoughtThresholds? = nil, predicted: [ThoughtType]? = nil) -> Figure? {
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
        if let thresholds {
            let t1 = Double(thresholds.theta1), t2 = Double(thresholds.theta2)
            for (label, level, dash) in [("θ1 = \(Format.fixed(t1, 3))", t1, "7 4"), ("θ2 = \(Format.fixed(t2, 3))", t2, "2 3")] {
                let style = SeriesStyle(color: "#7A7A7A", marker: nil, dash: dash, width: 1.2)
                series.append(Series(label: label, points: [(0, level), (Double(steps), level)], style: style))
                legend.append(LegendEntry(label: label, style: style))
            }
            if let predicted, !predicted.isEmpty {
                let zone: (ThoughtType) -> Double = { type in
                    switch type {
                    case .execution: return t1 / 2
                    case .reasoning: return (t1 + t2) / 2
                    case .transition: return (t2 + 1) / 2
                    }
                }
                var points: [(Double, Double)] = []
                for (i, type) in predicted.enumerated() where i == 0 || predicted[i - 1] != type {
                    if i > 0 { points.append((Double(i), zone(predicted[i - 1]))) }
                    points.append((Double(i), zone(type)))
                }
                points.append((Double(predicted.count), zone(predicted[predicted.count - 1])))
                let style = SeriesStyle(color: "#D55E00", marker: nil, dash: nil, width: 1.6)
                series.append(Series(label: "classified", points: points, style: style))
                legend.append(LegendEntry(label: "classifier's type (zone)", style: style))
            }
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
