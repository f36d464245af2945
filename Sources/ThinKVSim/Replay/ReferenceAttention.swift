import Foundation

/// The full-cache attention of a chunk of consecutive decode steps of one layer: what every
/// policy is measured against. Computed once per chunk and shared by all policies.
public final class ReferenceChunk {
    public let numQHeads: Int
    public let headDim: Int
    public let topK: Int
    public private(set) var firstStep = 0
    public private(set) var stepCount = 0

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
    /// Attention sparsity of each step (see `Sparsity`).
    public var sparsity: [Float] = []

    public init(numQHeads: Int, headDim: Int, topK: Int) {
        self.numQHeads = numQHeads
        self.headDim = headDim
        self.topK = topK
    }

    func prepare(firstStep: Int, stepCount: Int, hasValues: Bool) {
        self.firstStep = firstStep
        self.stepCount = stepCount
        let n = stepCount * numQHeads
        func fit<T>(_ a: inout [T], _ count: Int, _ zero: T) {
            if a.count != count { a = [T](repeating: zero, count: count) }
        }
        fit(&logSumExp, n, 0)
        fit(&topKPositions, n * topK, -1)
        fit(&topKCount, n, 0)
        fit(&sparsity, stepCount, 0)
        fit(&outputs, hasValues ? n * headDim : 0, 0)
        fit(&outputNorms, hasValues ? n : 0, 0)
    }
}

/// Attention sparsity as ThinKV defines it: average a step's attention rows over heads, then
/// the fraction of visible positions whose averaged weight is below `ratio` × the row's maximum.
public enum Sparsity {
    public static let defaultRatio: Float = 0.01

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
struct ReferenceAttention {
    let header: TraceHeader
    let data: LayerData
    let workers: Int

    /// Per-worker scratch, reused across chunks so the hot loop does not allocate.
    final class Scratch {
        var row: [Float]
        var average: [Float]
        var top: TopKSelector
        init(tokens: Int, k: Int) {
            row = [Float](repeating: 0, count: tokens)
            average = [Float](repeating: 0, count: tokens)
            top = TopKSelector(k: k)
        }
    }

    func makeScratch(k: Int) -> [Scratch] {
        (0..<workers).map { _ in Scratch(tokens: header.numTokens, k: k) }
    }

    /// Fills `chunk` (whose queries or attention rows are already read) for its steps.
    func compute(_ chunk: ReferenceChunk, scratch: [Scratch]) {
        let steps = chunk.stepCount
        let parts = min(workers, max(steps, 1))
        let run = { (w: Int) in
            let lo = steps * w / parts, hi = steps * (w + 1) / parts
            for s in lo..<hi { self.computeStep(s, chunk, scratch[w]) }
        }
        if parts <= 1 { run(0) } else { DispatchQueue.concurrentPerform(iterations: parts, execute: run) }
    }

    private func computeStep(_ s: Int, _ chunk: ReferenceChunk, _ scratch: Scratch) {
        let Hq = header.numQHeads, D = header.headDim, T = header.numTokens
        let p = header.promptLength + chunk.firstStep + s
        let n = p + 1
        let scale = header.effectiveSoftmaxScale
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
                if let keys = data.keys {
                    keys.withUnsafeBufferPointer { K in
                        chunk.queries.withUnsafeBufferPointer { Q in
                            let q = Q.baseAddress! + (s * Hq + h) * D
                            let kBase = K.baseAddress! + data.offset(kvHead: g, position: 0)
                            for j in 0..<n { r[j] = scale * Kernels.dot(q, kBase + j * D, D) }
                        }
                    }
                    chunk.logSumExp[idx] = Kernels.softmaxInPlace(r, n)
                } else {
                    let rowHead = attnHeads == Hq ? h : g
                    chunk.attentionRows.withUnsafeBufferPointer { A in
                        let src = A.baseAddress! + (s * attnHeads + rowHead) * T
                        for j in 0..<n { r[j] = src[j] }
                    }
                    chunk.logSumExp[idx] = 0
                }
                scratch.average.withUnsafeMutableBufferPointer { avg in
                    for j in 0..<n { avg[j] += r[j] }
                }
                if let values = data.values {
                    values.withUnsafeBufferPointer { V in
                        chunk.outputs.withUnsafeMutableBufferPointer { O in
                            let o = O.baseAddress! + idx * D
                            for d in 0..<D { o[d] = 0 }
                            let vBase = V.baseAddress! + data.offset(kvHead: g, position: 0)
                            for j in 0..<n { Kernels.axpy(r[j], vBase + j * D, o, D) }
                            chunk.outputNorms[idx] = Kernels.norm(o, D)
                        }
                    }
                }
                scratch.top.reset()
                for j in 0..<n { scratch.top.offer(r[j], Int32(j)) }
            }
            let base = idx * k
            var c = 0
            for position in scratch.top.selected {
                chunk.topKPositions[base + c] = position
                c += 1
            }
            chunk.topKCount[idx] = Int32(c)
        }
        chunk.sparsity[s] = scratch.average.withUnsafeBufferPointer { Sparsity.of(averagedRow: $0.baseAddress!, count: n) }
    }
}
