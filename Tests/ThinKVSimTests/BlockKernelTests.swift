import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The blocked kernels must give the bits of `Kernels.dot` row by row: policies recompute
/// some logits themselves and compare against the reference's.
final class BlockKernelTests: XCTestCase {
    private func randomFloats(_ n: Int, _ rng: inout SplitMix64) -> [Float] {
        (0..<n).map { _ in (rng.nextUniform() * 2 - 1) * Float(1 << (rng.next() % 8)) }
    }

    func testScoresPanelsMatchDot() {
        var rng = SplitMix64(seed: 7)
        let D = 64, T = 75
        let keys = randomFloats(T * D, &rng)
        let identity = (0..<T).map { Int32($0) }
        var panels = [Float](repeating: 0, count: T * D)
        keys.withUnsafeBufferPointer { K in
            panels.withUnsafeMutableBufferPointer {
                Kernels.packKeyPanels(keys: K.baseAddress!, count: T, headDim: D, into: $0.baseAddress!)
            }
        }
        let scale: Float = 0.125
        for rows in [1, 3, 4, 6, 7, 9, 10, 13, 14, 56] {
            let queries = randomFloats(rows * D, &rng)
            for count in [1, 15, 16, 33, 64, 75] {
                var out = [Float](repeating: .nan, count: rows * T)
                queries.withUnsafeBufferPointer { Q in
                    keys.withUnsafeBufferPointer { K in
                        panels.withUnsafeBufferPointer { P in
                            identity.withUnsafeBufferPointer { I in
                                out.withUnsafeMutableBufferPointer { O in
                                    Kernels.scoresPanels(
                                        queries: Q.baseAddress!, rows: rows, headDim: D, panels: P.baseAddress!,
                                        keys: K.baseAddress!, identity: I.baseAddress!, count: count,
                                        scale: scale, out: O.baseAddress!, outStride: T)
                                }
                            }
                        }
                    }
                }
                assertScoresMatchDot(
                    out, stride: T, queries: queries, keys: keys, indices: identity, rows: rows, count: count,
                    headDim: D, scale: scale)
            }
        }
    }

    /// out[r·stride + j] has the bits of scale · dot(query r, key indices[j]).
    private func assertScoresMatchDot(
        _ out: [Float], stride: Int, queries: [Float], keys: [Float], indices: [Int32],
        rows: Int, count: Int, headDim D: Int, scale: Float,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        queries.withUnsafeBufferPointer { Q in
            keys.withUnsafeBufferPointer { K in
                for r in 0..<rows {
                    for j in 0..<count {
                        let expected =
                            scale * Kernels.dot(Q.baseAddress! + r * D, K.baseAddress! + Int(indices[j]) * D, D)
                        XCTAssertEqual(
                            out[r * stride + j].bitPattern, expected.bitPattern,
                            "rows \(rows) count \(count) r \(r) j \(j)",
                            file: file, line: line)
                    }
                }
            }
        }
    }

    func testGatheredScoresMatchDot() {
        // Row tiles of 4 and 3 and single rows, gathered keys, odd and even counts.
        var rng = SplitMix64(seed: 9)
        let D = 64, T = 50
        let keys = randomFloats(T * D, &rng)
        let indices = (0..<T).map { Int32(($0 * 17) % T) }
        for rows in [1, 2, 3, 4, 5, 7, 8, 11] {
            let queries = randomFloats(rows * D, &rng)
            for count in [1, 2, 33, 50] {
                var out = [Float](repeating: .nan, count: rows * T)
                queries.withUnsafeBufferPointer { Q in
                    keys.withUnsafeBufferPointer { K in
                        indices.withUnsafeBufferPointer { I in
                            out.withUnsafeMutableBufferPointer { O in
                                Kernels.scores(
                                    queries: Q.baseAddress!, rows: rows, headDim: D, keys: K.baseAddress!,
                                    indices: I.baseAddress!, count: count, scale: 0.25, out: O.baseAddress!,
                                    outStride: T)
                            }
                        }
                    }
                }
                assertScoresMatchDot(
                    out, stride: T, queries: queries, keys: keys, indices: indices, rows: rows, count: count,
                    headDim: D, scale: 0.25)
            }
        }
    }

    func testWeightedSumMatchesAxpy() {
        var rng = SplitMix64(seed: 11)
        let D = 64, T = 70
        let values = randomFloats(T * D, &rng)
        let indices = (0..<T).map { Int32(($0 * 37) % T) }
        for rows in [1, 2, 3, 6, 7, 8, 13] {
            let probs = randomFloats(rows * T, &rng)
            for count in [1, 31, 33, 70] {
                var out = [Float](repeating: .nan, count: rows * D)
                values.withUnsafeBufferPointer { V in
                    probs.withUnsafeBufferPointer { P in
                        indices.withUnsafeBufferPointer { I in
                            out.withUnsafeMutableBufferPointer { O in
                                Kernels.weightedSum(
                                    probs: P.baseAddress!, probStride: T, rows: rows, values: V.baseAddress!,
                                    indices: I.baseAddress!, count: count, headDim: D, out: O.baseAddress!)
                            }
                        }
                        for r in 0..<rows {
                            var expected = [Float](repeating: 0, count: D)
                            for j in 0..<count {
                                Kernels.axpy(P[r * T + j], V.baseAddress! + Int(indices[j]) * D, &expected, D)
                            }
                            for d in 0..<D {
                                XCTAssertEqual(
                                    out[r * D + d].bitPattern, expected[d].bitPattern,
                                    "rows \(rows) count \(count) r \(r) d \(d)")
                            }
                        }
                    }
                }
            }
        }
    }

