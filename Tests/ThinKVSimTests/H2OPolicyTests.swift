import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// H2O (reference-policies 1.4): hand-computed kept sets, GQA reductions, ties, prefill,
/// the scorer's scale, attention-only layers, and properties on random traces checked against
/// an independent double-precision simulation.
///
/// Hand examples use `HandTrace` (D = 4, scale 1/2): a query "weight w on e_d" gives a key e_d
/// the unnormalised weight w and a zero key the weight 1. All-zero queries attend uniformly.
final class H2OPolicyTests: XCTestCase {
    private func h2o(_ values: [String: String]) throws -> PolicySpec { try PolicySpec(name: "h2o", values: values) }

    // MARK: Hand-computed examples

    /// MHA, T = 6, P = 3, C = 3, R = 1, so H = 2 heavy hitters.
    /// Keys: k2 = e0, the others zero. Prompt queries zero; q3 puts weight 9 on e0; q4 = q5 = 0.
    ///
    /// Prefill (P = C, nothing cut): uniform causal rows [1], [1/2 1/2], [1/3 1/3 1/3], so the
    /// column sums are pos0 = 11/6, pos1 = 5/6, pos2 = 1/3.
    /// pos 3: attends [0 1 2 3] with weights [1 1 9 1]/12; scores 0: 23/12, 1: 11/12,
    ///   2: 4/12 + 9/12 = 13/12, 3: 1/12. Candidates [0 1 2] (3 is the recent window):
    ///   drop 1 → [0 2 3]. (On prefill scores alone 2 would have gone.)
    /// pos 4: uniform 3/12 over [0 2 3 4]: 0: 26/12, 2: 16/12, 3: 4/12, 4: 3/12; drop 3 → [0 2 4].
    /// pos 5: uniform 3/12 over [0 2 4 5]: 0: 29/12, 2: 19/12, 4: 6/12, 5: 3/12; drop 4 → [0 2 5].
    func testHandComputedMHAEvictsTheLowestAccumulatedScore() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 6, P: 3)
        trace.key(2, direction: 0)
        trace.query(3, [0: 9])
        let path = try trace.write(in: dir)
        let (result, events) = try TestTraces.replay(path, [try h2o(["budget": "3", "recent": "1"])])
        XCTAssertEqual(keptByStep(events), [0: [0, 2, 3], 1: [0, 2, 4], 2: [0, 2, 5]])
        for record in result.runs[0].steps {
            XCTAssertEqual(record.attendedTokens, 4, "C + 1 during the step")
            XCTAssertEqual(record.residentTokens, 3, "C after it")
        }
    }

    /// P = 5 > C = 3, R = 1, H = 2: the prompt is cut at once by its column sums.
    /// Keys: k3 = e0, others zero. Queries: rows 0-2 zero, q3 weight 9 on e0, q4 weight 16 on e0,
    /// q5 = q6 = 0. Prompt rows: [1], [1/2 1/2], [1/3 1/3 1/3], [1 1 1 9]/12, [1 1 1 16 1]/20.
    /// Column sums (in 60ths): pos0 = 60+30+20+5+3 = 118, pos1 = 58, pos2 = 28,
    /// pos3 = 45+48 = 93, pos4 = 3. Candidates [0 1 2 3]: the top two are 0 and 3; with the last
    /// slot 4 the prompt keeps [0 3 4].
    /// pos 5: uniform 15/60 over [0 3 4 5]: 0: 133, 3: 108, 4: 18, 5: 15; drop 4 → [0 3 5].
    /// pos 6: uniform over [0 3 5 6]: 0: 148, 3: 123, 5: 30, 6: 15; drop 5 → [0 3 6].
    func testPromptLongerThanBudgetKeepsTopColumnSumsAndTheRecentWindow() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 7, P: 5)
        trace.key(3, direction: 0)
        trace.query(3, [0: 9])
        trace.query(4, [0: 16])
        let path = try trace.write(in: dir)
        let (result, events, snapshots) = try TestTraces.observe(path, H2OPolicy.self, ["budget": "3", "recent": "1"])
        XCTAssertEqual(snapshots.first?.step, nil)
        XCTAssertEqual(snapshots.first?.resident, [[0, 3, 4]], "prefill keeps the top-2 column sums plus the last slot")
        XCTAssertEqual(keptByStep(events), [0: [0, 3, 5], 1: [0, 3, 6]])
        XCTAssertEqual(result.runs[0].steps[0].attendedTokens, 4)
    }

    /// Ties: keys k1 = k2 = e0 (identical), k0 = k3 = 0; P = 1, C = 3, R = 1.
    /// q1 puts weight 0 on e0: pos 1 gets exactly 0 from its own step (exp(−200) = 0 in float32),
    /// so it starts level with pos 2, which does not exist yet. q2 = q3 = 0 give uniform rows in
    /// which slots 1 and 2 have bit-identical logits, hence bit-identical probabilities.
    /// Scores at pos 3: 0: 1 + 1 + 1/3 + 1/4, 1: 0 + 1/3 + 1/4, 2: 1/3 + 1/4 (equal to 1), 3: 1/4.
    /// Candidates [0 1 2]: 1 and 2 tie for the minimum; CUDA's topk keeps the lower index, so
    /// the later (2) goes → [0 1 3].
    func testTiedScoresEvictTheLatestPosition() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 4, P: 1)
        trace.key(1, direction: 0)
        trace.key(2, direction: 0)
        trace.query(1, [0: 0])
        let path = try trace.write(in: dir)
        let (_, events) = try TestTraces.replay(path, [try h2o(["budget": "3", "recent": "1"])])
        XCTAssertEqual(keptByStep(events), [2: [0, 1, 3]])
    }

    /// A prompt made of ties, cut with q and k. Keys k0..k3 = e0..e3, k4 = 0; prompt row i puts
    /// weight 0 on every direction but its own key's, so it attends only to itself (row 4, with
    /// the zero key, too): every column sum is exactly 1. P = 5 > C = 3, R = 1: candidates
    /// [0 1 2 3] all tie and CUDA's topk keeps the lowest two → [0 1 4].
    /// pos 5, zero query: uniform 1/4 over [0 1 4 5]: scores 0: 1.25, 1: 1.25, 4: 1.25, 5: .25;
    /// candidates [0 1 4] tie again → the latest (4) goes → [0 1 5].
    func testPromptOfTiesKeepsTheLowestPositions() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 6, P: 5)
        for p in 0..<4 { trace.key(p, direction: p) }
        for i in 0..<5 {
            var weights: [Int: Double] = [0: 0, 1: 0, 2: 0, 3: 0]
            if i < 4 { weights[i] = 1 }
            trace.query(i, weights)
        }
        let path = try trace.write(in: dir)
        let (_, events, snapshots) = try TestTraces.observe(path, H2OPolicy.self, ["budget": "3", "recent": "1"])
        XCTAssertEqual(snapshots.first?.resident, [[0, 1, 4]])
        XCTAssertEqual(keptByStep(events), [0: [0, 1, 5]])
    }

    /// GQA, 2 query heads per kv head, P = 1, C = 3, R = 1. Keys: k0 = 0, k1 = e0, k2 = e1, k3 = e2.
    /// q0 = q1 = 0 (both heads): pos0's prefill score is 1 per head; pos 1 step: [1/2 1/2].
    /// pos 2, both heads weight 4 on e1: [1 1 4]/6.
    /// pos 3, head 0 weights e0 12, e1 7, e2 0: [1 12 7 0]/20 = [.05 .6 .35 0];
    ///        head 1 weights e0 0, e1 7, e2 12: [1 0 7 12]/20 = [.05 0 .35 .6].
    /// Per head: pos1 = 1/2 + 1/6 + (.6 | 0) = 1.2667 | 0.6667; pos2 = 4/6 + .35 = 1.0167 in both;
    /// pos0 ≈ 1.72 in both.
    /// sum:       pos1 = 1.9333 < pos2 = 2.0333 → drop 1 → [0 2 3]
    /// max:       pos1 = 2/3 + max(.6, 0) = 1.2667 > pos2 = 2/3 + .35 = 1.0167 → drop 2 → [0 1 3]
    /// per-qhead: pos1 = max(1.2667, .6667) > pos2 = 1.0167 → drop 2 → [0 1 3]
    func testGQASumAndMaxKeepDifferentTokens() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 4, P: 1, Hq: 2, Hkv: 1)
        trace.key(1, direction: 0)
        trace.key(2, direction: 1)
        trace.key(3, direction: 2)
        trace.query(2, [1: 4])
        trace.query(3, head: 0, [0: 12, 1: 7, 2: 0])
        trace.query(3, head: 1, [0: 0, 1: 7, 2: 12])
        let path = try trace.write(in: dir)
        let expected: [String: [Int32]] = ["sum": [0, 2, 3], "max": [0, 1, 3], "per-qhead": [0, 1, 3]]
        for (mode, kept) in expected {
            let (_, events) = try TestTraces.replay(path, [try h2o(["budget": "3", "recent": "1", "gqa-reduce": mode])])
            XCTAssertEqual(keptByStep(events), [2: kept], mode)
        }
    }

    /// GQA, where `max` (maximum per step, then accumulated) and `per-qhead` (per-head totals,
    /// then the maximum) disagree. P = 1, C = 3, R = 1; keys as above: A = pos1 (e0), B = pos2 (e1).
    /// pos 1, both heads weight 0 on e0: [1 0] (A gets nothing, not even from itself).
    /// pos 2, head 0 weights e0 5, e1 4: [.1 .5 .4]; head 1 weights e0 0, e1 0: [1 0 0].
    /// pos 3, head 0 weights e0 0, e1 4, e2 5: [.1 0 .4 .5]; head 1 e0 5, e1 0, e2 4: [.1 .5 0 .4].
    /// Per-head totals: head 0 A = .5, B = .8; head 1 A = .5, B = 0; pos0 ≥ 2.2 in both.
    /// sum:       A = 1.0, B = 0.8 → drop B → [0 1 3]
    /// max:       A = max(.5,0) + max(0,.5) = 1.0, B = .4 + .4 = .8 → drop B → [0 1 3]
    /// per-qhead: A = max(.5, .5) = .5, B = max(.8, 0) = .8 → drop A → [0 2 3]
    func testGQAPerQueryHeadRanksByTheLargestPerHeadTotal() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 4, P: 1, Hq: 2, Hkv: 1)
        trace.key(1, direction: 0)
        trace.key(2, direction: 1)
        trace.key(3, direction: 2)
        trace.query(1, [0: 0])
        trace.query(2, head: 0, [0: 5, 1: 4])
        trace.query(2, head: 1, [0: 0, 1: 0])
        trace.query(3, head: 0, [0: 0, 1: 4, 2: 5])
        trace.query(3, head: 1, [0: 5, 1: 0, 2: 4])
        let path = try trace.write(in: dir)
        let expected: [String: [Int32]] = ["sum": [0, 1, 3], "max": [0, 1, 3], "per-qhead": [0, 2, 3]]
        for (mode, kept) in expected {
            let (_, events) = try TestTraces.replay(path, [try h2o(["budget": "3", "recent": "1", "gqa-reduce": mode])])
            XCTAssertEqual(keptByStep(events), [2: kept], mode)
        }
    }

    /// The scorer uses 1/sqrt(D) = 1/2 even when the trace says softmax_scale = 1.
    /// P = 1, C = 2, R = 1; k1 = e0, k0 = k2 = 0; q1 = q2 = weight 3 on e0 (at scale 1/2).
    /// Scale 1/2: pos 1 [1 3]/4, pos 2 [1 3 1]/5 → pos0 = 1 + 1/4 + 1/5 = 1.45,
    ///   pos1 = 3/4 + 3/5 = 1.35 → drop 1 → [0 2].
    /// Scale 1 (weights squared): pos 1 [1 9]/10, pos 2 [1 9 1]/11 → pos0 = 1.19, pos1 = 1.72
    ///   → drop 0 → [1 2]. The second trace checks that branch: no stored scale, q doubled, so
    ///   the scorer's logits equal the first trace's logits at scale 1.
    func testScorerKeepsOneOverSqrtDWhenTheTraceScaleDiffers() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 3, P: 1)
        trace.key(1, direction: 0)
        trace.query(1, [0: 3])
        trace.query(2, [0: 3])
        let scaled = try trace.write(in: dir, name: "scale1.h5", softmaxScale: 1)
        let spec = try h2o(["budget": "2", "recent": "1"])
        XCTAssertEqual(keptByStep(try TestTraces.replay(scaled, [spec]).1), [1: [0, 2]])

        var doubled = HandTrace(T: 3, P: 1)
        doubled.key(1, direction: 0)
        doubled.query(1, [0: 9])
        doubled.query(2, [0: 9])
        let unscaled = try doubled.write(in: dir, name: "doubled.h5")
        XCTAssertEqual(keptByStep(try TestTraces.replay(unscaled, [spec]).1), [1: [1, 2]])
    }

    /// Attention-only layer, T = 8, P = 6, C = 4, R = 2, a trace made of ties. No prompt rows are
    /// recorded, so every prompt token scores 0; the prompt cut keeps the two earliest candidates
    /// (CUDA topk: lowest index first among ties) plus the last two: [0 1 4 5].
    /// pos 6, recorded row [.125 .25 0 0 .125 .25 .25] (sums to 1 over the attended [0 1 4 5 6]):
    ///   scores 0: .125, 1: .25, 4: .125, 5: .25, 6: .25; candidates [0 1 4]; 0 and 4 tie → drop 4.
    /// pos 7, row [.25 .125 0 0 0 .125 .25 .25] over [0 1 5 6 7]: scores 0: .375, 1: .375,
    ///   5: .375, 6: .5, 7: .25; candidates [0 1 5] all tie → drop 5 → [0 1 6 7].
    ///   (Dyadic values: exact in float32.)
    func testAttentionOnlyLayerStartsPromptScoresAtZero() throws {
        let dir = try TestTraces.directory(self)
        let rows: [Float] = [
            0.125, 0.25, 0, 0, 0.125, 0.25, 0.25, 0,
            0.25, 0.125, 0, 0, 0, 0.125, 0.25, 0.25
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("attn.h5"), T: 8, P: 6, Hq: 1, Hkv: 1, D: 4,
            layers: [TestTraces.Layer(attn: rows)])
        let (result, events, snapshots) = try TestTraces.observe(path, H2OPolicy.self, ["budget": "4", "recent": "2"])
        XCTAssertEqual(snapshots.first?.resident, [[0, 1, 4, 5]])
        XCTAssertEqual(keptByStep(events), [0: [0, 1, 5, 6], 1: [0, 1, 6, 7]])
        XCTAssertEqual(result.runs[0].steps.map(\.attendedTokens), [5, 5])
    }

    // MARK: Parameters

    func testRecentWindowDefaultsToHalfTheBudget() throws {
        let setup = PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 4,
                promptLength: 1, numTokens: 8),
            layer: LayerInfo(index: 0))
        let policy = try H2OPolicy(parameters: try h2o(["budget": "9"]).parameters, setup: setup)
        XCTAssertEqual(policy.recent, 4)
        XCTAssertEqual(policy.heavy, 5)
        XCTAssertEqual(policy.residentCap, 9)
        XCTAssertEqual(policy.reduce, .sum)
    }

    func testRefusesNoRecentWindowAndAWindowLargerThanTheBudget() throws {
        let setup = PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 4,
                promptLength: 1, numTokens: 8),
            layer: LayerInfo(index: 0))
        func failure(_ values: [String: String]) -> String? {
            do {
                _ = try H2OPolicy(parameters: try h2o(values).parameters, setup: setup)
                return nil
            } catch {
                return (error as? PolicyError)?.description
            }
        }
        let zero = failure(["budget": "8", "recent": "0"])
        XCTAssertNotNil(zero)
        XCTAssertTrue(zero?.contains("freezes") == true, zero ?? "")
        let derivedZero = failure(["budget": "1"])
        XCTAssertTrue(derivedZero?.contains("default budget/2 gives --recent 0") == true, derivedZero ?? "")
        let tooLarge = failure(["budget": "4", "recent": "5"])
        XCTAssertTrue(tooLarge?.contains("must not exceed --budget") == true, tooLarge ?? "")
        XCTAssertNil(failure(["budget": "4", "recent": "4"]), "R = C (no heavy hitters, a sliding window) is allowed")
        XCTAssertThrowsError(try h2o([:]), "--budget is required")
        XCTAssertThrowsError(try h2o(["budget": "4", "gqa-reduce": "mean"]))
    }

    // MARK: Properties on random traces

    /// Every step, every kv head, several budgets and all GQA modes: the policy's attended and
    /// resident sets equal an independent double-precision simulation of reference-policies 1.4,
    /// and the invariants hold: resident ≤ C, attended ≤ C + 1, the last R positions resident.
    func testRandomTracesMatchIndependentSimulation() throws {
        let dir = try TestTraces.directory(self)
        let T = 40, P = 12, D = 8
        var compared = 0, evictions = 0
        for (Hq, Hkv, seed) in [(4, 2, UInt64(11)), (3, 3, UInt64(12))] {
            let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: seed, values: false)
            let path = try TestTraces.write(
                to: dir.appendingPathComponent("r\(seed).h5"), T: T, P: P, Hq: Hq, Hkv: Hkv,
                D: D, layers: [layer])
            for (C, R) in [(6, 1), (8, 4), (10, 10), (5, 2), (16, 3)] {
                for mode in H2OPolicy.GroupReduce.allCases {
                    let values = ["budget": String(C), "recent": String(R), "gqa-reduce": mode.rawValue]
                    let (_, events, snapshots) = try TestTraces.observe(path, H2OPolicy.self, values)
                    let oracle = H2OOracle(
                        q: layer.q!, k: layer.k!, T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
                        budget: C, recent: R, mode: mode)
                    let label = "Hq \(Hq) Hkv \(Hkv) C \(C) R \(R) \(mode.rawValue)"
                    XCTAssertEqual(snapshots.count, 1 + (T - P), label)
                    XCTAssertEqual(snapshots[0].resident, oracle.prefill, "prefill, \(label)")
                    for s in snapshots.dropFirst() {
                        let step = s.step!
                        XCTAssertEqual(s.attended!, oracle.attended[step], "attended at step \(step), \(label)")
                        XCTAssertEqual(s.resident, oracle.resident[step], "resident at step \(step), \(label)")
                        let p = Int32(P + step)
                        for g in 0..<Hkv {
                            XCTAssertLessThanOrEqual(s.resident[g].count, C)
                            XCTAssertLessThanOrEqual(s.attended![g].count, C + 1)
                            for r in max(0, Int(p) - R + 1)...Int(p) {
                                XCTAssertTrue(s.resident[g].contains(Int32(r)), "recent \(r) at \(p), \(label)")
                            }
                        }
                        compared += 1
                    }
                    evictions += events.count
                }
            }
        }
        XCTAssertEqual(compared, 2 * 5 * 3 * (T - P))
        XCTAssertGreaterThan(evictions, 0)
    }

    func testBudgetCoveringTheTraceEqualsTheFullCache() throws {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: 30, Hq: 4, Hkv: 2, D: 8, seed: 21)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: 30, P: 8, Hq: 4, Hkv: 2, D: 8,
            layers: [layer])
        for mode in H2OPolicy.GroupReduce.allCases {
            let (result, events) = try TestTraces.replay(path, [try h2o(["budget": "30", "gqa-reduce": mode.rawValue])])
            XCTAssertTrue(events.isEmpty, mode.rawValue)
            let run = result.runs[0]
            XCTAssertEqual(run.summary.massRecall.min, 1, accuracy: 1e-5)
            XCTAssertEqual(run.summary.outputError!.max, 0, accuracy: 1e-6)
            for r in run.steps {
                XCTAssertEqual(r.attendedTokens, Double(r.position + 1))
                XCTAssertEqual(r.residentTokens, Double(r.position + 1))
            }
        }
    }

    /// With one query head per kv head every reduction is the reference's rule.
    func testAllGroupReductionsAgreeOnMHA() throws {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: 50, Hq: 3, Hkv: 3, D: 8, seed: 31)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: 50, P: 15, Hq: 3, Hkv: 3, D: 8,
            layers: [layer])
        func kept(_ mode: H2OPolicy.GroupReduce) throws -> [[Int32]] {
            let (_, events) = try TestTraces.replay(
                path, [try h2o(["budget": "9", "recent": "3", "gqa-reduce": mode.rawValue])])
            return events.map { [Int32($0.step), Int32($0.kvHead)] + $0.kept }
        }
        let sum = try kept(.sum)
        XCTAssertEqual(sum.count, 3 * 35, "one eviction per step and kv head")
        XCTAssertEqual(try kept(.max), sum)
        XCTAssertEqual(try kept(.perQueryHead), sum)
    }

    func testRunsAreDeterministicAndIndependentOfThreads() throws {
        let dir = try TestTraces.directory(self)
        let layers = [
            TestTraces.randomLayer(T: 60, Hq: 4, Hkv: 2, D: 8, seed: 41, index: 0),
            TestTraces.randomLayer(T: 60, Hq: 4, Hkv: 2, D: 8, seed: 42, index: 1)
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: 60, P: 20, Hq: 4, Hkv: 2, D: 8,
            numLayers: 2, layers: layers)
        let specs = try H2OPolicy.GroupReduce.allCases.map { try h2o(["budget": "12", "gqa-reduce": $0.rawValue]) }
        let (first, firstEvents) = try TestTraces.replay(path, specs, threads: 1)
        let (again, againEvents) = try TestTraces.replay(path, specs, threads: 1)
        let (threaded, threadedEvents) = try TestTraces.replay(path, specs, threads: 4)
        XCTAssertFalse(firstEvents.isEmpty)
        XCTAssertEqual(againEvents, firstEvents)
        XCTAssertEqual(threadedEvents, firstEvents)
        for i in specs.indices {
            XCTAssertEqual(again.runs[i].steps, first.runs[i].steps)
            XCTAssertEqual(threaded.runs[i].steps, first.runs[i].steps)
        }
    }
}

