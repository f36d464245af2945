import Foundation

/// A small SVG writer: shapes and text appended in drawing order, rendered as one document.
public final class SVGDocument {
    public let width: Double
    public let height: Double
    private var parts: [String] = []
    private var clipCount = 0

    public init(width: Double, height: Double) {
        self.width = width
        self.height = height
    }

    public enum Anchor: String {
        case start, middle, end
    }

    /// Coordinates with at most two decimals, no trailing zeros: compact and deterministic.
    static func n(_ v: Double) -> String {
        guard v.isFinite else { return "0" }
        var s = String(format: "%.2f", v)
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s == "-0" ? "0" : s
    }

    public static func escape(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }

    private func attributes(_ pairs: [(String, String?)]) -> String {
        pairs.compactMap { name, value in value.map { " \(name)=\"\(Self.escape($0))\"" } }.joined()
    }

    public func rect(
        x: Double, y: Double, width: Double, height: Double, fill: String, stroke: String? = nil,
        strokeWidth: Double? = nil, opacity: Double? = nil
    ) {
        parts.append(
            "<rect x=\"\(Self.n(x))\" y=\"\(Self.n(y))\" width=\"\(Self.n(max(width, 0)))\" "
                + "height=\"\(Self.n(max(height, 0)))\""
                + attributes([
                    ("fill", fill), ("stroke", stroke), ("stroke-width", strokeWidth.map(Self.n)),
                    ("fill-opacity", opacity.map(Self.n))
                ]) + "/>")
    }

    public func line(
        _ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, stroke: String, width: Double = 1, dash: String? = nil,
        dashOffset: Double? = nil
    ) {
        parts.append(
            "<line x1=\"\(Self.n(x1))\" y1=\"\(Self.n(y1))\" x2=\"\(Self.n(x2))\" y2=\"\(Self.n(y2))\""
                + attributes([
                    ("stroke", stroke), ("stroke-width", Self.n(width)), ("stroke-dasharray", dash),
                    ("stroke-dashoffset", dashOffset.map(Self.n))
                ]) + "/>")
    }

    public func polyline(
        _ points: [(Double, Double)], stroke: String, width: Double = 1.5, dash: String? = nil,
        dashOffset: Double? = nil
    ) {
        guard points.count > 1 else { return }
        let list = points.map { "\(Self.n($0.0)),\(Self.n($0.1))" }.joined(separator: " ")
        parts.append(
            "<polyline points=\"\(list)\" fill=\"none\""
                + attributes([
                    ("stroke", stroke), ("stroke-width", Self.n(width)), ("stroke-dasharray", dash),
                    ("stroke-dashoffset", dashOffset.map(Self.n)),
                    ("stroke-linejoin", "round"), ("stroke-linecap", dashOffset == nil ? "round" : "butt")
                ]) + "/>")
    }

    /// A point marker; a hollow one is white inside with a coloured outline.
    public func marker(_ shape: MarkerShape, x: Double, y: Double, size: Double, color: String, hollow: Bool = false) {
        let r = size / 2
        let fill = hollow ? "white" : color
        let outline = hollow ? " stroke=\"\(color)\" stroke-width=\"1.6\"" : " stroke=\"white\" stroke-width=\"0.8\""
        switch shape {
        case .circle:
            parts.append(
                "<circle cx=\"\(Self.n(x))\" cy=\"\(Self.n(y))\" r=\"\(Self.n(r))\" fill=\"\(fill)\"\(outline)/>")
        case .square:
            let s = r * 0.9
            parts.append(
                "<rect x=\"\(Self.n(x - s))\" y=\"\(Self.n(y - s))\" width=\"\(Self.n(2 * s))\" "
                    + "height=\"\(Self.n(2 * s))\" fill=\"\(fill)\"\(outline)/>"
            )
        case .triangleUp, .triangleDown, .diamond, .triangleLeft, .triangleRight:
            let pts: [(Double, Double)]
            switch shape {
            case .triangleUp: pts = [(x, y - r * 1.15), (x + r * 1.05, y + r * 0.75), (x - r * 1.05, y + r * 0.75)]
            case .triangleDown: pts = [(x, y + r * 1.15), (x + r * 1.05, y - r * 0.75), (x - r * 1.05, y - r * 0.75)]
            case .triangleLeft: pts = [(x - r * 1.15, y), (x + r * 0.75, y - r * 1.05), (x + r * 0.75, y + r * 1.05)]
            case .triangleRight: pts = [(x + r * 1.15, y), (x - r * 0.75, y - r * 1.05), (x - r * 0.75, y + r * 1.05)]
            default: pts = [(x, y - r * 1.2), (x + r, y), (x, y + r * 1.2), (x - r, y)]
            }
            let list = pts.map { "\(Self.n($0.0)),\(Self.n($0.1))" }.joined(separator: " ")
            parts.append("<polygon points=\"\(list)\" fill=\"\(fill)\"\(outline)/>")
        case .pentagon, .hexagon, .star:
            // Regular polygons (a star alternates outer and inner radius), first vertex on top.
            let corners = shape == .hexagon ? 6 : (shape == .pentagon ? 5 : 10)
            let pts = (0..<corners).map { i -> (Double, Double) in
                let angle = -Double.pi / 2 + 2 * Double.pi * Double(i) / Double(corners)
                let radius = shape == .star && i % 2 == 1 ? r * 0.5 : r * 1.1
                return (x + radius * cos(angle), y + radius * sin(angle))
            }
            let list = pts.map { "\(Self.n($0.0)),\(Self.n($0.1))" }.joined(separator: " ")
            parts.append("<polygon points=\"\(list)\" fill=\"\(fill)\"\(outline)/>")
        case .cross:
            // Strokes only: hollow and filled look alike, thinner when hollow.
            let s = r * 0.85
            let d =
                "M\(Self.n(x - s)),\(Self.n(y - s))L\(Self.n(x + s)),\(Self.n(y + s))"
                + "M\(Self.n(x - s)),\(Self.n(y + s))L\(Self.n(x + s)),\(Self.n(y - s))"
            parts.append(
                "<path d=\"\(d)\" stroke=\"\(color)\" stroke-width=\"\(hollow ? "1.2" : "2")\" fill=\"none\"/>")
        case .hourglass, .bowtie:
            let a = r * 1.0, b = r * 1.1
            let pts =
                shape == .hourglass
                ? [(x - a, y - b), (x + a, y - b), (x - a, y + b), (x + a, y + b)]
                : [(x - b, y - a), (x + b, y + a), (x + b, y - a), (x - b, y + a)]
            let list = pts.map { "\(Self.n($0.0)),\(Self.n($0.1))" }.joined(separator: " ")
            parts.append("<polygon points=\"\(list)\" fill=\"\(fill)\"\(outline)/>")
        case .asterisk:
            // Strokes only, like the cross and the plus: three lines through the centre.
            let s = r * 1.05
            let d = (0..<3).map { i -> String in
                let angle = Double.pi / 2 + Double.pi * Double(i) / 3
                let dx = s * cos(angle), dy = s * sin(angle)
                return "M\(Self.n(x - dx)),\(Self.n(y - dy))L\(Self.n(x + dx)),\(Self.n(y + dy))"
            }.joined()
            parts.append(
                "<path d=\"\(d)\" stroke=\"\(color)\" stroke-width=\"\(hollow ? "1.2" : "2")\" fill=\"none\"/>")
        case .plus:
            let s = r * 1.05
            let d =
                "M\(Self.n(x - s)),\(Self.n(y))L\(Self.n(x + s)),\(Self.n(y))"
                + "M\(Self.n(x)),\(Self.n(y - s))L\(Self.n(x)),\(Self.n(y + s))"
            parts.append(
                "<path d=\"\(d)\" stroke=\"\(color)\" stroke-width=\"\(hollow ? "1.2" : "2.2")\" fill=\"none\"/>")
        }
    }

