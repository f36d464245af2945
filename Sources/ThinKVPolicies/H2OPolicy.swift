import Foundation

/// H2O, the Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023), as the authors' real-eviction
/// code behaves (FMInference/H2O, h2o_hf/utils_real_drop/modify_llama.py,
/// `H2OKVCache_LayerWise`; reference-policies.md 1.2 and 1.4).
///
/// Each kv head keeps at most `budget` = C tokens: the R most recent positions plus the
/// H = C − R "heavy hitters", the older tokens with the largest attention accumulated over
/// every query that has seen them so far.
///
/// - Prefill: each prompt token's score is the column sum of the causal attention over the P
///   prompt rows (so early tokens are summed over more rows, as in the reference), reduced over
///   the query heads of the kv head's group. If P > C the cache is cut at once: the H best
///   candidates among slots `[0, P − R)` (back in position order) plus the last R slots.
/// - Decode, after the step's attention: every attended token's score grows by the (group
///   reduced) probability this step's query gave it; the new token starts from its own
///   self-weight. Then, if the cache holds C + 1 tokens, the candidate (any slot but the last
///   R) with the smallest score is dropped; its score is gone with it.
/// - Ties, as the reference's `torch.topk(hh_score[:, :len − R], H)` breaks them on a GPU
///   (CUDA returns tied values lowest index first): among equal scores the earlier position
///   is kept and the later one evicted. Prefill's one-shot cut uses the same order.
/// - Scores use the scale `1/sqrt(D)` the reference hard-codes. When the trace's
///   `softmax_scale` differs, the probabilities H2O scores with are recomputed with
///   `1/sqrt(D)` from the stored keys, while the engine's attention and metrics keep the
///   trace's scale.
/// - Attention-only layers (recorded `attn`, no q/k): the decode scores come from the recorded
///   rows restricted to the attended slots and renormalised (what the engine attends with);
///   the prompt rows are not recorded, so every prompt token starts at score 0, and a prompt
///   longer than C keeps its first C − R and last R positions (all candidates tie; ties keep
///   the earliest).
/// - Everything is computed in float32 by default; the reference sums float16 probabilities.
///   `--score-dtype float16|bfloat16` rounds as the reference does in that dtype: the logits
///   (the matmul's output, then the division by √D), the float32 softmax cast to the dtype, the
///   prompt's column sums (float32 accumulation, one cast), and every addition to an
///   accumulated score. Layers with q and k then rescore from the dtype-rounded q and k.
///
/// GQA: the reference crashes on GQA (one mask per query head applied to a cache per kv head,
/// FMInference/H2O issue #32), so the group reduction is a choice, `--gqa-reduce`:
/// - `sum`: a token's score is the sum over the group's query heads (same ranking as the mean).
/// - `max`: per step (and for the prompt's column sums), the largest of the group's
///   probabilities is accumulated.
/// - `per-qhead`: every query head keeps its own accumulated score, exactly the per-head state
///   the reference keeps on MHA; a kv head holds one cache, so a candidate is ranked by the
///   largest of its per-head scores: a token goes only when even the query head that valued
///   it most values it less than every other candidate. It differs from `max`, which takes
///   the maximum step by step, before accumulating.
/// With one query head per kv head (MHA) the three modes are the reference rule and coincide.
public final class H2OPolicy: ConfiguredPolicy {
    public static let name = "h2o"
    public static let summary =
        "H2O: keep the recent window plus the heavy hitters by accumulated attention, evicting one token per step"
    public static let parameters: [PolicyParameter] = [
        .budget(help: "C, resident tokens per kv head: heavy hitters (C − R) plus the recent window R"),
        .integer(
            "recent", min: 0,
            help: "R, most recent positions always kept, 1 ≤ R ≤ C (default C/2, the paper's even split)"),
        .choice(
            "gqa-reduce", GroupReduce.allCases.map(\.rawValue), default: GroupReduce.sum.rawValue,
            help:
                "how the query heads of a kv head's group combine scores: sum, max (per step), per-qhead (own "
                + "totals, ranked by the largest)"
        ),
        ScoreDType.parameter
    ]

    public struct Configuration: PolicyConfiguration {
        public let budget: Int
        public let recent: Int
        public let reduce: GroupReduce
        public let dtype: ScoreDType

        public init(_ values: PolicyParameters) throws {
            budget = try values.integer("budget")
            let given = try values.optionalInteger("recent")
            recent = given ?? budget / 2
            reduce = try values.choice("gqa-reduce")
            dtype = try values.choice("score-dtype")
            let source = given == nil ? "the default budget/2 gives --recent 0 for --budget \(budget)" : "--recent is 0"
            guard recent >= 1 else {
                throw PolicyError(
                    "h2o: \(source); H2O needs a recent window of at least 1: without one a new "
                        + "token enters with only its own attention as score, is usually the weakest "
                        + "candidate and is evicted right after its step, so the cache freezes on old heavy "
                        + "hitters and never holds the tokens being generated (give --recent ≥ 1)")
            }
            guard recent <= budget else {
                throw PolicyError(
                    "h2o: --recent (\(recent)) must not exceed --budget (\(budget)): "
                        + "the recent window is part of the budget")
            }
        }
    }

