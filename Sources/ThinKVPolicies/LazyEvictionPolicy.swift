import Foundation

/// LazyEviction (Zhang et al., 2025, arXiv 2506.15969), as its authors' code runs it
/// (Halo-949/LazyEviction, read from the copy vendored in WeianMao/triattention at e7a0eb1:
/// LazyEviction/model/kv_utils.py `Window_LAZYKVCluster.update_kv_in_decoding`,
/// model/temp_cacheobs.py `TempCache.record_recurrence`, the call in model/qwen_model.py and the
/// settings of evaluation.py and eval_qwen.sh).
///
/// Every decode step, before its attention (the code compresses the history, new token
/// included, and then attends to what is left):
/// - Recurrence tracking: the current query's softmax over the whole cache (1/√D) marks a token
///   important when its probability is ≥ `alpha` (1e-4). Each token keeps its last important
///   step `last` (a new token starts at c − 1, c = the 1-based decode step; all tokens at the
///   first step start at 0) and its maximum recurrence interval `mri`, the largest gap between
///   consecutive important steps (0 until it recurs).
/// - Lagged eviction: only when the cache holds more than `budget` tokens and c is a multiple
///   of `window` W (the observation window, `obs_size` = `decoding_recent_size`): the last W
///   slots stay, and of the others the `budget − W` with the highest
///   importance = 2/(1 + e^{1 + (c − last)/(mri + 1e-5)}) + (mri = 0 ? 0 : 2/(1 + e^{mri − 1}))
///   stay, gathered in `topk` order (descending, the lower slot first among ties) followed by
///   the W recent slots: the cache's slot order is the code's.
/// - Nothing happens at prefill, even for a prompt over the budget.
///
/// Choices (docs/policies.md): the code repeats K/V per query head, so each query head keeps
/// its own cache; a kv head holds one here, and a token is important for it when any query head
/// of its group attends to it with ≥ alpha. `--score-dtype float16` rounds as the code's fp16
/// tensors do (q·k/√D, the softmax's cast, the step counters `last` and `mri`, which the code
/// stores in fp16 tensors, and every operation of the importance); the default float32 computes
/// in double precision.
public final class LazyEvictionPolicy: ConfiguredPolicy {
    public static let name = "lazyeviction"
    public static let summary =
        "LazyEviction: every W steps, keep the W recent tokens and the budget's rest by recurrence (last important "
        + "step, maximum recurrence interval)"
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? { "window" }
    public static let parameters: [PolicyParameter] = [
        .budget(help: "max_kv_capacity: tokens per kv head after an eviction (≥ --window)"),
        .integer(
            "window", default: 128, min: 1,
            help:
                "W, the observation window (decoding_recent_size = obs_size): evict every W decode steps, keep the W "
                + "most recent (the code's default 128; its scripts use 101 gsm8k, 175 math, 363 aime)"
        ),
        .real(
            "alpha", default: 0.0001, min: 0, max: 1,
            help: "attention probability at or above which a token counts as important at a step"),
        ScoreDType.parameter
    ]
    public static let requirements: PolicyRequirements = .queriesAndKeys
    public static let readsAttention = false

    public struct Configuration: PolicyConfiguration {
        public let budget: Int
        public let window: Int
        public let alpha: Double
        public let dtype: ScoreDType

        public init(_ values: PolicyParameters) throws {
            budget = try values.integer("budget")
            window = try values.integer("window")
            alpha = try values.real("alpha")
            dtype = try values.choice("score-dtype")
            guard budget >= window else {
                throw PolicyError(
                    "lazyeviction: --budget (\(budget)) must be at least --window (\(window)): "
                        + "an eviction keeps the window and budget − window older tokens")
            }
        }
    }

    public let budget: Int
    public let window: Int
    public let alpha: Double
    public let dtype: ScoreDType

    private let header: TraceHeader
    /// Last important step and maximum recurrence interval, `[Hkv][T]` by position.
    private var last: [Double]
    private var mri: [Double]
    private var started = false
    private var evictions = 0

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        budget = configuration.budget
        window = configuration.window
        alpha = configuration.alpha
        dtype = configuration.dtype
        header = setup.header
        last = [Double](repeating: 0, count: header.numKVHeads * header.numTokens)
        mri = [Double](repeating: 0, count: header.numKVHeads * header.numTokens)
    }

    public var residentCap: Int? { max(header.promptLength, budget) + window - 1 }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        guard let b = try? parameters.integer("budget"), let w = try? parameters.integer("window") else { return "?" }
        return "every \(w) decode steps, before the attention, when over \(b); holds up to B+\(w - 1)"
    }

    public var reportCounters: [(name: String, value: Int)] { [("evictions", evictions)] }

    public func beforeAttention(_ context: StepContext, cache: LayerCache) {
        guard let keys = context.data.keys, context.queries != nil else { return }
        let T = header.numTokens
        let c = context.step + 1
        for g in 0..<cache.numKVHeads {
            let slots = cache.slots[g]
            if started {
                last[g * T + context.position] = dtype.round(Double(c - 1))
                mri[g * T + context.position] = 0
            }
            let important = importantSlots(kvHead: g, slots: slots, context: context, keys: keys)
            for (i, p) in slots.enumerated() where important[i] {
                let index = g * T + Int(p)
                let old = last[index]
                last[index] = dtype.round(Double(c))
                mri[index] = max(mri[index], dtype.round(last[index] - old))
            }
            let L = slots.count
            guard L > budget, c % window == 0 else { continue }
            let scores = (0..<(L - window)).map { importance(kvHead: g, position: slots[$0], step: c) }
            let kept = topkOrder(scores, keep: budget - window) + Array((L - window)..<L)
            cache.keep(kvHead: g, slotIndices: kept)
            evictions += 1
        }
        started = true
    }

    /// Which slots the step's query heads of kv head g attend to with probability ≥ alpha.
    private func importantSlots(kvHead g: Int, slots: [Int32], context: StepContext, keys: [Float]) -> [Bool] {
        let D = header.headDim, L = slots.count
        let scale = 1 / Double(D).squareRoot()
        var important = [Bool](repeating: false, count: L)
        var row = [Double](repeating: 0, count: L)
        // The fp16 tensor is compared with alpha cast to fp16.
        let threshold = dtype.round(alpha)
        for h in (g * header.groupSize)..<((g + 1) * header.groupSize) {
            let q = context.query(head: h)!.map { Double(dtype.round($0)) }
            for (j, p) in slots.enumerated() {
                let base = context.data.offset(kvHead: g, position: Int(p))
                var dot = 0.0
                for d in 0..<D { dot += q[d] * Double(dtype.round(keys[base + d])) }
                row[j] = dtype.rounds ? dtype.round(dtype.round(dot) * scale) : dot * scale
            }
            row.withUnsafeMutableBufferPointer { softmaxDouble($0.baseAddress!, L) }
            for j in 0..<L where dtype.round(row[j]) >= threshold { important[j] = true }
        }
        return important
    }

    /// The code's importance of one token at step c, with the dtype's rounding after each
    /// operation.
    private func importance(kvHead g: Int, position p: Int32, step c: Int) -> Double {
        let index = g * header.numTokens + Int(p)
        let m = mri[index], l = last[index]
        let r: (Double) -> Double = dtype.round
        let s = m == 0 ? 0 : r(2 / r(1 + r(exp(r(m - 1)))))
        let ratio = r(r(Double(c) - l) / r(m + 1e-5))
        return r(r(2 / r(1 + r(exp(r(1 + ratio))))) + s)
    }
}
