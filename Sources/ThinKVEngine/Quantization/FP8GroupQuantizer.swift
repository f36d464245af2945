import Foundation

/// 8-bit floating-point quantization of one group: FP8 E4M3 elements with one FP8 E4M3 scale.
///
/// `s = e4m3↑(amax/448)`: the group's largest magnitude over E4M3's largest finite value, rounded
/// *up* to an E4M3 value, so every group uses most of the format's dynamic range (without a
/// scale, key/value entries below 2^-10 would flush to zero and large outliers would saturate)
/// and `x/s` never exceeds 448. `x̂ = e4m3(x/s)·s`.
///
/// Why up, not to nearest as NVFP4's block scale: with no per-tensor scale (see
/// `NVFP4GroupQuantizer`), groups with amax below 448·2^-6 = 7 get a subnormal E4M3 scale, whose
/// spacing is 2^-9. Rounded to nearest, amax = 1 would get s = 2^-9 and its largest elements
/// would saturate at 448·2^-9 = 0.875 (a 12.5 % error); rounded up, s = 2^-8 and the elements
/// keep E4M3's 3-bit mantissa. Rounding up also keeps every nonzero group's scale positive
/// (at least 2^-9), so no group divides by zero.
///
/// Cost: 8 bits per element plus the 8-bit scale per group. An all-zero group stays zero.
public enum FP8GroupQuantizer {
    public static let metadataBitsPerGroup = 8

    /// The E4M3 scale stored for a group whose largest magnitude is `amax` (> 0).
    @inline(__always)
    public static func groupScale(amax: Float) -> Float {
        MiniFloat.e4m3.roundUp(amax / MiniFloat.e4m3.maxFinite)
    }

    @discardableResult
    public static func roundTrip(_ x: UnsafeMutablePointer<Float>, count: Int, stride: Int) -> Int {
        guard count > 0 else { return 0 }
        var amax: Float = 0
        var i = 0
        for _ in 0..<count { amax = max(amax, abs(x[i])); i += stride }
        guard amax > 0 else { return metadataBitsPerGroup }
        let scale = groupScale(amax: amax)
        let e4m3 = MiniFloat.e4m3
        i = 0
        for _ in 0..<count {
            x[i] = e4m3.round(x[i] / scale) * scale
            i += stride
        }
        return metadataBitsPerGroup
    }
}
