import Foundation

/// A small binary floating-point element format (no infinities, saturating), emulated exactly
/// in Float32: `round(x)` returns the representable value nearest to `x`, ties to even
/// mantissa, with magnitudes beyond the largest finite value clamped to it.
///
/// Float32 holds every value of these formats exactly, and dividing by a power of two is exact
/// far above Float32's subnormal range, so the emulation has no rounding of its own.
public struct MiniFloat: Sendable, Equatable {
    /// Mantissa (fraction) bits.
    public let mantissaBits: Int
    /// Exponent of the smallest normal binade (1 − bias): below it the spacing stays fixed.
    public let minNormalExponent: Int
    /// Largest finite magnitude; larger inputs saturate to it.
    public let maxFinite: Float

    /// OCP FP8 E4M3 ("fn" variant): bias 7, 3 mantissa bits, normals from 2^-6, subnormals in
    /// steps of 2^-9, largest finite 1.75·2^8 = 448 (S.1111.111 is NaN, so there is no 480).
    public static let e4m3 = MiniFloat(mantissaBits: 3, minNormalExponent: -6, maxFinite: 448)

    /// OCP FP4 E2M1: bias 1, 1 mantissa bit; the magnitudes are {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
    public static let e2m1 = MiniFloat(mantissaBits: 1, minNormalExponent: 0, maxFinite: 6)

    /// Smallest positive value (the subnormal step).
    public var smallestPositive: Float {
        Float(sign: .plus, exponent: minNormalExponent - mantissaBits, significand: 1)
    }

    /// The nearest representable value (ties to even mantissa), saturating at ±`maxFinite`.
    @inline(__always)
    public func round(_ x: Float) -> Float {
        let magnitude = abs(x)
        guard magnitude > 0 else { return x }  // keeps ±0
        guard magnitude.isFinite else { return x < 0 ? -maxFinite : maxFinite }
        // Spacing of representable values in |x|'s binade; fixed below the normal range.
        let binade = max(Int(magnitude.exponent), minNormalExponent)
        let step = Float(sign: .plus, exponent: binade - mantissaBits, significand: 1)
        // magnitude/step is exact (power-of-two division); rounding can carry into the next
        // binade (e.g. 1.97 → 2.0 in E4M3), which is still a representable value.
        let rounded = min((magnitude / step).rounded(.toNearestOrEven) * step, maxFinite)
        return x < 0 ? -rounded : rounded
    }

    /// The smallest representable value ≥ `x` for `x` ≥ 0 (0 stays 0), saturating at
    /// `maxFinite`. For scales that must not be smaller than what they stand for.
    @inline(__always)
    public func roundUp(_ x: Float) -> Float {
        precondition(!(x < 0), "roundUp takes a non-negative value")
        guard x > 0 else { return x }
        guard x < maxFinite else { return maxFinite }
        let nearest = round(x)
        guard nearest < x else { return nearest }
        // `nearest` is below x: the next representable value up is one spacing above it (the
        // spacing of nearest's own binade, also right when nearest is a power of two or 0).
        return min(nearest + spacing(around: nearest), maxFinite)
    }

    /// Spacing of representable values around magnitude `m` (for error bounds in tests/docs).
    public func spacing(around magnitude: Float) -> Float {
        let binade = max(Int(abs(magnitude).exponent), minNormalExponent)
        return Float(sign: .plus, exponent: binade - mantissaBits, significand: 1)
    }
}
