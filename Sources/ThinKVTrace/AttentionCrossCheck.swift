import Foundation
import ThinKVSupport

/// The format's cross-check for a layer that records both `q`+`k` and `attn`: the recorded
/// probabilities must be softmax(scale · q·k) over the visible positions. A recording that
/// misaligns rows, uses another scale or mixes heads fails here instead of replaying two
/// different attentions. `attn` per kv head is compared with the mean of its query heads.
public enum AttentionCrossCheck {
    /// Largest absolute difference allowed per probability: both tensors may be float16.
    public static let tolerance: Float = 0.02

    /// Checks up to `samples` decode steps (evenly spaced, first and last included) of every
    /// layer with both; throws a TraceError naming the layer, step, head and position.
    public static func check(_ reader: TraceReader, layers: [Int]? = nil, samples: Int = 8) throws {
        let h = reader.header
        let G = h.generatedLength, P = h.promptLength, D = h.headDim, T = h.numTokens
        guard G > 0 else { return }
        let steps = Array(
            Set((0..<min(samples, G)).map { i in samples <= 1 || G == 1 ? 0 : i * (G - 1) / (min(samples, G) - 1) })
        ).sorted()
        for index in layers ?? reader.recordedLayerIndices {
            guard let info = reader.layerInfo(index), info.hasQueriesAndKeys, info.hasAttention else { continue }
            let keys = try reader.readRows(.k, layer: index, rows: 0..<T)
            let byKVHead = info.attentionHeads == .keyValue
            let H = byKVHead ? h.numKVHeads : h.numQHeads
            for g in steps {
                let p = P + g
                let q = try reader.readRows(.q, layer: index, rows: p..<(p + 1))
                let recorded = try reader.readRows(.attn, layer: index, rows: g..<(g + 1))
                var expected = [Float](repeating: 0, count: H * (p + 1))
                for qh in 0..<h.numQHeads {
                    let kv = h.kvHead(ofQueryHead: qh)
                    var logits = (0...p).map { j -> Float in
                        var dot: Float = 0
                        for d in 0..<D { dot += q[qh * D + d] * keys[(j * h.numKVHeads + kv) * D + d] }
                        return dot * h.effectiveSoftmaxScale
                    }
                    let m = logits.max() ?? 0
                    var sum: Float = 0
                    for j in logits.indices { logits[j] = expf(logits[j] - m); sum += logits[j] }
                    let row = byKVHead ? kv : qh, weight: Float = byKVHead ? 1 / Float(h.groupSize) : 1
                    for j in 0...p { expected[row * (p + 1) + j] += logits[j] / sum * weight }
                }
                for head in 0..<H {
                    for j in 0...p {
                        let a = recorded[head * T + j], b = expected[head * (p + 1) + j]
                        if abs(a - b) > tolerance {
                            throw TraceError(
                                file: reader.path, object: "/layers/\(index)/attn",
                                String(
                                    format:
                                        "decode step %d, head %d, position %d: recorded %.4f but q and k give %.4f "
                                        + "(more than %.2f apart); attn must be softmax(scale · q·k) of the same "
                                        + "step",
                                    g, head, j, a, b, tolerance))
                        }
                    }
                }
            }
        }
    }
}
