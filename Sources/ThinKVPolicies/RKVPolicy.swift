import Foundation

/// R-KV (redundancy-aware KV compression for reasoning models, arXiv 2505.24133), as the
/// authors' legacy HF code behaves: `R1KV.update_kv` in Zefan-Cai/R-KV
/// `rkv/compression/r1_kv.py` with `cal_similarity`/`compute_attention_scores` from
/// `rkv/utils.py`, driven by the decode loop of `rkv/modeling.py` (reference-policies.md 2.2,
/// 2.3 and 2.6). docs/policies.md `## rkv` says the same for users.
///
/// Per layer the policy keeps the queries of the last `window` = w positions (the observation
/// window). A compression ("SELECT") of one kv head holding L ≥ B slots:
/// - candidates are the slots `[0, L − w)`; the last w slots are the window's own keys (the
///   window always sits at the end of the cache, so they are the w newest positions);
/// - importance: for each window query, the scaled logits of the group's query heads, reduced
///   by max (or mean) over the group, softmax over the candidates only, averaged over the
///   window rows, then max-pooled along the slot axis (kernel k, padding acting as −inf);
/// - redundancy: `cal_similarity` over all L slots (see `WindowScorer`), sliced to the
///   candidates without renormalising;
/// - score = λ·importance − (1 − λ)·redundancy; the best B − w candidates are kept in
///   descending score order (lower slot first among equal scores), followed by the window.
///   At L = B nothing is dropped but the candidates are still re-ordered by score.
///
/// Triggers:
/// - `legacy` (the HF loop): the prompt is compressed at once if P ≥ B (last w prompt
///   queries); then while processing decode position p with `p % divide == 0`
///   (`CompressionSchedule.legacyFires`), if the cache holds at least B tokens, after the
///   step's attention (the step attends to the uncompressed cache).
/// - `buffer` (R-KV 2026, `R1KV.should_compact` @31cf555 as the serving workers call it): at
///   decode step t with `(t + 1) % buffer == 0` (the decoded-token count crosses a multiple of
///   `buffer`), if the cache, the new token included, holds at least B + buffer tokens; the
///   prompt is never compressed (the serving drivers compact on decode steps only). The
///   reference also requires a full query window; with `buffer ≥ window` (which it enforces)
///   the window holds the w newest decode queries at every boundary, so that never blocks.
///
/// Deviations, all documented in docs/policies.md: scores in float64 from the stored tensors
/// by default (the reference computes in the model's bf16/fp16 and casts the importance to it;
/// float64 is used because the kept order feeds later compressions and float32 rounding reorders
/// near-ties, see `WindowScorer`); `--score-dtype bfloat16|float16` rounds every intermediate the
/// reference holds in that dtype, to ask what the authors' run kept; the scorer's scale is
/// 1/sqrt(D) even when the trace's `softmax_scale` differs (the reference hard-codes it);
/// ties are broken by slot index (torch leaves them unspecified).
public final class RKVPolicy: ConfiguredPolicy {
    public static let name = "rkv"
    public static let summary =
        "R-KV: importance from the last queries minus key redundancy, compressing to the budget every --divide "
        + "positions (or --buffer decode tokens)"
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? {
        (try? parameters.choice("trigger", as: DecodeTrigger.self))?.cadenceParameter
    }
    public static let parameters: [PolicyParameter] = [
        .budget(min: 2, help: "B, tokens per kv head after a compression, the window included; must exceed --window"),
        .integer(
            "window", default: 8, min: 1,
            help: "w, observation window: the last w queries score the cache and the last w slots are always kept"),
        .integer(
            "kernel", default: 7, min: 1,
            help: "max-pooling kernel over neighbouring slots of the importance (odd)"),
        .real(
            "lambda", default: 0.07, min: 0, max: 1,
            help:
                "λ, weight of importance against redundancy: score = λ·importance − (1 − λ)·redundancy (R1KV default "
                + "0.07; README/serving 0.1)"
        ),
        .real(
            "threshold", default: 0.5, min: 0, max: 1,
            help: "cosine similarity above which a key is a near-duplicate in the redundancy term"),
        .choice(
            "trigger", DecodeTrigger.allCases.map(\.rawValue), default: DecodeTrigger.legacy.rawValue,
            help:
                "legacy = at positions p with p % divide == 0 if L ≥ B (HF loop); buffer = every --buffer decoded "
                + "tokens if L ≥ B + buffer (2026 serving)"
        ),
        .integer(
            "divide", default: 128, min: 1,
            help: "legacy trigger: compress while processing positions that are multiples of this (prompt counted)"),
        .integer(
            "buffer", default: 128, min: 1,
            help: "buffer trigger: decoded tokens between compressions; at least --window"),
        .choice(
            "slot-order", KeptSlotOrder.allCases.map(\.rawValue), default: KeptSlotOrder.score.rawValue,
            help:
                "physical order of kept tokens: score (the HF reference) or position (the serving ports); later "
                + "compressions depend on it"
        ),
        .choice(
            "gqa-pool", ["max", "mean"], default: "max",
            help: "how a kv head's query heads combine their logits before the softmax"),
        .choice(
            "divide-method", ["step-length", "newline"], default: "step-length",
            help:
                "legacy trigger: step-length = positions that are multiples of --divide; newline = positions holding "
                + "a newline-like token (divide_method=newline)"
        ),
        .choice(
            "compression-content", ["all", "think"], default: "all",
            help:
                "legacy trigger: all = compress throughout; think = stop once </think> has been generated "
                + "(compression_content=think)"
        ),
        .text(
            "newline-ids", "LIST",
            help:
                "token ids that count as newlines (default: tokens whose /tokens/text is \\n, .\\n, )\\n, \\n\\n, "
                + ".\\n\\n or )\\n\\n)"
        ),
        .text(
            "think-end-ids", "LIST",
            help: "token ids that end the thinking span (default: tokens whose /tokens/text is </think>)"),
        ScoreDType.parameter
    ]
    public static let requirements: PolicyRequirements = .queriesAndKeys

