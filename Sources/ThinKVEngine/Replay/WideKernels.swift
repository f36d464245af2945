import Foundation

/// 512-bit variants of the blocked kernels, used in builds with `-DTHINKV_AVX512` (the Makefile
/// adds it on CPUs with AVX-512; cores with full-width 512-bit FMA units do twice the
/// arithmetic per instruction of the 256-bit kernels).
///
/// Every lane still computes what the 8-lane kernels compute, in the same order: a 16-lane
/// vector holds 16 output dimensions (`weightedSum`), 16 keys (`scoresPanels`) or the 8-lane
/// partial sums of two query rows (`scoresRowPairs`), never a wider partial sum, so the results
/// are bit-identical to the 256-bit build's.
extension Kernels {
    /// Keys per panel of `packKeyPanels` / `scoresPanels`: the fp32 lanes of one vector.
    #if THINKV_AVX512
    public static let panelWidth = 16
    #else
    public static let panelWidth = 8
    #endif

    @inline(__always)
    static func load16(_ p: UnsafePointer<Float>, _ i: Int) -> SIMD16<Float> {
        UnsafeRawPointer(p + i).loadUnaligned(as: SIMD16<Float>.self)
    }

    @inline(__always)
    static func store16(_ p: UnsafeMutablePointer<Float>, _ i: Int, _ v: SIMD16<Float>) {
        UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: SIMD16<Float>.self)
    }

    /// `weightedSumBlock` with 32 output dimensions (two 16-lane vectors) per row: tiles of 7
    /// rows (a GQA group of 7, and 8 steps of it), 4 and 1 rows. D must be a multiple of 32.
    @inline(__always)
    static func weightedSumBlock16(
        probs: UnsafePointer<Float>, probStride: Int, rows: Int,
        values: UnsafePointer<Float>, indices: UnsafePointer<Int32>, range: Range<Int>,
        headDim D: Int, out: UnsafeMutablePointer<Float>
    ) {
        var r = 0
        // 14 independent FMA chains; each value vector is loaded once for seven rows.
        while r + 7 <= rows {
            let p0 = probs + r * probStride, p1 = p0 + probStride, p2 = p1 + probStride, p3 = p2 + probStride
            let p4 = p3 + probStride, p5 = p4 + probStride, p6 = p5 + probStride
            var tile = 0
            while tile < D {
                let o = out + r * D + tile
                var a0 = load16(o, 0), a1 = load16(o, 16), b0 = load16(o, D), b1 = load16(o, D + 16)
                var c0 = load16(o, 2 * D), c1 = load16(o, 2 * D + 16), d0 = load16(o, 3 * D), d1 = load16(o, 3 * D + 16)
                var e0 = load16(o, 4 * D), e1 = load16(o, 4 * D + 16), f0 = load16(o, 5 * D), f1 = load16(o, 5 * D + 16)
                var g0 = load16(o, 6 * D), g1 = load16(o, 6 * D + 16)
                for j in range {
                    let v = values + (Int(indices[j]) &* D &+ tile)
                    let v0 = load16(v, 0), v1 = load16(v, 16)
                    let w0 = SIMD16<Float>(repeating: p0[j])
                    multiplyAdd(&a0, w0, v0); multiplyAdd(&a1, w0, v1)
                    let w1 = SIMD16<Float>(repeating: p1[j])
                    multiplyAdd(&b0, w1, v0); multiplyAdd(&b1, w1, v1)
                    let w2 = SIMD16<Float>(repeating: p2[j])
                    multiplyAdd(&c0, w2, v0); multiplyAdd(&c1, w2, v1)
                    let w3 = SIMD16<Float>(repeating: p3[j])
                    multiplyAdd(&d0, w3, v0); multiplyAdd(&d1, w3, v1)
                    let w4 = SIMD16<Float>(repeating: p4[j])
                    multiplyAdd(&e0, w4, v0); multiplyAdd(&e1, w4, v1)
                    let w5 = SIMD16<Float>(repeating: p5[j])
                    multiplyAdd(&f0, w5, v0); multiplyAdd(&f1, w5, v1)
                    let w6 = SIMD16<Float>(repeating: p6[j])
                    multiplyAdd(&g0, w6, v0); multiplyAdd(&g1, w6, v1)
                }
                store16(o, 0, a0); store16(o, 16, a1); store16(o, D, b0); store16(o, D + 16, b1)
                store16(o, 2 * D, c0); store16(o, 2 * D + 16, c1); store16(o, 3 * D, d0); store16(o, 3 * D + 16, d1)
                store16(o, 4 * D, e0); store16(o, 4 * D + 16, e1); store16(o, 5 * D, f0); store16(o, 5 * D + 16, f1)
                store16(o, 6 * D, g0); store16(o, 6 * D + 16, g1)
                tile += 32
            }
            r += 7
        }
        while r + 4 <= rows {
            let p0 = probs + r * probStride, p1 = p0 + probStride, p2 = p1 + probStride, p3 = p2 + probStride
            var tile = 0
            while tile < D {
                let o = out + r * D + tile
                var a0 = load16(o, 0), a1 = load16(o, 16), b0 = load16(o, D), b1 = load16(o, D + 16)
                var c0 = load16(o, 2 * D), c1 = load16(o, 2 * D + 16), d0 = load16(o, 3 * D), d1 = load16(o, 3 * D + 16)
                for j in range {
                    let v = values + (Int(indices[j]) &* D &+ tile)
                    let v0 = load16(v, 0), v1 = load16(v, 16)
                    let w0 = SIMD16<Float>(repeating: p0[j])
                    multiplyAdd(&a0, w0, v0); multiplyAdd(&a1, w0, v1)
                    let w1 = SIMD16<Float>(repeating: p1[j])
                    multiplyAdd(&b0, w1, v0); multiplyAdd(&b1, w1, v1)
                    let w2 = SIMD16<Float>(repeating: p2[j])
                    multiplyAdd(&c0, w2, v0); multiplyAdd(&c1, w2, v1)
                    let w3 = SIMD16<Float>(repeating: p3[j])
                    multiplyAdd(&d0, w3, v0); multiplyAdd(&d1, w3, v1)
                }
                store16(o, 0, a0); store16(o, 16, a1); store16(o, D, b0); store16(o, D + 16, b1)
                store16(o, 2 * D, c0); store16(o, 2 * D + 16, c1); store16(o, 3 * D, d0); store16(o, 3 * D + 16, d1)
                tile += 32
            }
            r += 4
        }
        // One or two rows left: one row at a time, all 32 dimensions of a tile in flight.
        while r < rows {
            let p0 = probs + r * probStride
            var tile = 0
            while tile < D {
                let o = out + r * D + tile
                var a0 = load16(o, 0), a1 = load16(o, 16)
                for j in range {
                    let v = values + (Int(indices[j]) &* D &+ tile)
                    let w0 = SIMD16<Float>(repeating: p0[j])
                    multiplyAdd(&a0, w0, load16(v, 0)); multiplyAdd(&a1, w0, load16(v, 16))
                }
                store16(o, 0, a0); store16(o, 16, a1)
                tile += 32
            }
            r += 1
        }
    }

    /// `scores` over gathered keys with two query rows per vector: lanes 0–7 hold `dot`'s
    /// accumulator for row 2p, lanes 8–15 for row 2p + 1, each key's 8 dimensions repeated in
    /// both halves; the halves are summed as `SIMD8.sum()` sums `dot`'s accumulator. Tiles of 4
    /// row pairs × 4 keys: 16 FMA chains, 8 loads each step.
    static func scoresRowPairs(
        queries: UnsafePointer<Float>, rows: Int, headDim D: Int,
        keys: UnsafePointer<Float>, indices: UnsafePointer<Int32>, count: Int,
        scale: Float, out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        let pairs = (rows + 1) / 2
        withUnsafeTemporaryAllocation(of: Float.self, capacity: pairs * 2 * D) { buffer in
            // Interleaved queries: chunk c of pair p at (p·D/8 + c)·16, row 2p then row 2p + 1
            // (zeros for a missing last row).
            let inter = buffer.baseAddress!
            for p in 0..<pairs {
                for c in 0..<(D / 8) {
                    let dst = inter + (p * D / 8 + c) * 16
                    let a = queries + 2 * p * D + 8 * c
                    for i in 0..<8 { dst[i] = a[i] }
                    for i in 0..<8 { dst[8 + i] = 2 * p + 1 < rows ? a[D + i] : 0 }
                }
            }
            var p0 = 0
            while p0 < pairs {
                // 4 pairs (8 rows) at a time while there are, then single pairs.
                let group = pairs - p0 >= 4 ? 4 : 1
                let y = inter + p0 * 2 * D
                var j = 0
                while j + 4 <= count {
                    let k0 = keys + Int(indices[j]) &* D, k1 = keys + Int(indices[j + 1]) &* D
                    let k2 = keys + Int(indices[j + 2]) &* D, k3 = keys + Int(indices[j + 3]) &* D
                    @inline(__always) func put(_ pair: Int, _ a: FourAccumulators) {
                        let r = 2 * (p0 + pair)
                        let sums =
                            scale
                            * laneSums(
                                a.0.lowHalf, a.1.lowHalf, a.2.lowHalf, a.3.lowHalf,
                                a.0.highHalf, a.1.highHalf, a.2.highHalf, a.3.highHalf)
                        let o = out + r * outStride + j
                        UnsafeMutableRawPointer(o).storeBytes(of: sums.lowHalf, as: SIMD4<Float>.self)
                        if r + 1 < rows {
                            UnsafeMutableRawPointer(o + outStride).storeBytes(of: sums.highHalf, as: SIMD4<Float>.self)
                        }
                    }
                    if group == 4 {
                        let acc = rowPairTile4x4(y, D: D, k0, k1, k2, k3)
                        put(0, acc.0); put(1, acc.1); put(2, acc.2); put(3, acc.3)
                    } else {
                        put(0, rowPairTile1x4(y, D: D, k0, k1, k2, k3))
                    }
                    j += 4
                }
                // The last keys (fewer than 4): plain dot products.
                while j < count {
                    let k = keys + Int(indices[j]) &* D
                    for r in (2 * p0)..<min(rows, 2 * (p0 + group)) {
                        out[r * outStride + j] = scale * dot(queries + r * D, k, D)
                    }
                    j += 1
                }
                p0 += group
            }
        }
    }

    typealias FourAccumulators = (SIMD16<Float>, SIMD16<Float>, SIMD16<Float>, SIMD16<Float>)

    /// 4 interleaved row pairs (`y`, pair p at p·2D) × keys k0...k3 of `scoresRowPairs`.
    @inline(__always)
    private static func rowPairTile4x4(
        _ y: UnsafePointer<Float>, D: Int, _ k0: UnsafePointer<Float>, _ k1: UnsafePointer<Float>,
        _ k2: UnsafePointer<Float>, _ k3: UnsafePointer<Float>
    )
        -> (FourAccumulators, FourAccumulators, FourAccumulators, FourAccumulators)
    {
        let zero = SIMD16<Float>(repeating: 0)
        var a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero
        var c0 = zero, c1 = zero, c2 = zero, c3 = zero, d0 = zero, d1 = zero, d2 = zero, d3 = zero
        let y1 = y + 2 * D, y2 = y + 4 * D, y3 = y + 6 * D
        var c = 0
        while c < D {
            let x0 = SIMD16(lowHalf: load8(k0, c), highHalf: load8(k0, c))
            let x1 = SIMD16(lowHalf: load8(k1, c), highHalf: load8(k1, c))
            let x2 = SIMD16(lowHalf: load8(k2, c), highHalf: load8(k2, c))
            let x3 = SIMD16(lowHalf: load8(k3, c), highHalf: load8(k3, c))
            let q0 = load16(y, 2 &* c)
            multiplyAdd(&a0, q0, x0); multiplyAdd(&a1, q0, x1); multiplyAdd(&a2, q0, x2); multiplyAdd(&a3, q0, x3)
            let q1 = load16(y1, 2 &* c)
            multiplyAdd(&b0, q1, x0); multiplyAdd(&b1, q1, x1); multiplyAdd(&b2, q1, x2); multiplyAdd(&b3, q1, x3)
            let q2 = load16(y2, 2 &* c)
            multiplyAdd(&c0, q2, x0); multiplyAdd(&c1, q2, x1); multiplyAdd(&c2, q2, x2); multiplyAdd(&c3, q2, x3)
            let q3 = load16(y3, 2 &* c)
            multiplyAdd(&d0, q3, x0); multiplyAdd(&d1, q3, x1); multiplyAdd(&d2, q3, x2); multiplyAdd(&d3, q3, x3)
            c &+= 8
        }
        return ((a0, a1, a2, a3), (b0, b1, b2, b3), (c0, c1, c2, c3), (d0, d1, d2, d3))
    }

    /// 1 interleaved row pair × keys k0...k3 of `scoresRowPairs`.
    @inline(__always)
    private static func rowPairTile1x4(
        _ y: UnsafePointer<Float>, D: Int, _ k0: UnsafePointer<Float>, _ k1: UnsafePointer<Float>,
        _ k2: UnsafePointer<Float>, _ k3: UnsafePointer<Float>
    ) -> FourAccumulators {
        let zero = SIMD16<Float>(repeating: 0)
        var a0 = zero, a1 = zero, a2 = zero, a3 = zero
        var c = 0
        while c < D {
            let q = load16(y, 2 &* c)
            multiplyAdd(&a0, q, SIMD16(lowHalf: load8(k0, c), highHalf: load8(k0, c)))
            multiplyAdd(&a1, q, SIMD16(lowHalf: load8(k1, c), highHalf: load8(k1, c)))
            multiplyAdd(&a2, q, SIMD16(lowHalf: load8(k2, c), highHalf: load8(k2, c)))
            multiplyAdd(&a3, q, SIMD16(lowHalf: load8(k3, c), highHalf: load8(k3, c)))
            c &+= 8
        }
        return (a0, a1, a2, a3)
    }

    /// Lane i of the result is `h_i.sum()`, bit for bit (`SIMD8.sum()` adds lanes 0...7 in
    /// order onto −0, and −0 + x = x): the 8 × 8 lanes are transposed by three even/odd unzips,
    /// then the transposed rows are added in lane order, eight sums at once.
    @inline(__always)
    static func laneSums(
        _ h0: SIMD8<Float>, _ h1: SIMD8<Float>, _ h2: SIMD8<Float>, _ h3: SIMD8<Float>,
        _ h4: SIMD8<Float>, _ h5: SIMD8<Float>, _ h6: SIMD8<Float>, _ h7: SIMD8<Float>
    ) -> SIMD8<Float> {
        var v = (h0, h1, h2, h3, h4, h5, h6, h7)
        for _ in 0..<3 {
            let a = SIMD16(lowHalf: v.0, highHalf: v.1), b = SIMD16(lowHalf: v.2, highHalf: v.3)
            let c = SIMD16(lowHalf: v.4, highHalf: v.5), d = SIMD16(lowHalf: v.6, highHalf: v.7)
            v = (a.evenHalf, b.evenHalf, c.evenHalf, d.evenHalf, a.oddHalf, b.oddHalf, c.oddHalf, d.oddHalf)
        }
        return ((((((v.0 + v.1) + v.2) + v.3) + v.4) + v.5) + v.6) + v.7
    }

    /// 7 query rows × 32 keys (two 16-key panels) of `scoresPanels`, lane class by lane class
    /// as the 8-key tile: lane i of each accumulator is lane class l of one key's `dot`.
    @inline(__always)
    static func scoresTile7x32(
        _ q: UnsafePointer<Float>, D: Int, panel: UnsafePointer<Float>, scale: Float,
        _ o: UnsafeMutablePointer<Float>, _ outStride: Int
    ) {
        let second = panel + D * 16
        let q0 = q, q1 = q0 + D, q2 = q1 + D, q3 = q2 + D, q4 = q3 + D, q5 = q4 + D, q6 = q5 + D
        for l in 0..<8 {
            var a00 = SIMD16<Float>(repeating: 0), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00
            var a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00, a60 = a00, a61 = a00
            var d = l
            while d < D {
                let k0 = load16(panel, d &* 16), k1 = load16(second, d &* 16)
                let y0 = SIMD16<Float>(repeating: q0[d])
                multiplyAdd(&a00, y0, k0); multiplyAdd(&a01, y0, k1)
                let y1 = SIMD16<Float>(repeating: q1[d])
                multiplyAdd(&a10, y1, k0); multiplyAdd(&a11, y1, k1)
                let y2 = SIMD16<Float>(repeating: q2[d])
                multiplyAdd(&a20, y2, k0); multiplyAdd(&a21, y2, k1)
                let y3 = SIMD16<Float>(repeating: q3[d])
                multiplyAdd(&a30, y3, k0); multiplyAdd(&a31, y3, k1)
                let y4 = SIMD16<Float>(repeating: q4[d])
                multiplyAdd(&a40, y4, k0); multiplyAdd(&a41, y4, k1)
                let y5 = SIMD16<Float>(repeating: q5[d])
                multiplyAdd(&a50, y5, k0); multiplyAdd(&a51, y5, k1)
                let y6 = SIMD16<Float>(repeating: q6[d])
                multiplyAdd(&a60, y6, k0); multiplyAdd(&a61, y6, k1)
                d &+= 8
            }
            fold16(o, a00, a01, l, scale); fold16(o + outStride, a10, a11, l, scale)
            fold16(o + 2 * outStride, a20, a21, l, scale); fold16(o + 3 * outStride, a30, a31, l, scale)
            fold16(o + 4 * outStride, a40, a41, l, scale); fold16(o + 5 * outStride, a50, a51, l, scale)
            fold16(o + 6 * outStride, a60, a61, l, scale)
        }
    }

    /// 4 query rows × 32 keys of `scoresPanels`.
    @inline(__always)
    static func scoresTile4x32(
        _ q: UnsafePointer<Float>, D: Int, panel: UnsafePointer<Float>, scale: Float,
        _ o: UnsafeMutablePointer<Float>, _ outStride: Int
    ) {
        let second = panel + D * 16
        let q0 = q, q1 = q0 + D, q2 = q1 + D, q3 = q2 + D
        for l in 0..<8 {
            var a00 = SIMD16<Float>(repeating: 0), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,
                a31 = a00
            var d = l
            while d < D {
                let k0 = load16(panel, d &* 16), k1 = load16(second, d &* 16)
                let y0 = SIMD16<Float>(repeating: q0[d])
                multiplyAdd(&a00, y0, k0); multiplyAdd(&a01, y0, k1)
                let y1 = SIMD16<Float>(repeating: q1[d])
                multiplyAdd(&a10, y1, k0); multiplyAdd(&a11, y1, k1)
                let y2 = SIMD16<Float>(repeating: q2[d])
                multiplyAdd(&a20, y2, k0); multiplyAdd(&a21, y2, k1)
                let y3 = SIMD16<Float>(repeating: q3[d])
                multiplyAdd(&a30, y3, k0); multiplyAdd(&a31, y3, k1)
                d &+= 8
            }
            fold16(o, a00, a01, l, scale); fold16(o + outStride, a10, a11, l, scale)
            fold16(o + 2 * outStride, a20, a21, l, scale); fold16(o + 3 * outStride, a30, a31, l, scale)
        }
    }

    /// 1 query row × 32 keys of `scoresPanels`.
    @inline(__always)
    static func scoresTile1x32(
        _ q: UnsafePointer<Float>, D: Int, panel: UnsafePointer<Float>, scale: Float,
        _ o: UnsafeMutablePointer<Float>
    ) {
        let second = panel + D * 16
        for l in 0..<8 {
            var a0 = SIMD16<Float>(repeating: 0), a1 = a0
            var d = l
            while d < D {
                let y = SIMD16<Float>(repeating: q[d])
                multiplyAdd(&a0, y, load16(panel, d &* 16)); multiplyAdd(&a1, y, load16(second, d &* 16))
                d &+= 8
            }
            fold16(o, a0, a1, l, scale)
        }
    }

    /// `fold` for 32 keys: adds lane class `l` to the running sums in `o[0..<32]`; the first
    /// class stores, the last one also scales.
    @inline(__always)
    private static func fold16(
        _ o: UnsafeMutablePointer<Float>, _ a: SIMD16<Float>, _ b: SIMD16<Float>, _ l: Int, _ scale: Float
    ) {
        var x = a, y = b
        if l > 0 {
            x = load16(o, 0) + a
            y = load16(o, 16) + b
        }
        if l == 7 {
            x = scale * x
            y = scale * y
        }
        store16(o, 0, x)
        store16(o, 16, y)
    }
}
