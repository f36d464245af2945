import Foundation

/// The last `capacity` query vectors of one layer (all query heads), oldest first: the
/// "observation window" SnapKV-style policies score the cache with. Policies keep their own
/// copies because the engine's `StepContext.queries` is only valid during one call.
struct QueryWindow {
    let capacity: Int
    /// Floats per position: `numQHeads * headDim`.
    let stride: Int
    private var storage: [Float]
    private var oldest = 0
    private(set) var count = 0

    init(capacity: Int, numQHeads: Int, headDim: Int) {
        self.capacity = capacity
        stride = numQHeads * headDim
        storage = [Float](repeating: 0, count: max(capacity, 1) * stride)
    }

    /// Appends one position's queries `[numQHeads][headDim]`, dropping the oldest when full.
    mutating func push(_ queries: UnsafeBufferPointer<Float>) {
        precondition(queries.count == stride, "one position's queries expected")
        guard capacity > 0 else { return }
        let slot = count < capacity ? (oldest + count) % capacity : oldest
        storage.withUnsafeMutableBufferPointer { dst in
            for i in 0..<stride { dst[slot * stride + i] = queries[i] }
        }
        if count < capacity { count += 1 } else { oldest = (oldest + 1) % capacity }
    }

    /// Fills the window from the prompt queries `[P][numQHeads][headDim]`: the last
    /// `min(capacity, P)` positions.
    mutating func fill(promptQueries: [Float], promptLength P: Int) {
        precondition(promptQueries.count == P * stride, "prompt queries expected")
        promptQueries.withUnsafeBufferPointer { all in
            for p in max(0, P - capacity)..<P {
                push(UnsafeBufferPointer(rebasing: all[(p * stride)..<((p + 1) * stride)]))
            }
        }
    }

    /// Calls `body` with a pointer to query head `head` of the window's row `row` (0 = oldest).
    @inline(__always)
    func withQuery<R>(row: Int, head: Int, headDim: Int, _ body: (UnsafePointer<Float>) -> R) -> R {
        let slot = (oldest + row) % capacity
        return storage.withUnsafeBufferPointer { body($0.baseAddress! + slot * stride + head * headDim) }
    }
}

/// How a SnapKV-family policy turns the observation window and the cache's keys into one score
/// per *candidate* slot (every slot but the last `window`, which are always kept). R-KV,
/// R-KV's decode-time SnapKV, the original SnapKV and kvpress's SnapKVPress differ only in
/// these choices (reference-policies.md 2.2, 2.7, 3).
struct WindowScoringRule: Equatable {
    /// Which columns each window row's softmax runs over.
    enum Softmax: Equatable {
        /// Only the candidates `[0, L − w)`: R-KV renormalises among them.
        case candidatesOnly
        /// The whole causal row: window row r (0-based, of w) sees slots `[0, L − w + r]`
        /// (original SnapKV, kvpress). Needs exactly w window rows.
        case causalFullRow
    }

    /// How the window rows combine.
    enum RowReduce: Equatable { case mean, sum }

    /// 1-D pooling along the slot axis, kernel k (odd), padding k/2, stride 1.
    enum Pool: Equatable {
        /// Padding acts as −inf: the largest value among the neighbours inside the range.
        case max
        /// Padding counts as zeros: the neighbours' sum divided by k, even at the edges.
        case average
    }

    /// How the query heads of a kv head's group combine.
    enum GroupReduce: Equatable {
        /// Largest scaled logit over the group, before the softmax (R-KV's default).
        case maxLogits
        /// Mean scaled logit over the group, before the softmax (R-KV's `pooling="mean"`).
        case meanLogits
        /// Softmax, row reduction and pooling per query head, then the mean over the group
        /// (kvpress; our reduction of the original's per-query-head selection).
        case meanScores
    }

    var softmax: Softmax
    var rowReduce: RowReduce
    var pool: Pool
    var kernel: Int
    var groupReduce: GroupReduce
    /// R-KV's redundancy term: score = λ·importance − (1 − λ)·redundancy. nil: importance only.
    var redundancy: Redundancy?

    struct Redundancy: Equatable {
        var lambda: Double
        /// Cosine similarity above which (strictly) a key counts as a near-duplicate.
        var threshold: Float
    }
}

