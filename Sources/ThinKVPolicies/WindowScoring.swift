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
    /// The dtype the reference scores in (`--score-dtype`); float32 rounds nothing.
    var dtype: ScoreDType = .float32
    /// Where the reference casts its float32 softmax back to the model dtype.
    var softmaxCast: SoftmaxCast = .afterRowReduce

    enum SoftmaxCast: Equatable {
        /// After the mean over the window rows (R-KV: `softmax(..., dtype=float32).mean(-2).to(dtype)`).
        case afterRowReduce
        /// Right after the softmax, before the row reduction (SnapKV, kvpress:
        /// `softmax(..., dtype=float32).to(dtype)`).
        case afterSoftmax
    }

    struct Redundancy: Equatable {
        var lambda: Double
        /// Cosine similarity above which (strictly) a key counts as a near-duplicate.
        var threshold: Double
    }
}

/// Computes window scores for one layer; owns scratch buffers reused across events, so one
/// instance must not be used from two threads at once (each policy instance has its own).
///
/// Scores are computed in double precision from the stored (float16/float32) tensors. The kept
/// order, not only the kept set, feeds later compressions, and among ~B candidates many score
/// gaps fall below float32 resolution: in float32 two correct implementations order such
/// near-ties differently and their kept sets drift apart after a few compressions. In double
/// precision the order is decided by the inputs alone (docs/policies.md, rkv, Precision).
final class WindowScorer {
    let rule: WindowScoringRule
    let groupSize: Int
    let headDim: Int
    /// The scale the references hard-code: 1/sqrt(D), whatever the trace's softmax_scale.
    let scale: Double

    // Scratch, grown on demand.
    private var slotKeys: [Double] = []  // L × D, the head's keys in slot order
    private var windowQueries: [Double] = []  // rows × group × D
    private var logits: [Double] = []  // one row, up to L
    private var rowAccumulator: [Double] = []  // per candidate
    private var headScores: [Double] = []  // per candidate, one query head (meanScores)
    private var unitKeys: [Double] = []  // L × D, normalised keys
    private var columnSums: [Double] = []  // per slot
    private var lastSimilar: [Int] = []  // per slot
    private var lastSimilarValue: [Double] = []
    private var similarityToFirst: [Double] = []
    private var redundancyScores: [Double] = []
    private var similarityRow: [Double] = []  // one row of S (rounded scoring only)

    /// Partner keys per tile of the redundancy's pair loop (a multiple of its 4-row blocks):
    /// 256 KiB of float64 keys at D = 128.
    static let partnerTile = 256

    init(rule: WindowScoringRule, header: TraceHeader) {
        self.rule = rule
        groupSize = header.groupSize
        headDim = header.headDim
        scale = 1 / Double(header.headDim).squareRoot()
    }

    private func ensure(_ array: inout [Double], _ n: Int) {
        if array.count < n { array = [Double](repeating: 0, count: n) }
    }

    /// Scores the candidate slots `[0, L − window)` of kv head `kvHead` into `scores` (resized
    /// to the candidate count). `slots` are the head's positions in physical order; `keys` the
    /// layer's keys in the per-kv-head layout of `LayerData`.
    func score(
        kvHead g: Int, slots: [Int32], window w: Int, queries: QueryWindow,
        keys: UnsafePointer<Float>, numTokens T: Int, into scores: inout [Double]
    ) {
        let L = slots.count
        let C = L - w
        precondition(C > 0, "scoring needs at least one candidate")
        if scores.count != C { scores = [Double](repeating: 0, count: C) }
        gatherKeys(slots: slots, keys: keys + g * T * headDim)
        importance(kvHead: g, slots: L, candidates: C, queries: queries, into: &scores)
        if let redundancy = rule.redundancy {
            if rule.dtype.rounds {
                computeRedundancyRounded(slots: L, threshold: redundancy.threshold)
                // Tensor × Python float: float32 arithmetic, each result cast to the dtype.
                let dtype = rule.dtype
                let lambda = Float(redundancy.lambda), rest = Float(1 - redundancy.lambda)
                for j in 0..<C {
                    let importance = dtype.round(Float(scores[j]) * lambda)
                    let penalty = dtype.round(Float(redundancyScores[j]) * rest)
                    scores[j] = Double(dtype.round(importance - penalty))
                }
                return
            }
            computeRedundancy(slots: L, threshold: redundancy.threshold)
            let lambda = redundancy.lambda
            let rest = 1 - redundancy.lambda
            for j in 0..<C { scores[j] = scores[j] * lambda - redundancyScores[j] * rest }
        }
    }

