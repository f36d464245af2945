import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Element formats, group quantizers and the K/V grouping helpers.
final class QuantizationTests: XCTestCase {
    private func gaussian(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in scale * rng.nextGaussian() }
    }

    // MARK: Integer (KIVI)

    func testIntegerRoundTripIsWithinHalfAStepOnTheGrid() {
        for bits in [1, 2, 3, 4, 8] {
            for (seed, count) in [(UInt64(1), 16), (2, 32), (3, 7)] {
                let x = gaussian(count, seed: seed + UInt64(bits) * 10, scale: 3)
                var y = x
                let metadata = GroupQuantizer.integer(bits: bits).roundTrip(&y)
                XCTAssertEqual(metadata, 32, "an fp16 scale and an fp16 zero point per group")
                let lo = x.min()!, hi = x.max()!
                let levels = Float((1 << bits) - 1)
                let s = (hi - lo) / levels
                for i in 0..<count {
                    XCTAssertLessThanOrEqual(abs(x[i] - y[i]), s / 2 + 1e-5 * s + 1e-6, "bits \(bits) element \(i)")
                    let code = (y[i] - lo) / s
                    XCTAssertEqual(code, code.rounded(), accuracy: 1e-3, "dequantized values lie on mn + k·s")
                    XCTAssertGreaterThanOrEqual(code.rounded(), 0)
                    XCTAssertLessThanOrEqual(code.rounded(), levels)
                }
                XCTAssertEqual(y.min()!, lo, accuracy: 1e-6, "the minimum is code 0, exact")
            }
        }
    }

    func testIntegerRoundsHalfToEven() {
        // 2 bits over [0, 3]: s = 1; 1.5 → code 2 (even), 2.5 → code 2 (even), 0.5 → 0.
        var x: [Float] = [0, 1.5, 2.5, 0.5, 3]
        GroupQuantizer.integer(bits: 2).roundTrip(&x)
        XCTAssertEqual(x, [0, 2, 2, 0, 3])
    }

    func testConstantGroupsAreExactForIntegerAndTernaryAndZeroGroupsForAll() {
        for c: Float in [0.1, -3.7, 1e-3, 0] {
            for q in [GroupQuantizer.integer(bits: 2), .integer(bits: 4)] {
                var x = [Float](repeating: c, count: 16)
                q.roundTrip(&x)
                XCTAssertEqual(x, [Float](repeating: c, count: 16), "\(q) on constant \(c)")
            }
        }
        // Ternary's scale is an E4M3 value: a constant that is one comes back exactly, any
        // other constant as ±e4m3(|c|).
        for c: Float in [0.125, -3.5, powf(2, -9), 0.1, -3.7] {
            var x = [Float](repeating: c, count: 16)
            GroupQuantizer.ternary.roundTrip(&x)
            XCTAssertEqual(x, [Float](repeating: MiniFloat.e4m3.round(c), count: 16), "ternary on constant \(c)")
        }
        for q in [GroupQuantizer.fp8E4M3, .nvfp4, .ternary] {
            var x = [Float](repeating: 0, count: 16)
            q.roundTrip(&x)
            XCTAssertEqual(x, [Float](repeating: 0, count: 16), "\(q) on zeros")
        }
        // A constant NVFP4 can hold: c/6 is an E4M3 value, so the scale is exact.
        var x = [Float](repeating: 6 * 0.875, count: 16)
        GroupQuantizer.nvfp4.roundTrip(&x)
        XCTAssertEqual(x, [Float](repeating: 6 * 0.875, count: 16))
    }

    func testStridedRoundTripTouchesOnlyItsGroup() {
        var buffer = gaussian(48, seed: 5)
        let original = buffer
        buffer.withUnsafeMutableBufferPointer { b in
            _ = GroupQuantizer.integer(bits: 2).roundTrip(b.baseAddress! + 1, count: 16, stride: 3)
        }
        var group = stride(from: 1, to: 48, by: 3).map { original[$0] }
        GroupQuantizer.integer(bits: 2).roundTrip(&group)
        for i in 0..<48 {
            if i % 3 == 1 {
                XCTAssertEqual(buffer[i], group[i / 3], "strided element \(i) equals the gathered round trip")
            } else {
                XCTAssertEqual(buffer[i], original[i], "element \(i) is outside the group")
            }
        }
        XCTAssertNotEqual(
            group, stride(from: 1, to: 48, by: 3).map { original[$0] }, "2 bits cannot be exact on Gaussians")
    }

    // MARK: Minifloats

    /// `round` must agree with a brute-force nearest search over every representable value,
    /// ties going to the even bit pattern, saturating at the largest finite value.
    private func checkAgainstBruteForce(_ format: MiniFloat, table: [Float], seed: UInt64, span: ClosedRange<Float>) {
        func nearest(_ x: Float) -> Float {
            let m = abs(x)
            if m >= table.last! { return x < 0 ? -table.last! : table.last! }
            var best = 0
            for i in 1..<table.count {
                let d = abs(table[i] - m), bestD = abs(table[best] - m)
                if d < bestD || (d == bestD && i % 2 == 0) { best = i }
            }
            return x < 0 ? -table[best] : table[best]
        }
        var rng = SplitMix64(seed: seed)
        var samples: [Float] = table + table.flatMap { v in [v * 1.01, v * 0.99] }
        for i in 0..<(table.count - 1) { samples.append((table[i] + table[i + 1]) / 2) }  // every tie
        for _ in 0..<4000 {
            let logMagnitude = span.lowerBound + (span.upperBound - span.lowerBound) * rng.nextUniform()
            samples.append((rng.nextUniform() < 0.5 ? -1 : 1) * powf(2, logMagnitude))
        }
        for x in samples {
            XCTAssertEqual(format.round(x), nearest(x), "round(\(x))")
        }
    }

    func testE4M3MatchesBruteForceNearestEven() {
        let table = QuantTestSupport.representable(exponentBits: 4, mantissaBits: 3, bias: 7, dropAllOnes: true)
        XCTAssertEqual(table.count, 127)
        XCTAssertEqual(table.last, 448)
        checkAgainstBruteForce(.e4m3, table: table, seed: 11, span: -12...10)
    }

    func testE2M1MatchesBruteForceNearestEven() {
        let table = QuantTestSupport.representable(exponentBits: 2, mantissaBits: 1, bias: 1, dropAllOnes: false)
        XCTAssertEqual(table, [0, 0.5, 1, 1.5, 2, 3, 4, 6])
        checkAgainstBruteForce(.e2m1, table: table, seed: 12, span: -3...4)
    }

    func testE4M3ExactValuesTiesSaturationAndRelativeError() {
        let e4m3 = MiniFloat.e4m3
        for v: Float in [1.5, 448, -448, powf(2, -9), powf(2, -6), 7 * powf(2, -9), 240, 0.875] {
            XCTAssertEqual(e4m3.round(v), v, "\(v) is representable")
        }
        XCTAssertEqual(e4m3.round(1 + 1.0 / 16), 1, "tie between 1 and 1.125 goes to even mantissa 0")
        XCTAssertEqual(e4m3.round(1 + 3.0 / 16), 1.25, "tie between 1.125 and 1.25 goes to even mantissa 2")
        XCTAssertEqual(e4m3.round(powf(2, -10)), 0, "half the smallest subnormal ties to zero")
        XCTAssertEqual(e4m3.round(1.5 * powf(2, -10)), powf(2, -9))
        XCTAssertEqual(e4m3.round(1e-6), 0)
        XCTAssertEqual(e4m3.round(500), 448, "saturates instead of overflowing")
        XCTAssertEqual(e4m3.round(-1e9), -448)
        XCTAssertEqual(e4m3.round(.infinity), 448)
        var rng = SplitMix64(seed: 3)
        for _ in 0..<5000 {
            let x = powf(2, -6 + 14.8 * rng.nextUniform())  // normal range [2^-6, ~448]
            XCTAssertLessThanOrEqual(abs(e4m3.round(x) - x) / x, powf(2, -4) + 1e-7, "x = \(x)")
        }
    }

    // MARK: Paper formats at group level

    func testFP8GroupScaleIsE4M3RoundedUpAndElementsKeepRelativeError() {
        for (seed, scale) in [(UInt64(21), Float(5)), (22, 0.5), (23, 1e-3), (24, 60)] {
            let x = gaussian(16, seed: seed, scale: scale)
            var y = x
            XCTAssertEqual(GroupQuantizer.fp8E4M3.roundTrip(&y), 8, "one E4M3 scale per group")
            let amax = x.map(abs).max()!
            let s = FP8GroupQuantizer.groupScale(amax: amax)
            XCTAssertEqual(MiniFloat.e4m3.round(s), s, "the scale is an E4M3 value")
            XCTAssertGreaterThanOrEqual(s * 448, amax, "rounded up: no element saturates")
            XCTAssertLessThan((s - MiniFloat.e4m3.spacing(around: s.nextDown)) * 448, amax, "the smallest such value")
            for i in 0..<16 where abs(x[i]) / s >= powf(2, -6) {
                XCTAssertLessThanOrEqual(
                    abs(y[i] - x[i]), abs(x[i]) * powf(2, -4) * (1 + 1e-6), "seed \(seed) element \(i)")
                let code = y[i] / s
                XCTAssertEqual(MiniFloat.e4m3.round(code), code, "x̂/s is an E4M3 value")
            }
        }
        // amax = 1: to nearest the scale would be 2^-9 and 1.0 would saturate at 0.875; rounded
        // up it is 2^-8 and 1.0 is exact.
        XCTAssertEqual(FP8GroupQuantizer.groupScale(amax: 1), powf(2, -8))
        var one: [Float] = [1, -0.3, 0.01, 0]
        GroupQuantizer.fp8E4M3.roundTrip(&one)
        XCTAssertEqual(one[0], 1)
        // A tiny nonzero group gets the smallest positive scale, never 0, and stays finite.
        XCTAssertEqual(FP8GroupQuantizer.groupScale(amax: 1e-30), powf(2, -9))
        var tiny: [Float] = [1e-30, -3e-31, 0, 2e-12]
        GroupQuantizer.fp8E4M3.roundTrip(&tiny)
        XCTAssertTrue(tiny.allSatisfy { $0.isFinite && $0 == 0 }, "\(tiny)")
    }

    func testE4M3RoundUp() {
        let e4m3 = MiniFloat.e4m3
        XCTAssertEqual(e4m3.roundUp(0), 0)
        XCTAssertEqual(e4m3.roundUp(1e-30), powf(2, -9), "below the smallest subnormal: the smallest subnormal")
        XCTAssertEqual(e4m3.roundUp(powf(2, -9)), powf(2, -9), "representable values stay")
        XCTAssertEqual(e4m3.roundUp(1.0001), 1.125)
        XCTAssertEqual(e4m3.roundUp(1.9), 2, "carries into the next binade")
        XCTAssertEqual(e4m3.roundUp(1.126), 1.25)
        XCTAssertEqual(e4m3.roundUp(447), 448)
        XCTAssertEqual(e4m3.roundUp(1e6), 448, "saturates")
        var rng = SplitMix64(seed: 9)
        for _ in 0..<2000 {
            let x = powf(2, -12 + 20.5 * rng.nextUniform())
            let up = e4m3.roundUp(x)
            XCTAssertEqual(e4m3.round(up), up)
            XCTAssertGreaterThanOrEqual(up, x)
            // No representable value lies in [x, up): the one below up is below x.
            let below = up - e4m3.spacing(around: up.nextDown)
            XCTAssertLessThan(below, x, "x = \(x), up = \(up)")
        }
    }

    func testNVFP4ElementsAreScaleTimesE2M1WithinHalfTheLocalStep() {
        let grid: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
        for seed in UInt64(30)..<UInt64(40) {
            let x = gaussian(32, seed: seed, scale: seed % 2 == 0 ? 0.3 : 12)
            var y = x
            XCTAssertEqual(GroupQuantizer.nvfp4.roundTrip(&y), 16, "two 16-element blocks, one E4M3 scale each")
            for block in 0..<2 {
                let range = (block * 16)..<(block * 16 + 16)
                let amax = range.map { abs(x[$0]) }.max()!
                let s = NVFP4GroupQuantizer.blockScale(amax: amax)
                XCTAssertEqual(MiniFloat.e4m3.round(s), s, "the block scale is an E4M3 value")
                XCTAssertEqual(s, MiniFloat.e4m3.round(amax / 6))
                for i in range {
                    let q = y[i] / s
                    XCTAssertTrue(grid.contains(abs(q)), "x̂ = \(y[i]) is not s·E2M1 (q = \(q))")
                    // Local grid step: 0.5 below 2, 1 in [2, 4), 2 from 4 (6 is the last point).
                    let m = abs(x[i]) / s
                    let step: Float = m < 2 ? 0.5 : (m < 4 ? 1 : 2)
                    XCTAssertLessThanOrEqual(abs(y[i] - x[i]), step / 2 * s * (1 + 1e-5), "element \(i)")
                }
            }
        }
    }

    func testTernaryOutputsAreMinusZeroPlusAbsmean() {
        for seed in UInt64(50)..<UInt64(55) {
            let x = gaussian(16, seed: seed, scale: 2)
            var y = x
            XCTAssertEqual(GroupQuantizer.ternary.roundTrip(&y), 8, "one E4M3 scale per group")
            let s = MiniFloat.e4m3.round(x.map(abs).reduce(0, +) / 16)
            var levels = Set<Float>()
            for i in 0..<16 {
                XCTAssertTrue(abs(y[i]) == 0 || abs(abs(y[i]) - s) <= s * 1e-5, "\(y[i]) not in {−s, 0, s}")
                if abs(x[i]) > s / 2 * 1.0001 {
                    XCTAssertEqual(y[i].sign, x[i].sign, "sign kept above s/2"); XCTAssertNotEqual(y[i], 0)
                }
                if abs(x[i]) < s / 2 * 0.9999 { XCTAssertEqual(y[i], 0) }
                levels.insert(y[i] == 0 ? 0 : (y[i] > 0 ? 1 : -1))
            }
            XCTAssertEqual(levels.count, 3, "Gaussian groups use all three levels")
        }
    }

    func testTernaryScaleOfATinyGroupIsTheSmallestE4M3ValueNotZero() {
        XCTAssertEqual(TernaryGroupQuantizer.groupScale(meanMagnitude: 1e-6), powf(2, -9))
        var x: [Float] = [1e-6, -2e-6, 0, 3e-3]
        GroupQuantizer.ternary.roundTrip(&x)
        XCTAssertTrue(x.allSatisfy(\.isFinite), "\(x)")
        // mean |x| = 7.5e-4 rounds to 2^-10 → 0 in E4M3; s = 2^-9: only 3e-3 (> s/2) survives.
        XCTAssertEqual(x, [0, 0, 0, powf(2, -9)])
    }

    func testFormatWidths() throws {
        XCTAssertEqual(try GroupQuantizer(format: .paper, bits: 8), .fp8E4M3)
        XCTAssertEqual(try GroupQuantizer(format: .paper, bits: 4), .nvfp4)
        XCTAssertEqual(try GroupQuantizer(format: .paper, bits: 2), .ternary)
        XCTAssertEqual(try GroupQuantizer(format: .int, bits: 3), .integer(bits: 3))
        XCTAssertThrowsError(try GroupQuantizer(format: .paper, bits: 3))
        XCTAssertThrowsError(try GroupQuantizer(format: .int, bits: 9))
        XCTAssertEqual([GroupQuantizer.fp8E4M3, .nvfp4, .ternary, .integer(bits: 3)].map(\.elementBits), [8, 4, 2, 3])
    }

    // MARK: Grouping

    func testKeysAreGroupedPerChannelAndValuesPerToken() {
        let T = 16, D = 16
        let cache = QuantTestSupport.cache(T: T, D: D, seed: 60)
        let exactK = cache.storedKeys!, exactV = cache.storedValues!
        let q = GroupQuantizer.integer(bits: 2)
        let keyBits = KVGrouping.quantizeKeysPerChannel(
            cache, kvHead: 0, positions: Array(0..<T), groupSize: 16, quantizer: q)
        let valueBits = KVGrouping.quantizeValuesPerToken(
            cache, kvHead: 0, positions: Array(0..<T), groupSize: 16, quantizer: q)
        XCTAssertEqual(keyBits, D * 32, "one group per channel")
        XCTAssertEqual(valueBits, T * 32, "one group per token")
        XCTAssertTrue(cache.keysModified && cache.valuesModified)
        let K = cache.storedKeys!, V = cache.storedValues!
        for d in 0..<D {
            // A 2-bit channel group holds at most 4 levels and keeps its own min and max.
            let column = (0..<T).map { K[$0 * D + d] }, exact = (0..<T).map { exactK[$0 * D + d] }
            XCTAssertLessThanOrEqual(Set(column).count, 4, "channel \(d)")
            XCTAssertEqual(column.min()!, exact.min()!, accuracy: 1e-6)
            XCTAssertEqual(column.max()!, exact.max()!, accuracy: 1e-5)
        }
        var rowLevels = 0
        for p in 0..<T {
            let row = Array(V[(p * D)..<((p + 1) * D)]), exact = Array(exactV[(p * D)..<((p + 1) * D)])
            XCTAssertLessThanOrEqual(Set(row).count, 4, "token \(p)")
            XCTAssertEqual(row.min()!, exact.min()!, accuracy: 1e-6)
            rowLevels = max(rowLevels, Set((0..<D).map { K[p * D + $0] }).count)
        }
        XCTAssertGreaterThan(rowLevels, 4, "keys were not grouped per token")
        for p in 0..<T {
            XCTAssertEqual(cache.keyBits[p], 2)
            XCTAssertEqual(cache.valueBits[p], 2)
        }
    }

    func testNonConsecutiveKeyPositionsGatherTheSameGroups() {
        let T = 40, D = 8
        let a = QuantTestSupport.cache(T: T, D: D, seed: 61)
        let exact = a.storedKeys!
        let positions = stride(from: 1, to: 33, by: 2).map { $0 }  // 16 positions, gaps between
        KVGrouping.quantizeKeysPerChannel(
            a, kvHead: 0, positions: positions, groupSize: 16, quantizer: .integer(bits: 3))
        for d in 0..<D {
            var column = positions.map { exact[$0 * D + d] }
            GroupQuantizer.integer(bits: 3).roundTrip(&column)
            for (i, p) in positions.enumerated() { XCTAssertEqual(a.storedKeys![p * D + d], column[i]) }
        }
        for p in 0..<T where !positions.contains(p) {
            XCTAssertEqual(
                Array(a.storedKeys![(p * D)..<((p + 1) * D)]), Array(exact[(p * D)..<((p + 1) * D)]),
                "position \(p) untouched")
            XCTAssertEqual(a.keyBits[p], 16)
        }
    }

    func testBitsAreChargedWithoutRecordedTensors() {
        let data = LayerData(info: LayerInfo(index: 0), numTokens: 8, numKVHeads: 1, headDim: 4, keys: nil, values: nil)
        let cache = LayerCache(data: data)
        for p in 0..<8 { cache.append(position: p) }
        XCTAssertEqual(
            KVGrouping.quantizeKeysPerChannel(
                cache, kvHead: 0, positions: Array(0..<8), groupSize: 4, quantizer: .nvfp4), 2 * 4 * 8)
        XCTAssertEqual(cache.keyBits[0..<8].allSatisfy { $0 == 4 }, true)
        XCTAssertFalse(cache.keysModified)
    }

    func testHeldBytesFollowSlotsAndPrecisionChanges() {
        // Appends, evictions (setSlots, removeAll) and precision changes in any order: the byte
        // total kept as they happen equals the sum over the held slots at every point.
        let T = 300, D = 4
        let data = LayerData(info: LayerInfo(index: 0), numTokens: T, numKVHeads: 2, headDim: D, keys: nil, values: nil)
        let cache = LayerCache(data: data)
        var random = SeededRandom(seed: 11)
        func recomputed(_ h: Int) -> Int {
            let bits = cache.slots[h].reduce(0) {
                $0 + Int(cache.keyBits[h * T + Int($1)]) + Int(cache.valueBits[h * T + Int($1)])
            }
            return (bits * D + 7) / 8 + cache.metadataBytes[h]
        }
        for p in 0..<T {
            cache.append(position: p)
            let h = Int(random.next() % 2)
            switch random.next() % 4 {
            case 0:
                var kept = cache.slots[h]
                kept.remove(at: Int(random.next() % UInt64(kept.count)))
                cache.setSlots(kvHead: h, kept.reversed())
            case 1:
                cache.removeAll(kvHead: h) { $0 % 5 == Int32(random.next() % 5) }
            default:
                // Precision of any position, held or not (a later append must charge it as set).
                let q = Int(random.next() % UInt64(T))
                cache.setBits(kvHead: h, position: q, key: [2, 4, 8, 16][Int(random.next() % 4)], value: 4)
            }
            XCTAssertEqual(cache.bytes(kvHead: 0), recomputed(0), "after position \(p)")
            XCTAssertEqual(cache.bytes(kvHead: 1), recomputed(1), "after position \(p)")
        }
    }
}
