import Foundation

/// Keeps every token at 16 bits: the reference every other policy is measured against, and a
/// check on the engine (its recall must be 1 and its output error 0).
public final class FullCachePolicy: ConfiguredPolicy {
    public static let name = "full"
    public static let summary = "keep every token at 16 bits (the uncompressed cache)"
    public static let parameters: [PolicyParameter] = []
    public static let readsAttention = false
    public static let evictsNothing = true
    public static func compressionCadence(_ parameters: PolicyParameters) -> String { "never compresses" }

    /// No parameters, nothing to check.
    public struct Configuration: PolicyConfiguration {
        public init(_ values: PolicyParameters) {}
    }

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {}
}
