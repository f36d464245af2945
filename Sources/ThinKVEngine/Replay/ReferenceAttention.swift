import Foundation

/// The full-cache attention of a chunk of consecutive decode steps of one layer: what every
/// policy is measured against. Computed once per chunk and shared by all policies.
public final class ReferenceChunk {
    public let numQHeads: Int
    public let headDim: Int
    public let topK: Int
    public private(set) var firstStep = 0
    public private(set) var stepCount = 0
    /// The decode step of each entry when the chunk holds sampled steps (`--metric-steps`),
    /// ascending; nil: the consecutive steps `firstStep ..< firstStep + stepCount`.
    public private(set) var sampledSteps: [Int]?

    /// The decode step of entry s.
    @inline(__always) public func decodeStep(_ s: Int) -> Int { sampledSteps?[s] ?? firstStep + s }

    /// Queries of the chunk's positions, `[step][Hq][D]` (q+k layers).
    public var queries: [Float] = []
    /// Recorded attention rows, `[step][H][T]` (attention-only layers).
    public var attentionRows: [Float] = []
    /// log Σ exp(logits) of the full row, `[step][Hq]` (q+k layers).
    public var logSumExp: [Float] = []
    /// Full-cache attention output Σ A·v, `[step][Hq][D]`, and its norm `[step][Hq]` (needs v).
    public var outputs: [Float] = []
    public var outputNorms: [Float] = []
    /// Positions of the k most attended tokens, `[step][Hq][k]`; `topKCount` says how many are valid.
    public var topKPositions: [Int32] = []
    public var topKCount: [Int32] = []
    /// Attention sparsity of each step (see `Sparsity`), query heads' rows averaged.
    public var sparsity: [Float] = []
    /// Sparsity of each step with the logits max-pooled within each GQA group
    /// (`GQASparsity.maxPool`), filled only when `poolsGroups` is set (q+k layers; attention-only
    /// layers have no logits and repeat `sparsity`).
    public var poolsGroups = false
    public var sparsityMaxPool: [Float] = []
    /// Full-cache logits scale·q·k at the positions of `loggedPositions`, `[step][Hq][logitStride]`,
    /// kept when `keepsLogits` (q+k layers): a policy attending with the exact keys gathers its
    /// logits from here instead of recomputing the dot products (the kernels give the same bits
    /// either way). Entry i of a row of kv head g's group is the logit of `loggedPositions[g][i]`.
    public let keepsLogits: Bool
    public private(set) var logitStride = 0
    private var logitStorage = UnsafeMutableBufferPointer<Float>(start: nil, count: 0)
    public var logits: UnsafeMutablePointer<Float>? { logitStorage.baseAddress }
    /// Per kv head, the positions whose logits are kept, ascending: those some policy may attend
    /// during the chunk (`logPositions`); and each position's entry among them (−1: not kept).
    public private(set) var loggedPositions: [[Int32]] = []
    public private(set) var logIndex: [[Int32]] = []

    public init(numQHeads: Int, headDim: Int, topK: Int, keepsLogits: Bool = false) {
        self.numQHeads = numQHeads
        self.headDim = headDim
        self.topK = topK
        self.keepsLogits = keepsLogits
    }

    deinit { logitStorage.deallocate() }

    /// Keeps the logits of `positions[g]` (ascending, distinct) for kv head g's query heads.
    func logPositions(_ positions: [[Int32]], tokens: Int) {
        if logIndex.count != positions.count || logIndex.first?.count != tokens {
            logIndex = positions.map { _ in [Int32](repeating: -1, count: tokens) }
            loggedPositions = positions.map { _ in [] }
        }
        for g in positions.indices {
            for p in loggedPositions[g] { logIndex[g][Int(p)] = -1 }
            for (i, p) in positions[g].enumerated() { logIndex[g][Int(p)] = Int32(i) }
        }
        loggedPositions = positions
        logitStride = positions.map(\.count).max() ?? 0
    }

    /// Sizes the chunk for the steps `sampled` (ascending; none: nothing to compute).
    package func prepare(sampled steps: [Int], hasValues: Bool) {
        prepare(firstStep: steps.first ?? 0, stepCount: steps.count, hasValues: hasValues)
        sampledSteps = steps
    }

