import Foundation

/// How many bits each held token gets (the part after `+` in `h2o+kivi`): runs after the base
/// policy's hooks, on the tokens the base left, and charges its metadata to the cache. When the
/// base evicted during a hook, the quantizer is told (`evicted`) so that it frees the metadata
/// of tokens that left.
public protocol CacheQuantizer: AnyObject {
    /// The spelling after `+`; empty for `NoQuantizer`.
    static var name: String { get }
    static var summary: String { get }
    static var parameters: [PolicyParameter] { get }
    static var requirements: PolicyRequirements { get }
    /// Slots per paging block the quantizer prefers (nil: the base's).
    static var preferredBlockSize: Int? { get }
    static var conformanceSettings: [String: String] { get }
    /// As `CachePolicy.fullReferenceNeed`: why this quantizer needs every step's full-cache attention.
    static func fullReferenceNeed(_ parameters: PolicyParameters) -> String?
    static func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (any Sendable)?
    static func validationPrepared(header: TraceHeader) -> (any Sendable)?
    static func cadence(_ parameters: PolicyParameters) -> String

    init(parameters: PolicyParameters, setup: PolicySetup) throws
    func prefill(_ context: PrefillContext, cache: LayerCache, evicted: Bool)
    func beforeAttention(_ context: StepContext, cache: LayerCache)
    func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache, evicted: Bool)
    func thoughtBreakdown(cache: LayerCache) -> ThoughtStepBreakdown?
    var reportCounters: [(name: String, value: Int)] { get }
}

extension CacheQuantizer {
    public static var requirements: PolicyRequirements { [] }
    public static var preferredBlockSize: Int? { nil }
    public static var conformanceSettings: [String: String] { [:] }
    public static func fullReferenceNeed(_ parameters: PolicyParameters) -> String? { nil }
    public static func prepare(
        _ reader: TraceReader, parameters: PolicyParameters,
        layers: [Int]
    ) throws -> (any Sendable)? {
        nil
    }
    public static func validationPrepared(header: TraceHeader) -> (any Sendable)? { nil }
    public func beforeAttention(_ context: StepContext, cache: LayerCache) {}
    public func thoughtBreakdown(cache: LayerCache) -> ThoughtStepBreakdown? { nil }
    public var reportCounters: [(name: String, value: Int)] { [] }
}

/// No quantizer written: every token stays at the base policy's precision.
public final class NoQuantizer: CacheQuantizer {
    public static let name = ""
    public static let summary = "the base policy's precision"
    public static let parameters: [PolicyParameter] = []
    public static func cadence(_ parameters: PolicyParameters) -> String { "" }
    public init(parameters: PolicyParameters, setup: PolicySetup) throws {}
    public func prefill(_ context: PrefillContext, cache: LayerCache, evicted: Bool) {}
    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache, evicted: Bool) {}
}

/// Metadata a quantizer has charged to each kv head, so that it can replace its share of
/// `cache.metadataBytes` by a recount after evictions.
struct ChargedMetadata {
    private(set) var bytes: [Int]

    init(heads: Int) { bytes = Array(repeating: 0, count: heads) }

    /// Adds `bits` (rounded up to bytes) for one quantization call on head h.
    mutating func add(bits: Int, kvHead h: Int, cache: LayerCache) {
        let added = (bits + 7) / 8
        cache.metadataBytes[h] += added
        bytes[h] += added
    }

    /// Sets head h's share to `bits` (rounded up to bytes), as a recount after evictions.
    mutating func set(bits: Int, kvHead h: Int, cache: LayerCache) {
        let now = (bits + 7) / 8
        cache.metadataBytes[h] += now - bytes[h]
        bytes[h] = now
    }
}

/// The held positions of head h in `range`, in increasing order.
func heldPositions(_ cache: LayerCache, kvHead h: Int, in range: Range<Int>) -> [Int] {
    var out: [Int] = []
    var sorted = true
    for p in cache.slots[h] where range.contains(Int(p)) {
        if let last = out.last, last > Int(p) { sorted = false }
        out.append(Int(p))
    }
    return sorted ? out : out.sorted()
}
