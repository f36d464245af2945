import CPrefetch
import Foundation

/// Register-blocked attention kernels: many query rows against the same keys/values, so each
/// key or value row is loaded once for several queries (the query heads of a GQA group, and
/// several decode steps). Results are bit-identical to `Kernels.dot` / `Kernels.axpy` applied
/// row by row: the blocking changes which loads are shared, never the order of the sums.
extension Kernels {
    /// out[r * outStride + j] = scale · (q_r · key(indices[j])) for r < rows, j < count, where
    /// q_r = queries + r·D and key(i) = keys + i·D.
    public static func scores(
        queries: UnsafePointer<Float>, rows: Int, headDim D: Int,
        keys: UnsafePointer<Float>, indices: UnsafePointer<Int32>, count: Int,
        scale: Float, out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        guard D % 8 == 0 else {
            for r in 0..<rows {
                for j in 0..<count {
                    out[r * outStride + j] = scale * dot(queries + r * D, keys + Int(indices[j]) &* D, D)
                }
            }
            return
        }
        #if THINKV_AVX512
        scoresRowPairs(
            queries: queries, rows: rows, headDim: D, keys: keys, indices: indices, count: count,
            scale: scale, out: out, outStride: outStride)
        #else
        // Positions in blocks that stay in L2 while every row passes over them.
        var blockStart = 0
        while blockStart < count {
            let blockEnd = min(count, blockStart + positionBlock)
            scoresBlock(
                queries: queries, rows: rows, headDim: D, keys: keys, indices: indices,
                range: blockStart..<blockEnd, scale: scale, out: out, outStride: outStride)
            blockStart = blockEnd
        }
        #endif
    }

    /// Keys of one kv head repacked in panels of W = `panelWidth` positions: element d of key
    /// W·p + i is at `(p·D + d)·W + i`, so one vector load gives dimension d of W consecutive
    /// keys. Only whole panels are packed (`count / W` of them).
    public static func packKeyPanels(
        keys: UnsafePointer<Float>, count: Int, headDim D: Int,
        into panels: UnsafeMutablePointer<Float>
    ) {
        let W = panelWidth
        for p in 0..<(count / W) {
            let dst = panels + p * D * W
            for i in 0..<W {
                let k = keys + (W * p + i) * D
                for d in 0..<D { dst[d * W + i] = k[d] }
            }
        }
    }