    public struct Configuration: PolicyConfiguration {
        public let budget: Int
        public let window: Int
        public let kernel: Int
        public let lambda: Double
        public let threshold: Double
        public let trigger: DecodeTrigger
        public let divide: Int
        public let buffer: Int
        public let slotOrder: KeptSlotOrder
        public let meanPool: Bool
        public let newlineTrigger: Bool
        public let thinkOnly: Bool
        public let newlineIDs: String?
        public let thinkEndIDs: String?
        public let dtype: ScoreDType

        public init(_ values: PolicyParameters) throws {
            budget = try values.integer("budget")
            window = try values.integer("window")
            kernel = try values.integer("kernel")
            lambda = try values.real("lambda")
            threshold = try values.real("threshold")
            trigger = try values.choice("trigger")
            divide = try values.integer("divide")
            buffer = try values.integer("buffer")
            slotOrder = try values.choice("slot-order")
            meanPool = try values.optionalText("gqa-pool") == "mean"
            newlineTrigger = try values.optionalText("divide-method") == "newline"
            thinkOnly = try values.optionalText("compression-content") == "think"
            newlineIDs = try values.optionalText("newline-ids")
            thinkEndIDs = try values.optionalText("think-end-ids")
            dtype = try values.choice("score-dtype")
            try PolicyGuard.budget(budget, exceedsWindow: window, "rkv")
            try PolicyGuard.oddKernel(kernel, "rkv")
            if trigger == .buffer && (newlineTrigger || thinkOnly) {
                throw PolicyError(
                    "rkv: --divide-method newline and --compression-content think belong to the legacy "
                        + "HF loop; use them with --trigger legacy")
            }
            if trigger == .buffer && buffer < window {
                throw PolicyError(
                    "rkv: --buffer (\(buffer)) must be at least --window (\(window)): "
                        + "the window's queries are observed within one buffer")
            }
        }
    }

    public let budget: Int
    public let window: Int
    public let trigger: DecodeTrigger
    public let divide: Int
    public let buffer: Int
    public let slotOrder: KeptSlotOrder
    private let promptLength: Int
    private let scorer: WindowScorer
    private var queries: QueryWindow
    private var scores: [Double] = []
    /// Token marks for the newline / think options (nil when neither is used).
    private let tokens: RKVTriggerTokens?
    private let newlineTrigger: Bool
    private let thinkOnly: Bool

    /// Reads the token marks when `divide-method newline` or `compression-content think` asks.
    public static func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (
        any Sendable
    )? {
        let configuration = try Configuration(parameters)
        guard configuration.newlineTrigger || configuration.thinkOnly else { return nil }
        return try RKVTriggerTokens.read(
            reader, newline: configuration.newlineTrigger,
            newlineIDs: configuration.newlineIDs, thinkEnd: configuration.thinkOnly,
            thinkEndIDs: configuration.thinkEndIDs, policy: name)
    }

