import Foundation

/// TOVA (Oren et al., 2024, "Transformers are Multi-State RNNs", arXiv 2401.06104) as
/// NVIDIA/kvpress's `TOVAPress` scores it (kvpress/presses/tova_press.py `score`, with
/// `SnapKVPress.compute_window_attention` for a window of one query), run at decode time by
/// `DecodingPress`. The score of a cached token is the attention the *current* query gives it,
/// softmax over the whole cache with 1/√D, averaged over **all** query heads (not per group);
/// every kv head gets that same score vector, so all kv heads keep the same positions. The
/// newest token is padded with the maximum score plus one, so it always stays and `topk` puts it
/// first.
///
/// Every `interval` decode steps, after that step's attention, a cache holding more than the
/// target keeps the target count by `topk` order: [newest] + the rest by descending score (see
/// `KVPressDecoding`). `--interval 1` evicts every step, TOVA's own rule (the paper's cache drops
/// the lowest-scoring token whenever it is full).
///
/// `--score-dtype`: q, k, q·k, q·k/√D, the float32 softmax and the head mean are cast.
public typealias TOVAPolicy = DecodingPress<TOVAScorer>

public enum TOVAScorer: DecodingScorer {
    public static let name = "tova"
    public static let summary =
        "kvpress TOVAPress at decode time: every --interval steps keep the tokens the current query attends most "
        + "(mean over all heads)"
    public static let requirements: PolicyRequirements = .queriesAndKeys
    // All kv heads hold the same positions in the same order (they always keep the same indices
    // of the same shared scores), so one score vector serves them all.
    public static let scoresEveryHeadAlike = true

    public static func scores(_ context: StepContext, kvHead g: Int, slots: [Int32], dtype: ScoreDType) -> [Double] {
        let header = context.setup.header
        return scores(
            context: context, slots: Array(repeating: slots, count: header.numKVHeads), keys: context.data.keys!,
            header: header, dtype: dtype)
    }

    /// Scores of every slot (the last one, the newest token, padded with the maximum + 1).
    static func scores(context: StepContext, slots: [[Int32]], keys: [Float], header: TraceHeader, dtype: ScoreDType)
        -> [Double]
    {
        let D = header.headDim, Hq = header.numQHeads
        let L = slots[0].count
        let scale = 1 / Double(D).squareRoot()
        var mean = [Double](repeating: 0, count: L - 1)
        var row = [Double](repeating: 0, count: L)
        for h in 0..<Hq {
            let g = header.kvHead(ofQueryHead: h)
            let q = context.query(head: h)!.map { Double(dtype.round($0)) }
            for (j, p) in slots[g].enumerated() {
                let base = context.data.offset(kvHead: g, position: Int(p))
                var dot = 0.0
                for d in 0..<D { dot += q[d] * Double(dtype.round(keys[base + d])) }
                row[j] = dtype.rounds ? dtype.round(dtype.round(dot) * scale) : dot * scale
            }
            row.withUnsafeMutableBufferPointer { softmaxDouble($0.baseAddress!, L) }
            for j in 0..<(L - 1) { mean[j] += dtype.round(row[j]) }
        }
        var scores = mean.map { dtype.round($0 / Double(Hq)) }
        scores.append(dtype.round((scores.max() ?? 0) + 1))  // F.pad casts the pad value to the dtype
        return scores
    }
}
