import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// LazyEviction (recurrence tracking, lagged eviction every W steps): steps counted by hand,
/// properties on random traces, and `--kept` against tools/reference/lazyeviction_reference.py.
final class LazyEvictionPolicyTests: XCTestCase {
    /// Budget 3, window 2, prompt of 3. Keys: positions 0…7 along e0, e1, e2, e3, e0, e1, e2, e3;
    /// each query attends only to the directions it names (the others get probability 0 <
    /// alpha), so a token is important exactly when its direction is named. c = step + 1.
    /// - c 1 (p 3) names e0: position 0 → last 1, mri 1 (every token started at 0).
    /// - c 2 (p 4, last 1) names e1: position 1 → last 2, mri 2. 5 tokens > 3 and c is even: of
    ///   the slots before the last 2 ([0, 1, 2]) one stays. importance = 2/(1 + e^{1 + (c −
    ///   last)/mri}) + 2/(1 + e^{mri − 1}): position 0: 2/(1 + e^2) + 1 = 1.238; position 1: 2/(1 +
    ///   e) + 2/(1 + e) = 1.076; position 2 (never important): 0. Position 0 stays → [0, 3, 4]:
    ///   the token just attended goes, the one that recurred stays.
    /// - c 3 (p 5) names e3: position 3 → last 3, mri 3. Odd c: nothing.
    /// - c 4 (p 6) names e0: positions 0 and 4 → last 4, mri 3 both. Slots [0, 3, 4, 5, 6]; of
    ///   [0, 3, 4]: positions 0 and 4 tie at 2/(1 + e) + 2/(1 + e^2) = 0.776, position 3 has
    ///   2/(1 + e^{4/3}) + 0.238 = 0.656. The tie goes to the lower slot → [0, 5, 6].
    func testRecurringTokensOutliveRecentlyAttendedOnesByHand() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 8, P: 3)
        for p in 0..<8 { trace.key(p, direction: p % 4) }
        func only(_ d: Int) -> [Int: Double] { Dictionary(uniqueKeysWithValues: (0..<4).map { ($0, $0 == d ? 1 : 0) }) }
        trace.query(3, only(0))
        trace.query(4, only(1))
        trace.query(5, only(3))
        trace.query(6, only(0))
        trace.query(7, only(2))
        let path = try trace.write(in: dir)
        for dtype in ["float32", "float16"] {
            let spec = try PolicySpec(
                name: "lazyeviction", values: ["budget": "3", "window": "2", "score-dtype": dtype])
            XCTAssertEqual(keptByStep(try TestTraces.replay(path, [spec]).1), [1: [0, 3, 4], 3: [0, 5, 6]], dtype)
        }
    }

    func testRefusesABudgetSmallerThanTheWindow() throws {
        let setup = PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 1, numQHeads: 2, numKVHeads: 1, headDim: 4,
                promptLength: 300, numTokens: 1000),
            layer: LayerInfo(index: 0))
        func make(_ values: [String: String]) throws -> LazyEvictionPolicy {
            try LazyEvictionPolicy(
                parameters: try PolicySpec(name: "lazyeviction", values: values).parameters, setup: setup)
        }
        XCTAssertThrowsError(try make(["budget": "100"])) {
            XCTAssertTrue("\($0)".contains("at least --window"), "\($0)")
        }
        XCTAssertEqual(
            try make(["budget": "128"]).residentCap, 300 + 127,
            "a prompt over the budget stays until the first eviction")
        XCTAssertEqual(try make(["budget": "500", "window": "175"]).residentCap, 500 + 174)
    }

    /// The resident set never exceeds `residentCap`; evictions happen only on steps c with
    /// c % W == 0, before the attention, keep exactly the budget including the W newest
    /// positions; two replays (one and several threads) agree.
    func testResidentStaysWithinTheCapAndEvictsOnlyEveryWindow() throws {
        let dir = try TestTraces.directory(self)
        for (P, seed) in [(6, UInt64(41)), (45, UInt64(42))] {
            let T = 150
            let layer = TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 8, seed: seed, values: false)
            let path = try TestTraces.write(
                to: dir.appendingPathComponent("r\(seed).h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 8,
                layers: [layer])
            for values in [
                ["budget": "24", "window": "6"], ["budget": "30", "window": "10", "alpha": "0.02"],
                ["budget": "12", "window": "4", "score-dtype": "float16"]
            ] {
                let label = "P \(P) \(values)"
                let (_, events, snapshots) = try TestTraces.observe(path, LazyEvictionPolicy.self, values)
                let spec = try PolicySpec(name: "lazyeviction", values: values)
                let setup = PolicySetup(
                    header: TraceHeader(
                        model: "m", numLayers: 1, numQHeads: 4, numKVHeads: 2, headDim: 8,
                        promptLength: P, numTokens: T),
                    layer: LayerInfo(index: 0))
                let policy = try LazyEvictionPolicy(parameters: spec.parameters, setup: setup)
                let B = policy.budget, W = policy.window
                XCTAssertGreaterThan(events.count, 4, label)
                var previous = snapshots[0].resident
                XCTAssertEqual(previous[0].count, P, "nothing at prefill: \(label)")
                for s in snapshots.dropFirst() {
                    let step = s.step!, p = P + step
                    for g in 0..<2 {
                        XCTAssertLessThanOrEqual(s.resident[g].count, policy.residentCap!, label)
                        XCTAssertEqual(s.attended![g], s.resident[g], "evictions come before the attention: \(label)")
                        guard s.resident[g].count < previous[g].count + 1 else { continue }
                        XCTAssertEqual((step + 1) % W, 0, "evicted off the window at \(p): \(label)")
                        XCTAssertEqual(s.resident[g].count, B, label)
                        XCTAssertEqual(
                            Array(s.resident[g].suffix(W)), (p - W + 1...p).map { Int32($0) },
                            "the window stays last: \(label)")
                    }
                    previous = s.resident
                }
                let again = try TestTraces.replay(path, [spec], threads: nil).1
                XCTAssertEqual(PythonReference.byKey(again), PythonReference.byKey(events), "deterministic: \(label)")
            }
        }
    }

    // MARK: NumPy re-derivation

    /// float32 and the code's fp16/bf16 rounding, GQA, two layers: the kept sets of every event
    /// equal those of tools/reference/lazyeviction_reference.py.
    func testKeptSetsMatchTheNumPyRederivation() throws {
        try PythonReference.requireNumPy()
        let dir = try TestTraces.directory(self)
        let T = 220, P = 30
        let layers = [
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 51, index: 0),
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 52, index: 1)
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("lazy.h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 16,
            numLayers: 2, layers: layers, dtype: .float16)
        let cases: [[String: String]] = [
            ["budget": "64", "window": "16"],
            ["budget": "40", "window": "8", "alpha": "0.01"],
            ["budget": "50", "window": "25", "score-dtype": "float16"],
            ["budget": "30", "window": "5", "alpha": "0.002", "score-dtype": "float16"],
            ["budget": "48", "window": "12", "score-dtype": "bfloat16"]
        ]
        for values in cases {
            let swift = PythonReference.byKey(
                try TestTraces.replay(path, [try PolicySpec(name: "lazyeviction", values: values)]).1)
            let numpy = PythonReference.byKey(
                try PythonReference.keptEvents(
                    script: "lazyeviction_reference.py", [path] + values.flatMap { ["--\($0.key)", $0.value] }))
            XCTAssertGreaterThan(swift.count, 5, "\(values)")
            XCTAssertEqual(swift, numpy, "\(values)")
        }
    }
}
