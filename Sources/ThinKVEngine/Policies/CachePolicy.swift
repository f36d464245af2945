import Foundation

/// A KV-cache compression policy: decides, for one layer of one trace, which positions each
/// kv head keeps (eviction), at which precision (quantization), and when it acts.
///
/// The replay engine makes one instance per recorded layer and calls, in order:
/// 1. `prefill` once, with slots `0..<P` already in the cache (in position order);
/// 2. for every decode position p: the engine appends p to every kv head's slots, calls
///    `beforeAttention`, lets p's query attend to the cache as the policy left it (the
///    *attended* set, which metrics and peak memory use), then calls `afterAttention`, whose
///    result is the *resident* set the next step starts from.
/// The references (H2O, R-KV, StreamingLLM) compress after the step's attention, so they act
/// in `afterAttention`; a policy acts every step, every N steps or on events as it decides,
/// using `CompressionSchedule` for the common triggers.
///
/// Adding a policy means one file with a type conforming to this protocol and one line in
/// `PolicyRegistry.all`.
public protocol CachePolicy: AnyObject {
    /// The name users type after `--policy`.
    static var name: String { get }
    /// One line for `--help` and `thinkv-sim policies`.
    static var summary: String { get }
    /// Every tunable parameter, with its default and meaning.
    static var parameters: [PolicyParameter] { get }
    /// What the trace must hold for this policy to run.
    static var requirements: PolicyRequirements { get }
    /// Slots per PagedAttention block when the user gives no `--block-size`.
    static var preferredBlockSize: Int { get }
    /// Whether `afterAttention` reads its `AttentionView`. A policy that never does lets the
    /// engine skip recomputing attention that equals the reference (the complete, unmodified
    /// cache); its view is then left unfilled.
    static var readsAttention: Bool { get }
    /// Whether every instance keeps every position it is given, at every step (it may still
    /// quantize them): its attended set is every visible position. The engine then leaves it out
    /// of the positions whose reference logits it keeps for gathering (they would be all of them).
    /// A composition declares it from its parts (e.g. true for the full cache under a quantizer).
    /// The conformance tests hold a policy that declares it to it. Default false.
    static var evictsNothing: Bool { get }

    /// Work done once per replay before any layer, shared by the per-layer instances through
    /// `PolicySetup.prepared` (e.g. ThinKV's thought timeline, which averages the sparsity of
    /// several layers). Default: nothing.
    static func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (any Sendable)?
    /// A stand-in for `prepare`'s result, cheap to make, so that `init` can check a
    /// configuration's parameters against a trace's shape without the work (sweeps check every
    /// grid point first). Default nil.
    static func validationPrepared(header: TraceHeader) -> (any Sendable)?
    /// Checks the parameters together and against the trace's shape, before any `prepare`
    /// (throws a PolicyError). A `ConfiguredPolicy` decodes its `Configuration`; the default
    /// makes one layer's instance on `validationPrepared`.
    static func checkConfiguration(_ parameters: PolicyParameters, header: TraceHeader, layer: LayerInfo) throws

    /// When the cache compresses and what it may hold in between, in a few words for the
    /// report (e.g. R-KV: "every 128 positions; holds up to B+127"), so that equal token
    /// budgets are not read as equal memory.
    static func compressionCadence(_ parameters: PolicyParameters) -> String
    /// The integer parameter that sets how far the cache grows between compressions (R-KV's
    /// `divide`: it holds up to B+divide−1), which bounds the least memory any budget reaches;
    /// an equal-memory match names a value of it when its target is out of reach. Default nil:
    /// the budget alone sets the memory.
    static func cadenceParameter(_ parameters: PolicyParameters) -> String?
    /// Parameters a small test trace needs (about 100 tokens): the conformance tests replay
    /// every registered policy with these, plus what they derive from the declarations (the
    /// smallest budget the policy accepts, a cadence of a few steps, thresholds from the trace),
    /// e.g. a window shorter than the default so that a small budget compresses at all.
    /// Default: none.
    static var conformanceSettings: [String: String] { get }

    /// Why this configuration needs the full-cache attention of every decode step, or nil: a
    /// replay whose metrics are sampled (`--metric-steps`) computes that attention on sampled
    /// steps only, and refuses such a policy. Default nil: a policy sees its own cache.
    static func fullReferenceNeed(_ parameters: PolicyParameters) -> String?
    /// Whether a larger budget never gives less memory, so that a memory target's search may
    /// predict the budget from a few replays (`MemoryMatcher.run`). False for a policy whose bytes
    /// per token change with the budget (ThinKV: its classifier reads its own cache): the search
    /// then follows the bisection. Default true.
    static var memoryGrowsWithBudget: Bool { get }

    init(parameters: PolicyParameters, setup: PolicySetup) throws

    /// Upper bound on the *resident* tokens per kv head after any step (nil: unbounded).
    /// Property tests hold every policy to it.
    var residentCap: Int? { get }

    func prefill(_ context: PrefillContext, cache: LayerCache)
    func beforeAttention(_ context: StepContext, cache: LayerCache)
    func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache)

    /// The attended set by thought type and precision, measured once per step before
    /// `afterAttention` (nil: the policy has no thought types).
    func thoughtBreakdown(cache: LayerCache) -> ThoughtStepBreakdown?
    /// Event counts of this layer so far, in report order (summed over layers in the report).
    var reportCounters: [(name: String, value: Int)] { get }

    /// Remarks on a finished run from its counters summed over `layers` replayed layers, e.g.
    /// that a method's own mechanism did little of the work. Default: none.
    static func runNotes(counters: [String: Int], parameters: PolicyParameters, layers: Int) -> [String]
}

