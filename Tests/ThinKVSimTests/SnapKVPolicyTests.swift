import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// SnapKV's three variants (reference-policies.md 2.7 and 3): hand-computed selections that
/// separate the softmax domains and poolings, kvpress's trigger and window-first slot order,
/// the rkv variant against R-KV with λ = 1, and properties on random traces.
///
/// Hand examples use `TestTraces.plane` (D = 2, scale 1/√2): a query (√2, 0) gives a key (x, y)
/// the logit x, a query (0, √2) the logit y, a zero query the logit 0.
final class SnapKVPolicyTests: XCTestCase {
    private func snapkv(_ values: [String: String]) throws -> PolicySpec {
        try PolicySpec(name: "snapkv", values: values)
    }
    private let r2 = Float(2).squareRoot()

    // MARK: original

    /// P = 6 ≥ B = 4, w = 1, kernel 3, T = 8. The window query (pos 5, (√2, 0)) gives the keys
    /// logits [ln 6, 0, 0, 0, ln 3 | 0], so its full causal row has weights [6 1 1 1 3 | 1]/13.
    /// Average pooling over 3 slots with the zero padding counted (÷3 everywhere, in 13ths):
    /// j0 (0+6+1)/3 = 7/3, j1 8/3, j2 1, j3 5/3, j4 (1+3+0)/3 = 4/3. Keep B − w = 3 in score
    /// order, then the window: [1 0 3 5]. (Dividing edges by the slots actually covered would
    /// give j0 3.5 and j4 2 and keep {0 1 4}.)
    /// Max pooling: j0 6, j1 6, j2 1, j3 3, j4 3 → j0, j1 (tie, lower slot first), j3: [0 1 3 5].
    /// Decoding changes nothing: the cache grows by one per step and no event is reported.
    func testOriginalAveragePoolingCountsTheZeroPadding() throws {
        let keys: [[(Float, Float)]] = [
            [(logf(6) * r2, 0)], [(0, 0)], [(0, 0)], [(0, 0)], [(logf(3) * r2, 0)],
            [(0, 0)], [(0, 0)], [(0, 0)]
        ]
        let path = try TestTraces.plane(self, keys: keys, queries: [5: [(r2, 0)]], P: 6)
        let base = ["snap-variant": "original", "budget": "4", "window": "1", "kernel": "3"]
        let (_, events, snapshots) = try TestTraces.observe(path, SnapKVPolicy.self, base)
        XCTAssertEqual(snapshots[0].resident, [[1, 0, 3, 5]])
        XCTAssertTrue(events.isEmpty)
        XCTAssertEqual(snapshots.last?.resident, [[1, 0, 3, 5, 6, 7]])
        var maxPool = base
        maxPool["pool"] = "max"
        XCTAssertEqual(try TestTraces.observe(path, SnapKVPolicy.self, maxPool).2[0].resident, [[0, 1, 3, 5]])
    }

    /// The softmax domain: P = 5, B = 3, w = 2 (rows at pos 3 and 4), kernel 1, T = 6. Keys:
    /// c0 (ln 4, 0), c1 (0, ln 3), c2 (0, 0), window w0 (ln 1000, 0), w1 (0, 0); queries pos 3
    /// (√2, 0), pos 4 (0, √2).
    /// original (full causal rows, summed): row pos 3 sees c0 c1 c2 w0 with weights 4 1 1 1000,
    /// row pos 4 sees all five with 1 3 1 1 1: c0 = 4/1006 + 1/7 = .147, c1 = 1/1006 + 3/7 = .430,
    /// c2 = .144 → keep c1: [1 3 4].
    /// rkv variant (softmax over the candidates only, mean): row pos 3 → 4/6 1/6 1/6, row pos 4 →
    /// 1/5 3/5 1/5: c0 = .433, c1 = .383, c2 = .183 → keep c0: [0 3 4]. Renormalising among the
    /// candidates gives the first row's candidate mass full weight although it went to w0.
    func testFullRowSoftmaxAndCandidateSoftmaxKeepDifferentTokens() throws {
        let keys: [[(Float, Float)]] = [[(logf(4), 0)], [(0, logf(3))], [(0, 0)], [(logf(1000), 0)], [(0, 0)], [(0, 0)]]
        let path = try TestTraces.plane(self, keys: keys, queries: [3: [(r2, 0)], 4: [(0, r2)]], P: 5)
        let common = ["budget": "3", "window": "2", "kernel": "1"]
        let original = try TestTraces.observe(
            path, SnapKVPolicy.self, common.merging(["snap-variant": "original"]) { $1 })
        XCTAssertEqual(original.2[0].resident, [[1, 3, 4]])
        let rkv = try TestTraces.observe(path, SnapKVPolicy.self, common.merging(["snap-variant": "rkv"]) { $1 })
        XCTAssertEqual(rkv.2[0].resident, [[0, 3, 4]])
    }