    public enum GroupReduce: String, CaseIterable, Sendable {
        case sum
        case max
        case perQueryHead = "per-qhead"
    }

    public let budget: Int
    public let recent: Int
    public var heavy: Int { budget - recent }
    public let reduce: GroupReduce
    public let dtype: ScoreDType

    private let header: TraceHeader
    /// `1/sqrt(D)`: the scale the reference's scorer uses.
    private let scorerScale: Float
    /// Recompute scoring probabilities: queries and keys are recorded and the trace's scale
    /// differs from 1/sqrt(D) by more than float32 rounding.
    private let rescore: Bool
    /// Accumulated scores indexed by position: `[Hkv][T]` for sum/max, `[Hq][T]` for per-qhead.
    private var score: [Float]
    // Scratch reused every step.
    private var stepScore: [Float] = []
    private var logits: [Float] = []

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        budget = configuration.budget
        recent = configuration.recent
        reduce = configuration.reduce
        dtype = configuration.dtype
        header = setup.header
        scorerScale = header.referenceScorerScale
        // A stored 1/sqrt(D) may differ from ours in the last bit; that is not a different scale.
        let relative = abs(header.effectiveSoftmaxScale - scorerScale) / scorerScale
        rescore = setup.layer.hasQueriesAndKeys && (relative > 1e-6 || dtype.rounds)
        let rows = reduce == .perQueryHead ? header.numQHeads : header.numKVHeads
        score = [Float](repeating: 0, count: rows * header.numTokens)
    }

    public var residentCap: Int? { budget }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        "every step, one eviction; holds B, attends B+1"
    }

    // MARK: Prefill

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        let P = header.promptLength
        guard P > 0 else { return }
        if var queries = context.promptQueries, var keys = context.data.keys {
            if dtype.rounds {
                // The reference's q and k live in the model dtype.
                queries = queries.map { dtype.round($0) }
                keys = keys.map { dtype.round($0) }
            }
            let columns = promptColumnSums(queries: queries, keys: keys, data: context.data)
            let T = header.numTokens
            for g in 0..<header.numKVHeads {
                for h in queryHeads(ofKVHead: g) {
                    let column = h * P
                    switch reduce {
                    case .perQueryHead:
                        for j in 0..<P { score[h * T + j] = columns[column + j] }
                    case .sum:
                        for j in 0..<P { score[g * T + j] += columns[column + j] }
                    case .max:
                        let first = h == g * header.groupSize
                        for j in 0..<P {
                            score[g * T + j] =
                                first ? columns[column + j] : Swift.max(score[g * T + j], columns[column + j])
                        }
                    }
                }
            }
        }
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > budget { evict(kvHead: g, cache: cache) }
    }

    /// Column sums of each query head's causal softmax over the prompt rows, `[Hq][P]`, with
    /// the scorer's scale. Query heads are independent, so they run in parallel; each head's
    /// sums are accumulated row by row in order, so the result does not depend on threading.
    private func promptColumnSums(queries: [Float], keys: [Float], data: LayerData) -> [Float] {
        let P = header.promptLength, Hq = header.numQHeads, D = header.headDim
        let scale = scorerScale, dtype = self.dtype
        var columns = [Float](repeating: 0, count: Hq * P)
        columns.withUnsafeMutableBufferPointer { out in
            queries.withUnsafeBufferPointer { Q in
                keys.withUnsafeBufferPointer { K in
                    let outBase = out.baseAddress!, qBase = Q.baseAddress!, kBase = K.baseAddress!
                    DispatchQueue.concurrentPerform(iterations: Hq) { h in
                        let keysOfHead = kBase + data.offset(kvHead: header.kvHead(ofQueryHead: h), position: 0)
                        let sums = outBase + h * P
                        let row = UnsafeMutablePointer<Float>.allocate(capacity: P)
                        defer { row.deallocate() }
                        for i in 0..<P {
                            let q = qBase + (i * Hq + h) * D
                            if dtype.rounds {
                                for j in 0...i {
                                    row[j] = dtype.round(dtype.round(Kernels.dot(q, keysOfHead + j * D, D)) * scale)
                                }
                                Kernels.softmaxInPlace(row, i + 1)
                                for j in 0...i { sums[j] += dtype.round(row[j]) }
                            } else {
                                for j in 0...i { row[j] = scale * Kernels.dot(q, keysOfHead + j * D, D) }
                                Kernels.softmaxInPlace(row, i + 1)
                                for j in 0...i { sums[j] += row[j] }
                            }
                        }
                        // The column sums accumulate in float32 and are cast once.
                        if dtype.rounds { for j in 0..<P { sums[j] = dtype.round(sums[j]) } }
                    }
                }
            }
        }
        return columns
    }

    // MARK: Decode

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        let T = header.numTokens
        for g in 0..<cache.numKVHeads {
            let slots = cache.slots[g]
            let n = slots.count
            if stepScore.count < n { stepScore = [Float](repeating: 0, count: n) }
            for (k, h) in queryHeads(ofKVHead: g).enumerated() {
                withScoringProbabilities(queryHead: h, kvHead: g, slots: slots, context: context, attention: attention)
                { a in
                    switch reduce {
                    case .perQueryHead:
                        for i in 0..<n {
                            score[h * T + Int(slots[i])] = dtype.round(score[h * T + Int(slots[i])] + a[i])
                        }
                    case .sum:
                        for i in 0..<n { stepScore[i] = k == 0 ? a[i] : stepScore[i] + a[i] }
                    case .max:
                        for i in 0..<n { stepScore[i] = k == 0 ? a[i] : Swift.max(stepScore[i], a[i]) }
                    }
                }
            }
            if reduce != .perQueryHead {
                // Rounded scoring: the step's (group) score is cast, then the addition is.
                for i in 0..<n {
                    let position = g * T + Int(slots[i])
                    score[position] =
                        dtype.rounds
                        ? dtype.round(score[position] + dtype.round(stepScore[i])) : score[position] + stepScore[i]
                }
            }
            if n > budget { evict(kvHead: g, cache: cache) }
        }
    }

    /// Calls `body` with query head h's probabilities over the attended slots as H2O scores
    /// them: the engine's attention, or a recomputation with `1/sqrt(D)` when the trace's
    /// scale differs.
    private func withScoringProbabilities(
        queryHead h: Int, kvHead g: Int, slots: [Int32], context: StepContext,
        attention: AttentionView, _ body: (UnsafeBufferPointer<Float>) -> Void
    ) {
        let n = slots.count, D = header.headDim
        if logits.count < n { logits = [Float](repeating: 0, count: n) }
        guard rescore, let query = context.query(head: h), let keys = context.data.keys else {
            let recorded = attention.probabilities(queryHead: h)
            guard dtype.rounds else { return body(recorded) }
            // Attention-only layer: the recorded probabilities, cast to the dtype.
            logits.withUnsafeMutableBufferPointer { out in
                for i in 0..<n { out[i] = dtype.round(recorded[i]) }
                body(UnsafeBufferPointer(rebasing: out[0..<n]))
            }
            return
        }
        logits.withUnsafeMutableBufferPointer { out in
            keys.withUnsafeBufferPointer { K in
                let base = K.baseAddress! + context.data.offset(kvHead: g, position: 0)
                if dtype.rounds {
                    let q = (0..<D).map { dtype.round(query[$0]) }
                    for i in 0..<n {
                        let k = base + Int(slots[i]) * D
                        var dot: Float = 0
                        for d in 0..<D { dot += q[d] * dtype.round(k[d]) }
                        out[i] = dtype.round(dtype.round(dot) * scorerScale)
                    }
                } else {
                    for i in 0..<n {
                        out[i] = scorerScale * Kernels.dot(query.baseAddress!, base + Int(slots[i]) * D, D)
                    }
                }
            }
            Kernels.softmaxInPlace(out.baseAddress!, n)
            if dtype.rounds { for i in 0..<n { out[i] = dtype.round(out[i]) } }
            body(UnsafeBufferPointer(rebasing: out[0..<n]))
        }
    }

    // MARK: Eviction

    private func queryHeads(ofKVHead g: Int) -> Range<Int> {
        (g * header.groupSize)..<((g + 1) * header.groupSize)
    }

    /// The score a kv head ranks `position` by.
    private func rankScore(kvHead g: Int, position: Int32) -> Float {
        let T = header.numTokens
        guard reduce == .perQueryHead else { return score[g * T + Int(position)] }
        var best = -Float.infinity
        for h in queryHeads(ofKVHead: g) { best = Swift.max(best, score[h * T + Int(position)]) }
        return best
    }

    /// Cuts kv head g back to `budget`: keeps the `heavy` best candidates of slots
    /// `[0, n − recent)` in position order, then the last `recent` slots. Slots stay in
    /// position order (the engine appends positions in order and H2O only removes).
    private func evict(kvHead g: Int, cache: LayerCache) {
        let slots = cache.slots[g]
        let n = slots.count
        let candidates = n - recent
        if n == budget + 1 {
            // The steady state: drop the single weakest candidate. topk keeps the lowest
            // index among ties, so among equal minima the latest goes.
            var victim = 0
            var lowest = rankScore(kvHead: g, position: slots[0])
            for i in 1..<candidates {
                let s = rankScore(kvHead: g, position: slots[i])
                if s <= lowest { lowest = s; victim = i }
            }
            var kept = slots
            kept.remove(at: victim)
            cache.setSlots(kvHead: g, kept)
            return
        }
        // One-shot cut (a prompt longer than the budget): best first, earlier position first
        // among equals (CUDA topk's order).
        let ranked = (0..<candidates).map { (index: $0, score: rankScore(kvHead: g, position: slots[$0])) }
            .sorted { $0.score != $1.score ? $0.score > $1.score : $0.index < $1.index }
        let heavyIndices = ranked.prefix(heavy).map(\.index).sorted()
        cache.keep(kvHead: g, slotIndices: heavyIndices + Array(candidates..<n))
    }
}
