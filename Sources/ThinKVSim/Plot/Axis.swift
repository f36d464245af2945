import Foundation

/// One axis: its domain, scale, ticks with labels, and title.
public struct Axis: Sendable {
    public enum Scale: Sendable {
        case linear
        /// Logarithmic; ticks at powers of the base (2 for budgets and bytes, 10 otherwise).
        case log(Double)
    }

    public var lower: Double
    public var upper: Double
    public var scale: Scale
    public var ticks: [Double]
    public var labels: [String]
    public var title: String

    /// Position of `v` along the axis, 0 at `lower` and 1 at `upper`.
    public func fraction(_ v: Double) -> Double {
        switch scale {
        case .linear:
            return upper > lower ? (v - lower) / (upper - lower) : 0.5
        case .log:
            guard v > 0 else { return -1 }
            let a = Foundation.log(lower), b = Foundation.log(upper)
            return b > a ? (Foundation.log(v) - a) / (b - a) : 0.5
        }
    }

    public var isLog: Bool { if case .log = scale { return true } else { return false } }

    // MARK: Nice numbers

    /// Heckbert's nice number: 1, 2, 5 or 10 times a power of ten, rounded or ceiled.
    static func niceNumber(_ x: Double, round: Bool) -> Double {
        guard x > 0 else { return 1 }
        let exponent = floor(log10(x))
        let fraction = x / pow(10, exponent)
        let nice: Double
        if round {
            nice = fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10
        } else {
            nice = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10
        }
        return nice * pow(10, exponent)
    }

    /// A linear axis over [min, max] widened to nice tick values (about `count` ticks).
    /// With `tight`, the domain is exactly [min, max] and the ticks are the nice values inside
    /// it (for step axes, which should end where the data ends). `pad` widens the domain by that
    /// fraction on both sides without adding ticks, so markers do not sit on the frame.
    public static func linear(
        min: Double, max: Double, title: String, count: Int = 5, includeZero: Bool = false,
        clampUpper: Double? = nil, unit: Double = 1, tight: Bool = false, pad: Double = 0
    ) -> Axis {
        var lo = includeZero ? Swift.min(min, 0) : min
        var hi = includeZero ? Swift.max(max, 0) : max
        if !(lo.isFinite && hi.isFinite) { lo = 0; hi = 1 }
        if hi - lo < 1e-12 * Swift.max(abs(hi), 1) {
            // A flat series: open a small window around it.
            let pad = hi == 0 ? 1 : abs(hi) * 0.1
            lo -= pad
            hi += pad
            if includeZero && min >= 0 { lo = Swift.max(lo, 0) }
        }
        let step =
            niceNumber(niceNumber((hi - lo) / unit, round: false) / Double(Swift.max(count - 1, 1)), round: true) * unit
        var lower = floor(lo / step) * step
        var upper = ceil(hi / step) * step
        if let clampUpper, upper > clampUpper, max <= clampUpper { upper = clampUpper }
        if includeZero && min >= 0 { lower = Swift.max(lower, 0) }
        var ticks: [Double] = []
        var k = 0.0
        while lower + k * step <= upper + step * 1e-9 {
            let t = lower + k * step  // multiples, not repeated sums, so labels do not drift
            ticks.append(abs(t) < step * 1e-9 ? 0 : t)
            k += 1
        }
        if tight {
            lower = lo
            upper = hi
            ticks = ticks.filter { $0 >= lo - step * 1e-9 && $0 <= hi + step * 1e-9 }
        }
        let decimals = Swift.max(0, -Int(floor(log10(step / unit) + 1e-9)))
        let labels = ticks.map { String(format: "%.\(decimals)f", $0 / unit) }
        if lower == upper { upper = lower + step }
        let margin = (upper - lower) * pad
        return Axis(
            lower: lower - margin, upper: upper + margin, scale: .linear, ticks: ticks, labels: labels, title: title)
    }

    /// A log axis with ticks at powers of `base` (every other power when there are many),
    /// padded by a fraction of a decade so that end points do not sit on the frame.
    public static func logarithmic(
        min: Double, max: Double, base: Double, title: String,
        label: (Double) -> String
    ) -> Axis {
        // Non-finite or absurd extents (a damaged CSV) fall back to a unit range, never a trap.
        var lo = Swift.max(min, 1e-12), hi = Swift.max(max, lo)
        if !(lo.isFinite && hi.isFinite) || hi > 1e300 { lo = 1; hi = base }
        let a = Foundation.log(lo) / Foundation.log(base), b = Foundation.log(hi) / Foundation.log(base)
        let pad = Swift.max(0.12, (b - a) * 0.05)
        let lower = pow(base, a - pad), upper = pow(base, b + pad)
        let first = Int(ceil(a - pad - 1e-9)), last = Int(floor(b + pad + 1e-9))
        var exponents = Array(first...Swift.max(first, last))
        if last < first { exponents = [Int(Foundation.round(a))] }
        let stride = Swift.max(1, Int(ceil(Double(exponents.count) / 7)))
        exponents = exponents.filter { ($0 - exponents[0]) % stride == 0 }
        let ticks = exponents.map { pow(base, Double($0)) }
        return Axis(lower: lower, upper: upper, scale: .log(base), ticks: ticks, labels: ticks.map(label), title: title)
    }

    // MARK: Bytes

    static let byteUnits: [(name: String, size: Double)] = [
        ("B", 1), ("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("TiB", 1_099_511_627_776)
    ]

    /// The largest binary unit not above `value` (B for values under 1 KiB).
    static func byteUnit(for value: Double) -> (name: String, size: Double) {
        byteUnits.last { value >= $0.size } ?? byteUnits[0]
    }

    /// `1048576` -> `1 MiB`, `1536` -> `1.5 KiB`.
    public static func byteLabel(_ value: Double) -> String {
        let unit = byteUnit(for: value)
        let v = value / unit.size
        let text = v == v.rounded() ? String(format: "%.0f", v) : String(format: "%.1f", v)
        return "\(text) \(unit.name)"
    }

    /// An axis of byte counts: linear in the unit that suits the largest value (named in the
    /// title), or logarithmic at powers of two with a unit on every tick (and "bytes" in the title).
    public static func bytes(min: Double, max: Double, title: String, log: Bool) -> Axis {
        if log && min > 0 {
            return logarithmic(min: min, max: max, base: 2, title: "\(title) (bytes)", label: byteLabel)
        }
        let unit = byteUnit(for: max)
        return linear(min: min, max: max, title: "\(title) (\(unit.name))", includeZero: true, unit: unit.size)
    }
}