    /// Copies the keys of `slots` (from one kv head's `[T][D]` block) into `slotKeys`.
    private func gatherKeys(slots: [Int32], keys: UnsafePointer<Float>) {
        let D = headDim
        ensure(&slotKeys, slots.count * D)
        slotKeys.withUnsafeMutableBufferPointer { out in
            for (i, p) in slots.enumerated() {
                let k = keys + Int(p) * D
                for d in 0..<D { out[i * D + d] = Double(rule.dtype.round(k[d])) }
            }
        }
    }

    // MARK: Importance

    /// Pooled window attention per candidate, reduced over the group, into `out[0..<C]`.
    private func importance(
        kvHead g: Int, slots L: Int, candidates C: Int, queries: QueryWindow,
        into out: inout [Double]
    ) {
        let rows = queries.count
        precondition(rows > 0, "scoring needs at least one window query")
        if rule.softmax == .causalFullRow {
            precondition(rows == L - C, "a causal window needs one query per window slot")
        }
        let D = headDim, G = groupSize
        ensure(&logits, L)
        ensure(&rowAccumulator, C)
        ensure(&headScores, C)
        ensure(&windowQueries, rows * G * D)
        windowQueries.withUnsafeMutableBufferPointer { out in
            for r in 0..<rows {
                for k in 0..<G {
                    queries.withQuery(row: r, head: g * G + k, headDim: D) { q in
                        for d in 0..<D { out[(r * G + k) * D + d] = Double(rule.dtype.round(q[d])) }
                    }
                }
            }
        }
        let perHead = rule.groupReduce == .meanScores
        let dtype = rule.dtype, rounding = dtype.rounds
        for j in 0..<C { out[j] = 0 }
        // Logit-pooling rules make one pass over the group at once; the score rule one per head.
        for head in 0..<(perHead ? G : 1) {
            for j in 0..<C { rowAccumulator[j] = 0 }
            for r in 0..<rows {
                let visible = rule.softmax == .candidatesOnly ? C : C + r + 1
                logits.withUnsafeMutableBufferPointer { x in
                    slotKeys.withUnsafeBufferPointer { K in
                        windowQueries.withUnsafeBufferPointer { Q in
                            let heads = perHead ? head..<(head + 1) : 0..<G
                            for (n, k) in heads.enumerated() {
                                let q = Q.baseAddress! + (r * G + k) * D
                                for j in 0..<visible {
                                    // Rounded scoring: the matmul's output, then the division by √D.
                                    let v =
                                        rounding
                                        ? dtype.round(dtype.round(dotDouble(q, K.baseAddress! + j * D, D)) * scale)
                                        : dotDouble(q, K.baseAddress! + j * D, D) * scale
                                    if n == 0 {
                                        x[j] = v
                                    } else if rule.groupReduce == .maxLogits {
                                        x[j] = Swift.max(x[j], v)
                                    } else {
                                        x[j] += v
                                    }
                                }
                            }
                            if rule.groupReduce == .meanLogits && G > 1 {
                                for j in 0..<visible { x[j] = dtype.round(x[j] / Double(G)) }
                            }
                        }
                    }
                    softmaxDouble(x.baseAddress!, visible)
                    if rounding {
                        // The softmax runs in float32; some references cast it to the dtype at once.
                        let cast = rule.softmaxCast == .afterSoftmax
                        for j in 0..<visible { x[j] = cast ? dtype.round(x[j]) : Double(Float(x[j])) }
                    }
                    for j in 0..<C { rowAccumulator[j] += x[j] }
                }
            }
            if rule.rowReduce == .mean {
                for j in 0..<C { rowAccumulator[j] /= Double(rows) }
            }
            if rounding {
                for j in 0..<C { rowAccumulator[j] = dtype.round(rowAccumulator[j]) }
            }
            pool(candidates: C, into: &headScores)
            for j in 0..<C { out[j] += headScores[j] }
        }
        if perHead && G > 1 {
            for j in 0..<C { out[j] = dtype.round(out[j] / Double(G)) }
        }
    }

