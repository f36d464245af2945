import Foundation

/// A policy whose compression can be separated from its own trigger: a composition with a
/// `CompressionTrigger` (`snapkv@every-step`) keeps the policy's scoring and bookkeeping and
/// decides itself when to compress.
public protocol CompressibleNow: CachePolicy {
    /// The parameters that only set when the policy compresses; a composition with a trigger
    /// hides them (the policy is made with their defaults, which then decide nothing).
    static var ownTriggerParameters: [String] { get }
    /// Tokens per kv head a compression leaves when that count is fixed (the budget); nil when
    /// it grows with the sequence (kvpress's `--compression-ratio`).
    var fixedTarget: Int? { get }
    /// Tokens per kv head a compression while processing position p leaves.
    func compressionTarget(position: Int) -> Int
    /// The step's bookkeeping after its attention (e.g. the observation window takes the step's
    /// query) and, if `compress`, one compression: every kv head holding more than the target
    /// keeps the target count.
    func triggeredStep(_ context: StepContext, attention: AttentionView, compress: Bool, cache: LayerCache)
}

/// A compressible policy that scores every held token of every kv head, so that Ada-KV can
/// pool the scores of a layer's heads and let heads keep different counts.
public protocol PerHeadScoring: CompressibleNow {
    /// Whether the policy's own cadence compresses after this step (when no trigger replaces it).
    func ownCadenceFires(_ context: StepContext) -> Bool
    /// Decode steps from one compression of the own cadence to the next.
    var ownCadenceSteps: Int { get }
    /// The score of each of `slots` (kv head `kvHead`'s positions, in slot order; higher stays),
    /// or nil when the layer lacks the tensors the score reads.
    func headScores(_ context: StepContext, kvHead: Int, slots: [Int32]) -> [Double]?
}

/// A policy that quantizes the cache itself; a composition adds no quantizer to it.
public protocol SelfQuantizing: CachePolicy {
    static var quantizesCache: Bool { get }
}

extension KIVIPolicy: SelfQuantizing {
    public static var quantizesCache: Bool { true }
}

extension PMKVQPolicy: SelfQuantizing {
    public static var quantizesCache: Bool { true }
}

extension ThinKVPolicy: SelfQuantizing {
    public static var quantizesCache: Bool { components.contains(.quantization) }
}

extension DecodingPress: PerHeadScoring {
    public static var ownTriggerParameters: [String] { ["interval"] }
    public var fixedTarget: Int? { schedule.budget }
    public func compressionTarget(position: Int) -> Int { schedule.target(position: position) }

    public func triggeredStep(_ context: StepContext, attention: AttentionView, compress: Bool, cache: LayerCache) {
        if compress { compressNow(context, cache: cache) }
    }

    public func ownCadenceFires(_ context: StepContext) -> Bool { schedule.fires(step: context.step) }
    public var ownCadenceSteps: Int { schedule.interval }

    public func headScores(_ context: StepContext, kvHead: Int, slots: [Int32]) -> [Double]? {
        let needsKeys = Scorer.requirements.contains(.queriesAndKeys)
        if needsKeys && (context.data.keys == nil || context.queries == nil) { return nil }
        if Scorer.requirements.contains(.values) && context.data.values == nil { return nil }
        return Scorer.scores(context, kvHead: kvHead, slots: slots, dtype: schedule.dtype)
    }
}

extension RKVPolicy: CompressibleNow {
    public static var ownTriggerParameters: [String] {
        ["trigger", "divide", "buffer", "divide-method", "compression-content", "newline-ids", "think-end-ids"]
    }
    public var fixedTarget: Int? { budget }
    public func compressionTarget(position: Int) -> Int { budget }

    public func triggeredStep(_ context: StepContext, attention: AttentionView, compress: Bool, cache: LayerCache) {
        triggeredStep(context, compress: compress, cache: cache)
    }
}

extension SnapKVPolicy: CompressibleNow {
    // kvpress's variant also scores with the min(interval, 256) queries it buffers: `interval`
    // is not only a trigger, and stays.
    public static var ownTriggerParameters: [String] { ["trigger", "divide", "buffer"] }
    public var fixedTarget: Int? { budget }
    public func compressionTarget(position: Int) -> Int { budget }

    public func triggeredStep(_ context: StepContext, attention: AttentionView, compress: Bool, cache: LayerCache) {
        triggeredStep(context, compress: compress, cache: cache)
    }
}
