import Foundation

/// A one-dimensional Gaussian kernel density estimate evaluated on a uniform grid, with the
/// mode and valley finding that thought calibration needs.
///
/// Density: f(x) = 1/(n·h) · Σᵢ φ((x − xᵢ)/h), φ the standard normal density.
///
/// Bandwidth (Scott's rule, as scipy.stats.gaussian_kde computes it in one dimension):
/// h = σ̂ · n^(−1/5), where σ̂ is the sample standard deviation with the n − 1 denominator
/// (scipy's covariance uses `np.cov`, which is unbiased) and n^(−1/5) is scipy's Scott factor
/// n^(−1/(d+4)) for d = 1. When σ̂·n^(−1/5) is below `minimumBandwidth` (all samples equal, or a
/// single sample) the minimum is used, so the density stays finite and has one mode.
///
/// The density is evaluated on `gridPoints` equally spaced points over `range` (default 1001
/// points over [0, 1], a step of 0.001 on the sparsity scale). Mass outside the range is not
/// reflected back: sparsity cannot leave [0, 1], and a cluster pressed against 0 or 1 still shows
/// as a peak at the edge (see `modes`). Kernels are cut at 12 bandwidths, where φ is below
/// 10⁻³¹ of its peak, so the sum is exact to double precision for any practical n.
public struct KernelDensity: Sendable {
    public static let defaultGridPoints = 1001
    public static let defaultMinimumBandwidth = 1e-3
    /// A kernel's contribution is dropped beyond this many bandwidths.
    static let kernelCutoff = 12.0

    public let sampleCount: Int
    public let mean: Double
    /// σ̂ with the n − 1 denominator (0 for fewer than two samples).
    public let standardDeviation: Double
    /// The bandwidth used: max(σ̂·n^(−1/5), minimumBandwidth).
    public let bandwidth: Double
    /// Grid positions and the density at each.
    public let grid: [Double]
    public let density: [Double]

    /// Scott's rule bandwidth σ̂·n^(−1/5) (0 for fewer than two samples).
    public static func scottBandwidth(_ samples: [Double]) -> Double {
        let (_, sd) = meanAndStandardDeviation(samples)
        return sd * pow(Double(samples.count), -0.2)
    }

    static func meanAndStandardDeviation(_ samples: [Double]) -> (Double, Double) {
        let n = samples.count
        guard n > 0 else { return (.nan, 0) }
        let mean = samples.reduce(0, +) / Double(n)
        guard n > 1 else { return (mean, 0) }
        var ss = 0.0
        for x in samples { ss += (x - mean) * (x - mean) }
        return (mean, (ss / Double(n - 1)).squareRoot())
    }

    /// Estimates the density of `samples` (at least one, all finite).
    public init(
        samples: [Double], gridPoints: Int = KernelDensity.defaultGridPoints, range: ClosedRange<Double> = 0...1,
        minimumBandwidth: Double = KernelDensity.defaultMinimumBandwidth
    ) {
        precondition(!samples.isEmpty, "a density needs at least one sample")
        precondition(gridPoints >= 3, "a grid needs at least three points")
        let n = samples.count
        sampleCount = n
        (mean, standardDeviation) = KernelDensity.meanAndStandardDeviation(samples)
        let h = max(standardDeviation * pow(Double(n), -0.2), minimumBandwidth)
        bandwidth = h
        let lo = range.lowerBound, step = (range.upperBound - range.lowerBound) / Double(gridPoints - 1)
        grid = (0..<gridPoints).map { lo + Double($0) * step }
        var f = [Double](repeating: 0, count: gridPoints)
        let reach = KernelDensity.kernelCutoff * h
        let inverse2h2 = 1 / (2 * h * h)
        for x in samples {
            // Only grid points within the cutoff receive this sample's kernel.
            let first = max(0, Int(((x - reach - lo) / step).rounded(.up)))
            let last = min(gridPoints - 1, Int(((x + reach - lo) / step).rounded(.down)))
            guard first <= last else { continue }
            for g in first...last {
                let d = grid[g] - x
                f[g] += exp(-d * d * inverse2h2)
            }
        }
        let norm = 1 / (Double(n) * h * (2 * Double.pi).squareRoot())
        density = f.map { $0 * norm }
    }

    /// Modes kept by the prominence filter, in order of position (see `DensityModes.find`).
    public func modes(minRelativeProminence: Double = DensityModes.defaultMinRelativeProminence) -> [DensityMode] {
        DensityModes.find(density, positions: grid, minRelativeProminence: minRelativeProminence)
    }

    /// The valley between two grid indices: see `DensityModes.valley`.
    public func valley(between a: Int, and b: Int) -> DensityValley {
        DensityModes.valley(density, positions: grid, between: a, and: b)
    }
}