    // MARK: kvpress

    /// P = 1, B = 4, w = 2, interval 3, default kernel 5 (average), zero queries, T = 10.
    /// The press acts after steps 2, 5, 8 (every 3rd decode step):
    /// - step 2 (pos 3): L = 4 ≤ B, compression ratio 0: nothing, not even a re-ordering.
    /// - step 5 (pos 6): slots [0..6], candidates 0-4, window pos 5, 6. Uniform causal rows give
    ///   every candidate the same mean weight a; pooled (÷5): j0 3a/5, j1 4a/5, j2 a, j3 4a/5,
    ///   j4 3a/5 → keep j2, then j1 (ties j3, lower slot). The window carries the top score, so
    ///   it comes first: [5 6 2 1].
    /// - step 8 (pos 9): slots [5 6 2 1 7 8 9], candidates pos 5 6 2 1 7 → the middle one (pos 2),
    ///   then slot 1 (pos 6): [8 9 2 6].
    /// With position order the first compression leaves [1 2 5 6], the second sees candidates
    /// [1 2 5 6 7] and keeps pos 5 and pos 2: [2 5 8 9].
    func testKVPressCompressesEveryIntervalAboveBudgetWindowFirst() throws {
        let keys = (0..<10).map { p -> [(Float, Float)] in [(Float(p % 3), 1)] }
        let path = try TestTraces.plane(self, keys: keys, P: 1)
        let base = ["snap-variant": "kvpress", "budget": "4", "window": "2", "interval": "3"]
        let (_, events, snapshots) = try TestTraces.observe(path, SnapKVPolicy.self, base)
        XCTAssertEqual(snapshots[3].resident, [[0, 1, 2, 3]], "L = B at step 2: untouched")
        XCTAssertEqual(snapshots[6].resident, [[5, 6, 2, 1]])
        XCTAssertEqual(snapshots[9].resident, [[8, 9, 2, 6]])
        XCTAssertEqual(keptByStep(events), [5: [1, 2, 5, 6], 8: [2, 6, 8, 9]])
        var byPosition = base
        byPosition["slot-order"] = "position"
        let (_, positionEvents) = try TestTraces.replay(path, [try snapkv(byPosition)])
        XCTAssertEqual(keptByStep(positionEvents), [5: [1, 2, 5, 6], 8: [2, 5, 8, 9]])
    }

    /// GQA, Hq = 2, Hkv = 1, kvpress averages the pooled per-head scores over the group.
    /// P = 1, B = 3, w = 2, interval 4, kernel 1, T = 5: the press acts after step 3 (pos 4) on
    /// slots [0..4]: candidates pos 0-2, window pos 3, 4. Keys c0 (4, −4), c1 (1, 1), c2 (0, 0),
    /// pos 3 and 4 (0, 0); window queries (√2, 0) for head 0 and (0, √2) for head 1 at both
    /// rows. Head 0's logits [4 1 0 | 0 0], head 1's [−4 1 0 | 0 0].
    /// Per-head scores (mean of the two causal rows, of 4 and 5 slots): head 0 ≈ c0 .913,
    /// c1 .045, c2 .017; head 1 ≈ c0 .004, c1 .524, c2 .193; group mean: c0 .458, c1 .285,
    /// c2 .105 → keep c0, window first: [3 4 0].
    /// With c0 = (1, −4) head 0 gives c0 and c1 .344 each, so the group mean is c0 .174, c1 .434
    /// and kvpress keeps c1: [3 4 1]. The rkv variant takes the group max of the logits: c0 4 (or
    /// 1), c1 1, c2 0; it keeps c0 both times (at 1 it ties with c1 and the lower slot wins).
    func testKVPressAveragesPerHeadScoresOverTheGroup() throws {
        func run(_ c0: (Float, Float), variant: String) throws -> [[Int32]] {
            let keys: [[(Float, Float)]] = [[c0], [(1, 1)], [(0, 0)], [(0, 0)], [(0, 0)]]
            let q = [(r2, Float(0)), (Float(0), r2)]
            let path = try TestTraces.plane(
                self, keys: keys, queries: [3: q, 4: q], P: 1, Hq: 2, name: "g\(variant)\(c0.0).h5")
            var values = ["snap-variant": variant, "budget": "3", "window": "2", "kernel": "1"]
            if variant == "kvpress" { values["interval"] = "4" } else { values["divide"] = "4" }
            return try TestTraces.observe(path, SnapKVPolicy.self, values).2.last!.resident
        }
        XCTAssertEqual(try run((4, -4), variant: "kvpress"), [[3, 4, 0]])
        XCTAssertEqual(try run((1, -4), variant: "kvpress"), [[3, 4, 1]])
        XCTAssertEqual(try run((4, -4), variant: "rkv"), [[0, 3, 4]])
        XCTAssertEqual(try run((1, -4), variant: "rkv"), [[0, 3, 4]], "c0 and c1 tie at logit 1: the lower slot")
    }

