import Foundation

/// StreamingLLM (Xiao et al., ICLR 2024): keep the first `sinks` positions (the "attention
/// sinks") and the most recent `budget − sinks`; everything in between is evicted. Nothing is
/// scored, so kept sets do not depend on the trace's tensors and attention-only layers work.
///
/// Two triggers (reference-policies.md 4 and 2.7):
/// - `every-step` — mit-han-lab/streaming-llm, `StartRecentKVCache.__call__` as the per-token
///   loop of examples/eval_long_ppl.py drives it: after every forward, if the cache holds more
///   than `budget` tokens, keep slots `[0, sinks)` and the last `budget − sinks`. In steady
///   state each step attends to `budget + 1` tokens and then drops exactly one.
/// - `legacy` — the `StreamingLLM` class of R-KV's legacy HF loop: while processing a decode
///   position p with `p % divide == 0` (`CompressionSchedule.legacyFires`), if the cache holds
///   at least `budget` tokens, keep the first `sinks` and the last `budget − sinks` after the
///   step's attention. Between events the cache grows by one token per step.
///
/// Prefill (both triggers): if P > budget, the prompt is cut to the sinks plus the last
/// `budget − sinks` prompt positions at once, as one forward over the prompt followed by the
/// cache call would do (R-KV runs its compression on the prompt when P ≥ budget; with
/// P = budget that drops nothing).
///
/// Positions are as recorded: the reference's position-shift variant re-rotates cached keys
/// with their cache positions, which a post-RoPE trace cannot reproduce; its kept sets are the
/// same as here, its attention values are not.
public final class StreamingLLMPolicy: ConfiguredPolicy {
    public static let name = "streaming"
    public static let summary =
        "StreamingLLM: attention sinks plus a recent window; every step (streaming-llm repo) or every --divide "
        + "positions (R-KV)"
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? {
        (try? parameters.choice("trigger", as: Trigger.self)) == .legacy ? "divide" : nil
    }
    public static let parameters: [PolicyParameter] = [
        .budget(help: "B, resident tokens per kv head after a compression: the sinks plus B − sinks recent tokens"),
        .integer(
            "sinks", default: 4, min: 0,
            help: "first positions always kept (attention sinks); must be below --budget"),
        .choice(
            "trigger", Trigger.allCases.map(\.rawValue), default: Trigger.everyStep.rawValue,
            help:
                "every-step = after each step's attention when over budget (streaming-llm repo); legacy = at "
                + "positions p with p % divide == 0 (R-KV's loop)"
        ),
        .integer(
            "divide", default: 128, min: 1,
            help: "legacy trigger only: compress while processing positions that are multiples of this (prompt counted)"
        )
    ]

    public enum Trigger: String, CaseIterable, Sendable {
        case everyStep = "every-step"
        case legacy
    }

    public struct Configuration: PolicyConfiguration {
        public let budget: Int
        public let sinks: Int
        public let trigger: Trigger
        public let divide: Int

        public init(_ values: PolicyParameters) throws {
            budget = try values.integer("budget")
            sinks = try values.integer("sinks")
            trigger = try values.choice("trigger")
            divide = try values.integer("divide")
            guard sinks < budget else {
                throw PolicyError(
                    "streaming: --sinks (\(sinks)) must be below --budget (\(budget)): "
                        + "the recent window budget − sinks must hold at least the newest token")
            }
        }
    }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        guard let trigger = try? parameters.choice("trigger", as: Trigger.self),
            let divide = try? parameters.integer("divide")
        else { return "?" }
        switch trigger {
        case .everyStep: return "every step; holds B, attends B+1"
        case .legacy: return "at positions divisible by \(divide); holds up to B+\(divide - 1)"
        }
    }

    public let budget: Int
    public let sinks: Int
    public let trigger: Trigger
    public let divide: Int
    /// `budget − sinks`: the recent window kept after a compression.
    public var recent: Int { budget - sinks }

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        budget = configuration.budget
        sinks = configuration.sinks
        trigger = configuration.trigger
        divide = configuration.divide
    }

    /// every-step: at most B after any step. legacy: a compression brings the cache back to B
    /// and at most `divide − 1` steps pass before the next one, so the resident set peaks at
    /// B + divide − 1 (and the attended set, at an event, at B + divide). Before the first
    /// event the prompt left at most B tokens and fewer than `divide` steps pass as well.
    public var residentCap: Int? {
        switch trigger {
        case .everyStep: return budget
        case .legacy: return budget + divide - 1
        }
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > budget {
            keepSinksAndRecent(kvHead: g, cache: cache)
        }
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        switch trigger {
        case .everyStep:
            for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > budget {
                keepSinksAndRecent(kvHead: g, cache: cache)
            }
        case .legacy:
            guard CompressionSchedule.legacyFires(position: context.position, divide: divide) else { return }
            // At exactly B tokens the reference still "compresses" but keeps everything.
            for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > budget {
                keepSinksAndRecent(kvHead: g, cache: cache)
            }
        }
    }

    /// Keeps the first `sinks` slots and the last `budget − sinks` (slots are in position order:
    /// this policy only ever cuts out a middle range).
    private func keepSinksAndRecent(kvHead g: Int, cache: LayerCache) {
        let n = cache.count(kvHead: g)
        cache.keep(kvHead: g, slotIndices: Array(0..<sinks) + Array((n - recent)..<n))
    }
}