    /// `scores` for the consecutive keys 0..<count, reading the whole panels from `panels`
    /// (`packKeyPanels`) and the positions after the last whole pair of panels from `keys`
    /// (`identity` is 0, 1, 2, ...).
    ///
    /// With 8 keys in the lanes no horizontal sums are needed, yet the bits are those of `dot`:
    /// lane class l (dimensions d ≡ l mod 8) is one fused multiply-add chain over d in
    /// increasing order, as lane l of `dot`'s accumulator, and the classes are added in lane
    /// order 0...7 (the order of `SIMD8.sum()`), folding into the output row as they finish.
    public static func scoresPanels(
        queries: UnsafePointer<Float>, rows: Int, headDim D: Int,
        panels: UnsafePointer<Float>, keys: UnsafePointer<Float>,
        identity: UnsafePointer<Int32>, count: Int, scale: Float, out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        let paired = D % 8 == 0 ? count / (2 * panelWidth) * (2 * panelWidth) : 0
        var blockStart = 0
        while blockStart < paired {
            let blockEnd = min(paired, blockStart + panelBlock)
            var r = 0
            #if THINKV_AVX512
            while r + 7 <= rows {
                for j in stride(from: blockStart, to: blockEnd, by: 32) {
                    scoresTile7x32(
                        queries + r * D, D: D, panel: panels + j * D, scale: scale, out + r * outStride + j, outStride)
                }
                r += 7
            }
            while r + 4 <= rows {
                for j in stride(from: blockStart, to: blockEnd, by: 32) {
                    scoresTile4x32(
                        queries + r * D, D: D, panel: panels + j * D, scale: scale, out + r * outStride + j, outStride)
                }
                r += 4
            }
            while r < rows {
                for j in stride(from: blockStart, to: blockEnd, by: 32) {
                    scoresTile1x32(queries + r * D, D: D, panel: panels + j * D, scale: scale, out + r * outStride + j)
                }
                r += 1
            }
            #else
            // Six-row tiles (12 FMA chains) while six or more rows are left, except exactly eight,
            // which two four-row tiles (8 chains) take; 56 rows (8 steps of a group of 7) are
            // 8 × 6 + 2 × 4.
            while rows - r >= 6 && rows - r != 8 {
                let q0 = queries + r * D, o0 = out + r * outStride
                var j = blockStart
                while j < blockEnd {
                    scoresTile6(q0, D: D, panel: panels + j * D, scale: scale, o0 + j, outStride)
                    j += 16
                }
                r += 6
            }
            while r + 4 <= rows {
                let q0 = queries + r * D, o0 = out + r * outStride
                var j = blockStart
                while j < blockEnd {
                    scoresTile(
                        q0, q0 + D, q0 + 2 * D, q0 + 3 * D, D: D, panel: panels + j * D, scale: scale,
                        o0 + j, o0 + outStride + j, o0 + 2 * outStride + j, o0 + 3 * outStride + j)
                    j += 16
                }
                r += 4
            }
            // Fewer than 4 rows left: one row at a time.
            while r < rows {
                let q = queries + r * D, o = out + r * outStride
                var j = blockStart
                while j < blockEnd {
                    let panel = panels + j * D, second = panel + D * 8
                    for l in 0..<8 {
                        var a0 = SIMD8<Float>(repeating: 0), a1 = a0
                        var d = l
                        while d < D {
                            let y = SIMD8<Float>(repeating: q[d])
                            multiplyAdd(&a0, y, load8(panel, d &* 8)); multiplyAdd(&a1, y, load8(second, d &* 8))
                            d &+= 8
                        }
                        fold(o + j, a0, a1, l, scale)
                    }
                    j += 16
                }
                r += 1
            }
            #endif
            blockStart = blockEnd
        }
        if paired < count {
            scores(
                queries: queries, rows: rows, headDim: D, keys: keys, indices: identity + paired,
                count: count - paired, scale: scale, out: out + paired, outStride: outStride)
        }
    }

    /// Positions per cache block of `scoresPanels` (64 KiB of keys at D = 128). Blocks of 32
    /// keys, which stay in L1 beside 56 query rows, made the kernel faster on data in cache but
    /// the 32K-token replay 5 % slower (shorter runs of each logit row are written per block).
    static let panelBlock = 128

    /// 4 query rows × 16 keys (two panels) of `scoresPanels`.
    @inline(__always)
    private static func scoresTile(
        _ q0: UnsafePointer<Float>, _ q1: UnsafePointer<Float>,
        _ q2: UnsafePointer<Float>, _ q3: UnsafePointer<Float>, D: Int,
        panel: UnsafePointer<Float>, scale: Float,
        _ o0: UnsafeMutablePointer<Float>, _ o1: UnsafeMutablePointer<Float>,
        _ o2: UnsafeMutablePointer<Float>, _ o3: UnsafeMutablePointer<Float>
    ) {
        let second = panel + D * 8
        for l in 0..<8 {
            var a00 = SIMD8<Float>(repeating: 0), a01 = a00, a10 = a00, a11 = a00
            var a20 = a00, a21 = a00, a30 = a00, a31 = a00
            var d = l
            while d < D {
                let k0 = load8(panel, d &* 8), k1 = load8(second, d &* 8)
                let y0 = SIMD8<Float>(repeating: q0[d])
                multiplyAdd(&a00, y0, k0); multiplyAdd(&a01, y0, k1)
                let y1 = SIMD8<Float>(repeating: q1[d])
                multiplyAdd(&a10, y1, k0); multiplyAdd(&a11, y1, k1)
                let y2 = SIMD8<Float>(repeating: q2[d])
                multiplyAdd(&a20, y2, k0); multiplyAdd(&a21, y2, k1)
                let y3 = SIMD8<Float>(repeating: q3[d])
                multiplyAdd(&a30, y3, k0); multiplyAdd(&a31, y3, k1)
                d &+= 8
            }
            fold(o0, a00, a01, l, scale); fold(o1, a10, a11, l, scale)
            fold(o2, a20, a21, l, scale); fold(o3, a30, a31, l, scale)
        }
    }