    /// No token marks: enough for `init` to check the parameters without reading the tokens.
    public static func validationPrepared(header: TraceHeader) -> (any Sendable)? {
        let none = [Bool](repeating: false, count: header.numTokens)
        return RKVTriggerTokens(newline: none, afterThink: none)
    }

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        budget = configuration.budget
        window = configuration.window
        trigger = configuration.trigger
        divide = configuration.divide
        buffer = configuration.buffer
        slotOrder = configuration.slotOrder
        newlineTrigger = configuration.newlineTrigger
        thinkOnly = configuration.thinkOnly
        if newlineTrigger || thinkOnly {
            guard let marks = setup.prepared as? RKVTriggerTokens else {
                throw PolicyError(
                    "rkv: --divide-method newline / --compression-content think need the trace's tokens (prepare was "
                        + "not run)"
                )
            }
            tokens = marks
        } else {
            tokens = nil
        }
        let header = setup.header
        promptLength = header.promptLength
        let rule = WindowScoringRule(
            softmax: .candidatesOnly, rowReduce: .mean, pool: .max, kernel: configuration.kernel,
            groupReduce: configuration.meanPool ? .meanLogits : .maxLogits,
            redundancy: .init(lambda: configuration.lambda, threshold: configuration.threshold),
            dtype: configuration.dtype, softmaxCast: .afterRowReduce)
        scorer = WindowScorer(rule: rule, header: header)
        queries = QueryWindow(capacity: window, numQHeads: header.numQHeads, headDim: header.headDim)
    }

    /// The largest resident set per kv head after any step (the attended set at a compressing
    /// step is one token more):
    /// - legacy: a compression leaves B, or fewer than B when it did not fire; the prompt leaves
    ///   at most B; at most `divide − 1` steps pass between compressing positions, so the cache
    ///   peaks at B + divide − 1 (and attends to up to B + divide).
    /// - buffer: the prompt is not compressed (P resident); a boundary either compresses to B or
    ///   leaves fewer than B + buffer tokens; then `buffer − 1` steps pass before the next one:
    ///   max(P, B + buffer − 1) + buffer − 1.
    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        DecodeTrigger.cadence(parameters) ?? "?"
    }

    public var residentCap: Int? {
        // Newlines may never come, and compression stops after </think>: no bound.
        if newlineTrigger || thinkOnly { return nil }
        switch trigger {
        case .legacy: return budget + divide - 1
        case .buffer: return max(promptLength, budget + buffer - 1) + buffer - 1
        }
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        guard let promptQueries = context.promptQueries else { return }
        queries.fill(promptQueries: promptQueries, promptLength: promptLength)
        guard trigger == .legacy, let keys = context.data.keys else { return }
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) >= budget {
            compress(kvHead: g, cache: cache, keys: keys)
        }
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        guard let stepQueries = context.queries, let keys = context.data.keys else { return }
        queries.push(stepQueries)
        switch trigger {
        case .legacy:
            let p = context.position
            let armed =
                newlineTrigger ? tokens!.newline[p] : CompressionSchedule.legacyFires(position: p, divide: divide)
            guard armed, !(thinkOnly && tokens!.afterThink[p]) else { return }
            for g in 0..<cache.numKVHeads where cache.count(kvHead: g) >= budget {
                compress(kvHead: g, cache: cache, keys: keys)
            }
        case .buffer:
            guard CompressionSchedule.everyNFires(step: context.step, interval: buffer) else { return }
            for g in 0..<cache.numKVHeads where cache.count(kvHead: g) >= budget + buffer {
                compress(kvHead: g, cache: cache, keys: keys)
            }
        }
    }

    private func compress(kvHead g: Int, cache: LayerCache, keys: [Float]) {
        scorer.compress(
            kvHead: g, cache: cache, budget: budget, window: window, queries: queries,
            keys: keys, order: slotOrder, windowFirst: false, scores: &scores)
    }

    /// A step driven by a trigger that replaces R-KV's own (Policies/Algebra): the step's query
    /// joins the observation window and, if `compress`, every kv head holding more than B
    /// tokens compresses to B.
    func triggeredStep(_ context: StepContext, compress: Bool, cache: LayerCache) {
        guard let stepQueries = context.queries, let keys = context.data.keys else { return }
        queries.push(stepQueries)
        guard compress else { return }
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > budget {
            self.compress(kvHead: g, cache: cache, keys: keys)
        }
    }
}

/// When a SnapKV-family policy compresses during decoding (reference-policies.md 2.3, 2.4).
public enum DecodeTrigger: String, CaseIterable, Sendable {
    /// R-KV's HF loop: while processing positions p with `p % divide == 0`, if L ≥ B.
    case legacy
    /// R-KV 2026 serving: every `buffer` decoded tokens, if L ≥ B + buffer.
    case buffer

    /// The report's cadence line (the bounds of `RKVPolicy.residentCap`).
    /// The parameter that sets how far the cache grows between compressions.
    var cadenceParameter: String { self == .legacy ? "divide" : "buffer" }

    /// The cadence line of the trigger, divide and buffer in `parameters` (nil if one is not declared).
    static func cadence(_ parameters: PolicyParameters) -> String? {
        guard let trigger = try? parameters.choice("trigger", as: DecodeTrigger.self),
            let divide = try? parameters.integer("divide"),
            let buffer = try? parameters.integer("buffer")
        else { return nil }
        return trigger.cadence(divide: divide, buffer: buffer)
    }

    func cadence(divide: Int, buffer: Int) -> String {
        switch self {
        case .legacy: return "every \(divide) positions; holds up to B+\(divide - 1)"
        case .buffer: return "every \(buffer) decode steps; holds up to max(P, B+\(buffer - 1))+\(buffer - 1)"
        }
    }
}
