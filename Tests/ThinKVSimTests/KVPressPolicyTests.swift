import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// kvpress's decode-time presses (tova, knorm, keydiff, pyramidkv): hand-computed kept sets and
/// physical orders, the DecodingPress target and ratio, PyramidKV's layer budgets, parameter
/// checks, the real trace, and `--kept` against tools/reference/kvpress_reference.py.
final class KVPressPolicyTests: XCTestCase {
    /// A one-layer MHA trace (D = 2) with the given keys `[T][2]` and queries (zero if absent).
    private func trace(_ keys: [(Float, Float)], P: Int, queries: [Float]? = nil, name: String = "t.h5") throws
        -> String
    {
        let dir = try TestTraces.directory(self)
        let T = keys.count
        return try TestTraces.write(
            to: dir.appendingPathComponent(name), T: T, P: P, Hq: 1, Hkv: 1, D: 2,
            layers: [
                TestTraces.Layer(
                    q: queries ?? [Float](repeating: 0, count: T * 2),
                    k: keys.flatMap { [$0.0, $0.1] })
            ])
    }

    // MARK: knorm

    /// Norms: pos0 3, pos1 1, pos2 2, pos3 0.5, pos4 2. Budget 3, interval 1, P = 3.
    /// Step 0 (pos 3): L = 4 > 3, keep the 3 best of −norm = [−3 −1 −2 −.5]: pos3, pos1, pos2 in
    /// that (topk) order → resident [3 1 2].
    /// Step 1 (pos 4): slots [3 1 2 4], −norm [−.5 −1 −2 −2]: pos 2 and pos 4 tie; topk keeps the
    /// lower slot (pos 2, slot 2) → [3 1 2]: the newest token goes, no window protects it.
    func testKnormKeepsTheSmallestKeysInTopkOrder() throws {
        let path = try trace([(3, 0), (0, 1), (0, 2), (0.5, 0), (0, -2)], P: 3)
        let (_, events, snapshots) = try TestTraces.observe(path, KnormPolicy.self, ["budget": "3", "interval": "1"])
        XCTAssertEqual(snapshots.map(\.resident), [[[0, 1, 2]], [[3, 1, 2]], [[3, 1, 2]]])
        XCTAssertEqual(keptByStep(events), [0: [1, 2, 3], 1: [1, 2, 3]])
    }

    /// `--compression-ratio 0.5` (CompressionRatioDecodingPress): target = max(1, ⌊(p + 1)/2⌋).
    /// Norms 1..8 by position, reversed (pos0 8 … pos7 1); P = 4, interval 2.
    /// Step 1 (pos 5): target ⌊6/2⌋ = 3 of L = 6: the three smallest, pos 5, 4, 3.
    /// Step 3 (pos 7): L = 5 ([5 4 3 6 7]), target ⌊8/2⌋ = 4: drop pos 3 (norm 5) → [7 6 5 4].
    func testCompressionRatioKeepsAFractionOfTheTokensSeen() throws {
        let keys: [(Float, Float)] = (0..<8).map { (Float(8 - $0), 0) }
        let path = try trace(keys, P: 4)
        let (_, events, snapshots) = try TestTraces.observe(
            path, KnormPolicy.self, ["compression-ratio": "0.5", "interval": "2"])
        XCTAssertEqual(keptByStep(events), [1: [3, 4, 5], 3: [4, 5, 6, 7]])
        XCTAssertEqual(snapshots.last?.resident, [[7, 6, 5, 4]])
    }

    // MARK: keydiff

    /// Keys pos0 (1,0), pos1 (2,0), pos2 (0,1), pos3 (1,0); P = 3, budget 2, interval 1.
    /// Unit keys (1,0) (1,0) (0,1) (1,0): anchor (.75, .25), ‖anchor‖ = .7906; cos with (1,0) =
    /// .9487, with (0,1) = .3162. Scores −cos: [−.9487 −.9487 −.3162 −.9487] → keep pos 2, then
    /// the lowest of the tied slots, pos 0 → resident [2 0].
    func testKeyDiffKeepsTheKeysLeastLikeTheMeanUnitKey() throws {
        let path = try trace([(1, 0), (2, 0), (0, 1), (1, 0)], P: 3)
        let (_, events, snapshots) = try TestTraces.observe(path, KeyDiffPolicy.self, ["budget": "2", "interval": "1"])
        XCTAssertEqual(keptByStep(events), [0: [0, 2]])
        XCTAssertEqual(snapshots.last?.resident, [[2, 0]])
        // The scores themselves.
        let reader = try TraceReader(path: path)
        let data = try LayerData.load(from: reader, layer: 0)
        let scores = KeyDiffScorer.scores(slots: [0, 1, 2, 3], kvHead: 0, data: data, keys: data.keys!, dtype: .float32)
        let a = 0.75 / (0.75 * 0.75 + 0.25 * 0.25).squareRoot(), b = 0.25 / (0.75 * 0.75 + 0.25 * 0.25).squareRoot()
        for (s, e) in zip(scores, [-a, -a, -b, -a]) { XCTAssertEqual(s, e, accuracy: 1e-12) }
    }

