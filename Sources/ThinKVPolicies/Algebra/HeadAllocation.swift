import Foundation

/// How a layer's budget is split among its kv heads (the `+adakv` wrapper): none (every head
/// keeps the target) or Ada-KV's pooled allocation.
public protocol HeadAllocation {
    /// The spelling after `+`; empty for `UniformHeads`.
    static var name: String { get }
    static var summary: String { get }
    static var parameters: [PolicyParameter] { get }
}

/// No wrapper written: each kv head keeps the base's target.
public enum UniformHeads: HeadAllocation {
    public static let name = ""
    public static let summary = "every kv head keeps the target"
    public static let parameters: [PolicyParameter] = []
}

/// Ada-KV (Feng et al., 2024, arXiv 2407.11550) as NVIDIA/kvpress's `AdaKVPress` allocates: the
/// layer keeps heads × target tokens in all, chosen by the top scores pooled across its kv
/// heads, after a safeguard lifts each head's own ⌊α·target⌋ best scores above every other
/// (kvpress: n_safe = int(n_kept · alpha_safeguard), default α = 0.20), so that no head is
/// emptied. kvpress masks the pruned entries, leaving the kept ones in place; here each head
/// keeps its chosen slots in slot order. Ties are broken as `topkOrder` breaks them, over the
/// head-major flattening of the scores (lower head, then lower slot, first).
///
/// kvpress's press sees heads of one length; at decode time heads differ after the first
/// allocation, so the rule here pools what each head holds: nothing happens while the layer
/// holds at most heads × target tokens.
public enum AdaKV: HeadAllocation {
    public static let name = "adakv"
    public static let summary =
        "Ada-KV head-wise budgets: the layer's heads × target tokens by pooled top scores (kvpress AdaKVPress)"
    public static let parameters: [PolicyParameter] = [
        .real(
            "alpha", default: 0.2, min: 0, max: 1,
            help: "alpha_safeguard: each head keeps at least ⌊alpha · target⌋ of its best tokens "
                + "(kvpress default 0.20)")
    ]

    /// The slot indices each head keeps (in slot order) when the heads' scores are `scores`
    /// (one array per head, in slot order) and the layer keeps `target` tokens per head on
    /// average; nil when the layer holds no more than heads × target.
    public static func keep(scores: [[Double]], target: Int, alpha: Double) -> [[Int]]? {
        let total = scores.reduce(0) { $0 + $1.count }
        let keptTotal = scores.count * target
        guard total > keptTotal else { return nil }
        let safe = Int(Double(target) * alpha)
        var flat: [Double] = []
        flat.reserveCapacity(total)
        var offsets: [Int] = []
        for head in scores {
            offsets.append(flat.count)
            var lifted = head
            for i in topkOrder(head, keep: min(safe, head.count)) { lifted[i] = .greatestFiniteMagnitude }
            flat += lifted
        }
        var kept = Array(repeating: [Int](), count: scores.count)
        for index in topkOrder(flat, keep: keptTotal) {
            let h = offsets.lastIndex { $0 <= index }!
            kept[h].append(index - offsets[h])
        }
        return kept.map { $0.sorted() }
    }
}