    /// 6 query rows (`q`, `q + D`, ...) × 16 keys (two panels) of `scoresPanels`: 12 FMA chains,
    /// two key loads and six broadcasts per 12 FMAs, 15 of the 16 vector registers.
    @inline(__always)
    private static func scoresTile6(
        _ q: UnsafePointer<Float>, D: Int, panel: UnsafePointer<Float>, scale: Float,
        _ o: UnsafeMutablePointer<Float>, _ outStride: Int
    ) {
        let q0 = q, q1 = q0 + D, q2 = q1 + D, q3 = q2 + D, q4 = q3 + D, q5 = q4 + D
        let second = panel + D * 8
        for l in 0..<8 {
            var a00 = SIMD8<Float>(repeating: 0), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00
            var a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00
            var d = l
            while d < D {
                let k0 = load8(panel, d &* 8), k1 = load8(second, d &* 8)
                let y0 = SIMD8<Float>(repeating: q0[d])
                multiplyAdd(&a00, y0, k0); multiplyAdd(&a01, y0, k1)
                let y1 = SIMD8<Float>(repeating: q1[d])
                multiplyAdd(&a10, y1, k0); multiplyAdd(&a11, y1, k1)
                let y2 = SIMD8<Float>(repeating: q2[d])
                multiplyAdd(&a20, y2, k0); multiplyAdd(&a21, y2, k1)
                let y3 = SIMD8<Float>(repeating: q3[d])
                multiplyAdd(&a30, y3, k0); multiplyAdd(&a31, y3, k1)
                let y4 = SIMD8<Float>(repeating: q4[d])
                multiplyAdd(&a40, y4, k0); multiplyAdd(&a41, y4, k1)
                let y5 = SIMD8<Float>(repeating: q5[d])
                multiplyAdd(&a50, y5, k0); multiplyAdd(&a51, y5, k1)
                d &+= 8
            }
            let o1 = o + outStride, o2 = o1 + outStride, o3 = o2 + outStride, o4 = o3 + outStride, o5 = o4 + outStride
            fold(o, a00, a01, l, scale); fold(o1, a10, a11, l, scale); fold(o2, a20, a21, l, scale)
            fold(o3, a30, a31, l, scale); fold(o4, a40, a41, l, scale); fold(o5, a50, a51, l, scale)
        }
    }

    /// Adds lane class `l` of 16 dot products to their running sums in `o[0..<16]`; the first
    /// class stores, the last one also scales.
    @inline(__always)
    private static func fold(
        _ o: UnsafeMutablePointer<Float>, _ a: SIMD8<Float>, _ b: SIMD8<Float>, _ l: Int, _ scale: Float
    ) {
        let raw = UnsafeMutableRawPointer(o)
        var x = a, y = b
        if l > 0 {
            x = load8(o, 0) + a
            y = load8(o, 8) + b
        }
        if l == 7 {
            x = scale * x
            y = scale * y
        }
        raw.storeBytes(of: x, toByteOffset: 0, as: SIMD8<Float>.self)
        raw.storeBytes(of: y, toByteOffset: 32, as: SIMD8<Float>.self)
    }

    /// Positions per cache block of the blocked kernels (128 rows of D = 128 floats: 64 KiB).
    static let positionBlock = 32

