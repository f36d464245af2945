import Foundation

/// What a kvpress-style scorer writes: a score for every token a kv head holds (higher stays).
/// `DecodingPress` decides when to compress and how many stay; a scorer decides only which.
public protocol DecodingScorer {
    static var name: String { get }
    static var summary: String { get }
    /// The tensors the score reads (keys only, or values too).
    static var requirements: PolicyRequirements { get }
    /// Scores of `slots` (kv head `kvHead`'s positions, in slot order), cast through `dtype`
    /// where the authors' code computes in the model's dtype.
    static func scores(_ context: StepContext, kvHead: Int, slots: [Int32], dtype: ScoreDType) -> [Double]
    /// True when one score vector serves every kv head (TOVA averages over all query heads), so
    /// it is computed once per compression; every head then holds the same positions.
    static var scoresEveryHeadAlike: Bool { get }
}

extension DecodingScorer {
    public static var scoresEveryHeadAlike: Bool { false }
}

/// kvpress's `DecodingPress` around any per-head scorer: every `--interval` decode steps, after
/// that step's attention, each kv head holding more than the target keeps the target count of its
/// highest scores, in `topk` order (`KVPressDecoding` has the target and the cadence). A new
/// scorer is one `DecodingScorer` and one registry line, `DecodingPress<Scorer>.self`.
public final class DecodingPress<Scorer: DecodingScorer>: ConfiguredPolicy {
    public typealias Configuration = KVPressDecoding
    public static var name: String { Scorer.name }
    public static var summary: String { Scorer.summary }
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? { "interval" }
    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        KVPressDecoding.cadence(parameters)
    }
    public static var parameters: [PolicyParameter] { KVPressDecoding.parameters() }
    public static var requirements: PolicyRequirements { Scorer.requirements }
    public static var readsAttention: Bool { false }

    let schedule: KVPressDecoding
    private let header: TraceHeader

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        schedule = try KVPressDecoding(parameters)
        header = setup.header
    }

    public var residentCap: Int? { schedule.residentCap(promptLength: header.promptLength) }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        guard schedule.fires(step: context.step) else { return }
        compressNow(context, cache: cache)
    }

    /// One compression to the target, whatever the step: the press's own cadence calls it, and
    /// so does a trigger that replaces the cadence (`snapkv@every-step`, see Policies/Algebra).
    public func compressNow(_ context: StepContext, cache: LayerCache) {
        // A layer without the tensors the score reads is left as it is.
        if Scorer.requirements.contains(.queriesAndKeys) && (context.data.keys == nil || context.queries == nil) {
            return
        }
        if Scorer.requirements.contains(.values) && context.data.values == nil { return }
        var shared: [Double]?
        schedule.compressEachHead(context, cache: cache) { g, slots in
            if let shared { return shared }
            let scores = Scorer.scores(context, kvHead: g, slots: slots, dtype: schedule.dtype)
            if Scorer.scoresEveryHeadAlike { shared = scores }
            return scores
        }
    }
}

extension DecodingScorer {
    /// The L2 norm of each held token's row of `tensor` (keys or values) in kv head `g`, each
    /// element cast through `dtype`, summed in float64, the norm cast again (`tensor.norm(dim=-1)`
    /// in the model's dtype).
    static func norms(of tensor: [Float], _ context: StepContext, kvHead g: Int, slots: [Int32], dtype: ScoreDType)
        -> [Double]
    {
        let D = context.data.headDim
        return slots.map { p in
            let base = context.data.offset(kvHead: g, position: Int(p))
            var sum = 0.0
            for d in 0..<D {
                let x = Double(dtype.round(tensor[base + d]))
                sum += x * x
            }
            return dtype.round(sum.squareRoot())
        }
    }
}
