import Foundation

/// Colours, markers and dashes, derived from an index (a policy's place in the registry), so a
/// new policy needs no edit here. The first colours are a fixed base (distinguishable with the
/// common colour-vision deficiencies); beyond it, each further colour is the candidate farthest
/// (in CIELAB) from every colour before it, from black (the full cache) and from white (the
/// page). Every series also differs by marker, and past the markers by dash, so a figure still
/// reads in greyscale.
public enum Palette {
    /// Okabe–Ito without yellow (too light for lines on white): blue, vermillion, bluish green,
    /// reddish purple, orange, sky blue; then Tol's wine, olive and indigo.
    public static let base = [
        "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
        "#882255", "#999933", "#332288"
    ]
    public static let reference = "#000000"
    public static let dashes: [String?] = [nil, "7 4", "2 3", "9 3 2 3"]
    /// Dashes of level lines (always dashed, so they read as references, not data).
    public static let levelDashes = ["7 4", "2 3", "9 3 2 3", "4 2"]
    /// Markers in the order indices take them.
    public static let markers = MarkerShape.allCases
    /// Thought bands: reasoning sky blue, execution bluish green, transition orange (Okabe–Ito).
    public static let thoughts = ["#56B4E9", "#009E73", "#E69F00"]
    static let grid = "#E5E5E5"
    static let axis = "#444444"
    static let text = "#222222"

    /// The colour of index `i` (0, 1, ...): the base, then derived colours.
    public static func color(_ i: Int) -> String {
        precondition(i >= 0)
        if i < base.count { return base[i] }
        let derived = i - base.count < precomputed.count ? precomputed : Self.derived(count: i - base.count + 1)
        return derived[i - base.count]
    }

    /// The marker of index `i`: every shape once, then again.
    public static func marker(_ i: Int) -> MarkerShape { markers[i % markers.count] }

    /// Each round through the markers shifts the dash, so no two indices share colour, marker
    /// and dash even if colours ran out.
    public static func dash(_ i: Int, variant: Int = 0) -> String? {
        dashes[(variant + i / markers.count) % dashes.count]
    }

    /// A policy's index: its place among the registered policies other than the full cache;
    /// an unregistered name comes after them, in the order of `unregistered`. nil for the full
    /// cache, which is drawn in `reference`.
    public static func index(ofPolicy name: String, unregistered: [String] = []) -> Int? {
        let registered = PolicyRegistry.names.filter { $0 != FullCachePolicy.name }
        if name == FullCachePolicy.name { return nil }
        if let i = registered.firstIndex(of: name) { return i }
        let others = unregistered.filter { $0 != FullCachePolicy.name && !registered.contains($0) }
        return registered.count + (others.firstIndex(of: name) ?? others.count)
    }

    /// Colour and marker of a policy (black and a circle for the full cache).
    public static func style(ofPolicy name: String, unregistered: [String] = []) -> SeriesStyle {
        guard let i = index(ofPolicy: name, unregistered: unregistered) else {
            return SeriesStyle(color: reference, marker: .circle)
        }
        return SeriesStyle(color: color(i), marker: marker(i), dash: dash(i))
    }

    // MARK: Derived colours

    /// Enough for every registered policy and then some; more are computed on demand.
    static let precomputed = derived(count: 32)

    /// Candidates: a grid of hues, saturations and lightnesses, keeping those dark enough to
    /// read as a line on white and light enough to tell from black (L* in 25...60). Saturation
    /// stays moderate: at full saturation the farthest points are neon magentas and blues that
    /// differ in CIELAB more than they do to the eye.
    static let candidates: [(hex: String, lab: (Double, Double, Double))] = {
        var out: [(String, (Double, Double, Double))] = []
        for h in 0..<36 {
            for l in [0.25, 0.35, 0.45, 0.55] {
                for s in [0.4, 0.55, 0.7] {
                    let hex = hexFromHSL(hue: Double(h) / 36, saturation: s, lightness: l)
                    let lab = Self.lab(hex)
                    if lab.0 >= 25 && lab.0 <= 60 { out.append((hex, lab)) }
                }
            }
        }
        return out
    }()

