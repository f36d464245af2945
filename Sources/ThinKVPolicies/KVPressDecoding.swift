import Foundation

/// What NVIDIA/kvpress's decode-time wrappers decide for every press built on them
/// (kvpress/presses/decoding_press.py `DecodingPress`, compression_ratio_decoding_press.py
/// `CompressionRatioDecodingPress`): when a layer compresses and how many tokens it keeps.
///
/// - The press counts decode steps per layer and, on every `interval`-th one (after that step's
///   attention: it is a forward hook), compresses the layer's cache. Nothing happens at prefill.
/// - Target: `--budget` is `target_size`, a fixed token count; `--compression-ratio R` is
///   `CompressionRatioDecodingPress.target_compression_ratio`, the fraction of the tokens seen so
///   far to remove: target = max(1, ⌊(p + 1)(1 − R)⌋) at position p.
/// - A cache of L ≤ target tokens is left exactly as it is (compression ratio 0). Otherwise the
///   wrapper searches the ratio r whose kept count ⌊L(1 − r)⌋ is the target
///   (`_find_target_compression_ratio`, reproduced step by step in double precision, as Python
///   computes it) and hands r to the scorer press, which keeps ⌊L(1 − r)⌋ tokens by `topk` of
///   its scores and gathers them in that order (descending score, lower slot first among ties).
public struct KVPressDecoding: PolicyConfiguration {
    public let interval: Int
    public let budget: Int?
    public let compressionRatio: Double?
    /// `--score-dtype`: the dtype the press computes its scores in.
    public let dtype: ScoreDType

    /// The parameters every decode-time press shares; `window` callers add their own.
    static func parameters(defaultInterval: Int = 512) -> [PolicyParameter] {
        [
            .budget(
                required: false,
                help: "target_size: tokens per kv head after a compression (give this or --compression-ratio)"),
            .real(
                "compression-ratio", min: 0, max: 0.999999,
                help:
                    "fraction of the tokens seen so far to remove at each compression, as kvpress means it "
                    + "(CompressionRatioDecodingPress); instead of --budget"
            ),
            .integer(
                "interval", default: defaultInterval, min: 1,
                help: "compress after every N decode steps (DecodingPress compression_interval; 1 = every step)"),
            ScoreDType.parameter
        ]
    }

    public init(_ values: PolicyParameters) throws {
        let policy = values.policy
        budget = try values.optionalInteger("budget")
        compressionRatio = try values.optionalReal("compression-ratio")
        interval = try values.integer("interval")
        dtype = try values.choice("score-dtype")
        switch (budget, compressionRatio) {
        case (nil, nil):
            throw PolicyError(
                "\(policy): give --budget (kvpress target_size) or --compression-ratio (fraction removed)")
        case (.some, .some):
            throw PolicyError(
                "\(policy): --budget and --compression-ratio are alternatives (DecodingPress or "
                    + "CompressionRatioDecodingPress); give one"
            )
        default: break
        }
    }

    /// The cadence every decode-time press reports: when it compresses and what it may hold in
    /// between (the prompt is never compressed).
    static func cadence(_ parameters: PolicyParameters) -> String {
        guard let n = try? parameters.integer("interval") else { return "?" }
        let ratio = try? parameters.optionalReal("compression-ratio")
        let target = ratio.map { "keeps (1 − \(String(format: "%g", $0))) of the tokens seen" } ?? "keeps B"
        let holds = ratio == nil ? "; holds up to max(P, B)+\(n - 1)" : ""
        return "every \(n) decode steps (--interval), after the attention; \(target)\(holds)"
    }

    /// Whether decode step t (0-based) compresses.
    func fires(step: Int) -> Bool { CompressionSchedule.everyNFires(step: step, interval: interval) }

    /// The wrapper's target size while processing position p.
    func target(position p: Int) -> Int {
        if let budget { return budget }
        return max(1, Int(Double(p + 1) * (1 - compressionRatio!)))
    }

    /// The ratio DecodingPress hands the scorer to keep `target` of `length` tokens (0 when
    /// nothing needs to go): a bisection of at most 20 steps on ⌊length(1 − r)⌋.
    static func compressionRatio(keeping target: Int, of length: Int) -> Double {
        guard length > target else { return 0 }
        var ratio = 1 - Double(target) / Double(length)
        var low = 0.0, high = 1.0
        for _ in 0..<20 {
            let kept = Int(Double(length) * (1 - ratio))
            if kept == target { break }
            if kept > target {
                low = ratio
                ratio = (ratio + high) / 2
            } else {
                high = ratio
                ratio = (low + ratio) / 2
            }
        }
        return ratio
    }

    /// `ScorerPress.compress`'s kept count for a ratio.
    static func keptCount(length: Int, ratio: Double) -> Int { Int(Double(length) * (1 - ratio)) }

    /// A compression at this step: each kv head holding more than the target keeps the tokens
    /// `scores(kvHead, slots)` ranks highest (one score per slot, in slot order), as many as the
    /// press's compression ratio leaves, in `topk` order.
    func compressEachHead(_ context: StepContext, cache: LayerCache, scores: (Int, [Int32]) -> [Double]) {
        let target = target(position: context.position)
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > target {
            let slots = cache.slots[g]
            let ratio = Self.compressionRatio(keeping: target, of: slots.count)
            cache.keep(
                kvHead: g,
                slotIndices: topkOrder(scores(g, slots), keep: Self.keptCount(length: slots.count, ratio: ratio)))
        }
    }

    /// The largest resident set per kv head after any step when every compression leaves at
    /// most `kept` tokens: the prompt is never compressed, and `interval − 1` steps pass between
    /// compressions. nil (unbounded) with `--compression-ratio`, whose target grows.
    func residentCap(promptLength P: Int, keptAtMost kept: Int?) -> Int? {
        guard let kept, budget != nil else { return nil }
        return max(P, kept) + interval - 1
    }

    /// `residentCap` of a press whose compressions keep at most the budget.
    func residentCap(promptLength P: Int) -> Int? { residentCap(promptLength: P, keptAtMost: budget) }
}

/// kvpress's `topk` + gather: the indices of the `keep` best scores in descending order, lower
/// index first among equal scores (CUDA's order). NaN ranks above every number, as in torch.
func topkOrder(_ scores: [Double], keep: Int) -> [Int] {
    var order = Array(scores.indices)
    order.sort { a, b in
        let x = scores[a], y = scores[b]
        if x.isNaN || y.isNaN { return x.isNaN && !y.isNaN || (x.isNaN && y.isNaN && a < b) }
        return x != y ? x > y : a < b
    }
    return Array(order.prefix(keep))
}
