import Foundation

/// PyramidKV (Cai et al., 2024, arXiv 2406.02069) as NVIDIA/kvpress's `PyramidKVPress`
/// computes it (kvpress/presses/pyramidkv_press.py `get_layer_budget`, `compress`; scores from
/// snapkv_press.py `SnapKVPress.score`), run at decode time by `DecodingPress`. Lower layers
/// keep more tokens, higher layers fewer, the average staying at the target.
///
/// Every `interval` decode steps, after that step's attention, a kv head holding L tokens
/// above the target is scored as kvpress's SnapKV scores it (the last `window` queries, causal
/// full-row softmax with 1/√D, mean over the rows, average pool of `kernel` with zero padding
/// counted, mean over the query group; the window padded above every candidate) and keeps n
/// tokens in `topk` order (the window first, then the candidates by descending score), where n
/// is the layer's budget for the ratio r that DecodingPress derives from the target
/// (`KVPressDecoding`):
///
///     X = L(1 − r)                      (the target, up to int rounding)
///     min = X / β,  max = 2X − min
///     if max ≥ L − w:  max = L − w,  min = 2X − max
///     if not (L ≥ max ≥ min ≥ w):  n = round(L(1 − r))              (SnapKV fallback)
///     else:  n = round(max − layer · (max − min)/(num_layers − 1))
///
/// with Python's round (half to even), `layer` the model's layer index and `num_layers` the
/// model's layer count (trace attributes, not the replayed subset). The layer budget can exceed
/// the target in low layers (up to about 2X).
///
/// kvpress asserts more buffered queries than the window (`hidden_states_buffer_size` 256,
/// emptied at each compression), so min(interval, 256) > window is required.
/// `--score-dtype`: as `snapkv --snap-variant kvpress` (see docs/policies.md).
public final class PyramidKVPolicy: ConfiguredPolicy {
    public static let name = "pyramidkv"
    public static let summary =
        "kvpress PyramidKVPress at decode time: SnapKV scores with layer budgets shrinking from the first layer to "
        + "the last"
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? { "interval" }
    /// A compression leaves this layer's pyramid share of the budget, at most about 2B + 2.
    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        guard (try? parameters.optionalReal("compression-ratio")) == nil,
            let n = try? parameters.integer("interval")
        else {
            return KVPressDecoding.cadence(parameters)
        }
        return
            "every \(n) decode steps (--interval), after the attention; keeps this layer's pyramid share of B (at "
            + "most 2B+2); holds up to max(P, 2B+2)+\(n - 1)"
    }
    /// With the default 64-query window the smallest budget (65) would not compress a small test
    /// trace, and a short --interval needs a window below it.
    public static let conformanceSettings = ["window": "4"]
    public static let parameters: [PolicyParameter] =
        KVPressDecoding.parameters() + [
            .integer(
                "window", default: 64, min: 1,
                help: "w, observation window of the newest queries, always kept (kvpress window_size)"),
            .integer(
                "kernel", default: 5, min: 1,
                help: "average-pooling kernel over neighbouring slots, odd (kvpress kernel_size)"),
            .integer(
                "beta", default: 20, min: 1,
                help: "β, steepness of the pyramid: the last layer's budget is about 1/β of the mean")
        ]
    public static let requirements: PolicyRequirements = .queriesAndKeys
    public static let readsAttention = false

    public struct Configuration: PolicyConfiguration {
        let schedule: KVPressDecoding
        public let window: Int
        public let kernel: Int
        public let beta: Int

        public init(_ values: PolicyParameters) throws {
            schedule = try KVPressDecoding(values)
            window = try values.integer("window")
            kernel = try values.integer("kernel")
            beta = try values.integer("beta")
            try PolicyGuard.oddKernel(kernel, "pyramidkv")
            if let budget = schedule.budget { try PolicyGuard.budget(budget, exceedsWindow: window, "pyramidkv") }
            try PolicyGuard.kvpressQueries(interval: schedule.interval, window: window, "pyramidkv")
        }
    }

    let schedule: KVPressDecoding
    public let window: Int
    public let beta: Int
    private let layerIndex: Int
    private let modelLayers: Int
    private let promptLength: Int
    private let scorer: WindowScorer
    private var queries: QueryWindow
    private var scores: [Double] = []

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        schedule = configuration.schedule
        window = configuration.window
        beta = configuration.beta
        let kernel = configuration.kernel
        let header = setup.header
        layerIndex = setup.layer.index
        modelLayers = header.numLayers
        promptLength = header.promptLength
        let rule = WindowScoringRule(
            softmax: .causalFullRow, rowReduce: .mean, pool: .average, kernel: kernel,
            groupReduce: .meanScores, redundancy: nil,
            dtype: schedule.dtype, softmaxCast: .afterSoftmax)
        scorer = WindowScorer(rule: rule, header: header)
        queries = QueryWindow(capacity: window, numQHeads: header.numQHeads, headDim: header.headDim)
    }

    /// The prompt stays; a compression leaves at most about 2X + 2 tokens (the first layer's
    /// share); `interval − 1` steps pass between compressions. Unbounded with a ratio.
    public var residentCap: Int? {
        schedule.residentCap(promptLength: promptLength, keptAtMost: schedule.budget.map { 2 * $0 + 2 })
    }

    /// kvpress `PyramidKVPress.get_layer_budget` for a cache of `length` tokens and ratio r.
    public static func layerBudget(length L: Int, ratio: Double, window w: Int, beta: Int, layer: Int, layers: Int)
        -> Int
    {
        let capacity = Double(w) + Double(L) * (1 - ratio)
        var minimum = (capacity - Double(w)) / Double(beta)
        var maximum = (capacity - Double(w)) * 2 - minimum
        if maximum >= Double(L - w) {
            maximum = Double(L - w)
            minimum = (capacity - Double(w)) * 2 - maximum
        }
        guard Double(L) >= maximum && maximum >= minimum && minimum >= Double(w) else {
            return Int((Double(L) * (1 - ratio)).rounded(.toNearestOrEven))
        }
        // A one-layer model would divide by zero in the reference; every layer is the first.
        let steps = layers > 1 ? (maximum - minimum) / Double(layers - 1) : 0
        return Int((maximum - Double(layer) * steps).rounded(.toNearestOrEven))
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        guard let promptQueries = context.promptQueries else { return }
        queries.fill(promptQueries: promptQueries, promptLength: promptLength)
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        guard let stepQueries = context.queries, let keys = context.data.keys else { return }
        queries.push(stepQueries)
        guard schedule.fires(step: context.step) else { return }
        let target = schedule.target(position: context.position)
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > target {
            let L = cache.count(kvHead: g)
            let ratio = KVPressDecoding.compressionRatio(keeping: target, of: L)
            let n = Self.layerBudget(
                length: L, ratio: ratio, window: window, beta: beta, layer: layerIndex, layers: modelLayers)
            if n <= window {
                // topk reaches only into the window, whose tied scores come lowest slot first.
                cache.keep(kvHead: g, slotIndices: Array((L - window)..<(L - window + n)))
            } else {
                scorer.compress(
                    kvHead: g, cache: cache, budget: n, window: window, queries: queries, keys: keys,
                    order: .score, windowFirst: true, scores: &scores)
            }
        }
    }
}