    /// Farthest-point sampling: each new colour maximises its smallest CIELAB distance to the
    /// base, black, white and the colours derived before it (ties: the first candidate). Past
    /// the candidates' number, colours repeat.
    static func derived(count: Int) -> [String] {
        var taken = (base + [reference, "#FFFFFF"]).map(lab)
        var nearest = candidates.map { c in taken.map { distance(c.lab, $0) }.min()! }
        var out: [String] = []
        while out.count < count {
            let farther = { (a: Int, b: Int) in nearest[a] < nearest[b] || (nearest[a] == nearest[b] && a > b) }
            guard let best = nearest.indices.max(by: farther), nearest[best] > 0 else { break }
            out.append(candidates[best].hex)
            taken.append(candidates[best].lab)
            for j in candidates.indices {
                nearest[j] = min(nearest[j], distance(candidates[j].lab, candidates[best].lab))
            }
        }
        let distinct = max(out.count, 1)
        while out.count < count { out.append(out.isEmpty ? base[0] : out[out.count % distinct]) }
        return out
    }

    /// CIE76 colour difference.
    static func distance(_ a: (Double, Double, Double), _ b: (Double, Double, Double)) -> Double {
        ((a.0 - b.0) * (a.0 - b.0) + (a.1 - b.1) * (a.1 - b.1) + (a.2 - b.2) * (a.2 - b.2)).squareRoot()
    }

    /// `#RRGGBB` (sRGB, D65) to CIELAB.
    static func lab(_ hex: String) -> (Double, Double, Double) {
        let value = Int(hex.dropFirst(), radix: 16) ?? 0
        func linear(_ c: Int) -> Double {
            let v = Double(c) / 255
            return v <= 0.04045 ? v / 12.92 : pow((v + 0.055) / 1.055, 2.4)
        }
        let r = linear(value >> 16 & 0xFF), g = linear(value >> 8 & 0xFF), b = linear(value & 0xFF)
        let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
        let y = 0.2126 * r + 0.7152 * g + 0.0722 * b
        let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883
        func f(_ t: Double) -> Double { t > 0.008856 ? cbrt(t) : 7.787 * t + 16.0 / 116 }
        return (116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z)))
    }

    static func hexFromHSL(hue: Double, saturation: Double, lightness: Double) -> String {
        let q = lightness < 0.5 ? lightness * (1 + saturation) : lightness + saturation - lightness * saturation
        let p = 2 * lightness - q
        func channel(_ t0: Double) -> Int {
            let t = t0 < 0 ? t0 + 1 : (t0 > 1 ? t0 - 1 : t0)
            let v = t < 1.0 / 6 ? p + (q - p) * 6 * t : t < 0.5 ? q : t < 2.0 / 3 ? p + (q - p) * (2.0 / 3 - t) * 6 : p
            return Int((v * 255).rounded())
        }
        return String(format: "#%02X%02X%02X", channel(hue + 1.0 / 3), channel(hue), channel(hue - 1.0 / 3))
    }
}

/// How a series is drawn.
public struct SeriesStyle: Sendable {
    public var color: String
    public var marker: MarkerShape?
    public var dash: String?
    public var width: Double = 1.8
    /// Hollow markers tell variants of one policy apart where a lone point has no dash to show.
    public var hollow = false
    public var markerSize = 8.0

    public init(
        color: String, marker: MarkerShape? = nil, dash: String? = nil, width: Double = 1.8,
        hollow: Bool = false, markerSize: Double = 8
    ) {
        self.color = color
        self.marker = marker
        self.dash = dash
        self.width = width
        self.hollow = hollow
        self.markerSize = markerSize
    }
}

/// One line of a chart. A `level` series is a horizontal line across the panel (a run with no
/// value on the x axis, such as the full cache on a budget axis).
public struct Series: Sendable {
    public var label: String
    public var points: [(x: Double, y: Double)]
    public var style: SeriesStyle
    public var level: Double?
    /// What the series is (its SVG group's class): `series` for a line of the legend, others
    /// (`trace-points`, `interval`) for marks that belong to one, which are never compared
    /// for coincidence.
    public var role: String
    /// Joined by a line (false: markers only).
    public var connect: Bool