    @inline(__always)
    private static func scoresBlock(
        queries: UnsafePointer<Float>, rows: Int, headDim D: Int,
        keys: UnsafePointer<Float>, indices: UnsafePointer<Int32>, range: Range<Int>,
        scale: Float, out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        let count = range.upperBound
        var r = 0
        while r + 4 <= rows {
            let q0 = queries + r * D, q1 = q0 + D, q2 = q1 + D, q3 = q2 + D
            let o0 = out + r * outStride, o1 = o0 + outStride, o2 = o1 + outStride, o3 = o2 + outStride
            var j = range.lowerBound
            while j + 2 <= count {
                let k0 = keys + Int(indices[j]) &* D, k1 = keys + Int(indices[j + 1]) &* D
                var a00 = SIMD8<Float>(repeating: 0), a01 = a00, a10 = a00, a11 = a00
                var a20 = a00, a21 = a00, a30 = a00, a31 = a00
                var c = 0
                while c < D {
                    let x0 = load8(k0, c), x1 = load8(k1, c)
                    let y0 = load8(q0, c)
                    multiplyAdd(&a00, y0, x0); multiplyAdd(&a01, y0, x1)
                    let y1 = load8(q1, c)
                    multiplyAdd(&a10, y1, x0); multiplyAdd(&a11, y1, x1)
                    let y2 = load8(q2, c)
                    multiplyAdd(&a20, y2, x0); multiplyAdd(&a21, y2, x1)
                    let y3 = load8(q3, c)
                    multiplyAdd(&a30, y3, x0); multiplyAdd(&a31, y3, x1)
                    c += 8
                }
                o0[j] = scale * a00.sum(); o0[j + 1] = scale * a01.sum()
                o1[j] = scale * a10.sum(); o1[j + 1] = scale * a11.sum()
                o2[j] = scale * a20.sum(); o2[j + 1] = scale * a21.sum()
                o3[j] = scale * a30.sum(); o3[j + 1] = scale * a31.sum()
                j += 2
            }
            if j < count {
                let k = keys + Int(indices[j]) &* D
                o0[j] = scale * dot(q0, k, D); o1[j] = scale * dot(q1, k, D)
                o2[j] = scale * dot(q2, k, D); o3[j] = scale * dot(q3, k, D)
            }
            r += 4
        }
        // Three rows left (a GQA group of 7): 3 rows × 2 keys, 5 loads per 6 fused multiply-adds
        // where row by row would take 9.
        if rows - r == 3 {
            let q0 = queries + r * D, q1 = q0 + D, q2 = q1 + D
            let o0 = out + r * outStride, o1 = o0 + outStride, o2 = o1 + outStride
            var j = range.lowerBound
            while j + 2 <= count {
                let k0 = keys + Int(indices[j]) &* D, k1 = keys + Int(indices[j + 1]) &* D
                var a00 = SIMD8<Float>(repeating: 0), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00
                var c = 0
                while c < D {
                    let x0 = load8(k0, c), x1 = load8(k1, c)
                    let y0 = load8(q0, c)
                    multiplyAdd(&a00, y0, x0); multiplyAdd(&a01, y0, x1)
                    let y1 = load8(q1, c)
                    multiplyAdd(&a10, y1, x0); multiplyAdd(&a11, y1, x1)
                    let y2 = load8(q2, c)
                    multiplyAdd(&a20, y2, x0); multiplyAdd(&a21, y2, x1)
                    c += 8
                }
                o0[j] = scale * a00.sum(); o0[j + 1] = scale * a01.sum()
                o1[j] = scale * a10.sum(); o1[j + 1] = scale * a11.sum()
                o2[j] = scale * a20.sum(); o2[j + 1] = scale * a21.sum()
                j += 2
            }
            if j < count {
                let k = keys + Int(indices[j]) &* D
                o0[j] = scale * dot(q0, k, D); o1[j] = scale * dot(q1, k, D); o2[j] = scale * dot(q2, k, D)
            }
            r += 3
        }
        // Fewer rows left: two keys at a time still share loads.
        while r < rows {
            let q = queries + r * D, o = out + r * outStride
            var j = range.lowerBound
            while j + 2 <= count {
                let k0 = keys + Int(indices[j]) &* D, k1 = keys + Int(indices[j + 1]) &* D
                var a0 = SIMD8<Float>(repeating: 0), a1 = a0
                var c = 0
                while c < D {
                    let y = load8(q, c)
                    multiplyAdd(&a0, y, load8(k0, c)); multiplyAdd(&a1, y, load8(k1, c))
                    c += 8
                }
                o[j] = scale * a0.sum(); o[j + 1] = scale * a1.sum()
                j += 2
            }
            if j < count { o[j] = scale * dot(q, keys + Int(indices[j]) &* D, D) }
            r += 1
        }
    }

