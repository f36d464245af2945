import Foundation

/// The synthetic generator's only source of randomness: SplitMix64 (a 64-bit counter passed
/// through a strong mixing function), started from the trace seed and a *stream* path such as
/// (keys, layer 3, kv head 1). Independent streams let every layer, head and decode step draw its
/// own numbers, so work can be split across threads, or a layer regenerated alone, without
/// changing a single value.
///
/// Everything here uses IEEE arithmetic only (no libm): the same seed gives the same bits on
/// every machine and with every compiler flag.
public struct SeededRandom {
    private var state: UInt64
    /// The second value of the last polar-method pair.
    private var spareGaussian: Double?

    public init(seed: UInt64, stream: [UInt64] = []) {
        var s = SeededRandom.mix(seed ^ 0x5851_F42D_4C95_7F2D)
        for part in stream {
            s = SeededRandom.mix(s ^ SeededRandom.mix(part &+ 0x9E37_79B9_7F4A_7C15))
        }
        state = s
    }

    /// SplitMix64's finaliser: a bijection whose output bits each depend on every input bit.
    @inline(__always)
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SeededRandom.mix(state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    @inline(__always)
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// Uniform integer in 0..<n (n > 0); the bias of the multiply-shift is below 2^-53 · n.
    @inline(__always)
    public mutating func integer(below n: Int) -> Int {
        precondition(n > 0)
        return min(n - 1, Int(uniform() * Double(n)))
    }

    /// True with probability p.
    public mutating func chance(_ p: Double) -> Bool { uniform() < p }

    /// Standard normal by Marsaglia's polar method (log and square root only, both portable here).
    public mutating func gaussian() -> Float {
        if let spare = spareGaussian {
            spareGaussian = nil
            return Float(spare)
        }
        while true {
            let u = 2 * uniform() - 1, v = 2 * uniform() - 1
            let s = u * u + v * v
            guard s > 0, s < 1 else { continue }
            let factor = (-2 * PortableMath.log(s) / s).squareRoot()
            spareGaussian = v * factor
            return Float(u * factor)
        }
    }

    /// Fills `count` floats with independent N(0, scale²) values.
    public mutating func fillGaussian(_ out: UnsafeMutablePointer<Float>, count: Int, scale: Float = 1) {
        for i in 0..<count { out[i] = scale * gaussian() }
    }

    /// A uniformly random direction: `count` Gaussians scaled to unit length.
    public mutating func fillUnitVector(_ out: UnsafeMutablePointer<Float>, count: Int) {
        var norm: Float = 0
        repeat {
            fillGaussian(out, count: count)
            norm = SyntheticMath.dot(out, out, count).squareRoot()
        } while norm == 0
        let inverse = 1 / norm
        for i in 0..<count { out[i] *= inverse }
    }

    /// Draws from a geometric distribution on {0, 1, 2, ...} with the given mean, by inversion.
    public mutating func geometric(mean: Double) -> Int {
        guard mean > 0 else { return 0 }
        let p = 1 / (mean + 1)  // success probability: mean = (1 - p) / p
        let u = 1 - uniform()  // in (0, 1]
        return Int(PortableMath.log(u) / PortableMath.log(1 - p))
    }

    /// Index drawn with probability proportional to `weights` (non-negative, not all zero).
    public mutating func categorical(_ weights: [Double]) -> Int {
        let total = weights.reduce(0, +)
        var x = uniform() * total
        for (i, w) in weights.enumerated() {
            if x < w { return i }
            x -= w
        }
        return weights.lastIndex { $0 > 0 } ?? 0
    }
}

/// Arithmetic the generator needs, written so that its results do not depend on the platform's
/// math library or on whether the build fuses multiply-add (the replay kernels do under
/// THINKV_FMA, which would change the generator's decisions in the last bit).
public enum SyntheticMath {
    /// Σ a[i]·b[i] with eight lanes, each a plain multiply then add, lanes summed in a fixed order.
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        while i + 8 <= n {
            let x = ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            let y = rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            let product = x * y
            acc = acc + product
            i += 8
        }
        var sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        while i < n {
            let product = a[i] * b[i]
            sum = sum + product
            i += 1
        }
        return sum
    }

    /// The dot products of four rows a0...a3 with one b, loading b once: each equals `dot(ai, b, n)`
    /// bit for bit (same lanes, same order).
    @inline(__always)
    public static func dot4(
        _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>, _ a2: UnsafePointer<Float>,
        _ a3: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int
    ) -> SIMD4<Float> {
        var acc0 = SIMD8<Float>(repeating: 0), acc1 = acc0, acc2 = acc0, acc3 = acc0
        let rb = UnsafeRawPointer(b)
        let r0 = UnsafeRawPointer(a0), r1 = UnsafeRawPointer(a1), r2 = UnsafeRawPointer(a2), r3 = UnsafeRawPointer(a3)
        var i = 0
        while i + 8 <= n {
            let y = rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            let p0 = r0.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * y
            let p1 = r1.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * y
            let p2 = r2.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * y
            let p3 = r3.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * y
            acc0 = acc0 + p0
            acc1 = acc1 + p1
            acc2 = acc2 + p2
            acc3 = acc3 + p3
            i += 8
        }
        func lanes(_ acc: SIMD8<Float>) -> Float {
            ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
        }
        var sum = SIMD4<Float>(lanes(acc0), lanes(acc1), lanes(acc2), lanes(acc3))
        while i < n {
            let product = SIMD4<Float>(a0[i], a1[i], a2[i], a3[i]) * b[i]
            sum = sum + product
            i += 1
        }
        return sum
    }

    /// y[i] += alpha · x[i].
    @inline(__always)
    public static func addScaled(_ alpha: Float, _ x: UnsafePointer<Float>, to y: UnsafeMutablePointer<Float>, _ n: Int)
    {
        for i in 0..<n {
            let product = alpha * x[i]
            y[i] = y[i] + product
        }
    }
}

/// Natural logarithm from IEEE arithmetic alone.
public enum PortableMath {
    static let ln2 = 0.693_147_180_559_945_3

    /// ln x for finite x > 0: x = m · 2^e with m in [√½, √2), then ln m = 2 atanh((m-1)/(m+1)) by
    /// its series (|s| ≤ 0.172, so eleven terms reach double precision).
    public static func log(_ x: Double) -> Double {
        precondition(x > 0 && x.isFinite, "log of \(x)")
        var bits = x.bitPattern
        var exponent = Int((bits >> 52) & 0x7FF)
        var shift = 0
        if exponent == 0 {  // subnormal: scale into the normal range first
            bits = (x * 0x1p64).bitPattern
            exponent = Int((bits >> 52) & 0x7FF)
            shift = -64
        }
        var e = exponent - 1023 + shift
        var m = Double(bitPattern: (bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000)  // [1, 2)
        if m > 1.414_213_562_373_095_1 {
            m /= 2
            e += 1
        }
        let s = (m - 1) / (m + 1), s2 = s * s
        var term = s, sum = s, k = 3.0
        for _ in 0..<10 {
            term *= s2
            sum += term / k
            k += 2
        }
        return 2 * sum + Double(e) * ln2
    }
}
