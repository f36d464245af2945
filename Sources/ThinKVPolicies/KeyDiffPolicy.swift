import Foundation

/// KeyDiff (Park et al., 2025, arXiv 2504.15364) as NVIDIA/kvpress's `KeyDiffPress` scores it
/// (kvpress/presses/keydiff_press.py `score`), run at decode time by `DecodingPress`. Per kv head
/// the anchor is the mean of the cache's unit keys, a = mean_j k_j/max(‖k_j‖, 1e-12)
/// (`F.normalize`), and a token's score is −cos(k, a) (`F.cosine_similarity`, each side divided by
/// max(‖·‖, 1e-8)): the keys most unlike the average stay.
///
/// Every `interval` decode steps, after that step's attention, each kv head holding more than
/// the target keeps the target count of best scores in `topk` order (see `KVPressDecoding`).
/// No window is protected. The paper's own procedure is block-wise (kvpress: `BlockPress`);
/// this is kvpress's single-shot press as `DecodingPress` applies it.
///
/// `--score-dtype`: k; each norm; each division; the anchor mean; each product of the cosine's
/// sum and the sum itself are cast to the dtype.
public typealias KeyDiffPolicy = DecodingPress<KeyDiffScorer>

public enum KeyDiffScorer: DecodingScorer {
    public static let name = "keydiff"
    public static let summary =
        "kvpress KeyDiffPress at decode time: every --interval steps keep the keys least similar to the mean unit key"
    public static let requirements: PolicyRequirements = .queriesAndKeys

    public static func scores(_ context: StepContext, kvHead g: Int, slots: [Int32], dtype: ScoreDType) -> [Double] {
        scores(slots: slots, kvHead: g, data: context.data, keys: context.data.keys!, dtype: dtype)
    }

    /// −cos(k_j, anchor) for every slot, in slot order.
    static func scores(slots: [Int32], kvHead g: Int, data: LayerData, keys: [Float], dtype: ScoreDType) -> [Double] {
        let D = data.headDim, L = slots.count
        let r = { (x: Double) in dtype.round(x) }
        var k = [Double](repeating: 0, count: L * D)
        for (i, p) in slots.enumerated() {
            let base = data.offset(kvHead: g, position: Int(p))
            for d in 0..<D { k[i * D + d] = Double(dtype.round(keys[base + d])) }
        }
        func norm(_ v: ArraySlice<Double>) -> Double { r(v.reduce(0) { $0 + $1 * $1 }.squareRoot()) }
        // Unit keys and their mean over the slots (F.normalize, eps 1e-12; mean over dim 2).
        var anchor = [Double](repeating: 0, count: D)
        var unit = [Double](repeating: 0, count: L * D)
        for i in 0..<L {
            let n = max(norm(k[(i * D)..<((i + 1) * D)]), 1e-12)
            for d in 0..<D {
                unit[i * D + d] = r(k[i * D + d] / n)
                anchor[d] += unit[i * D + d]
            }
        }
        for d in 0..<D { anchor[d] = r(anchor[d] / Double(L)) }
        // cosine_similarity: each side divided by max(‖·‖, 1e-8), then the sum of the products.
        let anchorNorm = max(norm(anchor[0..<D]), 1e-8)
        let a = anchor.map { r($0 / anchorNorm) }
        return (0..<L).map { i in
            let n = max(norm(k[(i * D)..<((i + 1) * D)]), 1e-8)
            var sum = 0.0
            for d in 0..<D { sum += r(r(k[i * D + d] / n) * a[d]) }
            return -r(sum)
        }
    }
}
