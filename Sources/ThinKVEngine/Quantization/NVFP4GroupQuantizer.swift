import Foundation

/// NVFP4: FP4 E2M1 elements in blocks of 16, each block with one FP8 E4M3 scale.
///
/// Per block: `s = e4m3(amax/6)` (6 is E2M1's largest magnitude), `x̂ = e2m1(x/s)·s`, with
/// E2M1 saturating at ±6 (an element can exceed 6·s slightly when the scale rounded down).
/// A group longer than 16 elements is split into consecutive 16-element blocks (the last may be
/// shorter), each charged 8 bits of scale.
///
/// Not emulated: NVFP4's second-level per-tensor FP32 scale, which real kernels use to bring
/// the block scales into E4M3's range. The cache is filled token by token, so a tensor-wide
/// amax is not known when a group is quantized; this emulation behaves as if that scale were 1.
/// Consequences: blocks with amax above 6·448 = 2688 saturate, and blocks with amax up to
/// 6·2^-10 get a zero scale and dequantize to zero. Neither is reached by ordinary K/V values.
public enum NVFP4GroupQuantizer {
    public static let blockSize = 16
    public static let metadataBitsPerBlock = 8

    /// Metadata bits of a group of `count` elements.
    public static func metadataBits(count: Int) -> Int {
        (count + blockSize - 1) / blockSize * metadataBitsPerBlock
    }

    /// The block scale NVFP4 would store for a block whose largest magnitude is `amax`.
    @inline(__always)
    public static func blockScale(amax: Float) -> Float {
        MiniFloat.e4m3.round(amax / MiniFloat.e2m1.maxFinite)
    }

    @discardableResult
    public static func roundTrip(_ x: UnsafeMutablePointer<Float>, count: Int, stride: Int) -> Int {
        guard count > 0 else { return 0 }
        let e2m1 = MiniFloat.e2m1
        var start = 0
        while start < count {
            let n = min(blockSize, count - start)
            let block = x + start * stride
            var amax: Float = 0
            var i = 0
            for _ in 0..<n { amax = max(amax, abs(block[i])); i += stride }
            let scale = blockScale(amax: amax)
            i = 0
            if scale > 0 {
                for _ in 0..<n { block[i] = e2m1.round(block[i] / scale) * scale; i += stride }
            } else {
                for _ in 0..<n { block[i] = 0; i += stride }
            }
            start += n
        }
        return metadataBits(count: count)
    }
}
