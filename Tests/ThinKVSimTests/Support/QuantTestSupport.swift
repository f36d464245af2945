import Foundation
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// In-memory caches for quantization tests (no trace file needed).
enum QuantTestSupport {
    /// A cache over Gaussian keys/values (`seed`), or over the given tensors in the per-head
    /// layout `(head·T + position)·D + d`; every position appended to every head.
    static func cache(
        T: Int, Hkv: Int = 1, D: Int, seed: UInt64 = 7, keys: [Float]? = nil, values: [Float]? = nil,
        appendAll: Bool = true
    ) -> LayerCache {
        var rng = SplitMix64(seed: seed)
        let n = T * Hkv * D
        let k = keys ?? (0..<n).map { _ in rng.nextGaussian() }
        let v = values ?? (0..<n).map { _ in rng.nextGaussian() }
        let data = LayerData(info: LayerInfo(index: 0), numTokens: T, numKVHeads: Hkv, headDim: D, keys: k, values: v)
        let cache = LayerCache(data: data)
        if appendAll { for p in 0..<T { cache.append(position: p) } }
        return cache
    }

    /// Every finite non-negative value of a minifloat, from its bit patterns (reference for
    /// `MiniFloat.round`): exponent field e, mantissa field m, value (e == 0 ? m·2^(1−bias−M)
    /// : (1 + m/2^M)·2^(e−bias)); the all-ones pattern is dropped when it is NaN (E4M3).
    static func representable(exponentBits: Int, mantissaBits: Int, bias: Int, dropAllOnes: Bool) -> [Float] {
        var out: [Float] = []
        let mMax = 1 << mantissaBits
        for e in 0..<(1 << exponentBits) {
            for m in 0..<mMax {
                if dropAllOnes && e == (1 << exponentBits) - 1 && m == mMax - 1 { continue }
                let value: Float =
                    e == 0
                    ? Float(m) * Float(sign: .plus, exponent: 1 - bias - mantissaBits, significand: 1)
                    : (1 + Float(m) / Float(mMax)) * Float(sign: .plus, exponent: e - bias, significand: 1)
                out.append(value)
            }
        }
        return out
    }
}
