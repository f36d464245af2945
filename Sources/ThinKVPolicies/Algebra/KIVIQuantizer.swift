import Foundation

/// KIVI's quantization (Liu et al., ICML 2024; rules in `KIVIPolicy`'s comment: keys per channel
/// in R-blocks, values per token, the last tokens at 16 bits), applied to the tokens the base
/// policy still holds: `+kivi` on any base, and `kivi` itself (`KIVIPolicy` is this over the
/// full cache: `full+kivi` ≡ `kivi`).
///
/// With eviction: a key block quantizes the held tokens of its positions, each head its own, in
/// groups of G held tokens (consecutive in position order, not necessarily adjacent); a key
/// group's scales stay charged while any of its tokens is held, a value's leave with it.
public final class KIVIQuantizer: CacheQuantizer {
    public static let name = "kivi"
    public static let summary = "KIVI: keys per channel, values per token at low bits, 16-bit residual window"
    public static var parameters: [PolicyParameter] { KIVIPolicy.parameters }
    public static func cadence(_ parameters: PolicyParameters) -> String {
        let r = (try? parameters.integer("residual")).map(String.init) ?? "?"
        return "keys quantized in blocks of \(r), values one per step (KIVI)"
    }

    public let keyQuantizer: GroupQuantizer
    public let valueQuantizer: GroupQuantizer
    public let groupSize: Int
    public let residual: Int
    public private(set) var keysQuantizedEnd = 0
    public private(set) var valuesQuantizedEnd = 0
    /// Per head: the key group of each position (-1: key at 16 bits) and each group's metadata bits.
    private var keyGroupOf: [[Int32]]
    private var keyGroupBits: [[Int]]
    /// Per head: whether each position's value is quantized.
    private var valueQuantized: [[Bool]]
    private var valueBitsPerToken: Int
    private var charged: ChargedMetadata

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let configuration = try KIVIPolicy.Configuration(parameters)
        groupSize = configuration.groupSize
        residual = configuration.residual
        (keyQuantizer, valueQuantizer) = try KIVIPolicy.Configuration.quantizers(
            format: configuration.format, keyBits: configuration.keyBits, valueBits: configuration.valueBits)
        let H = setup.header.numKVHeads, T = setup.header.numTokens
        keyGroupOf = Array(repeating: Array(repeating: -1, count: T), count: H)
        keyGroupBits = Array(repeating: [], count: H)
        valueQuantized = Array(repeating: Array(repeating: false, count: T), count: H)
        valueBitsPerToken = 0
        charged = ChargedMetadata(heads: H)
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache, evicted: Bool) {
        let P = context.setup.header.promptLength
        quantizeKeys(upTo: P - P % residual, cache: cache)
        if P > residual { quantizeValues(upTo: P - residual, cache: cache) }
        if evicted { recount(cache) }
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache, evicted: Bool) {
        if evicted { recount(cache) }
        let end = context.position + 1
        if end - keysQuantizedEnd >= residual { quantizeKeys(upTo: end, cache: cache) }
        if end - valuesQuantizedEnd > residual { quantizeValues(upTo: end - residual, cache: cache) }
    }

    private func quantizeKeys(upTo end: Int, cache: LayerCache) {
        guard end > keysQuantizedEnd else { return }
        for h in 0..<cache.numKVHeads {
            let positions = heldPositions(cache, kvHead: h, in: keysQuantizedEnd..<end)
            var bits = 0
            var start = 0
            while start < positions.count {
                let group = Array(positions[start..<min(start + groupSize, positions.count)])
                let groupBits = KVGrouping.quantizeKeysPerChannel(
                    cache, kvHead: h, positions: group,
                    groupSize: groupSize, quantizer: keyQuantizer)
                for p in group { keyGroupOf[h][p] = Int32(keyGroupBits[h].count) }
                keyGroupBits[h].append(groupBits)
                bits += groupBits
                start += groupSize
            }
            charged.add(bits: bits, kvHead: h, cache: cache)
        }
        keysQuantizedEnd = end
    }

    private func quantizeValues(upTo end: Int, cache: LayerCache) {
        guard end > valuesQuantizedEnd else { return }
        for h in 0..<cache.numKVHeads {
            let positions = heldPositions(cache, kvHead: h, in: valuesQuantizedEnd..<end)
            let bits = KVGrouping.quantizeValuesPerToken(
                cache, kvHead: h, positions: positions, groupSize: groupSize,
                quantizer: valueQuantizer)
            if !positions.isEmpty { valueBitsPerToken = bits / positions.count }
            for p in positions { valueQuantized[h][p] = true }
            charged.add(bits: bits, kvHead: h, cache: cache)
        }
        valuesQuantizedEnd = end
    }

    /// Recounts each head's metadata from the tokens it holds: a key group while any member is
    /// held, a value per held quantized token.
    private func recount(_ cache: LayerCache) {
        for h in 0..<cache.numKVHeads {
            var groups = Set<Int32>()
            var values = 0
            for p in cache.slots[h] {
                let g = keyGroupOf[h][Int(p)]
                if g >= 0 { groups.insert(g) }
                if valueQuantized[h][Int(p)] { values += 1 }
            }
            let bits = groups.reduce(0) { $0 + keyGroupBits[h][Int($1)] } + values * valueBitsPerToken
            charged.set(bits: bits, kvHead: h, cache: cache)
        }
    }
}
