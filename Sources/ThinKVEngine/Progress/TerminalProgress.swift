import Foundation

/// Progress of long work on stderr: a redrawn bar when stderr is a terminal, plain lines every
/// `plainInterval` seconds otherwise (a batch job's log shows it is alive), or nothing.
/// `--progress auto|plain|none` (any command) or THINKV_PROGRESS chooses; auto is the default.
public final class TerminalProgress: ProgressReporting {
    public enum Mode: String, CaseIterable, Sendable {
        /// A bar on a terminal, plain lines otherwise.
        case auto
        case bar, plain, none
    }

    /// The mode every new indicator takes (set once by the command line).
    nonisolated(unsafe) public static var mode: Mode = {
        ProcessInfo.processInfo.environment["THINKV_PROGRESS"].flatMap(Mode.init(rawValue:)) ?? .auto
    }()
    /// Seconds between plain lines; the first comes after this long, so short runs print nothing
    /// (THINKV_PROGRESS_SECONDS overrides).
    public static let plainInterval: TimeInterval =
        ProcessInfo.processInfo.environment["THINKV_PROGRESS_SECONDS"].flatMap(Double.init).flatMap {
            $0 >= 0 ? $0 : nil
        } ?? 10

    private let label: String
    private let style: Mode
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var lastLine: Date
    private var drawn = false

    public init(label: String, mode: Mode = TerminalProgress.mode) {
        self.label = label
        switch mode {
        case .auto: style = isatty(STDERR_FILENO) == 1 ? .bar : .plain
        default: style = mode
        }
        lastLine = start
    }

    /// A bar or nothing, as before plain lines existed (tests, internal callers).
    public convenience init(label: String, enabled: Bool) {
        self.init(label: label, mode: enabled ? .bar : .none)
    }

    public func update(fraction: Double, detail: String) {
        let now = Date()
        let elapsed = now.timeIntervalSince(start)
        switch style {
        case .bar:
            guard now.timeIntervalSince(lastDraw) >= 0.1 || fraction >= 1 else { return }
            lastDraw = now
            let width = 24
            let filled = max(0, min(width, Int((fraction * Double(width)).rounded())))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            StandardError.write(
                String(format: "\r%@ [%@] %3.0f%% %@ %.1fs", label, bar, fraction * 100, detail, elapsed) + "\u{1B}[K")
            drawn = true
        case .plain:
            guard now.timeIntervalSince(lastLine) >= Self.plainInterval else { return }
            lastLine = now
            StandardError.write(
                String(format: "progress: %@ %.0f%% %@ (%.0fs)\n", label, fraction * 100, detail, elapsed))
        case .none, .auto:
            return
        }
    }

    public func finish() {
        guard style == .bar, drawn else { return }
        StandardError.write("\r\u{1B}[K")
        drawn = false
    }
}