/// Computes window scores for one layer; owns scratch buffers reused across events, so one
/// instance must not be used from two threads at once (each policy instance has its own).
final class WindowScorer {
    let rule: WindowScoringRule
    let numQHeads: Int
    let groupSize: Int
    let headDim: Int
    /// The scale the references hard-code: 1/sqrt(D), whatever the trace's softmax_scale.
    let scale: Float

    // Scratch, grown on demand.
    private var logits: [Float] = []       // one row, up to L
    private var rowAccumulator: [Float] = []  // per candidate
    private var headScores: [Float] = []   // per candidate, one query head (meanScores)
    private var pooled: [Float] = []       // per candidate
    private var normalizedKeys: [Float] = []  // L × D
    private var rowSums: [Float] = []      // per slot
    private var lastSimilar: [Int32] = []  // per slot
    private var lastSimilarValue: [Float] = []
    private var similarityToFirst: [Float] = []
    private var redundancyScores: [Float] = []

    init(rule: WindowScoringRule, header: TraceHeader) {
        self.rule = rule
        numQHeads = header.numQHeads
        groupSize = header.groupSize
        headDim = header.headDim
        scale = header.referenceScorerScale
    }

    private func ensure(_ array: inout [Float], _ n: Int) {
        if array.count < n { array = [Float](repeating: 0, count: n) }
    }

    /// Scores the candidate slots `[0, L − window)` of kv head `kvHead` into `scores` (resized
    /// to the candidate count). `slots` are the head's positions in physical order; `keys` the
    /// layer's keys in the per-kv-head layout of `LayerData`.
    func score(kvHead g: Int, slots: [Int32], window w: Int, queries: QueryWindow,
               keys: UnsafePointer<Float>, numTokens T: Int, into scores: inout [Float]) {
        let L = slots.count
        let C = L - w
        precondition(C > 0, "scoring needs at least one candidate")
        if scores.count != C { scores = [Float](repeating: 0, count: C) }
        let headKeys = keys + g * T * headDim
        importance(kvHead: g, slots: slots, candidates: C, queries: queries, keys: headKeys, into: &scores)
        if let redundancy = rule.redundancy {
            computeRedundancy(slots: slots, keys: headKeys, threshold: redundancy.threshold)
            let lambda = Float(redundancy.lambda)
            let rest = Float(1 - redundancy.lambda)
            redundancyScores.withUnsafeBufferPointer { red in
                for j in 0..<C { scores[j] = scores[j] * lambda - red[j] * rest }
            }
        }
    }

    // MARK: Importance

    /// Pooled window attention per candidate, reduced over the group, into `out[0..<C]`.
    private func importance(kvHead g: Int, slots: [Int32], candidates C: Int, queries: QueryWindow,
                            keys: UnsafePointer<Float>, into out: inout [Float]) {
        let L = slots.count
        let rows = queries.count
        precondition(rows > 0, "scoring needs at least one window query")
        if rule.softmax == .causalFullRow {
            precondition(rows == L - C, "a causal window needs one query per window slot")
        }
        ensure(&logits, L)
        ensure(&rowAccumulator, C)
        ensure(&pooled, C)
        let firstHead = g * groupSize
        let D = headDim
        switch rule.groupReduce {
        case .maxLogits, .meanLogits:
            for j in 0..<C { rowAccumulator[j] = 0 }
            for r in 0..<rows {
                let visible = columns(row: r, rows: rows, candidates: C)
                logits.withUnsafeMutableBufferPointer { row in
                    let x = row.baseAddress!
                    for k in 0..<groupSize {
                        queries.withQuery(row: r, head: firstHead + k, headDim: D) { q in
                            for j in 0..<visible {
                                let v = Kernels.dot(q, keys + Int(slots[j]) * D, D) * scale
                                if k == 0 {
                                    x[j] = v
                                } else if rule.groupReduce == .maxLogits {
                                    x[j] = Swift.max(x[j], v)
                                } else {
                                    x[j] += v
                                }
                            }
                        }
                    }
                    if rule.groupReduce == .meanLogits && groupSize > 1 {
                        let n = Float(groupSize)
                        for j in 0..<visible { x[j] /= n }
                    }
                    Kernels.softmaxInPlace(x, visible)
                    for j in 0..<C { rowAccumulator[j] += x[j] }
                }
            }
            reduceRows(rows: rows, candidates: C)
            pool(from: rowAccumulator, candidates: C, into: &out)
        case .meanScores:
            ensure(&headScores, C)
            for j in 0..<C { out[j] = 0 }
            for k in 0..<groupSize {
                for j in 0..<C { rowAccumulator[j] = 0 }
                for r in 0..<rows {
                    let visible = columns(row: r, rows: rows, candidates: C)
                    logits.withUnsafeMutableBufferPointer { row in
                        let x = row.baseAddress!
                        queries.withQuery(row: r, head: firstHead + k, headDim: D) { q in
                            for j in 0..<visible { x[j] = Kernels.dot(q, keys + Int(slots[j]) * D, D) * scale }
                        }
                        Kernels.softmaxInPlace(x, visible)
                        for j in 0..<C { rowAccumulator[j] += x[j] }
                    }
                }
                reduceRows(rows: rows, candidates: C)
                pool(from: rowAccumulator, candidates: C, into: &headScores)
                for j in 0..<C { out[j] += headScores[j] }
            }
            let n = Float(groupSize)
            for j in 0..<C { out[j] /= n }
        }
    }

