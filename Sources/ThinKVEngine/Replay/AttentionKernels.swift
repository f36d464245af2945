import Foundation

/// The inner loops of replay: dot products, scaled accumulation and softmax over Float32
/// buffers. Accumulation order is fixed (8-lane partial sums, then a fixed tree), so results do
/// not depend on threading.
///
/// Built with `-DTHINKV_FMA` (the Makefile adds it, with `-target-cpu haswell`, on CPUs with
/// AVX2 and FMA) the loops use fused multiply-add. Without it they multiply then add: at the
/// baseline x86-64 target `SIMD.addProduct` would become one `fmaf` library call per lane.
public enum Kernels {
    // acc += a·b, fused with THINKV_FMA. One overload per vector type the kernels use rather than
    // one generic function: through a generic `SIMD` parameter the arithmetic would compile to
    // the protocol's lane-by-lane code, not to one instruction per vector.
    @inline(__always)
    @inlinable package static func multiplyAdd(_ acc: inout SIMD8<Float>, _ a: SIMD8<Float>, _ b: SIMD8<Float>) {
        #if THINKV_FMA
        acc.addProduct(a, b)
        #else
        acc = acc + a * b
        #endif
    }

    @inline(__always)
    @inlinable package static func multiplyAdd(_ acc: inout SIMD16<Float>, _ a: SIMD16<Float>, _ b: SIMD16<Float>) {
        #if THINKV_FMA
        acc.addProduct(a, b)
        #else
        acc = acc + a * b
        #endif
    }

    @inline(__always)
    @inlinable package static func multiplyAdd(_ acc: inout SIMD4<Double>, _ a: SIMD4<Double>, _ b: SIMD4<Double>) {
        #if THINKV_FMA
        acc.addProduct(a, b)
        #else
        acc = acc + a * b
        #endif
    }

    @inline(__always)
    @inlinable package static func multiplyAdd(_ acc: inout SIMD8<Double>, _ a: SIMD8<Double>, _ b: SIMD8<Double>) {
        #if THINKV_FMA
        acc.addProduct(a, b)
        #else
        acc = acc + a * b
        #endif
    }

    @inline(__always)
    @inlinable package static func load8(_ p: UnsafePointer<Float>, _ i: Int) -> SIMD8<Float> {
        UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<Float>.self)
    }

    /// Σ a[i]·b[i] for i in 0..<n: one 8-lane accumulator over the chunks in order, then the
    /// lanes summed, then the tail. `scores` computes exactly the same sums, so a dot product
    /// gives the same bits whichever kernel computed it.
    @inline(__always)
    @inlinable
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        while i &+ 8 <= n {
            multiplyAdd(&acc, load8(a, i), load8(b, i))
            i &+= 8
        }
        var sum = acc.sum()
        while i < n {
            sum += a[i] * b[i]
            i += 1
        }
        return sum
    }

    /// y[i] += alpha·x[i] for i in 0..<n.
    @inline(__always)
    @inlinable
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
        let a = SIMD8<Float>(repeating: alpha)
        while i &+ 8 <= n {
            var yv = ry.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
            multiplyAdd(&yv, a, rx.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self))
            ry.storeBytes(of: yv, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i &+= 8
        }
        while i < n {
            y[i] += alpha * x[i]
            i += 1
        }
    }

    /// Replaces logits x[0..<n] by softmax probabilities; returns the log-sum-exp of the logits.
    @inline(__always)
    @discardableResult
    @inlinable
    public static func softmaxInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
        guard n > 0 else { return -.infinity }
        var m = -Float.infinity
        for i in 0..<n where x[i] > m { m = x[i] }
        var s: Float = 0
        for i in 0..<n {
            let e = expf(x[i] - m)
            x[i] = e
            s += e
        }
        let inv = 1 / s
        for i in 0..<n { x[i] *= inv }
        return m + logf(s)
    }

    /// ‖x‖₂ of n elements.
    @inline(__always)
    @inlinable
    public static func norm(_ x: UnsafePointer<Float>, _ n: Int) -> Float { dot(x, x, n).squareRoot() }
}

/// The k largest values of a stream with their indices; ties go to the lower index.
/// Kept as a min-heap on (value, -index) so the weakest entry is at the root.
public struct TopKSelector {
    public private(set) var values: [Float]
    public private(set) var indices: [Int32]
    public let k: Int
    public private(set) var count = 0

    public init(k: Int) {
        self.k = k
        values = [Float](repeating: 0, count: max(k, 1))
        indices = [Int32](repeating: 0, count: max(k, 1))
    }

    public mutating func reset() { count = 0 }

    /// True when (v, i) ranks below (w, j): smaller value, or equal value and larger index.
    @inline(__always)
    private static func weaker(_ v: Float, _ i: Int32, _ w: Float, _ j: Int32) -> Bool {
        v < w || (v == w && i > j)
    }

