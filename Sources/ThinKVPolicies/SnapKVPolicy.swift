import Foundation

/// SnapKV (Li et al., 2024): keep the window of the newest queries and the older tokens those
/// queries attend to most, pooled over neighbouring slots. Three variants
/// (reference-policies.md 2.7 and 3; docs/policies.md `## snapkv`):
///
/// - `rkv` (default) — the `SnapKV` class of R-KV's repository as R-KV's decode loop drives it
///   (the decode-time SnapKV the R-KV paper compares against): R-KV's importance path alone —
///   group max of the scaled logits, softmax over the candidates only, mean over the window
///   rows, max-pool — keeping the best B − w candidates in score order plus the window; same
///   triggers as `rkv` (`legacy`: prompt if P ≥ B, then positions with p % divide == 0 if
///   L ≥ B; `buffer`: every `buffer` decoded tokens if L ≥ B + buffer).
/// - `original` — FasterDecoding/SnapKV `SnapKVCluster.update_kv`, prefill only: if P ≥ B, each
///   of the last w prompt queries takes a causal softmax over the whole row of P keys; the
///   rows are summed over the window, pooled (average with zero padding counted, by default),
///   and the best B − w candidates kept in score order, then the window. Nothing happens during
///   decoding; the cache grows. The reference selects per query head (it repeats the kv heads
///   before selecting); one cache per kv head cannot hold a union under a fixed budget, so the
///   pooled scores are averaged over the group (kvpress's choice, SnapKV issue #22).
/// - `kvpress` — NVIDIA/kvpress `DecodingPress(SnapKVPress)`: after every `interval` decode
///   steps, if L > B: causal full-row softmax of the last w queries, mean over the rows,
///   average pool, mean over the group; the window is protected with a score above every
///   candidate, so `topk` returns it first: the window, then the best B − w candidates in score
///   order. Nothing is done at prefill (the press only acts on decode steps).
///
/// All variants score with 1/sqrt(D) in float64 (see `WindowScorer`), or with the reference's
/// roundings under `--score-dtype bfloat16|float16`; ties go to the lower slot index (CUDA topk).
public final class SnapKVPolicy: ConfiguredPolicy {
    public static let name = "snapkv"
    public static let summary =
        "SnapKV: keep the window and the tokens its queries attend to most (R-KV's decode-time variant, the original "
        + "prefill-only one, or kvpress's DecodingPress)"
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? {
        switch try? parameters.choice("snap-variant", as: Variant.self) {
        case .rkv?: return (try? parameters.choice("trigger", as: DecodeTrigger.self))?.cadenceParameter
        case .original?, nil: return nil  // compresses the prompt only: no cadence bounds the decode cache
        case .kvpress?: return "interval"
        }
    }
    public static let parameters: [PolicyParameter] = [
        .choice(
            "snap-variant", Variant.allCases.map(\.rawValue), default: Variant.rkv.rawValue,
            help:
                "rkv = R-KV's decode-time SnapKV; original = FasterDecoding prefill-only; kvpress = "
                + "DecodingPress(SnapKVPress)"
        ),
        .budget(min: 2, help: "B, tokens per kv head after a compression, the window included; must exceed --window"),
        .integer(
            "window", min: 1,
            help: "w, observation window (default per variant: rkv 8, original 32, kvpress 64)"),
        .integer(
            "kernel", min: 1,
            help: "pooling kernel over neighbouring slots, odd (default per variant: rkv 7, original 5, kvpress 5)"),
        PolicyParameter(
            "pool", .choice(["max", "avg"]),
            help:
                "pooling: max (padding as −inf) or avg (zero padding counted) (default per variant: rkv max, "
                + "original avg, kvpress avg)"
        ),
        .choice(
            "trigger", DecodeTrigger.allCases.map(\.rawValue), default: DecodeTrigger.legacy.rawValue,
            help:
                "rkv variant only: legacy = at positions p with p % divide == 0 if L ≥ B; buffer = every --buffer "
                + "decoded tokens if L ≥ B + buffer"
        ),
        .integer(
            "divide", default: 128, min: 1,
            help: "rkv variant, legacy trigger: compress while processing positions that are multiples of this"),
        .integer(
            "buffer", default: 128, min: 1,
            help: "rkv variant, buffer trigger: decoded tokens between compressions; at least --window"),
        .integer(
            "interval", default: 512, min: 1,
            help:
                "kvpress variant: compress after every N decode steps (DecodingPress compression_interval); must "
                + "exceed --window"
        ),
        .choice(
            "slot-order", KeptSlotOrder.allCases.map(\.rawValue), default: KeptSlotOrder.score.rawValue,
            help: "physical order of kept tokens: score (as the references gather them) or position"),
        ScoreDType.parameter
    ]
    public static let requirements: PolicyRequirements = .queriesAndKeys

