import Foundation

/// PM-KVQ, progressive mixed-precision KV-cache quantization for long chain-of-thought models
/// (Liu et al., 2025), as its authors' code runs it by default (thu-nics/PM-KVQ @ c8a2bff,
/// pm_kvq/quantization/methods/pm_kvq/progressive/progressive_modeling_{llama,qwen2}.py: the
/// "fake" backend scripts/evaluation.py uses unless told otherwise). Nothing is evicted.
///
/// Per layer, after each forward (prefill included), on the tokens the forward appended:
/// - the first `sink` tokens of the sequence stay at `sink-bits` (16);
/// - the others enter a window of `window` tokens at `window-bits` (16); when the window has
///   filled, the whole block of `window` tokens is quantized at the layer's current width
///   b (starting at `init-bits`, 16), and the window starts empty again (a block flush, like
///   KIVI's key residual);
/// - then the layer's memory, counted as the code counts it (elements per token 2·Hkv·D times
///   sink·sink-bits + window·window-bits + rest·b, no scales), is compared with its budget; if
///   over, b is halved (16 → 8 → 4 → 2, once per forward) and every token outside sink and
///   window is re-quantized at the new b from its current (already rounded) values: the
///   progressive part. The code raises MemoryError instead of going below 2 bits or when only
///   sink and window are left; here the cache stays as it is, and the run notes the steps spent
///   over budget.
///
/// Quantizer (`UntrainableQuantizer`, per_group, asymmetric, round_zeros=False): groups of
/// `group` (128) channels of one token of one head, keys and values alike; scale =
/// (max − min)/(2^b − 1) clamped to [1e-5, 1e5], code = round((x − min)/scale) clamped to
/// [0, 2^b − 1], x̂ = code·scale + min. Budget: `--budget B` is the memory of B tokens at 16 bits
/// per layer (the code's kv_budget in MB = B·2·Hkv·D·2 / 2^20).
///
/// Choices (docs/policies.md): 16-bit tokens are the trace's values (the code's 16-bit
/// quantizer and bfloat16 casts are not modelled); arithmetic in float32 rather than bfloat16;
/// the scale's 1e-5 floor is not applied (a constant group is exact); metadata is charged as the
/// "real" backend stores it (a bfloat16 scale and zero point per group) for tokens below 16 bits;
/// groups of min(group, D) channels when D is not a multiple of 128 (the code asserts it);
/// SmoothAttention's key factors (`--smooth-alpha`) from the prompt's key maxima instead of a
/// calibration set with interpolated positions, without the α search (it needs the model);
/// `--layer-bits` gives the block-wise allocation as a parameter (it needs the model's gradients
/// to compute), layer l's budget being B·bits_l / mean(bits).
public final class PMKVQPolicy: ConfiguredPolicy {
    public static let name = "pmkvq"
    public static let summary =
        "PM-KVQ: no eviction; bit width halved block by block (16→8→4→2) whenever a layer's cache outgrows its "
        + "memory budget; sink and window stay 16-bit"
    public static let readsAttention = false
    static let widths = ["16", "8", "4", "2"]
    /// The default 128-token 16-bit window would hold all of a small test trace: nothing quantized.
    public static let conformanceSettings = ["window": "8"]
    public static let parameters: [PolicyParameter] = [
        .budget(
            help: "B, the layer's memory budget as the bytes of B tokens at 16 bits "
                + "(kv_budget MB = B·2·Hkv·D·2/2^20)"),
        .integer("sink", default: 1, min: 0, help: "n_sink_token: first tokens kept at --sink-bits"),
        .choice("sink-bits", widths, default: "16", help: "n_sink_token_bits"),
        .integer(
            "window", default: 128, min: 0,
            help: "n_window_token: recent tokens at --window-bits, flushed as one block when full"),
        .choice("window-bits", widths, default: "16", help: "n_window_token_bits"),
        .choice(
            "init-bits", widths, default: "16", help: "n_init_kv_bits: the width blocks start at before any halving"),
        .integer(
            "group", default: 128, min: 1, max: 1 << 16,
            help: "channels per quantization group (keys and values per token)"),
        .real(
            "smooth-alpha", default: 0.5, min: 0, max: 1,
            help:
                "SmoothAttention reparameterization: keys divided per channel by (max |k| over the prompt)^alpha "
                + "before quantizing, queries multiplied (0 = off; the code's default alpha 0.5)"
        ),
        .text(
            "layer-bits", "LIST",
            help:
                "block-wise allocation: one bit width per model layer (allocate_memory.py's optimal_bitwidth); layer "
                + "l's budget is B·bits_l/mean (default: every layer B, as scripts/evaluation.py's float "
                + "--kv_budgets)"
        )
    ]

