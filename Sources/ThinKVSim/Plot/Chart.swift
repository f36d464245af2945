import Foundation

/// Colours, markers and dashes. Colours are the Okabe–Ito palette (distinguishable with the
/// common colour-vision deficiencies), and every series also differs by marker or dash, so a
/// figure still reads in greyscale.
public enum Palette {
    /// Okabe–Ito without yellow (too light for lines on white): blue, vermillion, bluish green,
    /// reddish purple, orange, sky blue; then Tol's indigo, olive, wine, green, teal and purple,
    /// then Tol's dark brown, grey and dark cyan, so that every registered policy gets its own
    /// colour; black is kept for the full cache.
    public static let colors = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#332288", "#999933", "#882255",
                                "#117733", "#44AA99", "#AA4499", "#663333", "#777777", "#225555"]
    public static let reference = "#000000"
    public static let dashes: [String?] = [nil, "7 4", "2 3", "9 3 2 3"]
    /// Dashes of level lines (always dashed, so they read as references, not data).
    public static let levelDashes = ["7 4", "2 3", "9 3 2 3", "4 2"]
    /// As many markers as colours: a policy differs from every other in colour and in marker.
    public static let markers: [MarkerShape] = [.circle, .square, .triangleUp, .diamond, .triangleDown, .cross,
                                                .triangleLeft, .triangleRight, .plus, .pentagon, .hexagon, .star,
                                                .hourglass, .bowtie, .asterisk]
    /// Thought bands: reasoning sky blue, execution bluish green, transition orange (Okabe–Ito).
    public static let thoughts = ["#56B4E9", "#009E73", "#E69F00"]
    static let grid = "#E5E5E5"
    static let axis = "#444444"
    static let text = "#222222"
}

/// How a series is drawn.
public struct SeriesStyle: Sendable {
    public var color: String
    public var marker: MarkerShape?
    public var dash: String?
    public var width: Double = 1.8
    /// Hollow markers tell variants of one policy apart where a lone point has no dash to show.
    public var hollow = false

    public init(color: String, marker: MarkerShape? = nil, dash: String? = nil, width: Double = 1.8, hollow: Bool = false) {
        self.color = color
        self.marker = marker
        self.dash = dash
        self.width = width
        self.hollow = hollow
    }
}

/// One line of a chart. A `level` series is a horizontal line across the panel (a run with no
/// value on the x axis, such as the full cache on a budget axis).
public struct Series: Sendable {
    public var label: String
    public var points: [(x: Double, y: Double)]
    public var style: SeriesStyle
    public var level: Double?

    public init(label: String, points: [(x: Double, y: Double)], style: SeriesStyle, level: Double? = nil) {
        self.label = label
        self.points = points
        self.style = style
        self.level = level
    }
}

/// A shaded span of x (a thought segment).
public struct Band: Sendable {
    public var from: Double
    public var to: Double
    public var color: String
    public var opacity: Double
}

/// A filled bar from `y0` to `y1` over x in `from...to`, with an optional marker on top (so a
/// bar's policy reads from its marker as well as its colour).
public struct Bar: Sendable {
    public var from: Double
    public var to: Double
    public var y0: Double
    public var y1: Double
    public var style: SeriesStyle
}

/// A short text at a data point (e.g. a budget next to its marker).
public struct Annotation: Sendable {
    public var x: Double
    public var y: Double
    public var text: String
    public var color: String
}

/// One set of axes with its series.
public struct Panel: Sendable {
    public var title: String?
    public var x: Axis
    public var y: Axis
    public var series: [Series]
    public var bands: [Band] = []
    public var bars: [Bar] = []
    public var annotations: [Annotation] = []
    /// Draw markers at every point (false for dense per-step lines).
    public var markers = true

    public init(title: String?, x: Axis, y: Axis, series: [Series], bands: [Band] = [], markers: Bool = true) {
        self.title = title
        self.x = x
        self.y = y
        self.series = series
        self.bands = bands
        self.markers = markers
    }
}

/// A legend line: a series' look, or a filled patch.
public struct LegendEntry: Sendable {
    public var label: String
    public var style: SeriesStyle?
    public var patch: (color: String, opacity: Double)?

    public init(label: String, style: SeriesStyle) {
        self.label = label
        self.style = style
    }

    public init(label: String, patch color: String, opacity: Double) {
        self.label = label
        self.patch = (color, opacity)
    }
}

/// A figure: a title, panels side by side with one shared legend at the right.
public struct Figure: Sendable {
    public var title: String
    public var subtitle: String?
    public var panels: [Panel]
    public var legend: [LegendEntry]
    public var legendTitle: String?
    public var panelWidth: Double = 340
    public var panelHeight: Double = 250

    public init(title: String, subtitle: String? = nil, panels: [Panel], legend: [LegendEntry], legendTitle: String? = nil) {
        self.title = title
        self.subtitle = subtitle
        self.panels = panels
        self.legend = legend
        self.legendTitle = legendTitle
    }

