import Foundation

/// Seeded k-means over a handful of D-dimensional points (one segment's keys in one kv head),
/// used by ThinKV's eviction to pick which tokens represent a thought segment.
///
/// - Initialisation: k-means++ (the first centre uniformly, each further one with probability
///   proportional to the squared distance to the nearest centre chosen so far), driven by a
///   SplitMix64 generator seeded with `seed`, so a seed fixes the result.
/// - Then at most `iterations` Lloyd rounds (assign each point to its nearest centre, move each
///   centre to its cluster's mean); a round that changes no assignment ends early, which gives
///   the same result as running the remaining rounds. A cluster left empty keeps its centre.
/// - Representatives are real points: for each centre in turn, the nearest point not already
///   taken, so exactly k distinct points come back (ties: the lower index).
///
/// Everything is computed in Float32 in a fixed order: the result depends only on the input
/// and the seed, not on threads.
public enum KMeans {
    /// Indices (ascending) of `k` distinct points representing the `count` points stored
    /// row-major at `points` (`count × dimension` floats). With `k ≥ count` every index.
    public static func representatives(
        points: UnsafePointer<Float>, count n: Int, dimension D: Int, k: Int,
        iterations: Int, seed: UInt64
    ) -> [Int] {
        guard k < n else { return Array(0..<n) }
        guard k > 0 else { return [] }
        var centers = [Float](repeating: 0, count: k * D)
        var pointNorms = [Float](repeating: 0, count: n)
        for i in 0..<n { pointNorms[i] = Kernels.dot(points + i * D, points + i * D, D) }
        centers.withUnsafeMutableBufferPointer { c in
            let cp = c.baseAddress!
            seedCenters(points: points, norms: pointNorms, count: n, dimension: D, k: k, seed: seed, into: cp)
            lloyd(points: points, norms: pointNorms, count: n, dimension: D, centers: cp, k: k, iterations: iterations)
        }
        return centers.withUnsafeBufferPointer { c in
            nearestDistinct(points: points, norms: pointNorms, count: n, dimension: D, centers: c.baseAddress!, k: k)
        }
    }

    /// Convenience for tests and small inputs: points as an array of rows.
    public static func representatives(_ rows: [[Float]], k: Int, iterations: Int = 10, seed: UInt64 = 0) -> [Int] {
        guard let D = rows.first?.count else { return [] }
        precondition(rows.allSatisfy { $0.count == D }, "every point needs the same dimension")
        let flat = rows.flatMap { $0 }
        return flat.withUnsafeBufferPointer {
            representatives(
                points: $0.baseAddress!, count: rows.count, dimension: D, k: k, iterations: iterations, seed: seed)
        }
    }

    // MARK: Steps

    /// ‖x − c‖² from precomputed squared norms; clamped at 0 against rounding.
    @inline(__always)
    private static func distance(
        _ x: UnsafePointer<Float>, _ xNorm: Float, _ c: UnsafePointer<Float>, _ cNorm: Float,
        _ D: Int
    ) -> Float {
        max(0, xNorm + cNorm - 2 * Kernels.dot(x, c, D))
    }

    private static func seedCenters(
        points: UnsafePointer<Float>, norms: [Float], count n: Int, dimension D: Int,
        k: Int, seed: UInt64, into centers: UnsafeMutablePointer<Float>
    ) {
        var random = SeededRandom(seed: seed)
        var nearest = [Float](repeating: .infinity, count: n)
        var chosen = Int(random.next() % UInt64(n))
        for j in 0..<k {
            let c = centers + j * D
            for d in 0..<D { c[d] = points[chosen * D + d] }
            guard j + 1 < k else { break }
            let cNorm = norms[chosen]
            var total: Double = 0
            for i in 0..<n {
                nearest[i] = min(nearest[i], distance(points + i * D, norms[i], c, cNorm, D))
                total += Double(nearest[i])
            }
            if total > 0 {
                // Draw i with probability nearest[i] / total.
                let target = random.uniform() * total
                var running: Double = 0
                chosen = -1
                for i in 0..<n where nearest[i] > 0 {
                    running += Double(nearest[i])
                    if running > target { chosen = i; break }
                }
                if chosen < 0 { chosen = (0..<n).last { nearest[$0] > 0 }! }
            } else {
                // Every point coincides with a centre: duplicates; any point will do.
                chosen = Int(random.next() % UInt64(n))
            }
        }
    }

    private static func lloyd(
        points: UnsafePointer<Float>, norms: [Float], count n: Int, dimension D: Int,
        centers: UnsafeMutablePointer<Float>, k: Int, iterations: Int
    ) {
        var assignment = [Int](repeating: -1, count: n)
        var centerNorms = [Float](repeating: 0, count: k)
        var sums = [Float](repeating: 0, count: k * D)
        var sizes = [Int](repeating: 0, count: k)
        for _ in 0..<iterations {
            for j in 0..<k { centerNorms[j] = Kernels.dot(centers + j * D, centers + j * D, D) }
            var changed = false
            for i in 0..<n {
                let x = points + i * D
                var best = 0
                var bestDistance = Float.infinity
                for j in 0..<k {
                    let dist = distance(x, norms[i], centers + j * D, centerNorms[j], D)
                    if dist < bestDistance { bestDistance = dist; best = j }
                }
                if assignment[i] != best { assignment[i] = best; changed = true }
            }
            if !changed { return }
            for i in sums.indices { sums[i] = 0 }
            for j in 0..<k { sizes[j] = 0 }
            sums.withUnsafeMutableBufferPointer { s in
                for i in 0..<n {
                    let j = assignment[i]
                    Kernels.axpy(1, points + i * D, s.baseAddress! + j * D, D)
                    sizes[j] += 1
                }
            }
            for j in 0..<k where sizes[j] > 0 {
                let inv = 1 / Float(sizes[j])
                for d in 0..<D { centers[j * D + d] = sums[j * D + d] * inv }
            }
        }
    }

    private static func nearestDistinct(
        points: UnsafePointer<Float>, norms: [Float], count n: Int, dimension D: Int,
        centers: UnsafePointer<Float>, k: Int
    ) -> [Int] {
        var taken = [Bool](repeating: false, count: n)
        var picked: [Int] = []
        picked.reserveCapacity(k)
        for j in 0..<k {
            let c = centers + j * D
            let cNorm = Kernels.dot(c, c, D)
            var best = -1
            var bestDistance = Float.infinity
            for i in 0..<n where !taken[i] {
                let dist = distance(points + i * D, norms[i], c, cNorm, D)
                if best < 0 || dist < bestDistance { bestDistance = dist; best = i }
            }
            taken[best] = true
            picked.append(best)
        }
        return picked.sorted()
    }
}