/// An independent simulation of reference-policies 1.4 in Double, straight from the row-major
/// q/k arrays: per kv head, positions in order and accumulated scores by position.
private struct H2OOracle {
    var prefill: [[Int32]] = []
    var attended: [[[Int32]]] = []  // [step][kv head]
    var resident: [[[Int32]]] = []

    init(
        q: [Float], k: [Float], T: Int, P: Int, Hq: Int, Hkv: Int, D: Int, budget C: Int, recent R: Int,
        mode: H2OPolicy.GroupReduce
    ) {
        let scale = 1 / Double(D).squareRoot()
        let group = Hq / Hkv
        func logit(_ i: Int, _ h: Int, _ j: Int) -> Double {
            var s = 0.0
            for d in 0..<D { s += Double(q[(i * Hq + h) * D + d]) * Double(k[(j * Hkv + h / group) * D + d]) }
            return scale * s
        }
        func softmax(_ x: [Double]) -> [Double] {
            let m = x.max()!
            let e = x.map { exp($0 - m) }
            let s = e.reduce(0, +)
            return e.map { $0 / s }
        }
        var slots = Array(repeating: (0..<P).map { Int32($0) }, count: Hkv)
        // score[g][h][position]: per-head totals for per-qhead; row 0 holds the group's score otherwise.
        var score = Array(repeating: Array(repeating: Array(repeating: 0.0, count: T), count: group), count: Hkv)
        func rank(_ g: Int, _ p: Int32) -> Double {
            mode == .perQueryHead ? score[g].map { $0[Int(p)] }.max()! : score[g][0][Int(p)]
        }
        func combine(_ g: Int, _ perHead: [[Double]], _ positions: [Int32]) {
            for (i, p) in positions.enumerated() {
                let column = perHead.map { $0[i] }
                switch mode {
                case .sum: score[g][0][Int(p)] += column.reduce(0, +)
                case .max: score[g][0][Int(p)] += column.max()!
                case .perQueryHead: for h in 0..<group { score[g][h][Int(p)] += column[h] }
                }
            }
        }
        for g in 0..<Hkv {
            var sums = Array(repeating: Array(repeating: 0.0, count: P), count: group)
            for h in 0..<group {
                for i in 0..<P {
                    let a = softmax((0...i).map { logit(i, g * group + h, $0) })
                    for j in 0...i { sums[h][j] += a[j] }
                }
            }
            combine(g, sums, slots[g])
            if P > C {
                // Keep the top C − R candidates (ties: the earlier position), then the last R.
                let candidates = slots[g][0..<(P - R)]
                let heavy = candidates.sorted { rank(g, $0) != rank(g, $1) ? rank(g, $0) > rank(g, $1) : $0 < $1 }
                    .prefix(C - R).sorted()
                slots[g] = Array(heavy) + slots[g][(P - R)...]
            }
        }
        prefill = slots
        for p in P..<T {
            for g in 0..<Hkv {
                slots[g].append(Int32(p))
                let perHead = (0..<group).map { h in softmax(slots[g].map { logit(p, g * group + h, Int($0)) }) }
                combine(g, perHead, slots[g])
            }
            attended.append(slots)
            for g in 0..<Hkv where slots[g].count > C {
                var victim = 0
                for i in 1..<(slots[g].count - R) where rank(g, slots[g][i]) <= rank(g, slots[g][victim]) { victim = i }
                slots[g].remove(at: victim)
            }
            resident.append(slots)
        }
    }
}