/// A local maximum of a density.
public struct DensityMode: Codable, Equatable, Sendable {
    /// Position on the grid (sparsity) and its grid index.
    public var position: Double
    public var index: Int
    public var density: Double
    /// Topographic prominence: height above the higher of the two lowest points that separate
    /// it from a higher peak (or the edge) on either side.
    public var prominence: Double
    /// `prominence` divided by the density's global maximum (scale-free, comparable across layers).
    public var relativeProminence: Double
}

/// The lowest point of a density between two modes.
public struct DensityValley: Codable, Equatable, Sendable {
    public var position: Double
    public var index: Int
    public var density: Double
}

public enum DensityModes {
    /// Modes whose prominence is below this fraction of the density's maximum are noise.
    public static let defaultMinRelativeProminence = 0.05

    /// Local maxima of `f` whose prominence is at least `minRelativeProminence` × max(f), in
    /// order of position.
    ///
    /// A local maximum is a run of equal values (usually one point) whose neighbours on both
    /// sides are strictly lower; a run touching the first or last grid point needs only its inner
    /// neighbour lower, because a cluster pressed against sparsity 0 or 1 peaks at the edge.
    /// Points where f is 0 are never maxima.
    ///
    /// Prominence is the height of the peak above its key col: walk from the peak to each side
    /// until a strictly higher point, and take the lowest value passed as that side's col; the
    /// prominence is the height minus the higher col. A side that reaches the end of the grid
    /// without meeting a higher point sets no col (the density is cut there by the [0, 1] range,
    /// not separated from anything by a valley); the highest peak, with no col on either side,
    /// gets its height above the lowest value on either side. This is
    /// scipy.signal.peak_prominences except at the grid's ends, where scipy takes the edge side's
    /// lowest value as a base: a cluster near sparsity 0 would get a prominence of nearly 0 there.
    public static func find(
        _ f: [Double], positions: [Double], minRelativeProminence: Double = defaultMinRelativeProminence
    ) -> [DensityMode] {
        let n = f.count
        guard n > 0, let top = f.max(), top > 0 else { return [] }
        var modes: [DensityMode] = []
        var i = 0
        while i < n {
            var j = i
            while j + 1 < n && f[j + 1] == f[i] { j += 1 }
            let leftLower = i == 0 || f[i - 1] < f[i]
            let rightLower = j == n - 1 || f[j + 1] < f[i]
            let isEdgeOnly = i == 0 && j == n - 1
            if f[i] > 0 && leftLower && rightLower && !isEdgeOnly {
                let peak = (i + j) / 2
                let height = f[peak]
                // Walk each side until a strictly higher point (a col) or the end of the grid.
                var cols: [Double] = [], edgeLows: [Double] = []
                if i > 0 {
                    var k = i - 1, low = f[k]
                    while k >= 0 && f[k] <= height { low = min(low, f[k]); k -= 1 }
                    if k >= 0 { cols.append(low) } else { edgeLows.append(low) }
                }
                if j < n - 1 {
                    var k = j + 1, low = f[k]
                    while k < n && f[k] <= height { low = min(low, f[k]); k += 1 }
                    if k < n { cols.append(low) } else { edgeLows.append(low) }
                }
                let prominence = height - (cols.max() ?? edgeLows.min() ?? 0)
                if prominence >= minRelativeProminence * top {
                    modes.append(
                        DensityMode(
                            position: positions[peak], index: peak, density: height,
                            prominence: prominence, relativeProminence: prominence / top))
                }
            } else if isEdgeOnly && f[i] > 0 {
                // A constant positive density: one flat mode in the middle.
                modes.append(
                    DensityMode(
                        position: positions[(i + j) / 2], index: (i + j) / 2, density: f[i],
                        prominence: f[i], relativeProminence: 1))
            }
            i = j + 1
        }
        return modes
    }

    /// The minimum of `f` strictly between grid indices `a` < `b`. When the minimum is a run of
    /// equal values (e.g. a stretch where the density is 0 between well separated clusters) the
    /// middle of the first such run is taken, so the threshold sits midway across the gap.
    public static func valley(_ f: [Double], positions: [Double], between a: Int, and b: Int) -> DensityValley {
        precondition(a < b, "a valley lies between two ordered grid indices")
        guard b - a >= 2 else { return DensityValley(position: positions[a], index: a, density: f[a]) }
        var best = a + 1
        for k in (a + 1)..<b where f[k] < f[best] { best = k }
        var end = best
        while end + 1 < b && f[end + 1] == f[best] { end += 1 }
        let mid = (best + end) / 2
        let position = (best + end) % 2 == 0 ? positions[mid] : (positions[mid] + positions[mid + 1]) / 2
        return DensityValley(position: position, index: mid, density: f[best])
    }
}