    /// out[r·D ..< (r+1)·D] = Σ_j probs[r·probStride + j] · value(indices[j]) for r < rows, summed
    /// over j in increasing order (as repeated `axpy` would).
    public static func weightedSum(
        probs: UnsafePointer<Float>, probStride: Int, rows: Int,
        values: UnsafePointer<Float>, indices: UnsafePointer<Int32>, count: Int,
        headDim D: Int, out: UnsafeMutablePointer<Float>
    ) {
        guard D % 32 == 0 else {
            for r in 0..<rows {
                let o = out + r * D
                for d in 0..<D { o[d] = 0 }
                for j in 0..<count { axpy(probs[r * probStride + j], values + Int(indices[j]) &* D, o, D) }
            }
            return
        }
        for i in 0..<(rows * D) { out[i] = 0 }
        var blockStart = 0
        while blockStart < count {
            let blockEnd = min(count, blockStart + positionBlock)
            // The next block's value rows (scattered in memory when a policy gathers its kept
            // positions) and probabilities start loading while this block is summed.
            prefetchBlock(
                probs: probs, probStride: probStride, rows: rows, values: values, indices: indices,
                range: blockEnd..<min(count, blockEnd + positionBlock), headDim: D)
            #if THINKV_AVX512
            weightedSumBlock16(
                probs: probs, probStride: probStride, rows: rows, values: values, indices: indices,
                range: blockStart..<blockEnd, headDim: D, out: out)
            #else
            weightedSumBlock(
                probs: probs, probStride: probStride, rows: rows, values: values, indices: indices,
                range: blockStart..<blockEnd, headDim: D, out: out)
            #endif
            blockStart = blockEnd
        }
    }

    /// Prefetch hints for `weightedSum`'s block `range`: every cache line of its value rows, and
    /// the first line of each row's probabilities.
    @inline(__always)
    private static func prefetchBlock(
        probs: UnsafePointer<Float>, probStride: Int, rows: Int,
        values: UnsafePointer<Float>, indices: UnsafePointer<Int32>, range: Range<Int>,
        headDim D: Int
    ) {
        guard !range.isEmpty else { return }
        for j in range {
            let row = values + Int(indices[j]) &* D
            var c = 0
            while c < D {
                thinkv_prefetch_l2(row + c)
                c &+= 16  // floats per 64-byte line
            }
        }
        for r in 0..<rows { thinkv_prefetch_l2(probs + (r &* probStride &+ range.lowerBound)) }
    }

