import Foundation

/// `+uniform`: every token at N bits whatever it is, keys and values per token (groups of G
/// channels with their own scale and zero point), each token quantized after the step that
/// wrote it (it is attended at 16 bits once, as KIVI's and TBQ's newest tokens are); the prompt
/// at prefill. The control a reader compares thought-typed precision (`+tbq`) against.
public final class UniformQuantizer: CacheQuantizer {
    public static let name = "uniform"
    public static let summary = "every token's keys and values at N bits, per token in groups of G channels"
    public static let parameters: [PolicyParameter] = [
        .integer("bits", default: 4, min: 1, max: 8, help: "bits per key and value element"),
        .integer("group", default: 32, min: 1, max: 1 << 16, help: "channels per quantization group"),
        .choice(
            "format", QuantFormat.allCases.map(\.rawValue), default: QuantFormat.int.rawValue,
            help: "int = asymmetric min-max integers; paper = FP8 E4M3 (8), NVFP4 (4), ternary (2)")
    ]
    public static func cadence(_ parameters: PolicyParameters) -> String {
        let bits = (try? parameters.integer("bits")).map(String.init) ?? "?"
        return "every token at \(bits) bits after its step"
    }

    let quantizer: GroupQuantizer
    let groupSize: Int
    private var quantized: [[Bool]]
    private var bitsPerToken = 0
    private var charged: ChargedMetadata

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        groupSize = try parameters.integer("group")
        do {
            quantizer = try GroupQuantizer(
                format: try parameters.choice("format", as: QuantFormat.self),
                bits: try parameters.integer("bits"))
        } catch let error as PolicyError {
            throw PolicyError("uniform: \(error.description)")
        }
        let H = setup.header.numKVHeads
        quantized = Array(repeating: Array(repeating: false, count: setup.header.numTokens), count: H)
        charged = ChargedMetadata(heads: H)
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache, evicted: Bool) {
        quantize(range: 0..<context.setup.header.promptLength, cache: cache)
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache, evicted: Bool) {
        quantize(range: context.position..<(context.position + 1), cache: cache)
    }

    private func quantize(range: Range<Int>, cache: LayerCache) {
        for h in 0..<cache.numKVHeads {
            let positions = heldPositions(cache, kvHead: h, in: range)
            if !positions.isEmpty {
                let bits =
                    KVGrouping.quantizeKeysPerToken(
                        cache, kvHead: h, positions: positions, groupSize: groupSize,
                        quantizer: quantizer)
                    + KVGrouping.quantizeValuesPerToken(
                        cache, kvHead: h, positions: positions, groupSize: groupSize,
                        quantizer: quantizer)
                bitsPerToken = bits / positions.count
                for p in positions { quantized[h][p] = true }
            }
            // Per-token scales leave with their tokens: the share is the held quantized tokens'.
            let held = cache.slots[h].reduce(0) { $0 + (quantized[h][Int($1)] ? 1 : 0) }
            charged.set(bits: held * bitsPerToken, kvHead: h, cache: cache)
        }
    }
}