    package func prepare(firstStep: Int, stepCount: Int, hasValues: Bool) {
        self.firstStep = firstStep
        self.stepCount = stepCount
        sampledSteps = nil
        if keepsLogits && logitStorage.count < stepCount * numQHeads * logitStride {
            // Grown, never shrunk, a quarter beyond the need; not zeroed: entries are written
            // before they are read.
            logitStorage.deallocate()
            logitStorage = .allocate(capacity: stepCount * numQHeads * logitStride * 5 / 4)
        }
        let n = stepCount * numQHeads
        func fit<T>(_ a: inout [T], _ count: Int, _ zero: T) {
            if a.count != count { a = [T](repeating: zero, count: count) }
        }
        fit(&logSumExp, n, 0)
        fit(&topKPositions, n * topK, -1)
        fit(&topKCount, n, 0)
        fit(&sparsity, stepCount, 0)
        fit(&sparsityMaxPool, poolsGroups ? stepCount : 0, 0)
        fit(&outputs, hasValues ? n * headDim : 0, 0)
        fit(&outputNorms, hasValues ? n : 0, 0)
    }
}

/// Attention sparsity as ThinKV defines it: average a step's attention rows over heads, then
/// the fraction of visible positions whose averaged weight is below `ratio` × the row's maximum.
public enum Sparsity {
    public static let defaultRatio: Float = 0.01

    /// Max-pools `rows` logit rows of `n` entries (stride `stride`) into `out`, turns it into a
    /// softmax and adds it to `sum`: one GQA group's contribution under `GQASparsity.maxPool`.
    static func addMaxPooledSoftmax(
        _ logits: UnsafePointer<Float>, rows: Int, stride: Int, count n: Int,
        scratch out: UnsafeMutablePointer<Float>, into sum: UnsafeMutablePointer<Float>
    ) {
        maxPooledSoftmax(logits, rows: rows, stride: stride, count: n, into: out)
        for j in 0..<n { sum[j] += out[j] }
    }

    /// The softmax of the element-wise maximum of `rows` logit rows (stride `stride`) into `out`.
    package static func maxPooledSoftmax(
        _ logits: UnsafePointer<Float>, rows: Int, stride: Int, count n: Int,
        into out: UnsafeMutablePointer<Float>
    ) {
        guard n > 0 else { return }
        out.update(from: logits, count: n)
        for r in 1..<max(rows, 1) {
            let row = logits + r * stride
            for j in 0..<n where row[j] > out[j] { out[j] = row[j] }
        }
        Kernels.softmaxFast(out, n)
    }

    public static func of(averagedRow row: UnsafePointer<Float>, count n: Int, ratio: Float = defaultRatio) -> Float {
        guard n > 0 else { return 0 }
        var m: Float = 0
        for j in 0..<n where row[j] > m { m = row[j] }
        let cut = ratio * m
        var below = 0
        for j in 0..<n where row[j] < cut { below += 1 }
        return Float(below) / Float(n)
    }
}

