import Foundation

/// Asymmetric min-max integer quantization of one group (KIVI's quantizer).
///
/// With `b` bits and `M = 2^b − 1`: `mn = min`, `s = (max − mn)/M`,
/// `code = roundHalfEven(clamp((x − mn)/s, 0, M))`, `x̂ = code·s + mn`. Each group stores a
/// scale and a zero point (`mn`), charged as float16 each: 32 bits of metadata per group.
///
/// Precision: the reference keeps `s` and `mn` in the model dtype (fp16) and dequantizes in
/// fp16; here both are Float32, so the only error is the quantization itself (the fp16
/// rounding of the metadata, a relative 2^-11, is not modelled).
///
/// Constant groups (`max == min`): the reference divides by zero there; this treats the group
/// as exact (every code 0, `x̂ = mn = x`).
public enum IntegerGroupQuantizer {
    /// Bits of metadata per group: an fp16 scale and an fp16 zero point.
    public static let metadataBitsPerGroup = 32

    /// Quantizes and dequantizes `count` elements at `x, x + stride, …` in place; returns the
    /// group's metadata bits.
    @discardableResult
    public static func roundTrip(_ x: UnsafeMutablePointer<Float>, count: Int, stride: Int, bits: Int) -> Int {
        precondition(bits >= 1 && bits <= 8, "integer quantization supports 1...8 bits")
        guard count > 0 else { return 0 }
        var lo = x[0], hi = x[0]
        var i = stride
        for _ in 1..<count {
            let v = x[i]
            lo = min(lo, v)
            hi = max(hi, v)
            i += stride
        }
        let levels = Float((1 << bits) - 1)
        let scale = (hi - lo) / levels
        // Constant group (or a range too small for Float32): every element is `lo` already,
        // or within (hi − lo) of it; set them to `lo` (code 0).
        guard scale > 0 else {
            i = 0
            for _ in 0..<count { x[i] = lo; i += stride }
            return metadataBitsPerGroup
        }
        i = 0
        for _ in 0..<count {
            let code = min(max((x[i] - lo) / scale, 0), levels).rounded(.toNearestOrEven)
            x[i] = code * scale + lo
            i += stride
        }
        return metadataBitsPerGroup
    }
}