    public init(
        label: String, points: [(x: Double, y: Double)], style: SeriesStyle, level: Double? = nil,
        role: String = "series", connect: Bool = true
    ) {
        self.label = label
        self.points = points
        self.style = style
        self.level = level
        self.role = role
        self.connect = connect
    }
}

/// A row of coloured segments over the x axis, above a panel's plot area (e.g. the thought
/// type of every step), with its name at the left.
public struct Strip: Sendable {
    public var label: String
    public var segments: [Band]

    public init(label: String, segments: [Band]) {
        self.label = label
        self.segments = segments
    }
}

/// A shaded span of x (a thought segment).
public struct Band: Sendable {
    public var from: Double
    public var to: Double
    public var color: String
    public var opacity: Double

    public init(from: Double, to: Double, color: String, opacity: Double) {
        self.from = from
        self.to = to
        self.color = color
        self.opacity = opacity
    }
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
    /// Category rows above the plot area, sharing its x axis.
    public var strips: [Strip] = []

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
    /// Lines of text under the panels (e.g. which series are identical in one panel).
    public var notes: [String] = []

    public init(
        title: String, subtitle: String? = nil, panels: [Panel], legend: [LegendEntry], legendTitle: String? = nil
    ) {
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

    /// Height of one strip row and the gap under the strips.
    static let stripHeight = 14.0
    static let stripGap = 4.0

    /// Identical lines of every panel (`identicalGroups`), by panel index.
    func identities() -> [[[Int]]] { panels.map { Self.identicalGroups($0.series) } }

    /// Legend labels with a note for each series identical to an earlier one in every panel
    /// that has both (`streaming (= h2o)`), and footnotes for those identical in some panels
    /// only (`(c): kivi = full`).
    func identityNotes() -> (labels: [String: String], footnotes: [String]) {
        var byPanel: [(panel: Int, label: String, twin: String)] = []
        for (p, groups) in identities().enumerated() {
            for group in groups {
                let first = panels[p].series[group[0]].label
                for i in group.dropFirst() { byPanel.append((p, panels[p].series[i].label, first)) }
            }
        }
        let labelsOfPanel = panels.map { Set($0.series.filter { $0.role == "series" }.map(\.label)) }
        var labels: [String: String] = [:]
        // Per panel and twin, the lines identical to it there only.
        var partial: [(panel: Int, twin: String, labels: [String])] = []
        for (p, label, twin) in byPanel {
            let both = labelsOfPanel.filter { $0.contains(label) && $0.contains(twin) }.count
            let same = byPanel.filter { $0.label == label && $0.twin == twin }.count
            if same == both {
                labels[label] = "\(label) (= \(twin))"
            } else if let k = partial.firstIndex(where: { $0.panel == p && $0.twin == twin }) {
                partial[k].labels.append(label)
            } else {
                partial.append((p, twin, [label]))
            }
        }
        let footnotes = partial.map { p, twin, same in
            let name = panels[p].title.flatMap { $0.split(separator: " ").first.map(String.init) } ?? "panel \(p + 1)"
            return "\(name): \(same.joined(separator: ", ")) = \(twin) (identical values, drawn interleaved)"
        }
        return (labels, footnotes)
    }

    /// Coincident lines of a panel under its on-screen scale (`coincidentGroups`).
    func coincident(_ panel: Panel) -> [[Int]] {
        let h = panelHeight - Self.stripBlock(panel)
        return Self.coincidentGroups(
            panel.series, x: { panel.x.fraction($0) * panelWidth },
            y: { panel.y.fraction($0) * h })
    }

    /// Height the strips of a panel take above its plot area.
    public static func stripBlock(_ panel: Panel) -> Double { stripBlock(count: panel.strips.count) }

    public static func stripBlock(count: Int) -> Double {
        count == 0 ? 0 : Double(count) * (stripHeight + stripGap) + stripGap
    }

    public func render() -> String {
        let (notedLabels, footnotes) = identityNotes()
        let notes = self.notes + footnotes
        let legend = self.legend.map { entry -> LegendEntry in
            var out = entry
            if let noted = notedLabels[entry.label] { out.label = noted }
            return out
        }
        // A dense line shows no marker (so neither does its legend line) unless it coincides
        // with another, where its markers tell them apart.
        var unmarked = Set<String>(), marked = Set<String>()
        for panel in panels {
            let together = Set(coincident(panel).joined())
            for (i, series) in panel.series.enumerated() where series.role == "series" {
                if panel.markers || together.contains(i) {
                    marked.insert(series.label)
                } else {
                    unmarked.insert(series.label)
                }
            }
        }
        unmarked.subtract(marked)

        // Room left of each panel for its widest y tick label (or strip label) and the rotated axis title.
        let leftLabels = panels.flatMap { $0.y.labels + $0.strips.map(\.label) }
        let widestTick = leftLabels.map { SVGDocument.textWidth($0, size: Self.tickSize) }.max() ?? 0
        let left = max(56, widestTick + 36), bottom = 50.0, panelTop = panels.contains { $0.title != nil } ? 24.0 : 8.0,
            gap = 36.0
        let legendWidth =
            legend.isEmpty
            ? 0
            : 48
                + (legend.map { SVGDocument.textWidth($0.label, size: Self.legendSize) }
                + [legendTitle.map { SVGDocument.textWidth($0, size: Self.legendSize) } ?? 0]).max()!
        let cellWidth = left + panelWidth
        let textWidth = max(
            SVGDocument.textWidth(title, size: Self.titleSize) * 1.1,
            notes.map { SVGDocument.textWidth($0, size: 11) }.max() ?? 0)
        let width = max(
            Self.margin + Double(panels.count) * cellWidth + Double(max(panels.count - 1, 0)) * gap + 24 + legendWidth
                + Self.margin,
            textWidth + 2 * Self.margin)
        // The subtitle wraps at its separators to the figure's width, never widening it.
        let subtitleLines = subtitle.map { Self.wrap($0, width: width - 2 * Self.margin, size: 12) } ?? []
        let header = 40.0 + 16 * Double(subtitleLines.count) + (subtitleLines.isEmpty ? 0 : 2)
        let legendHeight = Double(legend.count) * 20 + (legendTitle == nil ? 0 : 20) + 12
        let body = max(header + panelTop + panelHeight + bottom, header + legendHeight)
        let height = body + Double(notes.count) * 16 + Self.margin
        let svg = SVGDocument(width: width, height: height)

        svg.text(title, x: Self.margin, y: 26, size: Self.titleSize, weight: "bold")
        for (k, line) in subtitleLines.enumerated() {
            svg.text(line, x: Self.margin, y: 46 + 16 * Double(k), size: 12, fill: "#555555")
        }

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
            for (entry, original) in zip(legend, self.legend) {
                if let patch = entry.patch {
                    svg.rect(x: lx, y: ly - 6, width: 30, height: 12, fill: patch.color, opacity: patch.opacity)
                } else if let style = entry.style {
                    if style.width > 0 {
                        svg.line(lx, ly, lx + 30, ly, stroke: style.color, width: style.width, dash: style.dash)
                    }
                    if let marker = style.marker, !unmarked.contains(original.label) {
                        svg.marker(
                            marker, x: lx + 15, y: ly, size: style.markerSize, color: style.color,
                            hollow: style.hollow)
                    }
                }
                svg.text(entry.label, x: lx + 38, y: ly + 4, size: Self.legendSize)
                ly += 20
            }
            svg.endGroup()
        }
        if !notes.isEmpty {
            svg.beginGroup([("class", "notes")])
            for (k, note) in notes.enumerated() {
                svg.text(note, x: Self.margin, y: body + 4 + Double(k) * 16, size: 11, fill: "#555555")
            }
            svg.endGroup()
        }
        return svg.render(title: title)
    }