    @inline(__always)
    public mutating func offer(_ value: Float, _ index: Int32) {
        guard k > 0 else { return }
        if count < k {
            var c = count
            count += 1
            values[c] = value
            indices[c] = index
            while c > 0 {  // sift up
                let parent = (c - 1) / 2
                guard TopKSelector.weaker(values[c], indices[c], values[parent], indices[parent]) else { break }
                values.swapAt(c, parent)
                indices.swapAt(c, parent)
                c = parent
            }
            return
        }
        guard TopKSelector.weaker(values[0], indices[0], value, index) else { return }
        values[0] = value
        indices[0] = index
        var c = 0
        while true {  // sift down
            let l = 2 * c + 1, r = l + 1
            var weakest = c
            if l < count && TopKSelector.weaker(values[l], indices[l], values[weakest], indices[weakest]) {
                weakest = l
            }
            if r < count && TopKSelector.weaker(values[r], indices[r], values[weakest], indices[weakest]) {
                weakest = r
            }
            if weakest == c { break }
            values.swapAt(c, weakest)
            indices.swapAt(c, weakest)
            c = weakest
        }
    }

    /// The value an entry must beat once k are held (later indices never win ties).
    public var admissionThreshold: Float { count < k ? -.infinity : values[0] }

    /// Offers x[0..<n] with indices 0..<n, skipping 8-lane chunks that cannot enter.
    ///
    /// Long rows first take a floor: the k-th largest of the maxima of disjoint 8-value sets
    /// (`Kernels.rowMax`'s lane maxima). Those are k values of the row, so the row's k-th best is
    /// at least the floor and nothing below it can be selected; skipping it leaves the same
    /// selection (ties included) and few heap updates. `laneMaxima`, when given, holds those
    /// maxima already and is reordered.
    ///
    /// `floorHint` (e.g. the k-th best of a similar row) replaces the selection when at least k
    /// of the lane maxima reach it: then at least k values of the row do, and it is a floor too.
    /// It changes how much work is skipped, never what is selected.
    public mutating func offerAll(
        _ x: UnsafePointer<Float>, _ n: Int, laneMaxima: UnsafeMutablePointer<Float>? = nil,
        floorHint: Float = -.infinity
    ) {
        var floor = -Float.infinity
        let sets = n / 64 * 8
        if k > 0 && sets >= 2 * k {
            if let laneMaxima {
                floor =
                    floorHint > -.infinity && TopKSelector.count(atLeast: floorHint, laneMaxima, sets) >= k
                    ? floorHint.nextDown : TopKSelector.kthLargest(laneMaxima, sets, k).nextDown
            } else {
                floor = withUnsafeTemporaryAllocation(of: Float.self, capacity: sets) { maxima in
                    _ = Kernels.rowMax(x, sets * 8, laneMaxima: maxima.baseAddress!)
                    return TopKSelector.kthLargest(maxima.baseAddress!, sets, k).nextDown
                }
            }
        }
        var threshold = max(admissionThreshold, floor)
        var j = 0
        // Blocks of 64: lane-wise comparisons with the threshold (vector code, one mask test per
        // block); only blocks holding something above it are looked at element by element.
        while j + 64 <= n {
            let t = SIMD8<Float>(repeating: threshold)
            var above = Kernels.load8(x, j) .> t
            for c in stride(from: 8, to: 64, by: 8) { above = above .| (Kernels.load8(x, j + c) .> t) }
            if any(above) {
                // Then 8 at a time: a block that passed usually holds one or two entrants.
                for c in stride(from: j, to: j + 64, by: 8)
                where any(Kernels.load8(x, c) .> SIMD8<Float>(repeating: threshold)) {
                    for i in c..<(c + 8) where x[i] > threshold {
                        offer(x[i], Int32(i))
                        threshold = max(admissionThreshold, floor)
                    }
                }
            }
            j += 64
        }
        while j < n {
            if x[j] > threshold {
                offer(x[j], Int32(j))
                threshold = max(admissionThreshold, floor)
            }
            j += 1
        }
    }

    /// How many of a[0..<n] (n a multiple of 8) are ≥ t.
    static func count(atLeast t: Float, _ a: UnsafePointer<Float>, _ n: Int) -> Int {
        let threshold = SIMD8<Float>(repeating: t)
        var counts = SIMD8<Int32>(repeating: 0)
        var i = 0
        while i &+ 8 <= n {
            counts &-= unsafeBitCast(Kernels.load8(a, i) .>= threshold, to: SIMD8<Int32>.self)  // true lanes are -1
            i &+= 8
        }
        var total = Int(counts.wrappedSum())
        while i < n {
            if a[i] >= t { total += 1 }
            i += 1
        }
        return total
    }

    /// The k-th largest of a[0..<n] (1 ≤ k ≤ n; no NaN), reordering a: Hoare-partition
    /// selection around a median of three, expected O(n).
    static func kthLargest(_ a: UnsafeMutablePointer<Float>, _ n: Int, _ k: Int) -> Float {
        let target = k - 1  // its index once a is in descending order
        var lo = 0, hi = n - 1
        while lo < hi {
            let x = a[lo], y = a[(lo + hi) / 2], z = a[hi]
            let pivot = max(min(x, y), min(max(x, y), z))
            var i = lo, j = hi
            while i <= j {
                while a[i] > pivot { i += 1 }
                while a[j] < pivot { j -= 1 }
                if i <= j {
                    (a[i], a[j]) = (a[j], a[i])
                    i += 1
                    j -= 1
                }
            }
            // Now a[lo...j] ≥ pivot ≥ a[i...hi], and anything between equals the pivot.
            if target <= j {
                hi = j
            } else if target >= i {
                lo = i
            } else {
                return a[target]
            }
        }
        return a[target]
    }

    /// The selected indices (heap order, not sorted).
    public var selected: ArraySlice<Int32> { indices[0..<count] }
}