    /// `offerAll` (block-maximum floor, vector skipping) selects what offering every value does.
    func testOfferAllMatchesOfferingEachValue() {
        var rng = SplitMix64(seed: 3)
        for (n, k, levels) in [(100, 8, 0), (4096, 32, 0), (5000, 32, 7), (8192, 32, 0), (8192, 32, 3), (3000, 1, 0)] {
            // levels > 0: few distinct values, so ties decide.
            let x: [Float] = (0..<n).map { _ in
                levels > 0 ? Float(rng.next() % UInt64(levels)) : rng.nextGaussian() * 3
            }
            var all = TopKSelector(k: k), each = TopKSelector(k: k)
            x.withUnsafeBufferPointer { all.offerAll($0.baseAddress!, n) }
            for (i, v) in x.enumerated() { each.offer(v, Int32(i)) }
            XCTAssertEqual(all.selected.sorted(), each.selected.sorted(), "n \(n) k \(k) levels \(levels)")
            // A floor hint, right or wrong, only changes the work: hints far below, near and above
            // the k-th value (the last ones fail the check and fall back to the selection).
            let kth = x.sorted(by: >)[min(k, n) - 1]
            for hint in [-Float.infinity, kth - 5, kth - 0.01, kth, kth.nextUp, kth + 3, .infinity] {
                var hinted = TopKSelector(k: k)
                var maxima = [Float](repeating: 0, count: n / 8 + 8)
                x.withUnsafeBufferPointer { p in
                    maxima.withUnsafeMutableBufferPointer { m in
                        _ = Kernels.rowMax(p.baseAddress!, n, laneMaxima: m.baseAddress!)
                        hinted.offerAll(p.baseAddress!, n, laneMaxima: m.baseAddress!, floorHint: hint)
                    }
                }
                XCTAssertEqual(
                    hinted.selected.sorted(), each.selected.sorted(), "n \(n) k \(k) levels \(levels) hint \(hint)")
            }
        }
    }

    /// The reference's fused row pass (max with lane maxima, top-k by logit, exp, normalise while
    /// summing into the head average) gives softmaxFast's bits, the true lane maxima, and the
    /// top-k of the logits, none of whose probabilities is outranked by one left out.
    func testFusedRowPassMatchesSoftmaxAndTopK() {
        var rng = SplitMix64(seed: 11)
        for n in [1, 7, 64, 200, 4096 + 37] {
            let logits = randomFloats(n, &rng)
            var expected = logits
            let expectedLSE = expected.withUnsafeMutableBufferPointer { Kernels.softmaxFast($0.baseAddress!, n) }
            var row = logits
            var maxima = [Float](repeating: .nan, count: n / 8 + 8)
            var average = [Float](repeating: 0.5, count: n)
            var top = TopKSelector(k: 32)
            let lse: Float = row.withUnsafeMutableBufferPointer { r in
                maxima.withUnsafeMutableBufferPointer { bm in
                    average.withUnsafeMutableBufferPointer { avg in
                        let m = Kernels.rowMax(r.baseAddress!, n, laneMaxima: bm.baseAddress!)
                        for b in 0..<(n / 64) {
                            for l in 0..<8 {
                                XCTAssertEqual(
                                    bm[8 * b + l],
                                    stride(from: 64 * b + l, to: 64 * b + 64, by: 8).map { logits[$0] }.max()!)
                            }
                        }
                        top.offerAll(r.baseAddress!, n, laneMaxima: bm.baseAddress!)
                        let sum = Kernels.exponentiate(r.baseAddress!, n, max: m)
                        Kernels.normalize(r.baseAddress!, n, sum: sum, accumulatingInto: avg.baseAddress!)
                        return m + logf(sum)
                    }
                }
            }
            XCTAssertEqual(lse, expectedLSE)
            XCTAssertEqual(row, expected, "n \(n)")
            XCTAssertEqual(average, expected.map { 0.5 + $0 }, "n \(n)")
            // Ranked by logit: the probabilities' order, but distinct where exp rounds them equal.
            var byLogit = TopKSelector(k: 32)
            for (i, x) in logits.enumerated() { byLogit.offer(x, Int32(i)) }
            XCTAssertEqual(top.selected.sorted(), byLogit.selected.sorted(), "n \(n)")
            let selected = Set(top.selected)
            for (i, p) in expected.enumerated() where !selected.contains(Int32(i)) {
                XCTAssertLessThanOrEqual(
                    p, top.selected.map { expected[Int($0)] }.min()!, "n \(n): position \(i) outranks the top-k")
            }
        }
    }

    /// Selection gives the k-th largest for every k, on distinct values, many ties and sorted input.
    func testKthLargestMatchesSorting() {
        var rng = SplitMix64(seed: 5)
        let inputs: [[Float]] = [
            (0..<97).map { _ in rng.nextGaussian() },
            (0..<200).map { _ in Float(rng.next() % 4) },
            (0..<64).map { Float($0) },
            (0..<64).map { Float(-$0) },
            [Float](repeating: 2, count: 33)
        ]
        for values in inputs {
            let sorted = values.sorted(by: >)
            for k in 1...values.count {
                var a = values
                let kth = a.withUnsafeMutableBufferPointer { TopKSelector.kthLargest($0.baseAddress!, $0.count, k) }
                XCTAssertEqual(kth, sorted[k - 1], "n \(values.count) k \(k)")
                XCTAssertEqual(a.sorted(), values.sorted(), "selection only reorders")
            }
        }
    }
}
