import Foundation

/// Value norms as the importance of a token (as in value-aware eviction, e.g. VaSE: a token whose
/// value vector is short adds little to any attention output, whatever its weight). The score of
/// a cached token is ‖v‖: the longest values stay. No reference code is followed; the norm in
/// float64 of the values cast through `--score-dtype`, like KnormPress's key norm.
public enum ValueNormScorer: DecodingScorer {
    public static let name = "vnorm"
    public static let summary =
        "decode-time press: every --interval steps keep the tokens with the largest value L2 norm"
    public static let requirements: PolicyRequirements = .values

    public static func scores(_ context: StepContext, kvHead g: Int, slots: [Int32], dtype: ScoreDType) -> [Double] {
        norms(of: context.data.values!, context, kvHead: g, slots: slots, dtype: dtype)
    }
}