    // MARK: tova

    /// HandTrace (D = 4, scale 1/2), P = 3, budget 2, interval 1. Keys e0, e1, e2, 0.
    /// MHA: the query of pos 3 weights e0 2, e1 5, e2 1: probabilities [2 5 1 1]/9; candidates
    /// [2/9 5/9 1/9], the newest padded with 5/9 + 1 → keep [3 1] (topk order).
    /// GQA, 2 query heads on 1 kv head: head 0 weights e0 6 → [6 1 1 1]/9, head 1 e2 8 →
    /// [1 1 8 1]/11; mean over the heads: pos0 (6/9 + 1/11)/2 = .379, pos1 (1/9 + 1/11)/2 = .101,
    /// pos2 (1/9 + 8/11)/2 = .419 → keep [3 2].
    func testTOVAKeepsWhatTheCurrentQueryAttendsAveragedOverAllHeads() throws {
        let dir = try TestTraces.directory(self)
        var mha = HandTrace(T: 4, P: 3)
        for p in 0..<3 { mha.key(p, direction: p) }
        mha.query(3, [0: 2, 1: 5, 2: 1])
        let (_, _, snapshots) = try TestTraces.observe(
            try mha.write(in: dir), TOVAPolicy.self, ["budget": "2", "interval": "1"])
        XCTAssertEqual(snapshots.last?.resident, [[3, 1]])

        var gqa = HandTrace(T: 4, P: 3, Hq: 2, Hkv: 1)
        for p in 0..<3 { gqa.key(p, direction: p) }
        gqa.query(3, head: 0, [0: 6])
        gqa.query(3, head: 1, [2: 8])
        let (_, events, grouped) = try TestTraces.observe(
            try gqa.write(in: dir, name: "gqa.h5"), TOVAPolicy.self, ["budget": "2", "interval": "1"])
        XCTAssertEqual(grouped.last?.resident, [[3, 2]])
        XCTAssertEqual(keptByStep(events), [0: [2, 3]])
    }