    // Layout constants (pixels at 96 dpi; a two-panel figure is about 8 inches wide).
    static let tickSize = 12.0
    static let axisTitleSize = 13.0
    static let titleSize = 16.0
    static let legendSize = 12.0
    static let margin = 16.0

    public func render() -> String {
        // Room left of each panel for its widest y tick label and the rotated axis title.
        let widestTick = panels.flatMap { $0.y.labels }.map { SVGDocument.textWidth($0, size: Self.tickSize) }.max() ?? 0
        let left = max(56, widestTick + 36), bottom = 50.0, panelTop = panels.contains { $0.title != nil } ? 24.0 : 8.0, gap = 36.0
        let header = subtitle == nil ? 40.0 : 58.0
        let legendWidth = legend.isEmpty ? 0 : 48 + (legend.map { SVGDocument.textWidth($0.label, size: Self.legendSize) }
            + [legendTitle.map { SVGDocument.textWidth($0, size: Self.legendSize) } ?? 0]).max()!
        let cellWidth = left + panelWidth
        let textWidth = max(SVGDocument.textWidth(title, size: Self.titleSize) * 1.1, subtitle.map { SVGDocument.textWidth($0, size: 12) } ?? 0)
        let width = max(Self.margin + Double(panels.count) * cellWidth + Double(max(panels.count - 1, 0)) * gap + 24 + legendWidth + Self.margin,
                        textWidth + 2 * Self.margin)
        let legendHeight = Double(legend.count) * 20 + (legendTitle == nil ? 0 : 20) + 12
        let height = max(header + panelTop + panelHeight + bottom, header + legendHeight) + Self.margin
        let svg = SVGDocument(width: width, height: height)

        svg.text(title, x: Self.margin, y: 26, size: Self.titleSize, weight: "bold")
        if let subtitle { svg.text(subtitle, x: Self.margin, y: 46, size: 12, fill: "#555555") }

        for (i, panel) in panels.enumerated() {
            let x0 = Self.margin + Double(i) * (cellWidth + gap) + left
            let y0 = header + panelTop
            draw(panel, index: i, svg: svg, x: x0, y: y0, w: panelWidth, h: panelHeight)
        }

        if !legend.isEmpty {
            let lx = Self.margin + Double(panels.count) * cellWidth + Double(max(panels.count - 1, 0)) * gap + 24
            var ly = header + panelTop + 4
            svg.beginGroup([("class", "legend")])
            if let legendTitle {
                svg.text(legendTitle, x: lx, y: ly + 4, size: Self.legendSize, weight: "bold")
                ly += 20
            }
            for entry in legend {
                if let patch = entry.patch {
                    svg.rect(x: lx, y: ly - 6, width: 30, height: 12, fill: patch.color, opacity: patch.opacity)
                } else if let style = entry.style {
                    svg.line(lx, ly, lx + 30, ly, stroke: style.color, width: style.width, dash: style.dash)
                    if let marker = style.marker { svg.marker(marker, x: lx + 15, y: ly, size: 8, color: style.color, hollow: style.hollow) }
                }
                svg.text(entry.label, x: lx + 38, y: ly + 4, size: Self.legendSize)
                ly += 20
            }
            svg.endGroup()
        }
        return svg.render(title: title)
    }

