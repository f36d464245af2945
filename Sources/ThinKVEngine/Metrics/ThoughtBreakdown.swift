import Foundation

/// What one step's attended cache holds, by thought type and by precision (policies with
/// thought types: ThinKV and its ablations). One layer, measured like `StepRecord`'s tokens
/// (mean over kv heads) and bytes (all kv heads).
public struct ThoughtStepBreakdown: Codable, Equatable, Sendable {
    /// Kinds in the order of `tokens` and `bytes`: the thought types, then the prompt.
    public static let kinds = ["reasoning", "execution", "transition", "prompt"]
    /// Precisions counted in `tokensByBits`, widest first; other widths go to a last bucket.
    public static let bitWidths = [16, 8, 4, 2]

    /// Attended tokens per kv head of each kind.
    public var tokens: [Double]
    /// Bytes of those tokens' keys and values at their stored precision (scales and zero
    /// points are shared by groups and are not split by kind; `StepRecord` has the total).
    public var bytes: [Int]
    /// Attended tokens per kv head whose keys are stored at 16, 8, 4, 2 bits, and other widths.
    public var tokensByBits: [Double]

    public init(tokens: [Double], bytes: [Int], tokensByBits: [Double]) {
        self.tokens = tokens
        self.bytes = bytes
        self.tokensByBits = tokensByBits
    }

    /// Counts a cache's attended tokens; `kindOf(position)` is 0...2 for a thought type, 3 for
    /// the prompt.
    public static func measure(_ cache: LayerCache, kindOf: (Int) -> Int) -> ThoughtStepBreakdown {
        var tokens = [Double](repeating: 0, count: kinds.count)
        var bytes = [Int](repeating: 0, count: kinds.count)
        var byBits = [Double](repeating: 0, count: bitWidths.count + 1)
        let T = cache.numTokens, D = cache.headDim
        for h in 0..<cache.numKVHeads {
            for p in cache.slots[h] {
                let position = Int(p), kind = kindOf(position)
                let keyBits = Int(cache.keyBits[h * T + position])
                tokens[kind] += 1
                bytes[kind] += (keyBits + Int(cache.valueBits[h * T + position])) * D / 8
                byBits[bitWidths.firstIndex(of: keyBits) ?? bitWidths.count] += 1
            }
        }
        let heads = Double(max(cache.numKVHeads, 1))
        return ThoughtStepBreakdown(
            tokens: tokens.map { $0 / heads }, bytes: bytes, tokensByBits: byBits.map { $0 / heads })
    }
}

/// A run's per-thought means: tokens per kv head over (step, layer) records, bytes per step
/// extrapolated to all layers like `MemorySummary`.
public struct ThoughtBreakdownSummary: Codable, Equatable, Sendable {
    public struct Kind: Codable, Equatable, Sendable {
        public var meanTokens: Double
        public var meanBytes: Double
    }
    /// By kind: "reasoning", "execution", "transition", "prompt".
    public var byThought: [String: Kind]
    /// Mean attended tokens per kv head by key precision: "16", "8", "4", "2", "other".
    public var tokensByBits: [String: Double]

    init?(records: [StepRecord], numLayers: Int) {
        let measured = records.compactMap(\.thought)
        guard !measured.isEmpty else { return nil }
        let n = Double(measured.count)
        var byThought: [String: Kind] = [:]
        for (i, kind) in ThoughtStepBreakdown.kinds.enumerated() {
            let tokens = measured.reduce(0.0) { $0 + $1.tokens[i] } / n
            let bytes = measured.reduce(0.0) { $0 + Double($1.bytes[i]) } / n * Double(numLayers)
            byThought[kind] = Kind(meanTokens: tokens, meanBytes: bytes)
        }
        var byBits: [String: Double] = [:]
        let names = ThoughtStepBreakdown.bitWidths.map(String.init) + ["other"]
        for (i, name) in names.enumerated() { byBits[name] = measured.reduce(0.0) { $0 + $1.tokensByBits[i] } / n }
        self.byThought = byThought
        tokensByBits = byBits
    }
}