    /// Columns window row r's softmax runs over: the candidates, or its causal prefix.
    @inline(__always)
    private func columns(row r: Int, rows: Int, candidates C: Int) -> Int {
        rule.softmax == .candidatesOnly ? C : C + r + 1
    }

    private func reduceRows(rows: Int, candidates C: Int) {
        guard rule.rowReduce == .mean else { return }
        let n = Float(rows)
        for j in 0..<C { rowAccumulator[j] /= n }
    }

    /// Same-length 1-D pooling of `input[0..<C]` into `output[0..<C]`.
    private func pool(from input: [Float], candidates C: Int, into output: inout [Float]) {
        let half = rule.kernel / 2
        let k = Float(rule.kernel)
        for j in 0..<C {
            let lo = Swift.max(0, j - half), hi = Swift.min(C - 1, j + half)
            switch rule.pool {
            case .max:
                var m = input[lo]
                for i in (lo + 1)..<(hi + 1) where input[i] > m { m = input[i] }
                output[j] = m
            case .average:
                var s: Float = 0
                for i in lo...hi { s += input[i] }
                output[j] = s / k
            }
        }
    }

    // MARK: Redundancy

    /// The redundancy distribution over all slots of one kv head (tests inspect it directly).
    func redundancy(slots: [Int32], keys: UnsafePointer<Float>, threshold: Float) -> [Float] {
        computeRedundancy(slots: slots, keys: keys, threshold: threshold)
        return Array(redundancyScores[0..<slots.count])
    }