    public struct Configuration: PolicyConfiguration {
        public let budget: Int
        public let sink: Int, sinkBits: Int
        public let window: Int, windowBits: Int
        public let initialBits: Int
        public let group: Int
        public let smoothAlpha: Double
        /// One bit width per model layer, when given.
        public let layerBits: [Double]?
        private let layerBitsText: String?

        public init(_ values: PolicyParameters) throws {
            func width(_ name: String) throws -> Int {
                let text = try values.optionalText(name) ?? ""
                guard let bits = Int(text) else { throw PolicyError("pmkvq: --\(name) '\(text)' is not a bit width") }
                return bits
            }
            budget = try values.integer("budget")
            sink = try values.integer("sink")
            sinkBits = try width("sink-bits")
            window = try values.integer("window")
            windowBits = try width("window-bits")
            initialBits = try width("init-bits")
            group = try values.integer("group")
            smoothAlpha = try values.real("smooth-alpha")
            layerBitsText = try values.optionalText("layer-bits")
            if let list = layerBitsText {
                let bits = try CommaList.items(list, of: "pmkvq: --layer-bits", error: PolicyError.init)
                    .map { Double($0) }
                guard bits.allSatisfy({ $0 != nil && $0! > 0 }) else {
                    throw PolicyError("pmkvq: --layer-bits needs one positive bit width per model layer, got '\(list)'")
                }
                layerBits = bits.map { $0! }
            } else {
                layerBits = nil
            }
        }