    private func draw(_ panel: Panel, index: Int, svg: SVGDocument, x: Double, y y0: Double, w: Double, h h0: Double) {
        // Strips take the top of the panel; the plot area is what is left under them.
        let stripBlock = Self.stripBlock(panel)
        let y = y0 + stripBlock, h = h0 - stripBlock
        func px(_ v: Double) -> Double { x + panel.x.fraction(v) * w }
        func py(_ v: Double) -> Double { y + h - panel.y.fraction(v) * h }

        svg.beginGroup([("class", "panel"), ("data-panel", String(index))])
        if let title = panel.title { svg.text(title, x: x, y: y0 - 9, size: 13, weight: "bold") }

        for (k, strip) in panel.strips.enumerated() {
            let top = y0 + Double(k) * (Self.stripHeight + Self.stripGap)
            svg.beginGroup([("class", "strip"), ("data-label", strip.label)], clipTo: (x, top, w, Self.stripHeight))
            svg.rect(x: x, y: top, width: w, height: Self.stripHeight, fill: "#F4F4F4")
            for segment in strip.segments {
                let a = px(segment.from), b = px(segment.to)
                svg.rect(
                    x: a, y: top, width: max(b - a, 0.5), height: Self.stripHeight, fill: segment.color,
                    opacity: segment.opacity)
            }
            svg.endGroup()
            svg.text(strip.label, x: x - 8, y: top + Self.stripHeight - 3, size: Self.tickSize, anchor: .end)
        }

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
                svg.marker(
                    marker, x: (a + b) / 2, y: py(bar.y1), size: bar.style.markerSize, color: bar.style.color,
                    hollow: bar.style.hollow)
            }
        }
        let interleaved = Self.interleavedDashes(panel.series, x: px, y: py)
        // Members of a coincident group: rank in the group and its size, for their markers.
        var rank: [Int: (r: Int, k: Int)] = [:]
        for group in Self.coincidentGroups(panel.series, x: px, y: py) {
            for (r, i) in group.enumerated() { rank[i] = (r, group.count) }
        }
        for (i, series) in panel.series.enumerated() {
            svg.beginGroup([("class", series.role), ("data-label", series.label)])
            let style = series.style
            let dash = interleaved[i]?.dash ?? style.dash
            let dashOffset = interleaved[i]?.offset
            if let level = series.level {
                svg.line(
                    x, py(level), x + w, py(level), stroke: style.color, width: style.width, dash: dash,
                    dashOffset: dashOffset)
            } else {
                let points = series.points.filter { panel.x.fraction($0.x) >= -0.01 && $0.y.isFinite }
                let pixels = points.map { (px($0.x), py($0.y)) }
                if series.connect && style.width > 0 {
                    svg.polyline(pixels, stroke: style.color, width: style.width, dash: dash, dashOffset: dashOffset)
                }
                if let marker = style.marker {
                    if panel.markers || !series.connect {
                        // Coincident markers are drawn largest first, so each shows as a ring.
                        let grow = rank[i].map { Double($0.k - 1 - $0.r) * 4 } ?? 0
                        for p in pixels {
                            svg.marker(
                                marker, x: p.0, y: p.1, size: style.markerSize + grow, color: style.color,
                                hollow: style.hollow)
                        }
                    } else if let (r, k) = rank[i] {
                        // A dense line among others on the same pixels: a few markers, staggered
                        // so that each member's sit where the others' do not.
                        for mx in Self.staggeredMarkerXs(from: x, width: w, rank: r, of: k) {
                            guard let my = Self.interpolate(pixels, at: mx) else { continue }
                            svg.marker(
                                marker, x: mx, y: my, size: style.markerSize, color: style.color,
                                hollow: style.hollow)
                        }
                    }
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

    /// `text` in lines no wider than `width`, broken after " · " or "; " (a part wider than a
    /// line gets a line of its own).
    static func wrap(_ text: String, width: Double, size: Double) -> [String] {
        var parts: [String] = []
        var current = ""
        var rest = Substring(text)
        while !rest.isEmpty {
            let breaks = [rest.range(of: " · "), rest.range(of: "; ")].compactMap { $0 }
            let next = breaks.min { $0.lowerBound < $1.lowerBound }
            let end = next?.upperBound ?? rest.endIndex
            current += rest[..<end]
            rest = rest[end...]
            parts.append(current)
            current = ""
        }
        var lines: [String] = []
        for part in parts {
            if let last = lines.last, SVGDocument.textWidth(last + part, size: size) <= width {
                lines[lines.count - 1] = last + part
            } else {
                lines.append(part)
            }
        }
        return lines.map { $0.trimmingCharacters(in: .whitespaces) }
    }

    /// Where member `rank` of `count` coincident dense lines puts its markers: about one every
    /// 70 pixels, each member's shifted by its share of that period.
    static func staggeredMarkerXs(from x: Double, width: Double, rank: Int, of count: Int) -> [Double] {
        let period = width / max(1, (width / 70).rounded())
        var out: [Double] = []
        var at = x + period * (Double(rank) + 0.5) / Double(max(count, 1))
        while at < x + width {
            out.append(at)
            at += period
        }
        return out
    }

    /// The y of a polyline (sorted by x) at `x`; nil outside it.
    static func interpolate(_ points: [(Double, Double)], at x: Double) -> Double? {
        guard let first = points.first, let last = points.last, x >= first.0, x <= last.0 else { return nil }
        for (a, b) in zip(points, points.dropFirst()) where x >= a.0 && x <= b.0 {
            return b.0 > a.0 ? a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0) : a.1
        }
        return last.1
    }

    /// Lines (`series` role) with the same y at every x (or the same level): groups of two or
    /// more indices, in drawing order. The values must agree to a relative 1e-12, not just on
    /// screen: this is what a figure notes as "identical".
    static func identicalGroups(_ series: [Series]) -> [[Int]] {
        func equal(_ a: Double, _ b: Double) -> Bool { a == b || abs(a - b) <= 1e-12 * max(abs(a), abs(b)) }
        func same(_ a: Series, _ b: Series) -> Bool {
            if let la = a.level, let lb = b.level { return equal(la, lb) }
            guard a.level == nil, b.level == nil, !a.points.isEmpty, a.points.count == b.points.count else {
                return false
            }
            return zip(a.points, b.points).allSatisfy { equal($0.x, $1.x) && equal($0.y, $1.y) }
        }
        return groups(series, same)
    }

    /// Lines within half a pixel of each other (identical ones included), as `identicalGroups`.
    static func coincidentGroups(
        _ series: [Series], x: (Double) -> Double = { $0 },
        y: (Double) -> Double = { $0 }
    ) -> [[Int]] {
        func near(_ a: Double, _ b: Double) -> Bool { abs(a - b) < 0.5 }
        func same(_ a: Series, _ b: Series) -> Bool {
            if let la = a.level, let lb = b.level { return near(y(la), y(lb)) }
            guard a.level == nil, b.level == nil, a.points.count > 1, a.points.count == b.points.count else {
                return false
            }
            return zip(a.points, b.points).allSatisfy { near(x($0.x), x($1.x)) && near(y($0.y), y($1.y)) }
        }
        return groups(series, same)
    }

    private static func groups(_ series: [Series], _ same: (Series, Series) -> Bool) -> [[Int]] {
        var groups: [[Int]] = []
        for i in series.indices where series[i].role == "series" {
            if let g = groups.firstIndex(where: { same(series[$0[0]], series[i]) }) {
                groups[g].append(i)
            } else {
                groups.append([i])
            }
        }
        return groups.filter { $0.count > 1 }
    }

    /// Series that would be drawn on top of one another (levels or points within half a pixel
    /// under the panel's mapping `x`, `y`: e.g. eviction policies whose cache size only depends
    /// on the budget, or a quantized cache's recall of 0.99999996 next to the full cache's 1)
    /// are drawn with interleaved dashes, so each one's colour shows along the shared line
    /// instead of the last one hiding the rest. Index -> dash pattern and offset; nil for a
    /// series drawn as styled.
    static func interleavedDashes(
        _ series: [Series], x: (Double) -> Double = { $0 }, y: (Double) -> Double = { $0 },
        segment: Double = 9
    ) -> [Int: (dash: String, offset: Double)] {
        var out: [Int: (dash: String, offset: Double)] = [:]
        for group in coincidentGroups(series, x: x, y: y) {
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