    /// Adds the positions `range` to the running sums in `out` (same order as one pass).
    @inline(__always)
    private static func weightedSumBlock(
        probs: UnsafePointer<Float>, probStride: Int, rows: Int,
        values: UnsafePointer<Float>, indices: UnsafePointer<Int32>, range: Range<Int>,
        headDim D: Int, out: UnsafeMutablePointer<Float>
    ) {
        var r = 0
        // Six rows × 16 dimensions: 12 independent FMA chains, enough to cover the FMA latency
        // on both pipes, with each value vector loaded once for the six rows.
        while r + 6 <= rows {
            let p0 = probs + r * probStride, p1 = p0 + probStride, p2 = p1 + probStride
            let p3 = p2 + probStride, p4 = p3 + probStride, p5 = p4 + probStride
            var tile = 0
            while tile < D {
                let o = out + r * D + tile
                var a0 = load8(o, 0), a1 = load8(o, 8), b0 = load8(o, D), b1 = load8(o, D + 8)
                var c0 = load8(o, 2 * D), c1 = load8(o, 2 * D + 8), d0 = load8(o, 3 * D), d1 = load8(o, 3 * D + 8)
                var e0 = load8(o, 4 * D), e1 = load8(o, 4 * D + 8), f0 = load8(o, 5 * D), f1 = load8(o, 5 * D + 8)
                for j in range {
                    let v = values + (Int(indices[j]) &* D &+ tile)
                    let v0 = load8(v, 0), v1 = load8(v, 8)
                    let w0 = SIMD8<Float>(repeating: p0[j])
                    multiplyAdd(&a0, w0, v0); multiplyAdd(&a1, w0, v1)
                    let w1 = SIMD8<Float>(repeating: p1[j])
                    multiplyAdd(&b0, w1, v0); multiplyAdd(&b1, w1, v1)
                    let w2 = SIMD8<Float>(repeating: p2[j])
                    multiplyAdd(&c0, w2, v0); multiplyAdd(&c1, w2, v1)
                    let w3 = SIMD8<Float>(repeating: p3[j])
                    multiplyAdd(&d0, w3, v0); multiplyAdd(&d1, w3, v1)
                    let w4 = SIMD8<Float>(repeating: p4[j])
                    multiplyAdd(&e0, w4, v0); multiplyAdd(&e1, w4, v1)
                    let w5 = SIMD8<Float>(repeating: p5[j])
                    multiplyAdd(&f0, w5, v0); multiplyAdd(&f1, w5, v1)
                }
                store8(o, 0, a0); store8(o, 8, a1); store8(o, D, b0); store8(o, D + 8, b1)
                store8(o, 2 * D, c0); store8(o, 2 * D + 8, c1); store8(o, 3 * D, d0); store8(o, 3 * D + 8, d1)
                store8(o, 4 * D, e0); store8(o, 4 * D + 8, e1); store8(o, 5 * D, f0); store8(o, 5 * D + 8, f1)
                tile += 16
            }
            r += 6
        }
        // Pairs of rows × 32 dimensions.
        while r + 2 <= rows {
            let p0 = probs + r * probStride, p1 = p0 + probStride
            var tile = 0
            while tile < D {
                let o0 = out + r * D + tile, o1 = o0 + D
                var a0 = load8(o0, 0), a1 = load8(o0, 8), a2 = load8(o0, 16), a3 = load8(o0, 24)
                var b0 = load8(o1, 0), b1 = load8(o1, 8), b2 = load8(o1, 16), b3 = load8(o1, 24)
                for j in range {
                    let v = values + (Int(indices[j]) &* D &+ tile)
                    let v0 = load8(v, 0), v1 = load8(v, 8), v2 = load8(v, 16), v3 = load8(v, 24)
                    let w0 = SIMD8<Float>(repeating: p0[j]), w1 = SIMD8<Float>(repeating: p1[j])
                    multiplyAdd(&a0, w0, v0); multiplyAdd(&a1, w0, v1); multiplyAdd(&a2, w0, v2);
                    multiplyAdd(&a3, w0, v3)
                    multiplyAdd(&b0, w1, v0); multiplyAdd(&b1, w1, v1); multiplyAdd(&b2, w1, v2);
                    multiplyAdd(&b3, w1, v3)
                }
                store8(o0, 0, a0); store8(o0, 8, a1); store8(o0, 16, a2); store8(o0, 24, a3)
                store8(o1, 0, b0); store8(o1, 8, b1); store8(o1, 16, b2); store8(o1, 24, b3)
                tile += 32
            }
            r += 2
        }
        // A last single row (a GQA group of 7): 32 dimensions at a time, no duplicated work.
        if r < rows {
            let p0 = probs + r * probStride
            var tile = 0
            while tile < D {
                let o0 = out + r * D + tile
                var a0 = load8(o0, 0), a1 = load8(o0, 8), a2 = load8(o0, 16), a3 = load8(o0, 24)
                for j in range {
                    let v = values + (Int(indices[j]) &* D &+ tile)
                    let w0 = SIMD8<Float>(repeating: p0[j])
                    multiplyAdd(&a0, w0, load8(v, 0)); multiplyAdd(&a1, w0, load8(v, 8))
                    multiplyAdd(&a2, w0, load8(v, 16)); multiplyAdd(&a3, w0, load8(v, 24))
                }
                store8(o0, 0, a0); store8(o0, 8, a1); store8(o0, 16, a2); store8(o0, 24, a3)
                tile += 32
            }
        }
    }

