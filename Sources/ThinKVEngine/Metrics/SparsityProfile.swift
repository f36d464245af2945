import Foundation

/// How the query heads of a GQA group become one attention row for ThinKV's sparsity.
public enum GQASparsity: String, Codable, Sendable, CaseIterable {
    /// ThinKV (App. C.2 as summarised): max-pool the logits within each GQA group, softmax,
    /// average over kv groups; then the fraction of entries below 1 % of the row maximum.
    case maxPool = "max-pool"
    /// Every query head's softmax row averaged (this project's definition before ThinKV's).
    case meanHeads = "mean-heads"
}

/// Per-step attention sparsity of each recorded layer under the full cache (see `Sparsity`):
/// the signal ThinKV's thought classifier reads, and what `inspect` summarises.
public struct SparsityProfile: Sendable {
    /// Layer index -> sparsity of each decode step (length G or the requested step count).
    public let byLayer: [Int: [Float]]
    public let layers: [Int]
    /// How each step's GQA groups were combined.
    public var gqa: GQASparsity = .maxPool

    package init(byLayer: [Int: [Float]], layers: [Int], gqa: GQASparsity = .maxPool) {
        self.byLayer = byLayer
        self.layers = layers
        self.gqa = gqa
    }

    /// Computes the profile; costs one full-attention pass over the chosen layers.
    public static func compute(
        _ reader: TraceReader, layers: [Int]? = nil, maxSteps: Int? = nil,
        threads: Int? = nil, progress: ProgressReporting? = nil,
        gqa: GQASparsity = .maxPool
    ) throws -> SparsityProfile {
        let header = reader.header
        let chosen = layers ?? reader.recordedLayerIndices
        let steps = min(maxSteps ?? header.generatedLength, header.generatedLength)
        let workers = max(1, threads ?? ProcessInfo.processInfo.activeProcessorCount)
        defer { progress?.finish() }  // also on failure, so the error starts on a clean line
        var result: [Int: [Float]] = [:]
        for (ordinal, layer) in chosen.enumerated() {
            guard let info = reader.layerInfo(layer) else {
                throw TraceError(file: reader.path, object: "/layers/\(layer)", "not recorded in this trace")
            }
            // Values are not needed for sparsity; load keys only.
            let full = try LayerData.load(from: reader, layer: layer)
            let data = LayerData(
                info: info, numTokens: full.numTokens, numKVHeads: full.numKVHeads,
                headDim: full.headDim, keys: full.keys, values: nil)
            let reference = ReferenceAttention(header: header, data: data, workers: workers)
            let scratch = reference.makeScratch(k: 1)
            let chunk = ReferenceChunk(numQHeads: header.numQHeads, headDim: header.headDim, topK: 1)
            chunk.poolsGroups = gqa == .maxPool
            var values = [Float]()
            values.reserveCapacity(steps)
            let chunkSteps = 64
            for first in stride(from: 0, to: steps, by: chunkSteps) {
                let n = min(chunkSteps, steps - first)
                chunk.prepare(firstStep: first, stepCount: n, hasValues: false)
                let P = header.promptLength
                if info.hasQueriesAndKeys {
                    try reader.readRows(.q, layer: layer, rows: (P + first)..<(P + first + n), into: &chunk.queries)
                } else {
                    try reader.readRows(.attn, layer: layer, rows: first..<(first + n), into: &chunk.attentionRows)
                }
                reference.compute(chunk, scratch: scratch)
                values += (gqa == .maxPool ? chunk.sparsityMaxPool : chunk.sparsity)[0..<n]
                progress?.update(
                    fraction: (Double(ordinal) + Double(first + n) / Double(max(steps, 1))) / Double(chosen.count),
                    detail: "layer \(layer)")
            }
            result[layer] = values
        }
        return SparsityProfile(byLayer: result, layers: chosen, gqa: gqa)
    }

    /// Step-wise mean over the given layers (all profiled layers by default).
    public func averaged(over layers: [Int]? = nil) -> [Float] {
        let chosen = layers ?? self.layers
        guard let first = chosen.first, let n = byLayer[first]?.count else { return [] }
        var out = [Float](repeating: 0, count: n)
        for layer in chosen {
            guard let row = byLayer[layer] else { continue }
            for i in 0..<n { out[i] += row[i] }
        }
        return out.map { $0 / Float(chosen.count) }
    }
}
