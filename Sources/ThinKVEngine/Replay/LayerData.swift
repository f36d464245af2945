import Foundation

/// The exact (as recorded) keys and values of one layer, laid out per kv head so that one
/// head's keys are contiguous: element (head, position, d) is at `(head * T + position) * D + d`.
/// Queries are not held here: the engine streams them in chunks of decode steps.
public final class LayerData: @unchecked Sendable {
    public let info: LayerInfo
    public let numTokens: Int
    public let numKVHeads: Int
    public let headDim: Int
    /// nil for attention-only layers. Written only by `setRow` (the online driver, which
    /// receives positions as a model produces them); a replay never changes them.
    public internal(set) var keys: [Float]?
    /// nil when the trace has no `v` for this layer.
    public internal(set) var values: [Float]?

    public init(info: LayerInfo, numTokens: Int, numKVHeads: Int, headDim: Int, keys: [Float]?, values: [Float]?) {
        self.info = info
        self.numTokens = numTokens
        self.numKVHeads = numKVHeads
        self.headDim = headDim
        self.keys = keys
        self.values = values
    }

    @inline(__always)
    public func offset(kvHead: Int, position: Int) -> Int { (kvHead * numTokens + position) * headDim }

    /// Writes position p's keys and values (`[numKVHeads][headDim]` each) into the per-head
    /// layout: the online driver fills a layer row by row, before any policy sees position p.
    package func setRow(position p: Int, keys k: UnsafeBufferPointer<Float>, values v: UnsafeBufferPointer<Float>?) {
        let D = headDim
        if keys != nil {
            keys!.withUnsafeMutableBufferPointer { dst in
                for g in 0..<numKVHeads { for d in 0..<D { dst[offset(kvHead: g, position: p) + d] = k[g * D + d] } }
            }
        }
        if let v, values != nil {
            values!.withUnsafeMutableBufferPointer { dst in
                for g in 0..<numKVHeads { for d in 0..<D { dst[offset(kvHead: g, position: p) + d] = v[g * D + d] } }
            }
        }
    }

    /// Reads k and v of a layer and transposes `[T][Hkv][D]` into the per-head layout.
    public static func load(from reader: TraceReader, layer: Int) throws -> LayerData {
        guard let info = reader.layerInfo(layer) else {
            throw TraceError(file: reader.path, object: "/layers/\(layer)", "not recorded in this trace")
        }
        let h = reader.header
        func loadPerHead(_ tensor: LayerTensor) throws -> [Float]? {
            guard info.has(tensor) else { return nil }
            let T = h.numTokens, H = h.numKVHeads, D = h.headDim
            var out = [Float](repeating: 0, count: T * H * D)
            var rows = [Float]()
            let chunk = 1024
            try out.withUnsafeMutableBufferPointer { dst in
                for start in stride(from: 0, to: T, by: chunk) {
                    let end = min(T, start + chunk)
                    try reader.readRows(tensor, layer: layer, rows: start..<end, into: &rows)
                    rows.withUnsafeBufferPointer { src in
                        for t in start..<end {
                            for head in 0..<H {
                                let from = ((t - start) * H + head) * D
                                let to = (head * T + t) * D
                                for d in 0..<D { dst[to + d] = src[from + d] }
                            }
                        }
                    }
                }
            }
            return out
        }
        return LayerData(
            info: info, numTokens: h.numTokens, numKVHeads: h.numKVHeads, headDim: h.headDim,
            keys: info.hasQueriesAndKeys ? try loadPerHead(.k) : nil,
            values: try loadPerHead(.v))
    }
}