    @inline(__always)
    static func store8(_ p: UnsafeMutablePointer<Float>, _ i: Int, _ v: SIMD8<Float>) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    /// e^x for 8 lanes: Cody–Waite range reduction to r in [−ln2/2, ln2/2], a degree-6
    /// polynomial for e^r (relative error about 2e-7), and 2^n by building the float's exponent.
    /// Inputs below −87.3 give 0; above 88.4 saturate (softmax never exceeds 0 after the shift).
    ///
    /// Rounding and the integer n come from adding 1.5·2^23, which leaves n in the low mantissa
    /// bits; converting a float vector to Int32 lanes would take a slow generic path.
    @inline(__always)
    public static func exp8(_ x: SIMD8<Float>) -> SIMD8<Float> {
        let lo = SIMD8<Float>(repeating: -87.33654), hi = SIMD8<Float>(repeating: 88.37626)
        let underflow = x .< lo
        var xc = x.replacing(with: lo, where: underflow)
        xc = xc.replacing(with: hi, where: xc .> hi)
        let magic = SIMD8<Float>(repeating: 12_582_912)  // 1.5 · 2^23
        let shifted = xc * 1.44269504088896341 + magic
        let n = shifted - magic
        var r = xc - n * 0.693359375
        r = r + n * 2.12194440e-4
        var p = SIMD8<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let e = p * (r * r) + r + 1
        let bits = (unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        let result = e * unsafeBitCast(bits, to: SIMD8<Float>.self)
        return result.replacing(with: 0, where: underflow)
    }

    /// Σ exp(x[i] − shift) for i in 0..<n with the vector exp (8-lane partial sums, then the tail).
    @inline(__always)
    public static func sumExp(_ x: UnsafePointer<Float>, _ n: Int, shift: Float) -> Float {
        let sh = SIMD8<Float>(repeating: shift)
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        while i &+ 8 <= n {
            acc += exp8(load8(x, i) - sh)
            i &+= 8
        }
        var s = acc.sum()
        while i < n {
            s += exp8(SIMD8<Float>(repeating: x[i] - shift))[0]
            i += 1
        }
        return s
    }

    /// log Σ exp(x[i]) for i in 0..<n, shifted by the maximum so no exponential overflows;
    /// x is left as it is. −∞ for n = 0.
    @inline(__always)
    public static func logSumExp(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        guard n > 0 else { return -.infinity }
        let m = rowMax(x, n, laneMaxima: nil)
        guard m.isFinite else { return m }
        return m + logf(sumExp(x, n, shift: m))
    }

    /// Σ x[i] for i in 0..<n (8-lane partial sums, then the tail).
    @inline(__always)
    public static func sum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        while i &+ 8 <= n {
            acc += load8(x, i)
            i &+= 8
        }
        var s = acc.sum()
        while i < n {
            s += x[i]
            i += 1
        }
        return s
    }

