import Foundation

/// `+tbq`: ThinKV's thought-based quantization as a quantizer part: each decoded token at its
/// thought type's precision (R, E, T bits), in groups that never mix types. It is `thinkv-tbq`
/// itself (the same class, the same thought timeline from its `prepare`) run on the tokens the
/// base holds; after a base eviction its group residency is reconciled
/// (`ThoughtGroupQuantizer.reconcile`). Over `full` nothing is evicted: `full+tbq` ≡ `thinkv-tbq`.
public final class TBQQuantizer: CacheQuantizer {
    public static let name = "tbq"
    public static let summary =
        "ThinKV TBQ: each decoded token at its thought type's precision (thinkv-tbq's quantization)"
    public static var parameters: [PolicyParameter] { ThinKVQuantizationOnlyPolicy.parameters }
    public static var preferredBlockSize: Int? { ThinKVQuantizationOnlyPolicy.preferredBlockSize }
    public static var conformanceSettings: [String: String] { ThinKVQuantizationOnlyPolicy.conformanceSettings }
    public static func fullReferenceNeed(_ parameters: PolicyParameters) -> String? {
        ThinKVQuantizationOnlyPolicy.fullReferenceNeed(parameters)
    }
    public static func prepare(
        _ reader: TraceReader, parameters: PolicyParameters,
        layers: [Int]
    ) throws -> (any Sendable)? {
        try ThinKVQuantizationOnlyPolicy.prepare(reader, parameters: parameters, layers: layers)
    }
    public static func validationPrepared(header: TraceHeader) -> (any Sendable)? {
        ThinKVQuantizationOnlyPolicy.validationPrepared(header: header)
    }
    public static func cadence(_ parameters: PolicyParameters) -> String {
        let bits = ["r-bits", "e-bits", "t-bits"].map { String(parameters.int($0)!) }.joined(separator: "/")
        return "decoded tokens at R/E/T = \(bits) bits (TBQ)"
    }

    let policy: ThinKVQuantizationOnlyPolicy

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        policy = try ThinKVQuantizationOnlyPolicy(parameters: parameters, setup: setup)
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache, evicted: Bool) {
        policy.prefill(context, cache: cache)
        if evicted { policy.quantizer?.reconcile(cache: cache) }
    }

    public func beforeAttention(_ context: StepContext, cache: LayerCache) {
        policy.beforeAttention(context, cache: cache)
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache, evicted: Bool) {
        if evicted { policy.quantizer?.reconcile(cache: cache) }
        policy.afterAttention(context, attention: attention, cache: cache)
    }

    public func thoughtBreakdown(cache: LayerCache) -> ThoughtStepBreakdown? { policy.thoughtBreakdown(cache: cache) }
    public var reportCounters: [(name: String, value: Int)] { policy.reportCounters }
}
