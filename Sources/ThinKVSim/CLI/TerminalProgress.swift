import Foundation

/// A one-line progress indicator on stderr, shown only when stderr is a terminal (so logs and
/// pipes stay clean), redrawn at most ten times a second.
public final class TerminalProgress: ProgressReporting {
    private let label: String
    private let enabled: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var drawn = false

    public init(label: String, enabled: Bool = isatty(STDERR_FILENO) == 1) {
        self.label = label
        self.enabled = enabled
    }

    public func update(fraction: Double, detail: String) {
        guard enabled else { return }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.1 || fraction >= 1 else { return }
        lastDraw = now
        let width = 24
        let filled = max(0, min(width, Int((fraction * Double(width)).rounded())))
        let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
        let elapsed = now.timeIntervalSince(start)
        let line = String(format: "\r%@ [%@] %3.0f%% %@ %.1fs", label, bar, fraction * 100, detail, elapsed)
        StandardError.write(line + "\u{1B}[K")
        drawn = true
    }

    public func finish() {
        guard enabled, drawn else { return }
        StandardError.write("\r\u{1B}[K")
        drawn = false
    }
}