    // MARK: rkv variant

    /// R-KV's SnapKV is R-KV's importance path alone: with λ = 1 R-KV ranks by the same numbers,
    /// so both keep the same tokens in the same order at every step, for both triggers.
    func testRKVVariantMatchesRKVWithImportanceOnly() throws {
        let path = try randomTrace(T: 90, P: 12, seed: 91)
        for extra in [["divide": "8"], ["trigger": "buffer", "buffer": "9"], ["divide": "5", "slot-order": "position"]]
        {
            let values = ["budget": "14", "window": "4"].merging(extra) { $1 }
            let snap = try TestTraces.observe(path, SnapKVPolicy.self, values)
            let rkv = try TestTraces.observe(path, RKVPolicy.self, values.merging(["lambda": "1"]) { $1 })
            XCTAssertFalse(snap.1.isEmpty, "\(values)")
            XCTAssertEqual(snap.1.map(\.kept), rkv.1.map(\.kept), "\(values)")
            XCTAssertEqual(snap.2.map(\.resident), rkv.2.map(\.resident), "physical order, \(values)")
        }
    }

    // MARK: Parameters

    func testDefaultsDependOnTheVariantAndMisplacedOptionsAreRefused() throws {
        func make(_ values: [String: String], P: Int = 10) throws -> SnapKVPolicy {
            try SnapKVPolicy(parameters: try snapkv(values).parameters, setup: setup(P: P))
        }
        let rkv = try make(["budget": "128"])
        XCTAssertEqual(rkv.variant, .rkv)
        XCTAssertEqual(rkv.window, 8)
        XCTAssertEqual(rkv.residentCap, 128 + 128 - 1)
        XCTAssertEqual(try make(["budget": "128", "snap-variant": "original"]).window, 32)
        XCTAssertNil(
            try make(["budget": "128", "snap-variant": "original"]).residentCap, "the cache grows after the prompt")
        let press = try make(["budget": "128", "snap-variant": "kvpress"], P: 300)
        XCTAssertEqual(press.window, 64)
        XCTAssertEqual(press.interval, 512)
        XCTAssertEqual(press.residentCap, 300 + 512 - 1)
        for (values, message) in [
            (["budget": "8"], "must exceed --window"),
            (["budget": "64", "kernel": "6"], "must be odd"),
            (
                ["budget": "64", "snap-variant": "original", "divide": "64"],
                "--divide applies to --snap-variant rkv only"
            ),
            (["budget": "128", "snap-variant": "kvpress", "trigger": "buffer"], "--trigger applies"),
            (["budget": "64", "interval": "10"], "--interval applies to --snap-variant kvpress only"),
            (["budget": "128", "snap-variant": "kvpress", "interval": "64"], "needs more of them than --window"),
            (["budget": "64", "trigger": "buffer", "buffer": "4"], "at least --window")
        ] {
            XCTAssertThrowsError(try make(values), "\(values)") { error in
                XCTAssertTrue((error as? PolicyError)?.description.contains(message) == true, "\(error)")
            }
        }
        XCTAssertThrowsError(try snapkv(["budget": "64", "pool": "median"]))
        XCTAssertNotNil(PolicyRegistry.type(named: "snapkv"))
    }

    // MARK: Properties on random traces