    /// Same-length 1-D pooling of `rowAccumulator[0..<C]` into `output[0..<C]`.
    private func pool(candidates C: Int, into output: inout [Double]) {
        let half = rule.kernel / 2
        let k = Double(rule.kernel)
        rowAccumulator.withUnsafeBufferPointer { input in
            for j in 0..<C {
                let lo = Swift.max(0, j - half), hi = Swift.min(C - 1, j + half)
                switch rule.pool {
                case .max:
                    var m = input[lo]
                    for i in lo...hi where input[i] > m { m = input[i] }
                    output[j] = m
                case .average:
                    var s = 0.0
                    for i in lo...hi { s += input[i] }
                    output[j] = rule.dtype.round(s / k)
                }
            }
        }
    }

    // MARK: Redundancy

    /// The redundancy distribution over all slots of one kv head (tests inspect it directly).
    func redundancy(slots: [Int32], keys: UnsafePointer<Float>, threshold: Double) -> [Double] {
        gatherKeys(slots: slots, keys: keys)
        if rule.dtype.rounds {
            computeRedundancyRounded(slots: slots.count, threshold: threshold)
        } else {
            computeRedundancy(slots: slots.count, threshold: threshold)
        }
        return Array(redundancyScores[0..<slots.count])
    }

    /// R-KV's redundancy (`cal_similarity`, retain direction "last") over the L gathered keys,
    /// into `redundancyScores[0..<L]`: cosine similarities S of the normalised keys
    /// (k / (‖k‖ + 1e-8)), diagonal zeroed; in every row i the entry at the largest slot index j
    /// with S[i, j] > threshold is zeroed, or the entry at slot 0 when no j qualifies; then the
    /// column means over all L rows, and a softmax over all L slots.
    ///
    /// S is symmetric, so each pair is computed once: row i's sum equals column i's sum, and the
    /// zeroed entries are subtracted afterwards. With a threshold ≥ 0 the zeroed diagonal never
    /// qualifies. This pair loop is the cost of a compression: L(L − 1)/2 dot products of D.
    private func computeRedundancy(slots L: Int, threshold: Double) {
        let D = headDim
        ensure(&unitKeys, L * D)
        ensure(&columnSums, L)
        ensure(&lastSimilarValue, L)
        ensure(&similarityToFirst, L)
        ensure(&redundancyScores, L)
        if lastSimilar.count < L { lastSimilar = [Int](repeating: 0, count: L) }
        unitKeys.withUnsafeMutableBufferPointer { unit in
            slotKeys.withUnsafeBufferPointer { K in
                for i in 0..<L {
                    let k = K.baseAddress! + i * D
                    let inv = 1 / (dotDouble(k, k, D).squareRoot() + 1e-8)
                    for d in 0..<D { unit[i * D + d] = k[d] * inv }
                }
            }
        }
        for i in 0..<L {
            columnSums[i] = 0
            lastSimilar[i] = -1
            lastSimilarValue[i] = 0
            similarityToFirst[i] = 0
        }
        unitKeys.withUnsafeBufferPointer { unit in
            columnSums.withUnsafeMutableBufferPointer { sums in
                lastSimilar.withUnsafeMutableBufferPointer { last in
                    lastSimilarValue.withUnsafeMutableBufferPointer { lastValue in
                        similarityToFirst.withUnsafeMutableBufferPointer { first in
                            let base = unit.baseAddress!
                            // Rows in blocks of 4 share each partner key's loads; every dot is
                            // still summed in the same lane order as `dotDouble`. The block's own
                            // column sums stay in `own` while it runs: each sum still receives
                            // the same additions in the same order (pair by pair: row, then
                            // partner), so the bits are those of adding into `sums` directly.
                            //
                            // Partners come in tiles that stay in L2 while every row block before
                            // the tile's end passes over them (all L keys are more than L2 holds).
                            // Blocks ascend within a tile and tiles ascend, so every sum still
                            // receives its additions in the same order.
                            for tile in stride(from: 0, to: L, by: WindowScorer.partnerTile) {
                                let tileEnd = Swift.min(L, tile + WindowScorer.partnerTile)
                                for i0 in stride(from: 0, to: tileEnd - 1, by: 4) {
                                    let rows = Swift.min(4, L - i0)
                                    var own = SIMD4<Double>(repeating: 0)
                                    for r in 0..<rows { own[r] = sums[i0 + r] }
                                    // Partner j's similarities to the block's rows i < j, in row order.
                                    func take(_ j: Int, _ pair: SIMD4<Double>, live: Int) {
                                        let inBlock = j < i0 + rows
                                        var partnerSum = inBlock ? own[j - i0] : sums[j]
                                        for r in 0..<live {
                                            let i = i0 + r, s = pair[r]
                                            own[r] += s
                                            partnerSum += s
                                            if s > threshold {
                                                // Keep each row's largest similar partner.
                                                if j > last[i] { last[i] = j; lastValue[i] = s }
                                                if i > last[j] { last[j] = i; lastValue[j] = s }
                                            }
                                            if i == 0 { first[j] = s }
                                        }
                                        if inBlock { own[j - i0] = partnerSum } else { sums[j] = partnerSum }
                                    }
                                    var j = Swift.max(i0 + 1, tile)
                                    while j < tileEnd {
                                        #if THINKV_AVX512
                                        // Four partners past the block at once: sixteen FMA chains.
                                        if rows == 4 && j >= i0 + 4 && j + 3 < tileEnd {
                                            let dots = dotRows4x4(base + i0 * D, base + j * D, D)
                                            take(j, dots.0, live: 4)
                                            take(j + 1, dots.1, live: 4)
                                            take(j + 2, dots.2, live: 4)
                                            take(j + 3, dots.3, live: 4)
                                            j += 4
                                            continue
                                        }
                                        #endif
                                        let live = Swift.min(rows, j - i0)  // rows i < j of this block
                                        take(j, dotRows(base + i0 * D, rows: live, base + j * D, D), live: live)
                                        j += 1
                                    }
                                    for r in 0..<rows { sums[i0 + r] = own[r] }
                                }
                            }
                        }
                    }
                }
            }
        }
        // Remove each row's zeroed entry from its column's sum, then column mean and softmax.
        for i in 0..<L {
            if lastSimilar[i] >= 0 {
                columnSums[lastSimilar[i]] -= lastSimilarValue[i]
            } else {
                columnSums[0] -= similarityToFirst[i]  // the quirk: no similar key zeroes S[i, 0]
            }
        }
        for j in 0..<L { redundancyScores[j] = columnSums[j] / Double(L) }
        redundancyScores.withUnsafeMutableBufferPointer { softmaxDouble($0.baseAddress!, L) }
    }
}

