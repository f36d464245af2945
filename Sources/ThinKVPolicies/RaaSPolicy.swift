import Foundation

/// RaaS, reasoning-aware attention sparsity (Hu et al., 2025, arXiv 2502.11147), as its authors'
/// real-eviction code behaves (DerekHJH/RaaS: quest/raas_utils/controller.py
/// `InferenceController.prepare_metadata` and `update_timestamp`, quest/raas_utils/__init__.py
/// `decode_estimate` and `decode_topk`, driven by quest/models/raas_llama_optimized.py).
///
/// The cache is paged: page j holds positions [jS, (j+1)S), S = `page-size`. Every page carries a
/// timestamp, a logical clock equal to the sequence length when it was last "used":
/// - A page gets the newest timestamp when it opens: the prompt's pages get P after the prefill,
///   and a decode position p that opens a page gives it p + 1.
/// - Eviction, at the start of a decode step (before its attention, as `prepare_metadata` runs
///   before the layers): when p opens a new page and more than ⌊B/S⌋ pages are held, the page
///   with the oldest timestamp goes (`argmin`: the earliest page among equal timestamps). So
///   the step attends at most ⌊B/S⌋ pages, the newest partly filled.
/// - Refresh, after the step's attention (`update_timestamp` after the layers): each query head
///   estimates every page but the newest with Quest's bound Σ_d max(q_d·max_d, q_d·min_d) over
///   the page's per-channel key maxima and minima, takes the k = min(min(⌊B/S⌋, pages) − 1,
///   ⌊⌊B/S⌋/2⌋) best (`decode_topk`; "pages" counts every page opened so far), and those pages'
///   timestamps become p + 1. A milestone page keeps being refreshed while queries use it and
///   ages out once they stop.
/// - In the authors' kernel the estimate runs over every page opened so far, evicted ones too
///   (their per-page metadata stays in memory); an evicted page that wins a top-k place takes
///   that place from a live one and is not revived (its timestamp stays at the maximum).
///   `--refresh-among resident` restricts the estimate to the held pages instead, as the
///   authors' HuggingFace-mask version (quest/models/raas_llama.py with RaaSCache) does.
///
/// Choices where the code and the paper differ or say nothing (docs/policies.md):
/// - `--prefill lru` (default) is the code: the prompt's pages age like any other (timestamp P
///   until refreshed), in the kernel controller and in the mask version alike. `--prefill keep`
///   never evicts a page holding a prompt position, as the paper describes RaaS (every prefill
///   token kept: "phoenix" tokens live there).
/// - GQA: the kernel repeats keys and values per query head, so each query head has its own
///   cache; a kv head holds one cache here, and a page is refreshed when any query head of the
///   group ranks it in its top k.
/// - All layers are sparse (the Qwen2 version's "RaaS apply sparsity to all layers"); the Llama
///   kernel version leaves the first two layers dense.
/// - A prompt of more than ⌊B/S⌋ pages (the kernel warns "Evicing while prefill!"): with
///   `--prefill lru` the first new page evicts down to ⌊B/S⌋ pages, oldest first.
/// - Scores in float64 (the kernel uses float16); ties in the top-k go to the lower page.
public final class RaaSPolicy: ConfiguredPolicy {
    public static let name = "raas"
    public static let summary =
        "RaaS: paged LRU cache whose page timestamps are refreshed when a query's Quest estimate ranks the page in "
        + "its top half-budget"
    public static let parameters: [PolicyParameter] = [
        .budget(
            help: "B, token budget per kv head; the cache holds ⌊B/S⌋ pages (token_budget // page_size), "
                + "at least 2"),
        .integer(
            "page-size", default: 16, min: 1, max: 1 << 16,
            help: "S, tokens per page (the authors' page_size, 16 in their runs)"),
        .choice(
            "prefill", PrefillRule.allCases.map(\.rawValue), default: PrefillRule.lru.rawValue,
            help:
                "lru = prompt pages age like any other (the authors' code); keep = never evict a page holding a "
                + "prompt token (the paper's description)"
        ),
        .choice(
            "refresh-among", RefreshCandidates.allCases.map(\.rawValue), default: RefreshCandidates.all.rawValue,
            help:
                "pages the Quest estimate ranks for the refresh: all opened pages, evicted ones too (the kernel "
                + "code), or resident ones (the mask version)"
        )
    ]
    public static let requirements: PolicyRequirements = .queriesAndKeys
    public static let readsAttention = false

    public struct Configuration: PolicyConfiguration {
        public let budget: Int
        public let pageSize: Int
        public let prefillRule: PrefillRule
        public let refreshAmong: RefreshCandidates
        /// ⌊B/S⌋: pages the cache holds after an eviction.
        public var pageBudget: Int { budget / pageSize }

        public init(_ values: PolicyParameters) throws {
            budget = try values.integer("budget")
            pageSize = try values.integer("page-size")
            prefillRule = try values.choice("prefill")
            refreshAmong = try values.choice("refresh-among")
            guard budget / pageSize >= 2 else {
                throw PolicyError(
                    "raas: --budget \(budget) holds \(budget / pageSize) page(s) of \(pageSize); "
                        + "RaaS needs at least 2 (the page being filled and one more), "
                        + "so give --budget ≥ \(2 * pageSize)")
            }
        }
    }

    public enum PrefillRule: String, CaseIterable, Sendable {
        case lru, keep
    }

    public enum RefreshCandidates: String, CaseIterable, Sendable {
        case all, resident
    }

    public let budget: Int
    public let pageSize: Int
    /// ⌊B/S⌋: pages the cache holds after an eviction.
    public let pageBudget: Int
    public let prefillRule: PrefillRule
    public let refreshAmong: RefreshCandidates