    /// Two kv heads with different keys still keep the same positions: TOVA's score is shared.
    func testTOVAKeepsTheSamePositionsInEveryKVHead() throws {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: 40, Hq: 4, Hkv: 2, D: 8, seed: 12)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: 40, P: 10, Hq: 4, Hkv: 2, D: 8, layers: [layer])
        let (_, events, _) = try TestTraces.observe(path, TOVAPolicy.self, ["budget": "8", "interval": "3"])
        XCTAssertEqual(keptByStep(events, kvHead: 0), keptByStep(events, kvHead: 1))
        XCTAssertEqual(keptByStep(events).count, 10)
    }

    // MARK: pyramidkv

    /// `get_layer_budget` by hand.
    /// L = 256, r = .5, w = 64, β = 20, 30 layers: X = 128, min 6.4, max 249.6 ≥ L − w = 192, so
    /// max = 192, min = 2·128 − 192 = 64 ≥ w: steps 128/29; layer 0 → 192, 10 → 147.86 → 148,
    /// 29 → 64. L = 400, r = .68: X = 128, min 6.4 < w → SnapKV fallback round(128.0) = 128.
    /// L = 256, r = .5, w = 60, 17 layers: max 196, min 60, steps 8.5: layer 1 → 187.5 → 188,
    /// layer 3 → 170.5 → 170 (Python's round: half to even).
    func testPyramidLayerBudgets() {
        func budget(_ L: Int, _ r: Double, w: Int = 64, layer: Int, layers: Int = 30) -> Int {
            PyramidKVPolicy.layerBudget(length: L, ratio: r, window: w, beta: 20, layer: layer, layers: layers)
        }
        XCTAssertEqual([0, 10, 29].map { budget(256, 0.5, layer: $0) }, [192, 148, 64])
        XCTAssertEqual(budget(400, 0.68, layer: 0), 128)
        XCTAssertEqual(budget(256, 0.5, w: 60, layer: 1, layers: 17), 188)
        XCTAssertEqual(budget(256, 0.5, w: 60, layer: 3, layers: 17), 170)
    }

    /// DecodingPress's bisection finds a ratio whose kept count is the target, for every target
    /// below the length; at or above it the ratio is 0.
    func testTargetRatioKeepsExactlyTheTarget() {
        for length in [2, 3, 7, 100, 229, 1000, 4097] {
            for target in Set([1, length / 3, length / 2, length - 1]) where target >= 1 && target < length {
                let r = KVPressDecoding.compressionRatio(keeping: target, of: length)
                XCTAssertEqual(KVPressDecoding.keptCount(length: length, ratio: r), target, "\(target) of \(length)")
            }
            XCTAssertEqual(KVPressDecoding.compressionRatio(keeping: length, of: length), 0)
        }
    }

    /// On the recorded trace the first layer keeps more than the last at the same compression,
    /// both keep the window (the newest 64 positions), and every kept count is a layer budget.
    func testPyramidKVGivesLowLayersMoreOnTheRealTrace() throws {
        let spec = try PolicySpec(name: "pyramidkv", values: ["budget": "128", "interval": "100"])
        var byLayer: [Int: [String: [Int32]]] = [:]
        for layer in [0, 29] { byLayer[layer] = try realTraceEvents(spec, layer: layer, steps: 200) }
        // Third compression? Only two fire in 200 steps: step 99 (L = 327) and 199 (L = 228 or 229).
        let first = try XCTUnwrap(byLayer[0]?["layer 0 step 199 head 0"])
        let last = try XCTUnwrap(byLayer[29]?["layer 29 step 199 head 0"])
        XCTAssertGreaterThan(first.count, last.count)
        for kept in [first, last] {
            XCTAssertEqual(Array(kept.suffix(64)), (227 + 199 - 63...227 + 199).map { Int32($0) })
        }
    }

    // MARK: Parameters

    func testRefusesMissingOrDoubleTargetsAndAWindowAsLargeAsTheInterval() throws {
        let setup = PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 2, numQHeads: 1, numKVHeads: 1, headDim: 4,
                promptLength: 4, numTokens: 8), layer: LayerInfo(index: 0))
        func failure(_ name: String, _ values: [String: String]) -> String? {
            do {
                let spec = try PolicySpec(name: name, values: values)
                _ = try spec.type.init(parameters: spec.parameters, setup: setup)
                return nil
            } catch {
                return "\(error)"
            }
        }
        for name in ["tova", "knorm", "keydiff", "pyramidkv"] {
            XCTAssertTrue(failure(name, [:])?.contains("give --budget") == true, name)
            XCTAssertTrue(
                failure(name, ["budget": "100", "compression-ratio": "0.5"])?.contains("alternatives") == true, name)
            XCTAssertNotNil(failure(name, ["compression-ratio": "1"]), "removing everything is refused")
        }
        XCTAssertNil(failure("knorm", ["compression-ratio": "0.25"]))
        XCTAssertTrue(failure("pyramidkv", ["budget": "100", "interval": "64"])?.contains("needs more of them") == true)
        XCTAssertTrue(failure("pyramidkv", ["budget": "64"])?.contains("must exceed --window") == true)
        XCTAssertTrue(failure("pyramidkv", ["budget": "100", "kernel": "4"])?.contains("odd") == true)
    }

    // MARK: NumPy re-derivation

    /// Every press, float32 and bfloat16, fixed target and compression ratio, GQA: the kept sets of
    /// every event equal those of tools/reference/kvpress_reference.py.
    func testKeptSetsMatchTheNumPyRederivation() throws {
        try PythonReference.requireNumPy()
        let dir = try TestTraces.directory(self)
        let T = 150, P = 30
        let layers = [
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 91, index: 0),
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 92, index: 3)
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("k.h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 16,
            numLayers: 4, layers: layers, dtype: .float16)
        let cases: [(String, [String: String])] = [
            ("tova", ["budget": "24", "interval": "7"]),
            ("tova", ["compression-ratio": "0.6", "interval": "1"]),
            ("knorm", ["budget": "24", "interval": "5"]),
            ("knorm", ["compression-ratio": "0.7", "interval": "9"]),
            ("keydiff", ["budget": "24", "interval": "5"]),
            ("keydiff", ["compression-ratio": "0.5", "interval": "11"]),
            ("pyramidkv", ["budget": "40", "interval": "20", "window": "8", "kernel": "3"]),
            ("pyramidkv", ["compression-ratio": "0.5", "interval": "16", "window": "4", "beta": "3"])
        ]
        for (press, base) in cases {
            for dtype in ["float32", "bfloat16"] {
                var values = base
                values["score-dtype"] = dtype
                let label = "\(press) \(values)"
                let swift = PythonReference.byKey(
                    try TestTraces.replay(path, [try PolicySpec(name: press, values: values)]).1)
                let numpy = PythonReference.byKey(
                    try PythonReference.keptEvents(
                        script: "kvpress_reference.py",
                        [path, "--press", press] + values.flatMap { ["--\($0.key)", $0.value] }))
                XCTAssertGreaterThan(swift.count, 5, label)
                XCTAssertEqual(swift, numpy, label)
            }
        }
    }
}
