import Foundation

/// A policy's parameters as typed values, decoded once from validated `PolicyParameters` (their
/// defaults, ranges and help stay in the policy's `parameters` list). Decoding also checks the
/// values together (a budget above the window, an odd kernel): it needs no trace, so every
/// command runs it before any policy prepares. Checks that need the trace's shape go in `check`.
public protocol PolicyConfiguration: Sendable {
    /// Throws a PolicyError for values the policy refuses together.
    init(_ values: PolicyParameters) throws
    /// Checks against the trace's shape (e.g. one bit width per model layer). Default: none.
    func check(header: TraceHeader, layer: LayerInfo) throws
}

extension PolicyConfiguration {
    public func check(header: TraceHeader, layer: LayerInfo) throws {}
}

/// A policy whose parameters decode to a `Configuration`: its combination checks run from the
/// configuration alone, without an instance or a stand-in for `prepare`.
public protocol ConfiguredPolicy: CachePolicy {
    associatedtype Configuration: PolicyConfiguration
}

extension ConfiguredPolicy {
    public static func checkConfiguration(
        _ parameters: PolicyParameters, header: TraceHeader,
        layer: LayerInfo
    ) throws {
        try Configuration(parameters).check(header: header, layer: layer)
    }
}

/// Checks several policies share, each written once.
public enum PolicyGuard {
    /// A budget that holds the observation window plus at least one scored token.
    public static func budget(_ budget: Int, exceedsWindow window: Int, _ policy: String) throws {
        guard budget > window else {
            throw PolicyError(
                "\(policy): --budget (\(budget)) must exceed --window (\(window)): "
                    + "the budget holds the window plus at least one scored token")
        }
    }

    /// A pooling kernel that pads the same number of slots on each side.
    public static func oddKernel(_ kernel: Int, _ policy: String) throws {
        guard kernel % 2 == 1 else {
            throw PolicyError(
                "\(policy): --kernel must be odd, got \(kernel) "
                    + "(same-length pooling pads kernel/2 on each side)")
        }
    }

    /// kvpress `DecodingPress.hidden_states_buffer_size`: a press scores with at most this many
    /// buffered decode queries and asserts that they outnumber the window.
    public static let kvpressQueryBuffer = 256

    /// A kvpress decode-time press compressing every `interval` steps sees more buffered queries
    /// than its window.
    public static func kvpressQueries(interval: Int, window: Int, _ policy: String) throws {
        guard min(interval, kvpressQueryBuffer) > window else {
            throw PolicyError(
                "\(policy): the press scores with the min(--interval, \(kvpressQueryBuffer)) queries "
                    + "buffered since its last compression and needs more of them than --window (\(window)); "
                    + "got --interval \(interval)")
        }
    }
}
