import Foundation

/// Formatting shared by the text reports and the JSON-line outputs.
public enum Format {
    /// A JSON string literal: quotes, backslashes and control characters escaped (labels may
    /// hold any of them).
    public static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Appends `[v0,v1,...]` to a JSON line being built (long position lists, no encoder).
    public static func appendJSONArray(_ values: [Int32], to s: inout String) {
        s += "["
        for (i, v) in values.enumerated() {
            if i > 0 { s += "," }
            s += String(v)
        }
        s += "]"
    }

    /// `text` safe to echo on a terminal: control characters (newlines, escape sequences that
    /// could rewrite the screen, C1 controls) shown as `\n`, `\t`, `\e` or `\u{XX}`.
    public static func printable(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{1B}": out += "\\e"
            case _ where isControl(scalar): out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Text from an input quoted in an error message: printable, and cut to `limit` characters
    /// so a huge line or attribute cannot flood the terminal (the message says how long it was).
    public static func excerpt(_ text: some StringProtocol, limit: Int = 80) -> String {
        let count = text.count
        guard count > limit else { return printable(String(text)) }
        return printable(String(text.prefix(limit))) + "… (\(count) characters)"
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    /// 1536 -> "1.5 KiB".
    public static func bytes(_ value: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = value
        var unit = 0
        while abs(v) >= 1024 && unit < units.count - 1 {
            v /= 1024
            unit += 1
        }
        return unit == 0 ? String(format: "%.0f B", v) : String(format: "%.2f %@", v, units[unit])
    }

    public static func fixed(_ value: Double, _ digits: Int = 4) -> String {
        value.isNaN ? "n/a" : String(format: "%.\(digits)f", value)
    }

    /// Short, CSV-safe rendering of a float: no locale; infinities as `inf`/`-inf` (an infinite
    /// KL is a result); NaN as an empty cell, like an unavailable metric.
    public static func csv(_ value: Double) -> String {
        if value.isNaN { return "" }
        if value.isInfinite { return value > 0 ? "inf" : "-inf" }
        return String(format: "%.6g", value)
    }
}

/// A plain-text table with right-aligned numeric columns.
public struct TextTable {
    public var headers: [String]
    public var rows: [[String]] = []
    /// Columns aligned left (the rest align right).
    public var leftAligned: Set<Int> = [0]

    public init(headers: [String]) { self.headers = headers }

    public mutating func add(_ row: [String]) { rows.append(row) }

    public func render() -> String {
        let widths = headers.indices.map { c in ([headers[c]] + rows.map { $0[c] }).map(\.count).max() ?? 0 }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { c, cell in
                let pad = String(repeating: " ", count: widths[c] - cell.count)
                return leftAligned.contains(c) ? cell + pad : pad + cell
            }.joined(separator: "  ")
        }
        let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
        return ([line(headers), rule] + rows.map(line)).joined(separator: "\n")
    }
}