    /// Every variant: the resident set stays within `residentCap` (original: B after the prompt,
    /// then one more per step), compressions keep exactly B including the w newest positions,
    /// and they happen only on the variant's schedule.
    func testResidentStaysWithinTheCapForEveryVariant() throws {
        var compressions = 0
        for (P, seed) in [(6, UInt64(93)), (40, UInt64(94))] {
            let path = try randomTrace(T: 100, P: P, seed: seed, name: "r\(seed).h5")
            for values in [
                ["snap-variant": "rkv", "budget": "12", "window": "3", "divide": "7"],
                ["snap-variant": "rkv", "budget": "12", "window": "3", "trigger": "buffer", "buffer": "6"],
                ["snap-variant": "original", "budget": "20", "window": "4"],
                ["snap-variant": "kvpress", "budget": "15", "window": "5", "interval": "11"],
                [
                    "snap-variant": "kvpress", "budget": "9", "window": "2", "interval": "3", "pool": "max",
                    "slot-order": "position"
                ]
            ] {
                let label = "P \(P) \(values)"
                let (_, events, snapshots) = try TestTraces.observe(path, SnapKVPolicy.self, values)
                let policy = try SnapKVPolicy(parameters: try snapkv(values).parameters, setup: setup(P: P))
                let B = policy.budget, w = policy.window
                if policy.variant == .original {
                    XCTAssertTrue(events.isEmpty, label)
                    XCTAssertEqual(snapshots[0].resident[0].count, min(P, B), label)
                }
                var previous = snapshots[0].resident
                for s in snapshots.dropFirst() {
                    let step = s.step!, p = P + step
                    for g in 0..<2 {
                        XCTAssertEqual(s.attended![g], previous[g] + [Int32(p)], "attended at \(p), \(label)")
                        if let cap = policy.residentCap { XCTAssertLessThanOrEqual(s.resident[g].count, cap, label) }
                        guard s.resident[g] != s.attended![g] else { continue }
                        compressions += 1
                        let onSchedule: Bool
                        switch policy.variant {
                        case .rkv:
                            onSchedule =
                                policy.trigger == .legacy ? p % policy.divide == 0 : (step + 1) % policy.buffer == 0
                        case .original: onSchedule = false
                        case .kvpress: onSchedule = (step + 1) % policy.interval == 0
                        }
                        XCTAssertTrue(onSchedule, "compressed off-schedule at \(p), \(label)")
                        XCTAssertEqual(s.resident[g].count, B, label)
                        XCTAssertTrue(Set((p - w + 1...p).map { Int32($0) }).isSubset(of: s.resident[g]), label)
                    }
                    previous = s.resident
                }
            }
        }
        XCTAssertGreaterThan(compressions, 20)
    }

    func testBudgetCoveringTheTraceEqualsTheFullCache() throws {
        let path = try randomTrace(T: 50, P: 12, seed: 95, values: true)
        for variant in SnapKVPolicy.Variant.allCases {
            var values = ["snap-variant": variant.rawValue, "budget": "51", "window": "4"]
            if variant == .kvpress { values["interval"] = "5" }
            if variant == .rkv { values["divide"] = "4" }
            let (result, events) = try TestTraces.replay(path, [try snapkv(values)])
            XCTAssertTrue(events.isEmpty, variant.rawValue)
            XCTAssertEqual(result.runs[0].summary.massRecall.min, 1, accuracy: 1e-5)
            XCTAssertEqual(result.runs[0].summary.outputError!.max, 0, accuracy: 1e-6)
        }
    }

    func testRunsAreDeterministicAndIndependentOfThreads() throws {
        let dir = try TestTraces.directory(self)
        let layers = [
            TestTraces.randomLayer(T: 80, Hq: 4, Hkv: 2, D: 8, seed: 96, index: 0),
            TestTraces.randomLayer(T: 80, Hq: 4, Hkv: 2, D: 8, seed: 97, index: 1)
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: 80, P: 30, Hq: 4, Hkv: 2, D: 8,
            numLayers: 2, layers: layers)
        let specs = [
            try snapkv(["budget": "12", "divide": "8"]),
            try snapkv(["snap-variant": "original", "budget": "12", "window": "4"]),
            try snapkv(["snap-variant": "kvpress", "budget": "12", "window": "4", "interval": "6"])
        ]
        let (first, firstEvents) = try TestTraces.replay(path, specs, threads: 1)
        let (threaded, threadedEvents) = try TestTraces.replay(path, specs, threads: 4)
        XCTAssertGreaterThan(firstEvents.count, 10)
        XCTAssertEqual(threadedEvents, firstEvents)
        for i in specs.indices { XCTAssertEqual(threaded.runs[i].steps, first.runs[i].steps) }
    }

    // MARK: Helpers

    private func randomTrace(T: Int, P: Int, seed: UInt64, values: Bool = false, name: String = "r.h5") throws -> String
    {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 8, seed: seed, values: values)
        return try TestTraces.write(
            to: dir.appendingPathComponent(name), T: T, P: P, Hq: 4, Hkv: 2, D: 8, layers: [layer])
    }

    private func setup(P: Int) -> PolicySetup {
        PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 1, numQHeads: 4, numKVHeads: 2, headDim: 8,
                promptLength: P, numTokens: 400),
            layer: LayerInfo(index: 0))
    }
}