    private func draw(_ panel: Panel, index: Int, svg: SVGDocument, x: Double, y: Double, w: Double, h: Double) {
        func px(_ v: Double) -> Double { x + panel.x.fraction(v) * w }
        func py(_ v: Double) -> Double { y + h - panel.y.fraction(v) * h }

        svg.beginGroup([("class", "panel"), ("data-panel", String(index))])
        if let title = panel.title { svg.text(title, x: x, y: y - 9, size: 13, weight: "bold") }

        // Bands under everything, then the grid at the y ticks.
        if !panel.bands.isEmpty {
            svg.beginGroup([("class", "bands")], clipTo: (x, y, w, h))
            for band in panel.bands {
                let a = px(band.from), b = px(band.to)
                svg.rect(x: a, y: y, width: b - a, height: h, fill: band.color, opacity: band.opacity)
            }
            svg.endGroup()
        }
        for t in panel.y.ticks {
            let ty = py(t)
            guard ty >= y - 0.5 && ty <= y + h + 0.5 else { continue }
            svg.line(x, ty, x + w, ty, stroke: Palette.grid, width: 1)
        }
        if panel.x.isLog {
            for t in panel.x.ticks {
                let tx = px(t)
                guard tx >= x - 0.5 && tx <= x + w + 0.5 else { continue }
                svg.line(tx, y, tx, y + h, stroke: Palette.grid, width: 1)
            }
        }

        // Series, clipped to the plot area.
        svg.beginGroup([("class", "plot-area")], clipTo: (x - 5, y - 5, w + 10, h + 10))
        for bar in panel.bars {
            let a = px(bar.from), b = px(bar.to), top = py(max(bar.y0, bar.y1)), bottom = py(min(bar.y0, bar.y1))
            svg.rect(x: a, y: top, width: b - a, height: max(bottom - top, 0.5), fill: bar.style.color, opacity: 0.75)
            if let marker = bar.style.marker {
                svg.marker(marker, x: (a + b) / 2, y: py(bar.y1), size: 8, color: bar.style.color, hollow: bar.style.hollow)
            }
        }
        let interleaved = Self.interleavedDashes(panel.series, x: px, y: py)
        for (i, series) in panel.series.enumerated() {
            svg.beginGroup([("class", "series"), ("data-label", series.label)])
            let style = series.style
            let dash = interleaved[i]?.dash ?? style.dash
            let dashOffset = interleaved[i]?.offset
            if let level = series.level {
                svg.line(x, py(level), x + w, py(level), stroke: style.color, width: style.width, dash: dash, dashOffset: dashOffset)
            } else {
                let points = series.points.filter { panel.x.fraction($0.x) >= -0.01 && $0.y.isFinite }
                svg.polyline(points.map { (px($0.x), py($0.y)) }, stroke: style.color, width: style.width, dash: dash,
                             dashOffset: dashOffset)
                if panel.markers, let marker = style.marker {
                    for p in points { svg.marker(marker, x: px(p.x), y: py(p.y), size: 8, color: style.color, hollow: style.hollow) }
                }
            }
            svg.endGroup()
        }
        for note in panel.annotations {
            svg.text(note.text, x: px(note.x) + 6, y: py(note.y) - 6, size: 10, fill: note.color)
        }
        svg.endGroup()

        // Frame, ticks and labels.
        svg.line(x, y + h, x + w, y + h, stroke: Palette.axis, width: 1.2)
        svg.line(x, y, x, y + h, stroke: Palette.axis, width: 1.2)
        for (t, label) in zip(panel.x.ticks, panel.x.labels) {
            let tx = px(t)
            guard tx >= x - 0.5 && tx <= x + w + 0.5 else { continue }
            svg.line(tx, y + h, tx, y + h + 5, stroke: Palette.axis, width: 1)
            svg.text(label, x: tx, y: y + h + 19, size: Self.tickSize, anchor: .middle)
        }
        for (t, label) in zip(panel.y.ticks, panel.y.labels) {
            let ty = py(t)
            guard ty >= y - 0.5 && ty <= y + h + 0.5 else { continue }
            svg.line(x - 5, ty, x, ty, stroke: Palette.axis, width: 1)
            svg.text(label, x: x - 8, y: ty + 4, size: Self.tickSize, anchor: .end)
        }
        svg.text(panel.x.title, x: x + w / 2, y: y + h + 40, size: Self.axisTitleSize, anchor: .middle)
        let widest = panel.y.labels.map { SVGDocument.textWidth($0, size: Self.tickSize) }.max() ?? 0
        let titleX = x - max(widest + 22, 40)
        svg.text(panel.y.title, x: titleX, y: y + h / 2, size: Self.axisTitleSize, anchor: .middle, rotate: -90)
        svg.endGroup()
    }

    /// Series that would be drawn on top of one another (levels or points within half a pixel
    /// under the panel's mapping `x`, `y`: e.g. eviction policies whose cache size only depends
    /// on the budget, or a quantized cache's recall of 0.99999996 next to the full cache's 1)
    /// are drawn with interleaved dashes, so each one's colour shows along the shared line
    /// instead of the last one hiding the rest. Index -> dash pattern and offset; nil for a
    /// series drawn as styled.
    static func interleavedDashes(_ series: [Series], x: (Double) -> Double = { $0 }, y: (Double) -> Double = { $0 },
                                  segment: Double = 9) -> [Int: (dash: String, offset: Double)] {
        func near(_ a: Double, _ b: Double) -> Bool { abs(a - b) < 0.5 }
        func same(_ a: Series, _ b: Series) -> Bool {
            if let la = a.level, let lb = b.level { return near(y(la), y(lb)) }
            guard a.level == nil, b.level == nil, a.points.count > 1, a.points.count == b.points.count else { return false }
            return zip(a.points, b.points).allSatisfy { near(x($0.x), x($1.x)) && near(y($0.y), y($1.y)) }
        }
        var groups: [[Int]] = []
        for i in series.indices {
            if let g = groups.firstIndex(where: { same(series[$0[0]], series[i]) }) { groups[g].append(i) } else { groups.append([i]) }
        }
        var out: [Int: (dash: String, offset: Double)] = [:]
        for group in groups where group.count > 1 {
            let k = Double(group.count)
            let dash = "\(SVGDocument.n(segment)) \(SVGDocument.n(segment * (k - 1)))"
            for (r, i) in group.enumerated() {
                // Member r is visible on [r, r+1) segments of every period of k segments.
                out[i] = (dash, r == 0 ? 0 : segment * (k - Double(r)))
            }
        }
        return out
    }
}
