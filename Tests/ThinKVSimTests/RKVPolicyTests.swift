import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// R-KV (reference-policies.md 2.2-2.6): hand-computed kept sets and slot orders, the
/// `cal_similarity` quirk, GQA pooling of logits, ties, both triggers, and properties on random
/// traces. tools/reference/rkv_reference.py is an independent NumPy model of the same loop; see
/// docs/policies.md for how the two were compared.
///
/// Hand examples use D = 2, so the scorer's scale is 1/√2, and explicit integer keys, so cosine
/// similarities are dot(a, b)/(|a||b|). Zero queries make every logit 0: the importance is then
/// the same 1/C for every candidate (exactly, also after pooling), and the ranking is decided by
/// the redundancy alone: a higher column sum of the zeroed similarity matrix means a higher
/// redundancy (softmax is monotonic), hence a lower score.
final class RKVPolicyTests: XCTestCase {
    private func rkv(_ values: [String: String]) throws -> PolicySpec { try PolicySpec(name: "rkv", values: values) }

    // MARK: Hand-computed examples

    /// T = 7, P = 2, B = 3, w = 1, divide = 3, all queries zero. Keys by position:
    /// k0 (1,1), k1 (0,−1), k2 (−1,0), k3 (3,1), k4 (−1,−1), k5 (0,1), k6 (1,−1).
    /// Cosines: c01 = c02 = −.7071, c03 = .8944, c12 = 0, c13 = −.3162, c14 = .7071, c15 = −1,
    /// c16 = .7071, c23 = −.9487, c24 = .7071, c25 = 0, c26 = −.7071, c34 = −.8944, c35 = .3162,
    /// c36 = .4472, c45 = −.7071, c46 = 0, c56 = −.7071.
    ///
    /// First compression, pos 3 (step 1, 3 % 3 == 0, L = 4 ≥ B): slots [0 1 2 3], candidates
    /// 0-2, window slot 3. Rows: 0 → last similar slot 3 (c03); 1 → none, so S[1,0] is zeroed
    /// (the quirk); 2 → none, S[2,0] zeroed; 3 → slot 0. Column sums: col0 = 0 (all three
    /// entries zeroed), col1 = c01 + c21 + c31 = −1.0233, col2 = c02 + c12 + c32 = −1.6558.
    /// Keep the two lowest: slot 2 then slot 1, then the window: [2 1 3] in score order,
    /// [1 2 3] in position order. (Without the quirk col0 would be −1.4142 and slot 0 kept.)
    ///
    /// Second compression, pos 6 (step 4, L = 6), candidates slots 0-4, window pos 6.
    /// Score order, slots [2 1 3 4 5 6]: rows' last similar slots: p2 → slot 3 (p4);
    /// p1 → slot 5 (p6); p3 → none, zero its entry at slot 0 (c32); p4 → slot 1 (p1);
    /// p5 → none, zero slot 0 (c52 = 0); p6 → slot 1 (p1). Column sums: p2: c12 + c42 + c62 =
    /// 0 + .7071 − .7071 = 0; p1: c31 + c51 = −1.3162; p3: −.9487 −.3162 −.8944 +.3162 +.4472 =
    /// −1.3959; p4: c14 + c34 + c54 = −.8944; p5: c15 + c35 + c45 + c65 = −2.0980.
    /// Keep p5, p3 → [5 3 6].
    /// Position order, slots [1 2 3 4 5 6]: p1 → slot 5; p2 → slot 3; p3 → none, zero c31
    /// (slot 0 is now p1); p4 → slot 1 (p2); p5 → none, zero c51; p6 → slot 0 (p1). Column
    /// sums: p1: c41 = .7071; p2: c32 + c62 = −1.6558; p3: −1.3959; p4: c14 + c34 + c54 =
    /// −.8944; p5: −2.0980. Keep p5, p2 → sorted [2 5 6].
    /// So the physical order left by the first compression changes what the second one keeps.
    func testScoreAndPositionSlotOrdersDivergeAtTheSecondCompression() throws {
        let keys: [(Float, Float)] = [(1, 1), (0, -1), (-1, 0), (3, 1), (-1, -1), (0, 1), (1, -1)]
        let path = try TestTraces.plane(self, keys: keys.map { [$0] }, P: 2)
        let base = ["budget": "3", "window": "1", "divide": "3"]

        let (_, scoreEvents, scoreSnapshots) = try TestTraces.observe(path, RKVPolicy.self, base)
        XCTAssertEqual(keptByStep(scoreEvents), [1: [1, 2, 3], 4: [3, 5, 6]])
        XCTAssertEqual(scoreSnapshots[0].resident, [[0, 1]], "P < B: the prompt is not compressed")
        XCTAssertEqual(scoreSnapshots[2].resident, [[2, 1, 3]], "kept candidates in descending score, then the window")
        XCTAssertEqual(scoreSnapshots[5].attended, [[2, 1, 3, 4, 5, 6]])
        XCTAssertEqual(scoreSnapshots[5].resident, [[5, 3, 6]])

        var byPosition = base
        byPosition["slot-order"] = "position"
        let (_, positionEvents, positionSnapshots) = try TestTraces.observe(path, RKVPolicy.self, byPosition)
        XCTAssertEqual(keptByStep(positionEvents), [1: [1, 2, 3], 4: [2, 5, 6]])
        XCTAssertEqual(positionSnapshots[2].resident, [[1, 2, 3]])
        XCTAssertEqual(positionSnapshots[5].resident, [[2, 5, 6]])
    }