/// Computes `ReferenceChunk`s for one layer.
///
/// For q+k layers the steps of a chunk are processed in blocks of `stepBlock` steps; within a
/// block the query heads of one kv head form the rows of one matrix, so each key and value
/// row is read once for all of them (`Kernels.scores`, `Kernels.weightedSum`).
package struct ReferenceAttention {
    let header: TraceHeader
    let data: LayerData
    let workers: Int
    /// Decode steps whose queries share one pass over the keys.
    var stepBlock = ReferenceAttention.defaultStepBlock
    static let defaultStepBlock = 8
    /// 0, 1, ..., T-1: the identity gather for the kernels.
    let identity: [Int32]
    /// Each kv head's keys in panels of 8 positions (`Kernels.packKeyPanels`), for q+k layers.
    private(set) var keyPanels: [Float]

    package init(header: TraceHeader, data: LayerData, workers: Int) {
        self.header = header
        self.data = data
        self.workers = workers
        identity = (0..<header.numTokens).map { Int32($0) }
        let T = header.numTokens, D = header.headDim
        if let keys = data.keys {
            var panels = [Float](repeating: 0, count: header.numKVHeads * T * D)
            panels.withUnsafeMutableBufferPointer { P in
                keys.withUnsafeBufferPointer { K in
                    for g in 0..<header.numKVHeads {
                        Kernels.packKeyPanels(
                            keys: K.baseAddress! + data.offset(kvHead: g, position: 0), count: T,
                            headDim: D, into: P.baseAddress! + g * T * D)
                    }
                }
            }
            keyPanels = panels
        } else {
            keyPanels = []
        }
    }

    /// Repacks position p's keys into the panels after `LayerData.setRow` wrote them (online
    /// driver): entry (panel p / 8, dimension d, lane p % 8), as `Kernels.packKeyPanels` lays it out.
    package mutating func refreshKeyPanels(position p: Int) {
        guard let keys = data.keys else { return }
        let T = header.numTokens, D = header.headDim, W = Kernels.panelWidth
        guard p / W * W + W <= T else { return }  // a partial last panel is read from the keys
        keyPanels.withUnsafeMutableBufferPointer { panels in
            for g in 0..<header.numKVHeads {
                let k = data.offset(kvHead: g, position: p)
                let base = g * T * D + (p / W) * D * W + p % W
                for d in 0..<D { panels[base + d * W] = keys[k + d] }
            }
        }
    }

    /// Per-worker scratch, reused across chunks so the hot loop does not allocate.
    package final class Scratch {
        var row: [Float]
        var average: [Float]
        /// Per step of a block, the sum over kv groups of the max-pooled softmax (`poolsGroups`).
        var pooledAverage: [Float]
        var logits: [Float]
        var queryBlock: [Float]
        var outputBlock: [Float]
        var laneMaxima: [Float]  // maxima of a row's disjoint 8-value sets, for the top-k floor
        var top: TopKSelector
        /// Per query head, how far below its maximum the last row this worker ranked had its k-th
        /// largest logit (with 5 % to spare): the next step's row is similar, so its maximum
        /// minus that gap is usually a floor for its top-k (checked before use).
        var topKHints: [Float]
        init(tokens: Int, k: Int, rows: Int, headDim: Int, stepBlock: Int, queryHeads: Int) {
            row = [Float](repeating: 0, count: tokens)
            average = [Float](repeating: 0, count: tokens * stepBlock)
            pooledAverage = []
            logits = [Float](repeating: 0, count: tokens * rows)
            queryBlock = [Float](repeating: 0, count: rows * headDim)
            outputBlock = [Float](repeating: 0, count: rows * headDim)
            laneMaxima = [Float](repeating: 0, count: tokens / 8 + 8)
            top = TopKSelector(k: k)
            topKHints = [Float](repeating: .infinity, count: queryHeads)
        }
    }

    package func makeScratch(k: Int, count: Int? = nil) -> [Scratch] {
        let rows = stepBlock * header.groupSize
        return (0..<(count ?? workers)).map { _ in
            Scratch(
                tokens: header.numTokens, k: k, rows: rows, headDim: header.headDim, stepBlock: stepBlock,
                queryHeads: header.numQHeads)
        }
    }

    /// Fills `chunk` (whose queries or attention rows are already read) for its steps.
    package func compute(_ chunk: ReferenceChunk, scratch: [Scratch]) {
        let parts = min(workers, scratch.count)
        if parts <= 1 {
            computePart(chunk, part: 0, of: 1, scratch: scratch[0])
        } else {
            DispatchQueue.concurrentPerform(iterations: parts) {
                computePart(chunk, part: $0, of: parts, scratch: scratch[$0])
            }
        }
    }

    /// Part `part` of `parts` of `compute`: a contiguous run of step blocks. Each step's results
    /// are written by exactly one part, so how the parts are scheduled does not change any bits.
    func computePart(_ chunk: ReferenceChunk, part: Int, of parts: Int, scratch: Scratch) {
        let steps = chunk.stepCount
        let blocks = (steps + stepBlock - 1) / stepBlock
        let lo = blocks * part / parts, hi = blocks * (part + 1) / parts
        for b in lo..<hi {
            let range = (b * stepBlock)..<min(steps, (b + 1) * stepBlock)
            if data.keys != nil {
                computeBlock(range, chunk, scratch)
            } else {
                for s in range { computeRecordedStep(s, chunk, scratch) }
            }
        }
    }

    /// Steps `range` of a q+k layer.
    private func computeBlock(_ range: Range<Int>, _ chunk: ReferenceChunk, _ scratch: Scratch) {
        let Hq = header.numQHeads, D = header.headDim, T = header.numTokens, gs = header.groupSize
        let P = header.promptLength
        let scale = header.effectiveSoftmaxScale
        let k = chunk.topK
        let lastLength = P + chunk.decodeStep(range.upperBound - 1) + 1  // visible positions of the last step
        let rows = range.count * gs
        scratch.average.withUnsafeMutableBufferPointer { avg in
            for i in 0..<(range.count * T) { avg[i] = 0 }
        }
        if chunk.poolsGroups {
            if scratch.pooledAverage.count < (range.count + 1) * T {
                scratch.pooledAverage = [Float](repeating: 0, count: (stepBlock + 1) * T)
            }
            for i in 0..<(range.count * T) { scratch.pooledAverage[i] = 0 }
        }
        scratch.logits.withUnsafeMutableBufferPointer { L in
            scratch.queryBlock.withUnsafeMutableBufferPointer { QB in
                scratch.outputBlock.withUnsafeMutableBufferPointer { OB in
                    scratch.average.withUnsafeMutableBufferPointer { avg in
                        scratch.laneMaxima.withUnsafeMutableBufferPointer { LM in
                            identity.withUnsafeBufferPointer { iota in
                                chunk.queries.withUnsafeBufferPointer { Q in
                                    data.keys!.withUnsafeBufferPointer { K in
                                        keyPanels.withUnsafeBufferPointer { KP in
                                            for g in 0..<header.numKVHeads {
                                                // Rows (step, head of the group), queries gathered contiguously.
                                                for (i, s) in range.enumerated() {
                                                    for hh in 0..<gs {
                                                        let src = Q.baseAddress! + (s * Hq + g * gs + hh) * D
                                                        let dst = QB.baseAddress! + (i * gs + hh) * D
                                                        dst.update(from: src, count: D)
                                                    }
                                                }
                                                Kernels.scoresPanels(
                                                    queries: QB.baseAddress!, rows: rows, headDim: D,
                                                    panels: KP.baseAddress! + g * T * D,
                                                    keys: K.baseAddress! + data.offset(kvHead: g, position: 0),
                                                    identity: iota.baseAddress!,
                                                    count: lastLength, scale: scale, out: L.baseAddress!, outStride: T)
                                                if chunk.poolsGroups {
                                                    // Before the rows below are turned into probabilities in place.
                                                    scratch.pooledAverage.withUnsafeMutableBufferPointer { PA in
                                                        let spare = PA.baseAddress! + stepBlock * T
                                                        for (i, s) in range.enumerated() {
                                                            Sparsity.addMaxPooledSoftmax(
                                                                L.baseAddress! + i * gs * T, rows: gs, stride: T,
                                                                count: P + chunk.decodeStep(s) + 1, scratch: spare,
                                                                into: PA.baseAddress! + i * T)
                                                        }
                                                    }
                                                }
                                                for (i, s) in range.enumerated() {
                                                    let n = P + chunk.decodeStep(s) + 1
                                                    for hh in 0..<gs {
                                                        let h = g * gs + hh
                                                        let idx = s * Hq + h
                                                        let r = L.baseAddress! + (i * gs + hh) * T
                                                        if let kept = chunk.logits {
                                                            let out = kept + idx * chunk.logitStride
                                                            chunk.loggedPositions[g].withUnsafeBufferPointer {
                                                                positions in
                                                                var entry = 0
                                                                while entry < positions.count
                                                                    && Int(positions[entry]) < n
                                                                {  // visible ones
                                                                    out[entry] = r[Int(positions[entry])]
                                                                    entry += 1
                                                                }
                                                            }
                                                        }
                                                        // Top-k by logit (the order of the probabilities, without exp's
                                                        // rounding
                                                        // ties), its floor from the lane maxima of the softmax's max
                                                        // pass.
                                                        let m = Kernels.rowMax(r, n, laneMaxima: LM.baseAddress!)
                                                        scratch.top.reset()
                                                        scratch.top.offerAll(
                                                            r, n, laneMaxima: LM.baseAddress!,
                                                            floorHint: m - scratch.topKHints[h])
                                                        scratch.topKHints[h] =
                                                            scratch.top.count == k
                                                            ? 1.05 * (m - scratch.top.admissionThreshold) : .infinity
                                                        let sum = Kernels.exponentiate(r, n, max: m)
                                                        Kernels.normalize(
                                                            r, n, sum: sum, accumulatingInto: avg.baseAddress! + i * T)
                                                        chunk.logSumExp[idx] = m + logf(sum)
                                                        // causal: later positions get no weight
                                                        for j in n..<lastLength { r[j] = 0 }
                                                        var c = 0
                                                        for position in scratch.top.selected {
                                                            chunk.topKPositions[idx * k + c] = position
                                                            c += 1
                                                        }
                                                        chunk.topKCount[idx] = Int32(c)
                                                    }
                                                }
                                                if let values = data.values {
                                                    values.withUnsafeBufferPointer { V in
                                                        Kernels.weightedSum(
                                                            probs: L.baseAddress!, probStride: T, rows: rows,
                                                            values: V.baseAddress!
                                                                + data.offset(kvHead: g, position: 0),
                                                            indices: iota.baseAddress!, count: lastLength, headDim: D,
                                                            out: OB.baseAddress!)
                                                    }
                                                    chunk.outputs.withUnsafeMutableBufferPointer { O in
                                                        for (i, s) in range.enumerated() {
                                                            for hh in 0..<gs {
                                                                let idx = s * Hq + g * gs + hh
                                                                let src = OB.baseAddress! + (i * gs + hh) * D
                                                                (O.baseAddress! + idx * D).update(from: src, count: D)
                                                                chunk.outputNorms[idx] = Kernels.norm(src, D)
                                                            }
                                                        }
                                                    }
                                                }
                                            }
                                            for (i, s) in range.enumerated() {
                                                chunk.sparsity[s] = Sparsity.of(
                                                    averagedRow: avg.baseAddress! + i * T,
                                                    count: P + chunk.decodeStep(s) + 1)
                                                if chunk.poolsGroups {
                                                    chunk.sparsityMaxPool[s] = scratch.pooledAverage
                                                        .withUnsafeBufferPointer {
                                                            Sparsity.of(
                                                                averagedRow: $0.baseAddress! + i * T,
                                                                count: P + chunk.decodeStep(s) + 1)
                                                        }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// One step of an attention-only layer: the recorded rows are the reference.
    private func computeRecordedStep(_ s: Int, _ chunk: ReferenceChunk, _ scratch: Scratch) {
        let Hq = header.numQHeads, D = header.headDim, T = header.numTokens
        let p = header.promptLength + chunk.decodeStep(s)
        let n = p + 1
        let k = chunk.topK
        let attnHeads = data.info.attentionHeads == .keyValue ? header.numKVHeads : Hq
        scratch.average.withUnsafeMutableBufferPointer { avg in
            for j in 0..<n { avg[j] = 0 }
        }
        for h in 0..<Hq {
            let g = header.kvHead(ofQueryHead: h)
            let idx = s * Hq + h
            scratch.row.withUnsafeMutableBufferPointer { row in
                let r = row.baseAddress!
                let rowHead = attnHeads == Hq ? h : g
                chunk.attentionRows.withUnsafeBufferPointer { A in
                    r.update(from: A.baseAddress! + (s * attnHeads + rowHead) * T, count: n)
                }
                chunk.logSumExp[idx] = 0
                scratch.average.withUnsafeMutableBufferPointer { avg in
                    for j in 0..<n { avg[j] += r[j] }
                }
                if let values = data.values {
                    values.withUnsafeBufferPointer { V in
                        identity.withUnsafeBufferPointer { iota in
                            chunk.outputs.withUnsafeMutableBufferPointer { O in
                                let o = O.baseAddress! + idx * D
                                Kernels.weightedSum(
                                    probs: r, probStride: T, rows: 1,
                                    values: V.baseAddress! + data.offset(kvHead: g, position: 0),
                                    indices: iota.baseAddress!, count: n, headDim: D, out: o)
                                chunk.outputNorms[idx] = Kernels.norm(o, D)
                            }
                        }
                    }
                }
                scratch.top.reset()
                scratch.laneMaxima.withUnsafeMutableBufferPointer { LM in
                    _ = Kernels.rowMax(r, n, laneMaxima: LM.baseAddress!)
                    scratch.top.offerAll(r, n, laneMaxima: LM.baseAddress!)
                }
            }
            var c = 0
            for position in scratch.top.selected {
                chunk.topKPositions[idx * k + c] = position
                c += 1
            }
            chunk.topKCount[idx] = Int32(c)
        }
        chunk.sparsity[s] = scratch.average.withUnsafeBufferPointer {
            Sparsity.of(averagedRow: $0.baseAddress!, count: n)
        }
        if chunk.poolsGroups { chunk.sparsityMaxPool[s] = chunk.sparsity[s] }
    }
}
