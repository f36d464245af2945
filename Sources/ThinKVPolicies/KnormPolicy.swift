import Foundation

/// KnormPress (Devoto et al., 2024, "A simple and effective L2 norm-based strategy for KV cache
/// compression") as NVIDIA/kvpress runs it at decode time: `DecodingPress(KnormPress)`
/// (kvpress/presses/knorm_press.py `score`, decoding_press.py). The score of a cached token is
/// −‖k‖: keys with the *smallest* norms stay (they draw the most attention, the paper finds).
///
/// Every `interval` decode steps, after that step's attention, each kv head whose cache holds
/// more than the target keeps the target count of lowest-norm keys, in `topk` order (ascending
/// norm, lower slot first among ties); see `KVPressDecoding` for the target. No window is
/// protected: the newest token goes if its key is long. Needs keys only.
///
/// `--score-dtype`: k and ‖k‖ are cast to the dtype (`keys.norm(dim=-1)` in the model dtype).
public typealias KnormPolicy = DecodingPress<KnormScorer>

public enum KnormScorer: DecodingScorer {
    public static let name = "knorm"
    public static let summary =
        "kvpress KnormPress at decode time: every --interval steps keep the keys with the smallest L2 norm"
    public static let requirements: PolicyRequirements = .queriesAndKeys

    public static func scores(_ context: StepContext, kvHead g: Int, slots: [Int32], dtype: ScoreDType) -> [Double] {
        norms(of: context.data.keys!, context, kvHead: g, slots: slots, dtype: dtype).map { -$0 }
    }
}
