import Foundation

/// Sets how sharp one position's queries are. The layer fixes each head's query direction u_h
/// (what it looks for); the solver finds the one temperature β, shared by the position's heads,
/// at which the attention of the queries β·u_h, averaged over all query heads, has the position's
/// target sparsity as `Sparsity` defines it (fraction of visible positions below 1 % of the
/// averaged row's maximum).
///
/// Solving per position is what keeps sparsity independent of context length: a fixed
/// temperature would make rows flatter or sharper as keys accumulate. The scores u_h·k are
/// computed once; each trial β then costs one exponential per (head, position).
///
/// Long contexts are estimated rather than scanned: beyond `exactLimit` visible positions the
/// row is evaluated on every position that can hold its maximum (sinks, the recent window,
/// revisited anchors, the most salient keys), counted exactly, plus about `sampleSize` evenly
/// spaced positions of the rest, each standing for an equal share of it.
final class QueryTemperatureSolver {
    struct Solution {
        var beta: Float
        /// Sparsity of the averaged row at `beta` (estimated when the context was sampled).
        var sparsity: Float
    }

    let layer: SyntheticLayer
    let exactLimit: Int
    let sampleSize: Int
    /// Newest positions always evaluated when sampling (recency makes them the likeliest maxima).
    let recentWindow = 128
    /// Most salient keys always evaluated when sampling.
    let salientCount = 64
    /// Search range of β and how close the sparsity must come to its target.
    static let betaRange: ClosedRange<Double> = 1e-3...1e3
    static let tolerance: Float = 0.002

    private var positions: [Int32] = []
    private var weights: [Float] = []
    /// Scores scale·u_h·k_j, [Hq][capacity]; exponentials and the averaged row, [capacity].
    private var scores: [Float] = []
    private var exps: [Float] = []
    private var average: [Float] = []
    private var maxima: [Float]
    /// stamp[j] == p marks j as already chosen for position p.
    private var stamp: [Int32]
    private var capacity = 0
    private var count = 0
    private var visible = 0
    private var uniformWeights = true

    init(layer: SyntheticLayer, exactLimit: Int, sampleSize: Int) {
        self.layer = layer
        self.exactLimit = exactLimit
        self.sampleSize = sampleSize
        maxima = [Float](repeating: 0, count: layer.Hq)
        stamp = [Int32](repeating: -1, count: layer.T)
    }

    /// β for position p whose query directions are `directions` ([Hq][D]).
    func solve(directions: UnsafePointer<Float>, position p: Int, target: Float, rng: inout SeededRandom) -> Solution {
        choosePositions(p, rng: &rng)
        computeScores(directions)
        if visible <= 1 { return Solution(beta: 1, sparsity: 0) }

        // Sparsity rises with β (the row sharpens). Start from the β at which a single row with
        // the head-averaged scores would have the target sparsity, bracket the target by
        // factors of 1.5, then close in.
        let tolerance = QueryTemperatureSolver.tolerance
        let range = QueryTemperatureSolver.betaRange
        let logMin = PortableMath.log(range.lowerBound), logMax = PortableMath.log(range.upperBound)
        let step = PortableMath.log(1.5)
        var lo = min(logMax, max(logMin, PortableMath.log(Double(initialGuess(target: target)))))
        var hi = lo
        var fLo = sparsity(lo), fHi = fLo
        var best = (logBeta: lo, sparsity: fLo)
        if abs(fLo - target) <= tolerance { return Solution(beta: beta(lo), sparsity: fLo) }
        if fLo < target {
            while fHi < target {
                (lo, fLo) = (hi, fHi)
                guard hi < logMax else { return Solution(beta: beta(logMax), sparsity: fHi) }
                hi = min(logMax, hi + step)
                fHi = sparsity(hi)
            }
            best = (hi, fHi)
        } else {
            while fLo > target {
                (hi, fHi) = (lo, fLo)
                guard lo > logMin else { return Solution(beta: beta(logMin), sparsity: fLo) }
                lo = max(logMin, lo - step)
                fLo = sparsity(lo)
            }
            best = (lo, fLo)
        }
        // Now sparsity(lo) ≤ target ≤ sparsity(hi). Regula falsi in log β with the Illinois
        // modification (halve the pull of an end that stays put), which needs a few steps where
        // plain bisection needs a dozen.
        var side = 0
        for _ in 0..<40 {
            if abs(best.sparsity - target) <= tolerance || hi - lo < 1e-4 { break }
            var mid = fHi > fLo ? lo + (hi - lo) * Double((target - fLo) / (fHi - fLo)) : (lo + hi) / 2
            if !(mid > lo && mid < hi) { mid = (lo + hi) / 2 }
            let fm = sparsity(mid)
            if abs(fm - target) < abs(best.sparsity - target) { best = (mid, fm) }
            if fm < target {
                (lo, fLo) = (mid, fm)
                if side == -1 { fHi = (fHi + target) / 2 }
                side = -1
            } else {
                (hi, fHi) = (mid, fm)
                if side == 1 { fLo = (fLo + target) / 2 }
                side = 1
            }
        }
        return Solution(beta: beta(best.logBeta), sparsity: best.sparsity)
    }