extension CachePolicy {
    public static var requirements: PolicyRequirements { [] }
    public static var preferredBlockSize: Int { 16 }
    public static var readsAttention: Bool { true }
    public static var evictsNothing: Bool { false }
    public static func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (
        any Sendable
    )? { nil }
    public static func validationPrepared(header: TraceHeader) -> (any Sendable)? { nil }
    public static func checkConfiguration(
        _ parameters: PolicyParameters, header: TraceHeader,
        layer: LayerInfo
    ) throws {
        _ = try Self(
            parameters: parameters,
            setup: PolicySetup(
                header: header, layer: layer,
                prepared: validationPrepared(header: header)))
    }
    /// The parameter with the budget role (`PolicyParameter.Role.budget`), if the policy has one.
    public static var budgetParameter: PolicyParameter? { parameters.first { $0.role == .budget } }
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? { nil }
    public static var conformanceSettings: [String: String] { [:] }
    public static func fullReferenceNeed(_ parameters: PolicyParameters) -> String? { nil }
    public static var memoryGrowsWithBudget: Bool { true }
    public var residentCap: Int? { nil }
    public func prefill(_ context: PrefillContext, cache: LayerCache) {}
    public func beforeAttention(_ context: StepContext, cache: LayerCache) {}
    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {}
    public func thoughtBreakdown(cache: LayerCache) -> ThoughtStepBreakdown? { nil }
    public var reportCounters: [(name: String, value: Int)] { [] }
    public static func runNotes(counters: [String: Int], parameters: PolicyParameters, layers: Int) -> [String] { [] }
}

/// A `prepare` result with remarks the replay report should carry (e.g. that thresholds were
/// calibrated on the trace itself).
public protocol ReplayNotes {
    var replayNotes: [String] { get }
}

/// What a policy needs from a trace beyond recorded attention.
public struct PolicyRequirements: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// Post-RoPE queries and keys (`q`+`k`): for key similarity, observation windows, k-means.
    public static let queriesAndKeys = PolicyRequirements(rawValue: 1)
    /// Values (`v`): for policies that score or quantize values.
    public static let values = PolicyRequirements(rawValue: 2)
}

/// Everything fixed for one (policy, layer) pair.
public struct PolicySetup: Sendable {
    public let header: TraceHeader
    public let layer: LayerInfo
    /// Index of this layer among the replayed layers (0-based), and how many are replayed.
    public let layerOrdinal: Int
    public let layerCount: Int
    /// What the policy type's `prepare` returned for this replay.
    public let prepared: (any Sendable)?

    public init(
        header: TraceHeader, layer: LayerInfo, layerOrdinal: Int = 0, layerCount: Int = 1,
        prepared: (any Sendable)? = nil
    ) {
        self.header = header
        self.layer = layer
        self.layerOrdinal = layerOrdinal
        self.layerCount = layerCount
        self.prepared = prepared
    }
}

/// The prompt, as a policy sees it before decoding starts.
public struct PrefillContext {
    public let setup: PolicySetup
    /// The layer's exact tensors (keys/values for all positions, when recorded).
    public let data: LayerData
    /// Queries of prompt positions, `[P][numQHeads][D]` row-major; nil for attention-only layers.
    public let promptQueries: [Float]?
}

/// One decode step, valid only during the call that receives it.
public struct StepContext {
    public let setup: PolicySetup
    public let data: LayerData
    /// Decode step t (0-based) and its position p = P + t.
    public let step: Int
    public let position: Int
    /// p's queries, `[numQHeads][D]`; nil for attention-only layers.
    public let queries: UnsafeBufferPointer<Float>?
    /// Sparsity of this step's full-cache attention in this layer (see `Sparsity`): the
    /// signal an uncompressed model would show; teacher-forced like everything in replay.
    public let fullCacheSparsity: Float

    package init(
        setup: PolicySetup, data: LayerData, step: Int, position: Int, queries: UnsafeBufferPointer<Float>?,
        fullCacheSparsity: Float
    ) {
        self.setup = setup
        self.data = data
        self.step = step
        self.position = position
        self.queries = queries
        self.fullCacheSparsity = fullCacheSparsity
    }

    public func query(head: Int) -> UnsafeBufferPointer<Float>? {
        guard let queries else { return nil }
        let d = setup.header.headDim
        return UnsafeBufferPointer(rebasing: queries[(head * d)..<((head + 1) * d)])
    }
}

/// The attention probabilities the step's query heads gave the attended slots, computed with
/// the cache's stored (possibly dequantized) keys: what the model would have computed.
public struct AttentionView {
    let storage: UnsafeBufferPointer<Float>
    let offsets: [Int]  // per query head, start in storage
    let counts: [Int]  // per query head: slots of its kv head

    /// Probabilities of query head `h` over its kv head's slots, in slot order.
    public func probabilities(queryHead h: Int) -> UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(rebasing: storage[offsets[h]..<(offsets[h] + counts[h])])
    }
}
