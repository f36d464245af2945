import Foundation

/// 8-bit floating-point quantization of one group: FP8 E4M3 elements with one per-group scale.
///
/// `s = amax/448` maps the group's largest magnitude onto E4M3's largest finite value, so every
/// group uses the format's whole dynamic range (without a scale, key/value entries below 2^-10
/// would flush to zero and large outliers would saturate). `x̂ = e4m3(x/s)·s`.
///
/// The scale is charged as an fp16 number (16 bits per group) but held in Float32; the fp16
/// rounding of the scale (relative 2^-11, against E4M3's 2^-4) is not modelled.
/// An all-zero group stays zero.
public enum FP8GroupQuantizer {
    public static let metadataBitsPerGroup = 16

    @discardableResult
    public static func roundTrip(_ x: UnsafeMutablePointer<Float>, count: Int, stride: Int) -> Int {
        guard count > 0 else { return 0 }
        var amax: Float = 0
        var i = 0
        for _ in 0..<count { amax = max(amax, abs(x[i])); i += stride }
        guard amax > 0 else { return metadataBitsPerGroup }
        let scale = amax / MiniFloat.e4m3.maxFinite
        let e4m3 = MiniFloat.e4m3
        i = 0
        for _ in 0..<count {
            x[i] = e4m3.round(x[i] / scale) * scale
            i += stride
        }
        return metadataBitsPerGroup
    }
}
