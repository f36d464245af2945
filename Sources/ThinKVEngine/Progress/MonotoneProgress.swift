import Foundation

/// One fraction over a whole match (or sweep) that never goes backwards: each part reports
/// into its own span of the bar, and a report below what was shown is held at it.
package final class MonotoneProgress: ThinKVEngine.ProgressReporting {
    let inner: ThinKVEngine.ProgressReporting?
    package private(set) var reported = 0.0

    package init(inner: ThinKVEngine.ProgressReporting?) {
        self.inner = inner
    }

    package func update(fraction: Double, detail: String) {
        reported = max(reported, min(max(fraction, 0), 1))
        inner?.update(fraction: reported, detail: detail)
    }

    package func finish() {}

    /// A reporter whose 0...1 lands in from...to of this one.
    package func span(_ from: Double, _ to: Double, detail prefix: String = "") -> ThinKVEngine.ProgressReporting {
        Span(outer: self, from: from, to: to, prefix: prefix)
    }

    private final class Span: ThinKVEngine.ProgressReporting {
        let outer: MonotoneProgress
        let from: Double, to: Double
        let prefix: String
        init(outer: MonotoneProgress, from: Double, to: Double, prefix: String) {
            self.outer = outer
            self.from = from
            self.to = to
            self.prefix = prefix
        }
        func update(fraction: Double, detail: String) {
            outer.update(fraction: from + (to - from) * min(max(fraction, 0), 1), detail: prefix + detail)
        }
        func finish() {}
    }
}