        public func check(header: TraceHeader, layer: LayerInfo) throws {
            if let layerBits, layerBits.count != header.numLayers {
                throw PolicyError(
                    "pmkvq: --layer-bits needs one positive bit width per model layer (\(header.numLayers)), "
                        + "got '\(layerBitsText ?? "")'")
            }
        }
    }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        let w = (try? parameters.integer("window")).map(String.init) ?? "?"
        return
            "evicts nothing; blocks of \(w) leave the 16-bit window at the current width, which halves (once per "
            + "step) while the layer is over budget"
    }

    public let budget: Int
    public let sink: Int, sinkBits: Int
    public let window: Int, windowBits: Int
    public let groupSize: Int
    /// This layer's budget in bits per element-slot: 16 · B · (allocation weight).
    public let budgetBitsPerElement: Double

    /// SmoothAttention's α; the per-kv-head channel scales `[Hkv][D]` it gives (nil: none).
    public let smoothAlpha: Double
    public private(set) var keyScale: [[Float]]?

    /// The layer's current width for tokens outside sink and window.
    public private(set) var kvBits: Int
    private var sinkHeld = 0
    private var windowHeld = 0
    /// Positions already charged their scales and zero points (below 16 bits once).
    private var charged: [Bool]
    private var halvings = 0
    private var overBudgetSteps = 0

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try Configuration(parameters)
        try configuration.check(header: setup.header, layer: setup.layer)
        budget = configuration.budget
        sink = configuration.sink
        sinkBits = configuration.sinkBits
        window = configuration.window
        windowBits = configuration.windowBits
        kvBits = configuration.initialBits
        groupSize = min(configuration.group, setup.header.headDim)
        var weight = 1.0
        if let values = configuration.layerBits {
            weight = values[setup.layer.index] / (values.reduce(0, +) / Double(values.count))
        }
        budgetBitsPerElement = 16 * Double(budget) * weight
        smoothAlpha = configuration.smoothAlpha
        charged = [Bool](repeating: false, count: setup.header.numTokens)
    }

    public var reportCounters: [(name: String, value: Int)] {
        [("halvings", halvings), ("steps over budget", overBudgetSteps)]
    }

    public static func runNotes(counters: [String: Int], parameters: PolicyParameters, layers: Int) -> [String] {
        guard let over = counters["steps over budget"], over > 0 else { return [] }
        return [
            "pmkvq: \(over) layer-steps stayed over the memory budget at 2 bits (or with only sink and window left), "
                + "where the authors' code raises MemoryError"
        ]
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        if smoothAlpha > 0, let keys = context.data.keys, context.setup.header.promptLength > 0 {
            keyScale = Self.smoothScales(
                keys: keys, data: context.data, header: context.setup.header, alpha: smoothAlpha)
        }
        update(length: context.setup.header.promptLength, appended: context.setup.header.promptLength, cache: cache)
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        update(length: context.position + 1, appended: 1, cache: cache)
    }

    /// `apply_smoothattention_rep` with `get_max_keys` taken over the prompt: per kv head and
    /// RoPE pair (channels i and i + D/2 share one factor), m = max |k| over the prompt's
    /// positions and both channels, scale = clamp(m^α, 1e-4, 1e4). With an odd D every channel
    /// has its own factor.
    static func smoothScales(keys: [Float], data: LayerData, header: TraceHeader, alpha: Double) -> [[Float]] {
        let D = header.headDim, P = header.promptLength
        let half = D % 2 == 0 ? D / 2 : D
        return (0..<header.numKVHeads).map { g in
            var peak = [Float](repeating: 0, count: half)
            for p in 0..<P {
                let row = data.offset(kvHead: g, position: p)
                for d in 0..<D { peak[d % half] = max(peak[d % half], abs(keys[row + d])) }
            }
            let scales = peak.map { Float(min(max(pow(Double($0), alpha), 1e-4), 1e4)) }
            return (0..<D).map { scales[$0 % half] }
        }
    }

    /// One forward's bookkeeping: `appended` tokens ending at `length`.
    private func update(length: Int, appended: Int, cache: LayerCache) {
        guard appended > 0 else { return }
        var fresh = appended
        if sinkHeld < sink {
            let n = min(sink - sinkHeld, fresh)
            quantize(Array(sinkHeld..<(sinkHeld + n)), bits: sinkBits, cache: cache)
            sinkHeld += n
            fresh -= n
        }
        if window > 0 {
            if fresh > 0 {
                let total = windowHeld + fresh
                let out = total / window * window
                windowHeld = total % window
                if out > 0 {
                    quantize(Array((length - windowHeld - out)..<(length - windowHeld)), bits: kvBits, cache: cache)
                    quantize(Array((length - windowHeld)..<length), bits: windowBits, cache: cache)
                } else {
                    quantize(Array((length - fresh)..<length), bits: windowBits, cache: cache)
                }
            }
        } else if fresh > 0 {
            quantize(Array((length - fresh)..<length), bits: kvBits, cache: cache)
        }
        let rest = max(0, length - sinkHeld - windowHeld)
        let memory = Double(sinkHeld * sinkBits + windowHeld * windowBits + rest * kvBits)
        guard memory > budgetBitsPerElement else { return }
        guard length > sinkHeld + windowHeld, kvBits / 2 >= 2 else {
            overBudgetSteps += 1
            return
        }
        kvBits /= 2
        halvings += 1
        quantize(Array(sinkHeld..<(length - windowHeld)), bits: kvBits, cache: cache)
    }

    /// Sets `positions` to `bits` (16: the trace's values) in every kv head, rounding keys and
    /// values per token in groups of `groupSize` channels.
    private func quantize(_ positions: [Int], bits: Int, cache: LayerCache) {
        guard !positions.isEmpty else { return }
        guard bits < 16 else {
            for h in 0..<cache.numKVHeads {
                for p in positions { cache.setBits(kvHead: h, position: p, key: 16, value: 16) }
            }
            return
        }
        let quantizer = GroupQuantizer.integer(bits: bits)
        let newlyCharged = positions.filter { !charged[$0] }
        for p in newlyCharged { charged[p] = true }
        let metadataBits =
            2 * KVGrouping.valueMetadataBitsPerToken(headDim: cache.headDim, groupSize: groupSize, quantizer: quantizer)
        for h in 0..<cache.numKVHeads {
            KVGrouping.quantizeKeysPerToken(
                cache, kvHead: h, positions: positions, groupSize: groupSize, quantizer: quantizer,
                channelScale: keyScale?[h])
            KVGrouping.quantizeValuesPerToken(
                cache, kvHead: h, positions: positions, groupSize: groupSize, quantizer: quantizer)
            cache.metadataBytes[h] += (newlyCharged.count * metadataBits + 7) / 8
        }
    }
}