    /// Softmax of x[0..<n] in place with the vector exp; returns log Σ exp(x).
    @inline(__always)
    @discardableResult
    public static func softmaxFast(_ x: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
        guard n > 0 else { return -.infinity }
        let m = rowMax(x, n, laneMaxima: nil)
        let s = exponentiate(x, n, max: m)
        normalize(x, n, sum: s, accumulatingInto: nil)
        return m + logf(s)
    }

    /// max of x[0..<n] (n > 0). With `laneMaxima`, also, from the same pass, the lane-wise maxima
    /// of every whole 64-value block b: laneMaxima[8b + l] = max over c < 8 of x[64b + 8c + l],
    /// the maxima of 8·(n / 64) disjoint sets of 8 values.
    @inline(__always)
    public static func rowMax(_ x: UnsafePointer<Float>, _ n: Int, laneMaxima: UnsafeMutablePointer<Float>?) -> Float {
        var mv = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        if let maxima = laneMaxima {
            while i + 64 <= n {
                var bv = load8(x, i)
                for c in stride(from: 8, to: 64, by: 8) {
                    let v = load8(x, i + c)
                    bv = bv.replacing(with: v, where: v .> bv)
                }
                store8(maxima, i / 8, bv)
                mv = mv.replacing(with: bv, where: bv .> mv)
                i += 64
            }
        }
        while i &+ 8 <= n {
            let v = load8(x, i)
            mv = mv.replacing(with: v, where: v .> mv)
            i &+= 8
        }
        var m = mv.max()
        while i < n {
            m = max(m, x[i])
            i += 1
        }
        return m
    }

    /// x[i] = exp(x[i] - max) for i in 0..<n; returns their sum.
    @inline(__always)
    public static func exponentiate(_ x: UnsafeMutablePointer<Float>, _ n: Int, max m: Float) -> Float {
        let mm = SIMD8<Float>(repeating: m)
        var sv = SIMD8<Float>(repeating: 0)
        let raw = UnsafeMutableRawPointer(x)
        var i = 0
        while i &+ 8 <= n {
            let e = exp8(load8(x, i) - mm)
            raw.storeBytes(of: e, toByteOffset: i * 4, as: SIMD8<Float>.self)
            sv += e
            i &+= 8
        }
        var s = sv.sum()
        while i < n {
            let e = exp8(SIMD8<Float>(repeating: x[i] - m))[0]
            x[i] = e
            s += e
            i += 1
        }
        return s
    }

    /// x[i] /= sum (as a product with 1/sum) for i in 0..<n, and, with `accumulatingInto`, adds
    /// each result to it in the same pass.
    @inline(__always)
    public static func normalize(
        _ x: UnsafeMutablePointer<Float>, _ n: Int, sum s: Float,
        accumulatingInto total: UnsafeMutablePointer<Float>?
    ) {
        let inv = SIMD8<Float>(repeating: 1 / s)
        let raw = UnsafeMutableRawPointer(x)
        var i = 0
        if let total {
            let rawTotal = UnsafeMutableRawPointer(total)
            while i &+ 8 <= n {
                let p = load8(x, i) * inv
                raw.storeBytes(of: p, toByteOffset: i * 4, as: SIMD8<Float>.self)
                rawTotal.storeBytes(of: load8(total, i) + p, toByteOffset: i * 4, as: SIMD8<Float>.self)
                i &+= 8
            }
            while i < n {
                x[i] *= inv[0]
                total[i] += x[i]
                i += 1
            }
        } else {
            while i &+ 8 <= n {
                raw.storeBytes(of: load8(x, i) * inv, toByteOffset: i * 4, as: SIMD8<Float>.self)
                i &+= 8
            }
            while i < n {
                x[i] *= inv[0]
                i += 1
            }
        }
    }
}
