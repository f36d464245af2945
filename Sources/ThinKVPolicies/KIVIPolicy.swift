import Foundation

/// KIVI (Liu et al., ICML 2024), as its reference code (jy-yuan/KIVI, models/llama_kivi.py and
/// quant/new_pack.py) behaves: keys quantized per channel, values per token, each with a
/// full-precision residual of recent tokens; nothing is evicted.
///
/// - Prefill: keys of the first `P − (P mod R)` positions are quantized (whole R-blocks), the
///   rest stay 16-bit; values of the first `P − R` positions are quantized when `P > R`.
/// - Every decode step attends first; afterwards, if the 16-bit key block has reached R tokens
///   it is quantized as one block (per channel, G-token groups; so keys keep 0…R−1 recent
///   16-bit tokens), and if more than R values are 16-bit the oldest one is quantized (so
///   values keep exactly the last R).
/// - Bytes per kv head (reference-policies 5.3): codes at `bits` per element; per key group
///   (G tokens of one channel) and per value group (G channels of one token) a scale and a
///   zero point charged as fp16 each; the residual at 16 bits. With `D < G` or `D mod G ≠ 0` a
///   token's values form ⌈D/G⌉ groups, the last one shorter.
///
/// On attention-only layers (no recorded keys/values) only the memory is modelled.
public final class KIVIPolicy: ConfiguredPolicy {
    public static let name = "kivi"
    public static let summary =
        "KIVI: keys per channel, values per token at low bits, 16-bit residual window, no eviction"
    public static let parameters: [PolicyParameter] = [
        .integer("k-bits", default: 2, min: 1, max: 8, help: "bits per key element"),
        .integer("v-bits", default: 2, min: 1, max: 8, help: "bits per value element"),
        .integer(
            "group", default: 32, min: 1, max: 1 << 16,
            help: "group size: tokens per key group (per channel), channels per value group (per token)"),
        .integer(
            "residual", default: 32, min: 1, max: 1 << 20,
            help: "16-bit residual length R (a multiple of --group): keys flush in R-blocks, values keep the last R"),
        .choice(
            "format", QuantFormat.allCases.map(\.rawValue), default: QuantFormat.int.rawValue,
            help: "int = asymmetric min-max integers (KIVI); paper = FP8 E4M3 (8), NVFP4 (4), ternary (2)")
    ]

    public struct Configuration: PolicyConfiguration {
        public let keyBits: Int
        public let valueBits: Int
        public let groupSize: Int
        public let residual: Int
        public let format: QuantFormat

        public init(_ values: PolicyParameters) throws {
            keyBits = try values.integer("k-bits")
            valueBits = try values.integer("v-bits")
            groupSize = try values.integer("group")
            residual = try values.integer("residual")
            format = try values.choice("format")
            guard residual % groupSize == 0 else {
                throw PolicyError(
                    "kivi: --residual (\(residual)) must be a multiple of --group (\(groupSize)), "
                        + "as KIVI asserts")
            }
            // Refuse unsupported widths before any replay.
            _ = try Self.quantizers(format: format, keyBits: keyBits, valueBits: valueBits)
        }

        static func quantizers(
            format: QuantFormat, keyBits: Int,
            valueBits: Int
        ) throws -> (key: GroupQuantizer, value: GroupQuantizer) {
            do {
                return (
                    try GroupQuantizer(format: format, bits: keyBits),
                    try GroupQuantizer(format: format, bits: valueBits)
                )
            } catch let error as PolicyError {
                throw PolicyError("kivi: \(error.description)")
            }
        }
    }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        let r = (try? parameters.integer("residual")).map(String.init) ?? "?"
        return "evicts nothing; keys quantized in blocks of \(r), values one per step, the last \(r) stay 16-bit"
    }

    /// The quantization itself, shared with `+kivi` on any base (Policies/Algebra): `kivi` is
    /// `full+kivi`, nothing evicted.
    let quantization: KIVIQuantizer

    public var keyQuantizer: GroupQuantizer { quantization.keyQuantizer }
    public var valueQuantizer: GroupQuantizer { quantization.valueQuantizer }
    public var groupSize: Int { quantization.groupSize }
    public var residual: Int { quantization.residual }
    /// Keys of positions below this are quantized (all heads alike: KIVI evicts nothing).
    public var keysQuantizedEnd: Int { quantization.keysQuantizedEnd }
    /// Values of positions below this are quantized.
    public var valuesQuantizedEnd: Int { quantization.valuesQuantizedEnd }

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        quantization = try KIVIQuantizer(parameters: parameters, setup: setup)
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        quantization.prefill(context, cache: cache, evicted: false)
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        quantization.afterAttention(context, attention: attention, cache: cache, evicted: false)
    }
}