extension WindowScorer {
    /// `cal_similarity` as the reference computes it in a 16-bit dtype, into
    /// `redundancyScores[0..<L]`: the key norms, the normalised keys and every cosine are cast
    /// to the dtype (`k.norm()`, `k / (norm + 1e-8)`, the matmul), the threshold test and the
    /// zeroing act on the cast cosines, the column mean is cast, and the softmax (float32
    /// inside) is cast again. A plain pass over all pairs: the float32 path's pair kernels
    /// are not needed here, and keeping this apart leaves that path's bits untouched.
    fileprivate func computeRedundancyRounded(slots L: Int, threshold: Double) {
        let D = headDim, dtype = rule.dtype
        ensure(&unitKeys, L * D)
        ensure(&columnSums, L)
        ensure(&redundancyScores, L)
        ensure(&similarityRow, L)
        unitKeys.withUnsafeMutableBufferPointer { unit in
            slotKeys.withUnsafeBufferPointer { K in
                for i in 0..<L {
                    let k = K.baseAddress! + i * D
                    let norm = dtype.round(dtype.round(dotDouble(k, k, D).squareRoot()) + 1e-8)
                    for d in 0..<D { unit[i * D + d] = dtype.round(k[d] / norm) }
                }
            }
        }
        for j in 0..<L { columnSums[j] = 0 }
        unitKeys.withUnsafeBufferPointer { unit in
            let base = unit.baseAddress!
            for i in 0..<L {
                var retained = 0  // the largest j with S[i, j] > threshold, else 0
                for j in 0..<L {
                    let s = i == j ? 0 : dtype.round(dotDouble(base + i * D, base + j * D, D))
                    similarityRow[j] = s
                    if s > threshold { retained = j }
                }
                similarityRow[retained] = 0
                for j in 0..<L { columnSums[j] += similarityRow[j] }
            }
        }
        for j in 0..<L { redundancyScores[j] = dtype.round(columnSums[j] / Double(L)) }
        redundancyScores.withUnsafeMutableBufferPointer { softmaxDouble($0.baseAddress!, L) }
        for j in 0..<L { redundancyScores[j] = dtype.round(redundancyScores[j]) }
    }
}