    /// `cal_similarity` on the first compression's keys k0 (1,1), k1 (0,−1), k2 (−1,0), k3 (3,1)
    /// (see above): column means r = [0, −1.0233, −1.6558, −1.2649]/4 = [0, −.25583, −.41395,
    /// −.31623] (col3 = c13 + c23 with row 0's c03 zeroed), and the redundancy is softmax(r) =
    /// [.31603567, .24469718, .20891084, .23035632] (numpy, float64). Without the quirk (rows 1
    /// and 2 leaving S[i,0] alone) col0 would be −1.4142 and the softmax [.24497, .27012, .23062,
    /// .25429].
    func testRedundancyZeroesSlotZeroForRowsWithoutASimilarKey() {
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 2,
            promptLength: 4, numTokens: 4)
        let rule = WindowScoringRule(
            softmax: .candidatesOnly, rowReduce: .mean, pool: .max, kernel: 7,
            groupReduce: .maxLogits, redundancy: .init(lambda: 0.07, threshold: 0.5))
        let scorer = WindowScorer(rule: rule, header: header)
        let keys: [Float] = [1, 1, 0, -1, -1, 0, 3, 1]
        let red = keys.withUnsafeBufferPointer {
            scorer.redundancy(slots: [0, 1, 2, 3], keys: $0.baseAddress!, threshold: 0.5)
        }
        let expected = [0.31603567, 0.24469718, 0.20891084, 0.23035632]
        for (a, b) in zip(red, expected) { XCTAssertEqual(a, b, accuracy: 1e-8) }
        // The slot order is the matrix order: listing the same keys as slots [3 2 1 0] makes
        // slot 0 hold k3, and rows 1 and 2 (k1, k2; no similar key) now zero their entry with k3.
        let reordered = keys.withUnsafeBufferPointer {
            scorer.redundancy(slots: [3, 2, 1, 0], keys: $0.baseAddress!, threshold: 0.5)
        }
        XCTAssertNotEqual(reordered[3], red[0], accuracy: 1e-3, "k0's redundancy depends on which key sits in slot 0")
    }

    /// The blocked pair loop (4 rows, one or four partners at a time, sums kept per block,
    /// partners in tiles of 256) against the definition written out on the full L × L matrix:
    /// near-duplicate keys make the threshold bite, odd L and D leave partial blocks and
    /// dimension tails, L = 270 spans two partner tiles.
    func testRedundancyMatchesTheFullMatrixDefinition() {
        var rng = SplitMix64(seed: 5)
        XCTAssertLessThan(WindowScorer.partnerTile, 270)
        for (L, D) in [(37, 20), (64, 64), (9, 8), (270, 12)] {
            let header = TraceHeader(
                model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: D,
                promptLength: L, numTokens: L)
            let rule = WindowScoringRule(
                softmax: .candidatesOnly, rowReduce: .mean, pool: .max, kernel: 7,
                groupReduce: .maxLogits, redundancy: .init(lambda: 0.1, threshold: 0.5))
            let scorer = WindowScorer(rule: rule, header: header)
            var keys = (0..<(L * D)).map { _ in rng.nextUniform() * 2 - 1 }
            for i in stride(from: 3, to: L, by: 5) {  // near-copies of an earlier key
                for d in 0..<D { keys[i * D + d] = keys[(i / 2) * D + d] + 0.05 * (rng.nextUniform() - 0.5) }
            }
            let slots = (0..<L).map { Int32(($0 * 7) % L) }
            let got = keys.withUnsafeBufferPointer {
                scorer.redundancy(slots: slots, keys: $0.baseAddress!, threshold: 0.5)
            }

            let unit = slots.map { p -> [Double] in
                let k = (0..<D).map { Double(keys[Int(p) * D + $0]) }
                let norm = k.reduce(0) { $0 + $1 * $1 }.squareRoot()
                return k.map { $0 / (norm + 1e-8) }
            }
            var S = (0..<L).map { i in
                (0..<L).map { j in i == j ? 0 : zip(unit[i], unit[j]).reduce(0) { $0 + $1.0 * $1.1 } }
            }
            var similarRows = 0
            for i in 0..<L {
                if let last = (0..<L).last(where: { S[i][$0] > 0.5 }) {
                    S[i][last] = 0
                    similarRows += 1
                } else {
                    S[i][0] = 0
                }
            }
            let means = (0..<L).map { j in (0..<L).reduce(0.0) { $0 + S[$1][j] } / Double(L) }
            let top = means.max()!
            let exps = means.map { Foundation.exp($0 - top) }
            let total = exps.reduce(0, +)
            XCTAssertGreaterThan(similarRows, 0, "L \(L): the near-copies should pass the threshold")
            XCTAssertEqual(got.count, L)
            for j in 0..<L { XCTAssertEqual(got[j], exps[j] / total, accuracy: 1e-12, "L \(L) D \(D) slot \(j)") }
        }
    }

    /// GQA, Hq = 2, Hkv = 1, λ = 1 (importance only), kernel 1 (no pooling), B = 3, w = 1,
    /// divide = 3, P = 1. Keys kA (6,−6), kB (3,3), kC (2,2) at pos 0-2; pos 3 (the window, step 2,
    /// the first multiple of 3) has key (0,0)
    /// and queries q0 = (√2, 0), q1 = (0, √2), so the scaled logits (×1/√2) are the key
    /// components: head 0 → A 6, B 3, C 2; head 1 → A −6, B 3, C 2.
    /// max over the group: A 6, B 3, C 2 → keep A, B: [0 1 3].
    /// mean over the group: A 0, B 3, C 2 → keep B, C: [1 2 3].
    func testGroupPoolingTakesTheMaxOfLogitsNotTheMean() throws {
        let r2 = Float(2).squareRoot()
        let path = try TestTraces.plane(
            self, keys: [[(6, -6)], [(3, 3)], [(2, 2)], [(0, 0)]],
            queries: [3: [(r2, 0), (0, r2)]], P: 1, Hq: 2)
        let base = ["budget": "3", "window": "1", "divide": "3", "kernel": "1", "lambda": "1"]
        let (_, maxEvents, maxSnapshots) = try TestTraces.observe(path, RKVPolicy.self, base)
        XCTAssertEqual(keptByStep(maxEvents), [2: [0, 1, 3]])
        XCTAssertEqual(maxSnapshots[3].resident, [[0, 1, 3]], "A (6) before B (3)")
        var mean = base
        mean["gqa-pool"] = "mean"
        let (_, meanEvents, meanSnapshots) = try TestTraces.observe(path, RKVPolicy.self, mean)
        XCTAssertEqual(keptByStep(meanEvents), [2: [1, 2, 3]])
        XCTAssertEqual(meanSnapshots[3].resident, [[1, 2, 3]], "B (3) before C (2)")
    }

    /// MHA, λ = 1, B = 3, w = 1, divide = 5, P = 2 (so only pos 5, step 3, compresses). Keys
    /// (x, 0) at pos 0-4 give the logit (1/√2)·(√2·x) = x for the window query (√2, 0) at pos 5:
    /// candidates' logits [0, 5, 0, 0, 3].
    /// kernel 1: keep the two largest, slots 1 (5) and 4 (3) → [1 4 5].
    /// kernel 3: pooled = [a1, a1, a1, a4, a4] (max over clipped neighbourhoods); slots 0, 1, 2
    /// tie at a1 and the lower slots win → [0 1 5], in that physical order.
    func testMaxPoolingSpreadsImportanceAndTiesGoToTheLowerSlot() throws {
        let r2 = Float(2).squareRoot()
        let keys: [[(Float, Float)]] = [[(0, 0)], [(5, 0)], [(0, 0)], [(0, 0)], [(3, 0)], [(0, 1)]]
        let path = try TestTraces.plane(self, keys: keys, queries: [5: [(r2, 0)]], P: 2)
        let base = ["budget": "3", "window": "1", "divide": "5", "lambda": "1"]
        var plain = base
        plain["kernel"] = "1"
        XCTAssertEqual(keptByStep(try TestTraces.replay(path, [try rkv(plain)]).1), [3: [1, 4, 5]])
        var pooled = base
        pooled["kernel"] = "3"
        let (_, events, snapshots) = try TestTraces.observe(path, RKVPolicy.self, pooled)
        XCTAssertEqual(keptByStep(events), [3: [0, 1, 5]])
        XCTAssertEqual(snapshots[4].resident, [[0, 1, 5]])
    }

    /// Zero queries and λ = 1: every candidate scores exactly the same, so the top B − w are the
    /// lowest slots. P = 2, T = 6, B = 3, w = 1, divide = 4: pos 4 (step 2) holds 5 slots, keeps
    /// slots 0, 1 and the window → [0 1 4]. (A "higher index wins" rule would keep [2 3 4].)
    func testTiedScoresKeepTheLowerSlots() throws {
        let keys: [[(Float, Float)]] = [[(1, 0)], [(0, 1)], [(1, 1)], [(2, 1)], [(1, 2)], [(3, 1)]]
        let path = try TestTraces.plane(self, keys: keys, P: 2)
        let (_, events) = try TestTraces.replay(
            path, [try rkv(["budget": "3", "window": "1", "divide": "4", "lambda": "1"])])
        XCTAssertEqual(keptByStep(events), [2: [0, 1, 4]])
    }

    /// P = B = 4 (w = 1, MHA, λ = 1, kernel 1): the prompt is scored with its last query
    /// (pos 3, (√2, 0)) against keys with logits [1, 3, 2]: nothing is dropped (L == B) but the
    /// candidates are re-ordered by score: [1 2 0 3]. No kept event (nothing dropped, and the
    /// prompt's compression is silent anyway).
    func testLengthEqualToBudgetReordersWithoutDropping() throws {
        let r2 = Float(2).squareRoot()
        let keys: [[(Float, Float)]] = [[(1, 0)], [(3, 0)], [(2, 0)], [(0, 1)], [(0, 1)]]
        let path = try TestTraces.plane(self, keys: keys, queries: [3: [(r2, 0)]], P: 4)
        let values = ["budget": "4", "window": "1", "kernel": "1", "lambda": "1"]
        let (_, events, snapshots) = try TestTraces.observe(path, RKVPolicy.self, values)
        XCTAssertEqual(snapshots[0].resident, [[1, 2, 0, 3]])
        XCTAssertTrue(events.isEmpty)
    }

    // MARK: Triggers

    /// P = 5, B = 6, w = 2, divide = 8, T = 40: compressions while processing pos 8, 16, 24, 32
    /// (steps 3, 11, 19, 27), nothing in between. The cache grows 6 → 13 between them
    /// (B + divide − 1 = residentCap) and attends to up to 14.
    func testLegacyTriggerFiresAtMultiplesOfDivide() throws {
        let path = try randomTrace(T: 40, P: 5, Hq: 2, Hkv: 1, seed: 3)
        let spec = try rkv(["budget": "6", "window": "2", "divide": "8"])
        let (result, events) = try TestTraces.replay(path, [spec])
        XCTAssertEqual(events.map(\.step), [3, 11, 19, 27])
        XCTAssertEqual(events.map(\.position), [8, 16, 24, 32])
        XCTAssertEqual(events.map(\.kept.count), [6, 6, 6, 6])
        let resident = result.runs[0].steps.map { Int($0.residentTokens) }
        XCTAssertEqual(Array(resident.prefix(13)), [6, 7, 8, 6, 7, 8, 9, 10, 11, 12, 13, 6, 7])
        XCTAssertEqual(resident.max(), 13)
        XCTAssertEqual(result.runs[0].steps.map(\.attendedTokens).max(), 14)
        for e in events {
            XCTAssertTrue(e.kept.contains(Int32(e.position)) && e.kept.contains(Int32(e.position - 1)), "window kept")
        }
    }

    /// P = 8 is a multiple of divide = 8, and P ≥ B = 6: the prompt is cut to 6 at prefill, and
    /// the first decode step (pos 8) compresses again (7 slots ≥ B).
    func testLegacyTriggerFiresOnTheFirstDecodeStepWhenThePromptLengthIsAMultiple() throws {
        let path = try randomTrace(T: 20, P: 8, Hq: 2, Hkv: 1, seed: 4)
        let (_, events, snapshots) = try TestTraces.observe(
            path, RKVPolicy.self, ["budget": "6", "window": "2", "divide": "8"])
        XCTAssertEqual(snapshots[0].resident[0].count, 6, "P ≥ B: compressed at prefill")
        XCTAssertEqual(Array(snapshots[0].resident[0].suffix(2)), [6, 7], "the prompt's window stays last")
        XCTAssertEqual(events.map(\.step), [0, 8])
    }

    /// Buffer trigger, P = 5, B = 6, w = 2, buffer = 4: candidate boundaries after decode steps
    /// 3, 7, 11, ... (the 4th, 8th, 12th decoded token). Step 3: 9 < B + buffer = 10 tokens, no
    /// compression. Step 7: 13 → 6. Step 11: 10 → 6. The prompt is never compressed. The
    /// resident set peaks at 12 = max(P, B + buffer − 1) + buffer − 1 (after step 6).
    func testBufferTriggerCompressesEveryBufferDecodedTokensAboveBudgetPlusBuffer() throws {
        let path = try randomTrace(T: 30, P: 5, Hq: 2, Hkv: 1, seed: 5)
        let values = ["budget": "6", "window": "2", "trigger": "buffer", "buffer": "4"]
        let (result, events) = try TestTraces.replay(path, [try rkv(values)])
        XCTAssertEqual(events.map(\.step), [7, 11, 15, 19, 23])
        let resident = result.runs[0].steps.map { Int($0.residentTokens) }
        XCTAssertEqual(Array(resident.prefix(13)), [6, 7, 8, 9, 10, 11, 12, 6, 7, 8, 9, 6, 7])
        let policy = try RKVPolicy(parameters: try rkv(values).parameters, setup: setup(P: 5))
        XCTAssertEqual(policy.residentCap, 12)
        XCTAssertEqual(resident.max(), 12)

        let (_, _, snapshots) = try TestTraces.observe(
            path, RKVPolicy.self, ["budget": "3", "window": "2", "trigger": "buffer", "buffer": "4"])
        XCTAssertEqual(snapshots[0].resident[0].count, 5, "P ≥ B, but the buffer trigger leaves the prompt alone")
    }

    // MARK: Parameters

    func testParametersDefaultsAndRefusals() throws {
        let policy = try RKVPolicy(parameters: try rkv(["budget": "256"]).parameters, setup: setup(P: 10))
        XCTAssertEqual(policy.window, 8)
        XCTAssertEqual(policy.trigger, .legacy)
        XCTAssertEqual(policy.divide, 128)
        XCTAssertEqual(policy.slotOrder, .score)
        XCTAssertEqual(policy.residentCap, 256 + 128 - 1)
        let defaults = Dictionary(uniqueKeysWithValues: RKVPolicy.parameters.map { ($0.name, $0.defaultValue) })
        XCTAssertEqual(defaults["lambda"], "0.07")
        XCTAssertEqual(defaults["threshold"], "0.5")
        XCTAssertEqual(defaults["kernel"], "7")
        XCTAssertEqual(defaults["gqa-pool"], "max")
        XCTAssertEqual(defaults["buffer"], "128")
        XCTAssertThrowsError(try rkv([:]), "--budget is required")
        for (values, message) in [
            (["budget": "8"], "must exceed --window"),
            (["budget": "16", "kernel": "4"], "must be odd"),
            (["budget": "16", "window": "8", "trigger": "buffer", "buffer": "4"], "at least --window")
        ] {
            XCTAssertThrowsError(try RKVPolicy(parameters: try rkv(values).parameters, setup: setup(P: 10))) { error in
                XCTAssertTrue((error as? PolicyError)?.description.contains(message) == true, "\(error)")
            }
        }
        XCTAssertThrowsError(try rkv(["budget": "16", "lambda": "1.5"]))
        XCTAssertNotNil(PolicyRegistry.type(named: "rkv"))
    }

    // MARK: Properties on random traces

    /// Several prompt lengths, budgets, triggers, orders and GQA shapes: the resident set never
    /// exceeds `residentCap`, the attended set is the previous resident set plus the new position,
    /// every kv head keeps B after a compression with the window (the w newest positions) at the
    /// end, and compressions happen only at the trigger's steps.
    func testResidentNeverExceedsTheCapAndTheWindowIsAlwaysKept() throws {
        let T = 90
        var compressions = 0
        for (P, seed) in [(4, UInt64(61)), (30, UInt64(62))] {
            let path = try randomTrace(T: T, P: P, Hq: 4, Hkv: 2, seed: seed, name: "r\(seed).h5")
            for values in [
                ["budget": "10", "window": "3", "divide": "7"],
                ["budget": "20", "window": "8", "divide": "16", "slot-order": "position", "gqa-pool": "mean"],
                ["budget": "6", "window": "2", "trigger": "buffer", "buffer": "5"],
                ["budget": "25", "window": "4", "trigger": "buffer", "buffer": "9", "kernel": "3"]
            ] {
                let label = "P \(P) \(values)"
                let (_, _, snapshots) = try TestTraces.observe(path, RKVPolicy.self, values)
                let policy = try RKVPolicy(parameters: try rkv(values).parameters, setup: setup(P: P))
                let cap = policy.residentCap!
                let B = policy.budget, w = policy.window
                var previous = snapshots[0].resident
                for s in snapshots.dropFirst() {
                    let step = s.step!, p = P + step
                    for g in 0..<2 {
                        XCTAssertEqual(s.attended![g], previous[g] + [Int32(p)], "attended at \(p), \(label)")
                        XCTAssertLessThanOrEqual(s.resident[g].count, cap, label)
                        if s.resident[g] != s.attended![g] {
                            compressions += 1
                            let fires =
                                policy.trigger == .legacy ? p % policy.divide == 0 : (step + 1) % policy.buffer == 0
                            XCTAssertTrue(fires, "compressed off-schedule at \(p), \(label)")
                            XCTAssertEqual(s.resident[g].count, B, label)
                            XCTAssertEqual(Array(s.resident[g].suffix(w)), (p - w + 1...p).map { Int32($0) }, label)
                            XCTAssertEqual(Set(s.resident[g]).count, B)
                        }
                    }
                    previous = s.resident
                }
            }
        }
        XCTAssertGreaterThan(compressions, 20)
    }

    func testBudgetCoveringTheTraceEqualsTheFullCache() throws {
        let path = try randomTrace(T: 40, P: 10, Hq: 4, Hkv: 2, seed: 71, values: true)
        for trigger in ["legacy", "buffer"] {
            let (result, events) = try TestTraces.replay(
                path, [try rkv(["budget": "41", "divide": "4", "trigger": trigger, "buffer": "8"])])
            XCTAssertTrue(events.isEmpty, trigger)
            let run = result.runs[0]
            XCTAssertEqual(run.summary.massRecall.min, 1, accuracy: 1e-5)
            XCTAssertEqual(run.summary.outputError!.max, 0, accuracy: 1e-6)
            for r in run.steps { XCTAssertEqual(r.residentTokens, Double(r.position + 1)) }
        }
    }

    func testRunsAreDeterministicAndIndependentOfThreads() throws {
        let dir = try TestTraces.directory(self)
        let layers = [
            TestTraces.randomLayer(T: 80, Hq: 4, Hkv: 2, D: 8, seed: 81, index: 0),
            TestTraces.randomLayer(T: 80, Hq: 4, Hkv: 2, D: 8, seed: 82, index: 1)
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: 80, P: 20, Hq: 4, Hkv: 2, D: 8,
            numLayers: 2, layers: layers)
        let specs = [
            try rkv(["budget": "12", "divide": "8"]),
            try rkv(["budget": "12", "divide": "8", "slot-order": "position"]),
            try rkv(["budget": "10", "trigger": "buffer", "buffer": "8"])
        ]
        let (first, firstEvents) = try TestTraces.replay(path, specs, threads: 1)
        let (threaded, threadedEvents) = try TestTraces.replay(path, specs, threads: 4)
        XCTAssertGreaterThan(firstEvents.count, 10)
        XCTAssertEqual(threadedEvents, firstEvents)
        for i in specs.indices { XCTAssertEqual(threaded.runs[i].steps, first.runs[i].steps) }
    }

    // MARK: Helpers

    private func randomTrace(
        T: Int, P: Int, Hq: Int, Hkv: Int, seed: UInt64, values: Bool = false,
        name: String = "r.h5"
    ) throws -> String {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: 8, seed: seed, values: values)
        return try TestTraces.write(
            to: dir.appendingPathComponent(name), T: T, P: P, Hq: Hq, Hkv: Hkv, D: 8,
            layers: [layer])
    }

    private func setup(P: Int) -> PolicySetup {
        PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 1, numQHeads: 4, numKVHeads: 2, headDim: 8,
                promptLength: P, numTokens: 200),
            layer: LayerInfo(index: 0))
    }
}