    public enum Variant: String, CaseIterable, Sendable {
        case rkv, original, kvpress

        var defaultWindow: Int { self == .rkv ? 8 : self == .original ? 32 : 64 }
        var defaultKernel: Int { self == .rkv ? 7 : 5 }
        var defaultPool: WindowScoringRule.Pool { self == .rkv ? .max : .average }
    }

    public struct Configuration: PolicyConfiguration {
        public let variant: Variant
        public let budget: Int
        public let window: Int
        public let kernel: Int
        let pool: WindowScoringRule.Pool
        public let trigger: DecodeTrigger
        public let divide: Int
        public let buffer: Int
        public let interval: Int
        public let slotOrder: KeptSlotOrder
        public let dtype: ScoreDType

        public init(_ values: PolicyParameters) throws {
            variant = try values.choice("snap-variant")
            budget = try values.integer("budget")
            window = try values.optionalInteger("window") ?? variant.defaultWindow
            kernel = try values.optionalInteger("kernel") ?? variant.defaultKernel
            pool =
                try values.optionalText("pool").map { $0 == "max" ? WindowScoringRule.Pool.max : .average }
                ?? variant.defaultPool
            trigger = try values.choice("trigger")
            divide = try values.integer("divide")
            buffer = try values.integer("buffer")
            interval = try values.integer("interval")
            slotOrder = try values.choice("slot-order")
            dtype = try values.choice("score-dtype")

            let prefix = "snapkv (\(variant.rawValue))"
            try PolicyGuard.budget(budget, exceedsWindow: window, prefix)
            try PolicyGuard.oddKernel(kernel, prefix)
            let refuse = { (why: String) in PolicyError("\(prefix): \(why)") }
            let given = Set(values.given.keys)
            let rkvOnly = given.intersection(["trigger", "divide", "buffer"])
            if variant != .rkv, let name = rkvOnly.sorted().first {
                throw refuse(
                    "--\(name) applies to --snap-variant rkv only (original compresses the prompt once; "
                        + "kvpress uses --interval)")
            }
            if variant != .kvpress && given.contains("interval") {
                throw refuse("--interval applies to --snap-variant kvpress only")
            }
            if variant == .rkv && trigger == .buffer && buffer < window {
                throw refuse("--buffer (\(buffer)) must be at least --window (\(window))")
            }
            if variant == .kvpress { try PolicyGuard.kvpressQueries(interval: interval, window: window, prefix) }
        }
    }

    /// kvpress `DecodingPress.hidden_states_buffer_size` (`PolicyGuard.kvpressQueryBuffer`).
    static let kvpressQueryBuffer = PolicyGuard.kvpressQueryBuffer

    public let variant: Variant
    public let budget: Int
    public let window: Int
    public let trigger: DecodeTrigger
    public let divide: Int
    public let buffer: Int
    public let interval: Int
    public let slotOrder: KeptSlotOrder
    private let promptLength: Int
    private let scorer: WindowScorer
    private var queries: QueryWindow
    private var scores: [Double] = []

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        variant = configuration.variant
        budget = configuration.budget
        window = configuration.window
        let kernel = configuration.kernel
        let pool = configuration.pool
        trigger = configuration.trigger
        divide = configuration.divide
        buffer = configuration.buffer
        interval = configuration.interval
        slotOrder = configuration.slotOrder