    public func text(
        _ s: String, x: Double, y: Double, size: Double = 12, anchor: Anchor = .start, weight: String? = nil,
        fill: String = "#222222", rotate: Double? = nil, baseline: String? = nil
    ) {
        var attrs = "x=\"\(Self.n(x))\" y=\"\(Self.n(y))\" font-size=\"\(Self.n(size))\" fill=\"\(fill)\""
        if anchor != .start { attrs += " text-anchor=\"\(anchor.rawValue)\"" }
        if let weight { attrs += " font-weight=\"\(weight)\"" }
        if let baseline { attrs += " dominant-baseline=\"\(baseline)\"" }
        if let rotate { attrs += " transform=\"rotate(\(Self.n(rotate)) \(Self.n(x)) \(Self.n(y)))\"" }
        parts.append("<text \(attrs)>\(Self.escape(s))</text>")
    }

    /// Starts a group; `attributes` such as class and data-* make figures checkable by tests.
    public func beginGroup(
        _ attributes: [(String, String)] = [], clipTo clip: (x: Double, y: Double, width: Double, height: Double)? = nil
    ) {
        var attrs = attributes.map { " \($0.0)=\"\(Self.escape($0.1))\"" }.joined()
        if let clip {
            clipCount += 1
            let id = "clip\(clipCount)"
            parts.append(
                "<clipPath id=\"\(id)\"><rect x=\"\(Self.n(clip.x))\" y=\"\(Self.n(clip.y))\" "
                    + "width=\"\(Self.n(clip.width))\" height=\"\(Self.n(clip.height))\"/></clipPath>"
            )
            attrs += " clip-path=\"url(#\(id))\""
        }
        parts.append("<g\(attrs)>")
    }

    public func endGroup() { parts.append("</g>") }

    public func render(title: String) -> String {
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out +=
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Self.n(width))\" height=\"\(Self.n(height))\" "
            + "viewBox=\"0 0 \(Self.n(width)) \(Self.n(height))\""
        out += " font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
        out += "<title>\(Self.escape(title))</title>\n"
        out += "<rect x=\"0\" y=\"0\" width=\"\(Self.n(width))\" height=\"\(Self.n(height))\" fill=\"white\"/>\n"
        out += parts.joined(separator: "\n")
        out += "\n</svg>\n"
        return out
    }

    /// Rough width of a text run in this family (no font metrics at hand): enough to lay out
    /// legends and margins so text does not collide.
    public static func textWidth(_ s: String, size: Double) -> Double {
        var units = 0.0
        for c in s {
            switch c {
            case "i", "l", "j", "t", "f", "r", "I", ".", ",", ":", ";", "'", "|", "(", ")", "[", "]", " ": units += 0.36
            case "m", "w", "M", "W": units += 0.9
            case "A"..."Z": units += 0.68
            default: units += 0.58
            }
        }
        return units * size
    }
}

public enum MarkerShape: CaseIterable, Sendable {
    case circle, square, triangleUp, diamond, triangleDown, cross, triangleLeft, triangleRight, plus, pentagon, hexagon,
        star
    /// Two triangles meeting at their tips: vertical (hourglass) or horizontal (bowtie); and a
    /// six-armed asterisk of strokes.
    case hourglass, bowtie, asterisk
}