/// Σ a[i]·b[i] in double precision, in a fixed order (two 4-lane partial sums, then the tail);
/// fused multiply-add when built with THINKV_FMA, as `Kernels.dot`.
@inline(__always)
func dotDouble(_ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ n: Int) -> Double {
    var acc0 = SIMD4<Double>(repeating: 0), acc1 = SIMD4<Double>(repeating: 0)
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    var i = 0
    while i + 8 <= n {
        Kernels.multiplyAdd(
            &acc0, ra.loadUnaligned(fromByteOffset: i * 8, as: SIMD4<Double>.self),
            rb.loadUnaligned(fromByteOffset: i * 8, as: SIMD4<Double>.self))
        Kernels.multiplyAdd(
            &acc1, ra.loadUnaligned(fromByteOffset: (i + 4) * 8, as: SIMD4<Double>.self),
            rb.loadUnaligned(fromByteOffset: (i + 4) * 8, as: SIMD4<Double>.self))
        i += 8
    }
    var sum = (acc0 + acc1).sum()
    while i < n {
        sum += a[i] * b[i]
        i += 1
    }
    return sum
}

/// `dotDouble(row r, b)` for `rows` (≤ 4) consecutive rows of length n starting at `a`, in
/// lanes 0..<rows; each result is summed exactly as `dotDouble` sums it.
@inline(__always)
func dotRows(_ a: UnsafePointer<Double>, rows: Int, _ b: UnsafePointer<Double>, _ n: Int) -> SIMD4<Double> {
    guard rows == 4 else {
        var out = SIMD4<Double>(repeating: 0)
        for r in 0..<rows { out[r] = dotDouble(a + r * n, b, n) }
        return out
    }
    let zero = SIMD4<Double>(repeating: 0)
    var a0 = zero, a1 = zero, b0 = zero, b1 = zero, c0 = zero, c1 = zero, d0 = zero, d1 = zero
    let rb = UnsafeRawPointer(b)
    let r0 = UnsafeRawPointer(a), r1 = UnsafeRawPointer(a + n), r2 = UnsafeRawPointer(a + 2 * n),
        r3 = UnsafeRawPointer(a + 3 * n)
    var i = 0
    while i + 8 <= n {
        let lo = rb.loadUnaligned(fromByteOffset: i * 8, as: SIMD4<Double>.self)
        let hi = rb.loadUnaligned(fromByteOffset: (i + 4) * 8, as: SIMD4<Double>.self)
        Kernels.multiplyAdd(&a0, r0.loadUnaligned(fromByteOffset: i * 8, as: SIMD4<Double>.self), lo)
        Kernels.multiplyAdd(&a1, r0.loadUnaligned(fromByteOffset: (i + 4) * 8, as: SIMD4<Double>.self), hi)
        Kernels.multiplyAdd(&b0, r1.loadUnaligned(fromByteOffset: i * 8, as: SIMD4<Double>.self), lo)
        Kernels.multiplyAdd(&b1, r1.loadUnaligned(fromByteOffset: (i + 4) * 8, as: SIMD4<Double>.self), hi)
        Kernels.multiplyAdd(&c0, r2.loadUnaligned(fromByteOffset: i * 8, as: SIMD4<Double>.self), lo)
        Kernels.multiplyAdd(&c1, r2.loadUnaligned(fromByteOffset: (i + 4) * 8, as: SIMD4<Double>.self), hi)
        Kernels.multiplyAdd(&d0, r3.loadUnaligned(fromByteOffset: i * 8, as: SIMD4<Double>.self), lo)
        Kernels.multiplyAdd(&d1, r3.loadUnaligned(fromByteOffset: (i + 4) * 8, as: SIMD4<Double>.self), hi)
        i += 8
    }
    var s0 = (a0 + a1).sum(), s1 = (b0 + b1).sum(), s2 = (c0 + c1).sum(), s3 = (d0 + d1).sum()
    while i < n {
        s0 += a[i] * b[i]
        s1 += a[n + i] * b[i]
        s2 += a[2 * n + i] * b[i]
        s3 += a[3 * n + i] * b[i]
        i += 1
    }
    return SIMD4(s0, s1, s2, s3)
}