    /// R-KV's redundancy (`cal_similarity`, retain direction "last") over all L slots, into
    /// `redundancyScores[0..<L]`:
    /// cosine similarities S of the normalised keys (‖k‖ + 1e-8), diagonal zeroed; in every
    /// row i the entry at the largest slot index j with S[i, j] > threshold is zeroed, or the
    /// entry at slot 0 when no j qualifies; then the column means over all L rows, and a
    /// softmax over all L slots.
    ///
    /// S is symmetric, so each pair is computed once: row i's sum over j equals column i's sum
    /// over rows, and the zeroed entries are subtracted afterwards. With a threshold ≥ 0 the
    /// zeroed diagonal never qualifies.
    private func computeRedundancy(slots: [Int32], keys: UnsafePointer<Float>, threshold: Float) {
        let L = slots.count, D = headDim
        ensure(&normalizedKeys, L * D)
        ensure(&rowSums, L)
        ensure(&lastSimilarValue, L)
        ensure(&similarityToFirst, L)
        ensure(&redundancyScores, L)
        if lastSimilar.count < L { lastSimilar = [Int32](repeating: 0, count: L) }
        normalizedKeys.withUnsafeMutableBufferPointer { nk in
            let base = nk.baseAddress!
            for i in 0..<L {
                let k = keys + Int(slots[i]) * D
                let inv = 1 / (Kernels.norm(k, D) + 1e-8)
                for d in 0..<D { base[i * D + d] = k[d] * inv }
            }
        }
        for i in 0..<L {
            rowSums[i] = 0
            lastSimilar[i] = -1
            lastSimilarValue[i] = 0
        }
        similarityToFirst[0] = 0
        normalizedKeys.withUnsafeBufferPointer { nk in
            rowSums.withUnsafeMutableBufferPointer { sums in
                lastSimilar.withUnsafeMutableBufferPointer { last in
                    lastSimilarValue.withUnsafeMutableBufferPointer { lastValue in
                        let base = nk.baseAddress!
                        for i in 0..<L {
                            let a = base + i * D
                            for j in (i + 1)..<L {
                                let s = Kernels.dot(a, base + j * D, D)
                                sums[i] += s
                                sums[j] += s
                                if s > threshold {
                                    // Rows see their partners in increasing slot order: for row i
                                    // the j > i come in order; for row j every i < j comes
                                    // before any of its own j' > j. The last write is the largest.
                                    last[i] = Int32(j)
                                    lastValue[i] = s
                                    last[j] = Int32(i)
                                    lastValue[j] = s
                                }
                                if i == 0 { similarityToFirst[j] = s }
                            }
                        }
                    }
                }
            }
        }
        // Remove each row's zeroed entry from its column's sum, then column mean and softmax.
        for i in 0..<L {
            if lastSimilar[i] >= 0 {
                rowSums[Int(lastSimilar[i])] -= lastSimilarValue[i]
            } else {
                rowSums[0] -= similarityToFirst[i]  // the quirk: no similar key zeroes S[i, 0]
            }
        }
        let n = Float(L)
        for j in 0..<L { redundancyScores[j] = rowSums[j] / n }
        redundancyScores.withUnsafeMutableBufferPointer { _ = Kernels.softmaxInPlace($0.baseAddress!, L) }
    }
}

/// Orders candidates for keeping: descending score, lower index first among equal scores
/// (torch's `topk` leaves ties unspecified; this is the stable choice), and returns the first
/// `keep` indices in that order.
func topCandidates(_ scores: [Float], count C: Int, keep: Int) -> [Int] {
    precondition(keep <= C, "cannot keep more candidates than there are")
    var order = Array(0..<C)
    scores.withUnsafeBufferPointer { s in
        order.sort { a, b in s[a] != s[b] ? s[a] > s[b] : a < b }
    }
    return Array(order.prefix(keep))
}

/// Physical order of the kept tokens after a compression.
public enum KeptSlotOrder: String, CaseIterable, Sendable {
    /// As the references gather them: kept candidates in descending score order.
    case score
    /// Kept candidates re-sorted by position (the R-KV serving ports' paged compaction).
    case position
}

extension WindowScorer {
    /// One compression of kv head `g`: scores the candidates (every slot but the last
    /// `window`), keeps the best `budget − window` of them and the window slots, and stores them
    /// in the cache in the order the reference would hold them. `windowFirst` puts the window
    /// before the candidates (kvpress, whose window carries the top score); otherwise it follows
    /// them (R-KV, SnapKV). The window slots keep their order either way; with
    /// `KeptSlotOrder.position` everything kept is sorted by position.
    func compress(kvHead g: Int, cache: LayerCache, budget: Int, window w: Int, queries: QueryWindow,
                  keys: [Float], order: KeptSlotOrder, windowFirst: Bool, scores: inout [Float]) {
        let slots = cache.slots[g]
        let L = slots.count
        let C = L - w
        keys.withUnsafeBufferPointer { K in
            score(kvHead: g, slots: slots, window: w, queries: queries, keys: K.baseAddress!,
                  numTokens: cache.numTokens, into: &scores)
        }
        var kept = topCandidates(scores, count: C, keep: budget - w)
        let windowSlots = Array(C..<L)
        switch order {
        case .score:
            kept = windowFirst ? windowSlots + kept : kept + windowSlots
        case .position:
            kept = (kept + windowSlots).sorted { slots[$0] < slots[$1] }
        }
        cache.keep(kvHead: g, slotIndices: kept)
    }
}
