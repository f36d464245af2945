import Foundation

/// Ternary quantization of one group: every element becomes −s, 0 or +s.
///
/// Scale rule (absmean): `s = e4m3(mean(|x|))` over the group, stored as one FP8 E4M3 value,
/// `code = clamp(roundHalfEven(x/s), −1, 1)`, `x̂ = code·s`. So elements with `|x| > s/2` keep
/// their sign at magnitude s, the rest become 0 (exactly s/2 rounds to 0). The absmean scale
/// tracks the bulk of the group rather than its outliers, which an amax-based scale would let
/// dominate; outliers are clipped to s.
///
/// The scale is rounded to the nearest E4M3 value (ternary clips anyway, so rounding up buys
/// nothing). A nonzero group whose mean magnitude rounds to 0 (below 2^-10) gets E4M3's smallest
/// positive value 2^-9 instead, so it never divides by zero; its elements then mostly become 0.
/// Means above 448 saturate to 448 (not reached by key/value entries).
///
/// Cost: 2 bits per element (three levels need two bits) plus the 8-bit scale per group. A
/// constant group round-trips exactly when |c| is an E4M3 value; an all-zero group stays zero.
public enum TernaryGroupQuantizer {
    public static let metadataBitsPerGroup = 8

    /// The E4M3 scale stored for a group whose mean magnitude is `meanMagnitude` (> 0).
    @inline(__always)
    public static func groupScale(meanMagnitude: Float) -> Float {
        max(MiniFloat.e4m3.round(meanMagnitude), MiniFloat.e4m3.smallestPositive)
    }

    @discardableResult
    public static func roundTrip(_ x: UnsafeMutablePointer<Float>, count: Int, stride: Int) -> Int {
        guard count > 0 else { return 0 }
        // Summed in Double so that a constant group's mean is exactly |c|.
        var sum: Double = 0
        var i = 0
        for _ in 0..<count { sum += Double(abs(x[i])); i += stride }
        let mean = Float(sum / Double(count))
        guard mean > 0 else { return metadataBitsPerGroup }  // all zeros
        let scale = groupScale(meanMagnitude: mean)
        i = 0
        for _ in 0..<count {
            let code = min(max((x[i] / scale).rounded(.toNearestOrEven), -1), 1)
            x[i] = code * scale
            i += stride
        }
        return metadataBitsPerGroup
    }
}