#if THINKV_AVX512
/// `dotRows` of 4 rows against the 4 consecutive partners at b (n apart). Lanes 0–3 of each
/// 8-lane accumulator are `dotDouble`'s first partial sum and lanes 4–7 its second, added as it
/// adds them.
@inline(__always)
func dotRows4x4(_ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ n: Int)
    -> (SIMD4<Double>, SIMD4<Double>, SIMD4<Double>, SIMD4<Double>)
{
    @inline(__always) func load(_ p: UnsafePointer<Double>, _ i: Int) -> SIMD8<Double> {
        UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Double>.self)
    }
    @inline(__always) func total(_ x: SIMD8<Double>) -> Double { (x.lowHalf + x.highHalf).sum() }
    let zero = SIMD8<Double>(repeating: 0)
    var a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero
    var c0 = zero, c1 = zero, c2 = zero, c3 = zero, d0 = zero, d1 = zero, d2 = zero, d3 = zero
    var i = 0
    while i + 8 <= n {
        let x0 = load(b, i), x1 = load(b, n &+ i), x2 = load(b, 2 &* n &+ i), x3 = load(b, 3 &* n &+ i)
        let u0 = load(a, i)
        Kernels.multiplyAdd(&a0, u0, x0); Kernels.multiplyAdd(&a1, u0, x1); Kernels.multiplyAdd(&a2, u0, x2);
        Kernels.multiplyAdd(&a3, u0, x3)
        let u1 = load(a, n &+ i)
        Kernels.multiplyAdd(&b0, u1, x0); Kernels.multiplyAdd(&b1, u1, x1); Kernels.multiplyAdd(&b2, u1, x2);
        Kernels.multiplyAdd(&b3, u1, x3)
        let u2 = load(a, 2 &* n &+ i)
        Kernels.multiplyAdd(&c0, u2, x0); Kernels.multiplyAdd(&c1, u2, x1); Kernels.multiplyAdd(&c2, u2, x2);
        Kernels.multiplyAdd(&c3, u2, x3)
        let u3 = load(a, 3 &* n &+ i)
        Kernels.multiplyAdd(&d0, u3, x0); Kernels.multiplyAdd(&d1, u3, x1); Kernels.multiplyAdd(&d2, u3, x2);
        Kernels.multiplyAdd(&d3, u3, x3)
        i &+= 8
    }
    var s0 = SIMD4(total(a0), total(b0), total(c0), total(d0)), s1 = SIMD4(total(a1), total(b1), total(c1), total(d1))
    var s2 = SIMD4(total(a2), total(b2), total(c2), total(d2)), s3 = SIMD4(total(a3), total(b3), total(c3), total(d3))
    while i < n {
        for r in 0..<4 {
            let x = a[r * n + i]
            s0[r] += x * b[i]
            s1[r] += x * b[n + i]
            s2[r] += x * b[2 * n + i]
            s3[r] += x * b[3 * n + i]
        }
        i += 1
    }
    return (s0, s1, s2, s3)
}
#endif

/// Replaces x[0..<n] by its softmax, in double precision.
@inline(__always)
func softmaxDouble(_ x: UnsafeMutablePointer<Double>, _ n: Int) {
    var m = -Double.infinity
    for i in 0..<n where x[i] > m { m = x[i] }
    var s = 0.0
    for i in 0..<n {
        x[i] = exp(x[i] - m)
        s += x[i]
    }
    for i in 0..<n { x[i] /= s }
}

/// Orders candidates for keeping: descending score, lower index first among equal scores
/// (torch's `topk` leaves ties unspecified; this is the stable choice), and returns the first
/// `keep` indices in that order.
func topCandidates(_ scores: [Double], count C: Int, keep: Int) -> [Int] {
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
    func compress(
        kvHead g: Int, cache: LayerCache, budget: Int, window w: Int, queries: QueryWindow,
        keys: [Float], order: KeptSlotOrder, windowFirst: Bool, scores: inout [Double]
    ) {
        let slots = cache.slots[g]
        let L = slots.count
        let C = L - w
        keys.withUnsafeBufferPointer { K in
            score(
                kvHead: g, slots: slots, window: w, queries: queries, keys: K.baseAddress!,
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