        let header = setup.header
        promptLength = header.promptLength
        let rule: WindowScoringRule
        switch variant {
        case .rkv:
            rule = WindowScoringRule(
                softmax: .candidatesOnly, rowReduce: .mean, pool: pool, kernel: kernel,
                groupReduce: .maxLogits, redundancy: nil)
        case .original:
            rule = WindowScoringRule(
                softmax: .causalFullRow, rowReduce: .sum, pool: pool, kernel: kernel,
                groupReduce: .meanScores, redundancy: nil)
        case .kvpress:
            rule = WindowScoringRule(
                softmax: .causalFullRow, rowReduce: .mean, pool: pool, kernel: kernel,
                groupReduce: .meanScores, redundancy: nil)
        }
        var rounded = rule
        rounded.dtype = configuration.dtype
        // R-KV's SnapKV casts after the mean over the window; the original and kvpress cast the softmax.
        rounded.softmaxCast = variant == .rkv ? .afterRowReduce : .afterSoftmax
        scorer = WindowScorer(rule: rounded, header: header)
        queries = QueryWindow(capacity: window, numQHeads: header.numQHeads, headDim: header.headDim)
    }

    /// The largest resident set per kv head after any step:
    /// - rkv: as `RKVPolicy` — legacy B + divide − 1; buffer max(P, B + buffer − 1) + buffer − 1.
    /// - original: none (the cache grows after the prompt).
    /// - kvpress: the prompt stays (P); a compression leaves at most B; `interval − 1` steps pass
    ///   between compressions: max(P, B) + interval − 1.
    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        switch try? parameters.choice("snap-variant", as: Variant.self) {
        case .rkv?: return DecodeTrigger.cadence(parameters) ?? "?"
        case .original?: return "the prompt once; the cache grows while decoding"
        case .kvpress?:
            guard let n = try? parameters.integer("interval") else { return "?" }
            return "every \(n) decode steps; holds up to max(P, B)+\(n - 1)"
        case nil: return "?"
        }
    }

    public var residentCap: Int? {
        switch variant {
        case .rkv:
            switch trigger {
            case .legacy: return budget + divide - 1
            case .buffer: return max(promptLength, budget + buffer - 1) + buffer - 1
            }
        case .original: return nil
        case .kvpress: return max(promptLength, budget) + interval - 1
        }
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        guard let promptQueries = context.promptQueries, let keys = context.data.keys else { return }
        queries.fill(promptQueries: promptQueries, promptLength: promptLength)
        let compressesPrompt = (variant == .rkv && trigger == .legacy) || variant == .original
        guard compressesPrompt else { return }
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) >= budget {
            compress(kvHead: g, cache: cache, keys: keys)
        }
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        guard variant != .original, let stepQueries = context.queries, let keys = context.data.keys else { return }
        queries.push(stepQueries)
        let minimum: Int
        switch (variant, trigger) {
        case (.kvpress, _):
            guard CompressionSchedule.everyNFires(step: context.step, interval: interval) else { return }
            minimum = budget + 1  // at L ≤ B the press's compression ratio is 0: nothing happens
        case (_, .legacy):
            guard CompressionSchedule.legacyFires(position: context.position, divide: divide) else { return }
            minimum = budget
        case (_, .buffer):
            guard CompressionSchedule.everyNFires(step: context.step, interval: buffer) else { return }
            minimum = budget + buffer
        }
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) >= minimum {
            compress(kvHead: g, cache: cache, keys: keys)
        }
    }

    private func compress(kvHead g: Int, cache: LayerCache, keys: [Float]) {
        scorer.compress(
            kvHead: g, cache: cache, budget: budget, window: window, queries: queries, keys: keys,
            order: slotOrder, windowFirst: variant == .kvpress, scores: &scores)
    }

    /// A step driven by a trigger that replaces the variant's own (Policies/Algebra): the step's
    /// query joins the observation window and, if `compress`, every kv head holding more than B
    /// tokens compresses to B with the variant's scoring.
    func triggeredStep(_ context: StepContext, compress: Bool, cache: LayerCache) {
        guard let stepQueries = context.queries, let keys = context.data.keys else { return }
        queries.push(stepQueries)
        guard compress else { return }
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > budget {
            self.compress(kvHead: g, cache: cache, keys: keys)
        }
    }
}