    /// ln 100 / (max − q), where q is the target quantile of the head-averaged scores: for a
    /// single row with those scores, exactly the positions below q fall under 1 % of the maximum.
    private func initialGuess(target: Float) -> Float {
        let n = count, cap = capacity, Hq = layer.Hq
        scores.withUnsafeBufferPointer { S in
            average.withUnsafeMutableBufferPointer { A in
                for c in 0..<n { A[c] = 0 }
                for h in 0..<Hq {
                    for c in 0..<n { A[c] += S[h * cap + c] }
                }
            }
        }
        var top = -Float.infinity
        for c in 0..<n where average[c] > top { top = average[c] }
        let rank = min(n - 1, max(0, Int(Float(n) * target)))
        let quantile = average.withUnsafeMutableBufferPointer {
            QueryTemperatureSolver.select(rank, in: $0.baseAddress!, count: n)
        }
        let gap = (top - quantile) / Float(Hq)
        return gap > 0 ? 4.605_17 / gap : 4
    }

    /// The k-th smallest of x[0..<n] (reorders x): quickselect with a median-of-three pivot.
    private static func select(_ k: Int, in x: UnsafeMutablePointer<Float>, count n: Int) -> Float {
        var lo = 0, hi = n - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            let a = x[lo], b = x[mid], c = x[hi]
            let pivot = max(min(a, b), min(max(a, b), c))
            var i = lo, j = hi
            while i <= j {
                while x[i] < pivot { i += 1 }
                while x[j] > pivot { j -= 1 }
                if i <= j {
                    (x[i], x[j]) = (x[j], x[i])
                    i += 1
                    j -= 1
                }
            }
            if k <= j { hi = j } else if k >= i { lo = i } else { return x[k] }
        }
        return x[k]
    }

    private func beta(_ logBeta: Double) -> Float { Float(PortableMath.exp(logBeta)) }

    // MARK: Positions

    private func ensureCapacity(_ needed: Int) {
        guard needed > capacity else { return }
        capacity = max(needed, capacity * 2)
        positions = [Int32](repeating: 0, count: capacity)
        weights = [Float](repeating: 1, count: capacity)
        scores = [Float](repeating: 0, count: capacity * layer.Hq)
        exps = [Float](repeating: 0, count: capacity)
        average = [Float](repeating: 0, count: capacity)
    }

    private func choosePositions(_ p: Int, rng: inout SeededRandom) {
        let n = p + 1
        visible = n
        if n <= exactLimit {
            ensureCapacity(n)
            for j in 0..<n {
                positions[j] = Int32(j)
                weights[j] = 1
            }
            count = n
            uniformWeights = true
            return
        }
        let recentStart = max(0, n - recentWindow)
        var special = layer.maximumCandidates(position: p, salientCount: salientCount)
        special += recentStart..<n
        ensureCapacity(special.count + sampleSize + 1)
        count = 0
        var restLow = min(layer.config.attention.sinkCount, n)
        let restHigh = recentStart
        restLow = min(restLow, restHigh)
        var specialsInRest = 0
        for j in special where stamp[j] != Int32(p) {
            stamp[j] = Int32(p)
            positions[count] = Int32(j)
            weights[count] = 1
            count += 1
            if j >= restLow && j < restHigh { specialsInRest += 1 }
        }
        // The rest is sampled systematically (evenly spaced from a random offset): thoughts
        // come in runs, so an even spread over the context varies less than independent draws.
        let span = restHigh - restLow
        uniformWeights = span - specialsInRest <= 0
        guard !uniformWeights else { return }
        let stride = Double(span) / Double(min(sampleSize, span))
        var x = rng.uniform() * stride
        var sampled = 0
        let firstSample = count
        while x < Double(span) {
            let j = restLow + Int(x)
            if stamp[j] != Int32(p) {
                positions[count] = Int32(j)
                count += 1
                sampled += 1
            }
            x += stride
        }
        // Each sampled position stands for an equal share of the unsampled rest.
        let weight = Float(span - specialsInRest) / Float(max(sampled, 1))
        for c in firstSample..<count { weights[c] = weight }
    }

    // MARK: Scores and sparsity

    private func computeScores(_ directions: UnsafePointer<Float>) {
        let D = layer.D, T = layer.T, gs = layer.groupSize, cap = capacity
        let scale = layer.softmaxScale
        layer.keys.withUnsafeBufferPointer { K in
            scores.withUnsafeMutableBufferPointer { S in
                for g in 0..<layer.Hkv {
                    let headKeys = K.baseAddress! + g * T * D
                    for c in 0..<count {
                        let key = headKeys + Int(positions[c]) * D
                        // Four heads of the group per pass over the key row.
                        var hh = 0
                        while hh + 4 <= gs {
                            let h = g * gs + hh, u = directions + h * D
                            let d4 = SyntheticMath.dot4(u, u + D, u + 2 * D, u + 3 * D, key, D)
                            for r in 0..<4 { S[(h + r) * cap + c] = scale * d4[r] }
                            hh += 4
                        }
                        while hh < gs {
                            let h = g * gs + hh
                            S[h * cap + c] = scale * SyntheticMath.dot(directions + h * D, key, D)
                            hh += 1
                        }
                    }
                }
                for h in 0..<layer.Hq {
                    var m = -Float.infinity
                    for c in 0..<count where S[h * cap + c] > m { m = S[h * cap + c] }
                    maxima[h] = m
                }
            }
        }
    }

    /// Sparsity of the head-averaged row at β = e^logBeta.
    private func sparsity(_ logBeta: Double) -> Float {
        let b = beta(logBeta)
        let n = count, cap = capacity
        return scores.withUnsafeBufferPointer { S in
            exps.withUnsafeMutableBufferPointer { E in
                average.withUnsafeMutableBufferPointer { A in
                    weights.withUnsafeBufferPointer { W in
                        let e = E.baseAddress!, a = A.baseAddress!, w = W.baseAddress!
                        for c in 0..<n { a[c] = 0 }
                        for h in 0..<layer.Hq {
                            let z = QueryTemperatureSolver.exponentials(
                                S.baseAddress! + h * cap, n, beta: b, maximum: maxima[h],
                                weights: uniformWeights ? nil : w, into: e)
                            QueryTemperatureSolver.accumulate(e, scale: 1 / z, into: a, n)
                        }
                        var top: Float = 0
                        for c in 0..<n where a[c] > top { top = a[c] }
                        let cut = Sparsity.defaultRatio * top
                        var dense: Float = 0
                        if uniformWeights {
                            var hits = 0
                            for c in 0..<n where a[c] >= cut { hits += 1 }
                            dense = Float(hits)
                        } else {
                            for c in 0..<n where a[c] >= cut { dense += w[c] }
                        }
                        return max(0, 1 - dense / Float(visible))
                    }
                }
            }
        }
    }

    /// e[c] = exp(β·(s[c] − maximum)) with the replay's vector exponential; returns Σ w[c]·e[c]
    /// (w = 1 when nil), summed in a fixed order.
    private static func exponentials(
        _ s: UnsafePointer<Float>, _ n: Int, beta: Float, maximum: Float,
        weights w: UnsafePointer<Float>?, into e: UnsafeMutablePointer<Float>
    ) -> Float {
        let bv = SIMD8<Float>(repeating: beta), mv = SIMD8<Float>(repeating: maximum)
        let rs = UnsafeRawPointer(s), re = UnsafeMutableRawPointer(e)
        var sum = SIMD8<Float>(repeating: 0)
        var c = 0
        while c + 8 <= n {
            let x = rs.loadUnaligned(fromByteOffset: c * 4, as: SIMD8<Float>.self)
            let ex = Kernels.exp8(bv * (x - mv))
            re.storeBytes(of: ex, toByteOffset: c * 4, as: SIMD8<Float>.self)
            if let w {
                let product = ex * UnsafeRawPointer(w).loadUnaligned(fromByteOffset: c * 4, as: SIMD8<Float>.self)
                sum = sum + product
            } else {
                sum = sum + ex
            }
            c += 8
        }
        var total = ((sum[0] + sum[1]) + (sum[2] + sum[3])) + ((sum[4] + sum[5]) + (sum[6] + sum[7]))
        while c < n {
            let ex = Kernels.exp8(SIMD8<Float>(repeating: beta * (s[c] - maximum)))[0]
            e[c] = ex
            let product = w.map { $0[c] * ex } ?? ex
            total = total + product
            c += 1
        }
        return total
    }

    /// a[c] += scale · e[c].
    private static func accumulate(
        _ e: UnsafePointer<Float>, scale: Float, into a: UnsafeMutablePointer<Float>, _ n: Int
    ) {
        let sv = SIMD8<Float>(repeating: scale)
        let re = UnsafeRawPointer(e), ra = UnsafeMutableRawPointer(a)
        var c = 0
        while c + 8 <= n {
            let product = sv * re.loadUnaligned(fromByteOffset: c * 4, as: SIMD8<Float>.self)
            let sum = ra.loadUnaligned(fromByteOffset: c * 4, as: SIMD8<Float>.self) + product
            ra.storeBytes(of: sum, toByteOffset: c * 4, as: SIMD8<Float>.self)
            c += 8
        }
        while c < n {
            let product = scale * e[c]
            a[c] = a[c] + product
            c += 1
        }
    }
}