    private let header: TraceHeader
    private let numPages: Int
    /// Pages holding a prompt position.
    private let promptPages: Int
    /// Timestamps `[Hkv][numPages]`; `evicted` marks a page gone.
    private var timestamp: [Int]
    private static let evicted = Int.max
    /// Pages held per kv head (opened and not evicted).
    private var held: [Int]
    /// Per-channel key maxima and minima of complete pages, `[Hkv][numPages][D]`.
    private var pageMax: [Float]
    private var pageMin: [Float]
    private var pagesSummarised = 0
    private var evictions = 0
    private var refreshes = 0

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        budget = configuration.budget
        pageSize = configuration.pageSize
        pageBudget = configuration.pageBudget
        prefillRule = configuration.prefillRule
        refreshAmong = configuration.refreshAmong
        header = setup.header
        numPages = (header.numTokens + pageSize - 1) / pageSize
        promptPages = (header.promptLength + pageSize - 1) / pageSize
        timestamp = [Int](repeating: 0, count: header.numKVHeads * numPages)
        held = [Int](repeating: 0, count: header.numKVHeads)
        let D = header.headDim
        pageMax = [Float](repeating: 0, count: header.numKVHeads * numPages * D)
        pageMin = [Float](repeating: 0, count: header.numKVHeads * numPages * D)
    }

    public var residentCap: Int? {
        let pages = prefillRule == .keep ? max(pageBudget, promptPages + 1) : max(pageBudget, promptPages)
        return pages * pageSize
    }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        guard let b = try? parameters.integer("budget"),
            let s = try? parameters.integer("page-size")
        else { return "?" }
        let keep = (try? parameters.choice("prefill", as: PrefillRule.self)) == .keep
        return
            "when a decode position opens a page of \(s) and more than \(b / s) pages are held, the least recently "
            + "used page goes\(keep ? " (prompt pages stay)" : ""); holds ≤ \(b / s * s)"
    }

    public var reportCounters: [(name: String, value: Int)] {
        [("pages evicted", evictions), ("page refreshes", refreshes)]
    }

    // MARK: Hooks

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        let P = header.promptLength
        for g in 0..<header.numKVHeads {
            for j in 0..<promptPages { timestamp[g * numPages + j] = P }
            held[g] = promptPages
        }
    }

    public func beforeAttention(_ context: StepContext, cache: LayerCache) {
        let p = context.position
        guard p % pageSize == 0 else { return }
        let page = p / pageSize
        for g in 0..<cache.numKVHeads {
            timestamp[g * numPages + page] = p + 1
            held[g] += 1
            while held[g] > pageBudget, let victim = oldestPage(kvHead: g, below: page) {
                timestamp[g * numPages + victim] = Self.evicted
                held[g] -= 1
                evictions += 1
                cache.removeAll(kvHead: g) { Int($0) / self.pageSize == victim }
            }
        }
    }

    /// The evictable page with the smallest timestamp among pages `0..<limit` (the earliest
    /// among equals), or nil.
    private func oldestPage(kvHead g: Int, below limit: Int) -> Int? {
        let first = prefillRule == .keep ? promptPages : 0
        var best: Int?
        var bestTime = Self.evicted
        for j in first..<max(first, limit) {
            let t = timestamp[g * numPages + j]
            if t != Self.evicted && (best == nil || t < bestTime) {
                best = j
                bestTime = t
            }
        }
        return best
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        let p = context.position
        let complete = p / pageSize  // pages before the one p is in
        let k = min(min(pageBudget, complete + 1) - 1, pageBudget / 2)
        guard k > 0, let keys = context.data.keys else { return }
        summarisePages(upTo: complete, keys: keys, data: context.data)
        let D = header.headDim
        for g in 0..<header.numKVHeads {
            let candidates = (0..<complete).filter {
                refreshAmong == .all || timestamp[g * numPages + $0] != Self.evicted
            }
            guard !candidates.isEmpty else { continue }
            var chosen = Set<Int>()
            for h in (g * header.groupSize)..<((g + 1) * header.groupSize) {
                guard let q = context.query(head: h) else { continue }
                let scores = candidates.map { j -> Double in
                    let base = (g * numPages + j) * D
                    var s = 0.0
                    for d in 0..<D {
                        let qd = Double(q[d])
                        s += max(qd * Double(pageMax[base + d]), qd * Double(pageMin[base + d]))
                    }
                    return s
                }
                for index in topkOrder(scores, keep: min(k, candidates.count)) { chosen.insert(candidates[index]) }
            }
            for j in chosen where timestamp[g * numPages + j] != Self.evicted {
                timestamp[g * numPages + j] = max(timestamp[g * numPages + j], p + 1)
                refreshes += 1
            }
        }
    }

    /// Per-channel key maxima and minima of pages `pagesSummarised..<end` (complete pages).
    private func summarisePages(upTo end: Int, keys: [Float], data: LayerData) {
        guard end > pagesSummarised else { return }
        let D = header.headDim
        for g in 0..<header.numKVHeads {
            for j in pagesSummarised..<end {
                let base = (g * numPages + j) * D
                for p in (j * pageSize)..<((j + 1) * pageSize) {
                    let row = data.offset(kvHead: g, position: p)
                    for d in 0..<D {
                        let v = keys[row + d]
                        if p == j * pageSize {
                            pageMax[base + d] = v
                            pageMin[base + d] = v
                        } else {
                            pageMax[base + d] = max(pageMax[base + d], v)
                            pageMin[base + d] = min(pageMin[base + d], v)
                        }
                    }
                }
            }
        }
        pagesSummarised = end
    }
}
