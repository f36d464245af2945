import Foundation

/// Ternary quantization of one group: every element becomes −s, 0 or +s.
///
/// Scale rule (absmean): `s = mean(|x|)` over the group, `code = clamp(roundHalfEven(x/s), −1, 1)`,
/// `x̂ = code·s`. So elements with `|x| > s/2` keep their sign at magnitude s, the rest become 0
/// (exactly s/2 rounds to 0). The absmean scale tracks the bulk of the group rather than its
/// outliers, which an amax-based scale would let dominate; outliers are clipped to s.
///
/// Cost: 2 bits per element (three levels need two bits) plus the scale, charged as fp16
/// (16 bits per group) but held in Float32. A constant group round-trips exactly (s = |c|);
/// an all-zero group stays zero.
public enum TernaryGroupQuantizer {
    public static let metadataBitsPerGroup = 16

    @discardableResult
    public static func roundTrip(_ x: UnsafeMutablePointer<Float>, count: Int, stride: Int) -> Int {
        guard count > 0 else { return 0 }
        // Summed in Double so that a constant group's mean is exactly |c|.
        var sum: Double = 0
        var i = 0
        for _ in 0..<count { sum += Double(abs(x[i])); i += stride }
        let scale = Float(sum / Double(count))
        guard scale > 0 else { return metadataBitsPerGroup }  // all zeros
        i = 0
        for _ in 0..<count {
            let code = min(max((x[i] / scale).rounded(.toNearestOrEven), -1), 1)
            x[i] = code * scale
            i += stride
        }
        return metadataBitsPerGroup
    }
}
