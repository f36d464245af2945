import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// `--score-dtype`: the rounding itself, a hand example where bf16 rounding changes what R-KV
/// keeps, the default leaving results unchanged, the real trace, and a NumPy re-derivation.
final class ScoreDTypeTests: XCTestCase {
    // MARK: Rounding

    /// bf16 keeps 8 significant bits (7 stored): around 1 the spacing is 2^-7; fp16 keeps 11
    /// (spacing 2^-10). Exact halves go to the even neighbour.
    func testRoundsToNearestEven() {
        let bf16 = ScoreDType.bfloat16, fp16 = ScoreDType.float16
        XCTAssertEqual(bf16.round(Float(1 + 0x1p-8)), 1, "half way between 1 and 1 + 2^-7: the even one")
        XCTAssertEqual(bf16.round(Float(1 + 3 * 0x1p-8)), Float(1 + 0x1p-6), "half way, the upper neighbour is even")
        XCTAssertEqual(bf16.round(Float(1 + 0x1p-8 + 0x1p-20)), Float(1 + 0x1p-7), "just above half: up")
        XCTAssertEqual(bf16.round(Float(-0.4995005)), -0.5)
        XCTAssertEqual(fp16.round(Float(1 + 0x1p-11)), 1)
        XCTAssertEqual(fp16.round(Float(1 + 3 * 0x1p-11)), Float(1 + 0x1p-9))
        XCTAssertEqual(fp16.round(Float(0.4995005)), 0.49951171875)
        XCTAssertEqual(fp16.round(Float(70000)), .infinity, "beyond fp16's range, as a cast")
        XCTAssertTrue(bf16.round(Float.nan).isNaN)
        XCTAssertEqual(ScoreDType.float32.round(Float(1 + 0x1p-20)), Float(1 + 0x1p-20))
        XCTAssertEqual(
            ScoreDType.float32.round(1 + 0x1p-40 as Double), 1 + 0x1p-40, "float32 rounds nothing, not even to float32")
        XCTAssertEqual(bf16.round(Float(3.39e38)), Float(bitPattern: 0x7F7F_0000), "bfloat16's largest finite value")
        XCTAssertEqual(bf16.round(Float(3.4e38)), .infinity, "beyond bfloat16's range")
    }

    // MARK: Hand example

    /// Three orthogonal keys; the last query gives keys 0 and 1 weights 1 and 1.002.
    private func nearTieTrace() throws -> String {
        var trace = HandTrace(T: 3, P: 2)
        trace.key(0, direction: 0)
        trace.key(1, direction: 1)
        trace.key(2, direction: 2)
        trace.query(2, [0: 1, 1: 1.002])
        return try trace.write(in: try TestTraces.directory(self))
    }

    /// R-KV with λ = 1 (importance only), kernel 1, window 1, B = 2, divide 2; P = 2, T = 3.
    /// Keys: k0 = e0, k1 = e1, k2 = e2 (the window; not zero: in fp16 a zero key's norm + 1e-8
    /// is 0 and the reference's cosines become NaN). Query of position 2: weight 1 on e0 and 1.002 on e1, so
    /// the logits (scale 1/2) are 0 and ln(1.002)/… = 0.001998, and the importance of the two
    /// candidates is p0 = 0.4995005, p1 = 0.5004995.
    /// - float32: p1 > p0: slot 1 stays → [1 2].
    /// - bfloat16: near 0.5 the spacing is 2^-9 below and 2^-8 above; both round to 0.5, tie,
    ///   and the lower slot wins (CUDA topk) → [0 2].
    /// - float16: spacing 2^-12 below, 2^-11 above: 0.49951171875 < 0.50048828125 → [1 2].
    /// (The prompt, P = B, is scored with one candidate and keeps everything.)
    func testBFloat16RoundingTurnsANearTieIntoATieTheLowerSlotWins() throws {
        let path = try nearTieTrace()
        let expected: [String: [Int32]] = ["float32": [1, 2], "bfloat16": [0, 2], "float16": [1, 2]]
        for (dtype, kept) in expected {
            let spec = try PolicySpec(
                name: "rkv",
                values: [
                    "budget": "2", "window": "1", "kernel": "1", "lambda": "1",
                    "divide": "2", "score-dtype": dtype
                ])
            let (_, events) = try TestTraces.replay(path, [spec])
            XCTAssertEqual(keptByStep(events), [0: kept], dtype)
        }
    }

    /// Same numbers for R-KV's decode-time SnapKV (importance only, cast after the row mean).
    func testSnapKVRKVVariantRoundsItsImportanceToo() throws {
        let path = try nearTieTrace()
        for (dtype, kept) in [("float32", [Int32(1), 2]), ("bfloat16", [0, 2])] {
            let spec = try PolicySpec(
                name: "snapkv",
                values: [
                    "budget": "2", "window": "1", "kernel": "1",
                    "divide": "2", "score-dtype": dtype
                ])
            XCTAssertEqual(keptByStep(try TestTraces.replay(path, [spec]).1), [0: kept], dtype)
        }
    }

    /// H2O, MHA, P = 1, C = 2, R = 1; keys k0 = e0, k1 = 0, k2 = e1 (HandTrace, scale 1/2).
    /// pos 0: prefill score 1. pos 1 puts weight 0 on e0: row [0 1], so pos 1 scores 1 too.
    /// pos 2 weights e0 0.9998 and e1 1: row [.9998 1 1]/2.9998 = [.333289 .333356 .333356].
    /// float32: pos 0 = 1.333289 < pos 1 = 1.333356 → pos 0 goes → [1 2].
    /// float16: both probabilities round to 1365/4096 (the spacing is 2^-12 there: .333289 and
    /// .333356 are 1365.15 and 1365.43 units), both sums 1 + p to 1365/1024 = 1.3330078: a tie,
    /// and the reference's topk keeps the lower index, so pos 1 goes → [0 2].
    func testH2OFloat16SumsTurnANearTieIntoATie() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 3, P: 1)
        trace.key(0, direction: 0)
        trace.key(2, direction: 1)
        trace.query(1, [0: 0])
        trace.query(2, [0: 0.9998, 1: 1])
        let path = try trace.write(in: dir)
        for (dtype, kept) in [("float32", [Int32(1), 2]), ("float16", [0, 2])] {
            let spec = try PolicySpec(name: "h2o", values: ["budget": "2", "recent": "1", "score-dtype": dtype])
            XCTAssertEqual(
                keptByStep(try TestTraces.replay(path, [spec]).1), [1: kept], "\(dtype) (pos 2 is decode step 1)")
        }
    }

    /// H2O in float16 accumulates fp16 sums of fp16 probabilities. On the recorded trace (layer
    /// 29, C = 64, 120 decode steps, one eviction per step and kv head) the fp16 run evicts a
    /// different token at some steps, not at all of them, and the kept sets stay close.
    func testH2OFloat16ChangesSomeEvictionsOnTheRealTrace() throws {
        func kept(_ dtype: String) throws -> [String: [Int32]] {
            let spec = try PolicySpec(name: "h2o", values: ["budget": "64", "score-dtype": dtype])
            return try realTraceEvents(spec, layer: 29, steps: 120)
        }
        let f32 = try kept("float32"), f16 = try kept("float16")
        XCTAssertEqual(f32.count, 360, "one eviction per step and kv head")
        XCTAssertEqual(Set(f32.keys), Set(f16.keys))
        let differing = f32.keys.filter { f32[$0] != f16[$0] }.count
        XCTAssertGreaterThan(differing, 0, "fp16 accumulation changes some evictions")
        XCTAssertLessThan(differing, f32.count, "but not all")
        XCTAssertGreaterThan(meanJaccard(f32, f16), 0.9)
    }

    // MARK: Real trace

    /// On the recorded SmolLM2-135M trace, R-KV in bf16 keeps different tokens from float32
    /// (first decode compressions of layer 0, B = 128): every event still keeps B tokens, and
    /// the sets overlap a lot without being equal.
    func testBFloat16ChangesRKVKeptSetsOnTheRealTrace() throws {
        func kept(_ dtype: String) throws -> [String: [Int32]] {
            let spec = try PolicySpec(name: "rkv", values: ["budget": "128", "score-dtype": dtype])
            return try realTraceEvents(spec, layer: 0, steps: 160)
        }
        let f32 = try kept("float32"), bf16 = try kept("bfloat16")
        XCTAssertEqual(f32.count, 6, "two compressions (positions 256 and 384) × 3 kv heads")
        XCTAssertEqual(Set(f32.keys), Set(bf16.keys))
        XCTAssertTrue(bf16.values.allSatisfy { $0.count == 128 })
        let mean = meanJaccard(f32, bf16)
        XCTAssertLessThan(mean, 0.99, "bf16 changes the kept sets")
        XCTAssertGreaterThan(mean, 0.5, "but they overlap")
    }

    // MARK: NumPy re-derivation

    /// tools/reference/rkv_reference.py --score-dtype re-derives the bf16 and fp16 runs in NumPy
    /// from the reference's rounding points; on a small random trace (keys drawn around a few
    /// directions so the redundancy term matters) every event agrees exactly.
    func testRoundedRKVMatchesTheNumPyRederivation() throws {
        try PythonReference.requireNumPy()
        let dir = try TestTraces.directory(self)
        let T = 160, P = 20, Hq = 4, Hkv = 2, D = 16
        var rng = SplitMix64(seed: 404)
        let centres = (0..<3).map { _ in (0..<D).map { _ in rng.nextGaussian() } }
        var k = [Float](), q = [Float]()
        for _ in 0..<(T * Hkv) {
            let c = centres[Int(rng.next() % 3)]
            k += c.map { $0 + 0.6 * rng.nextGaussian() }
        }
        for _ in 0..<(T * Hq * D) { q.append(2 * rng.nextGaussian()) }
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("c.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            layers: [TestTraces.Layer(q: q, k: k)], dtype: .float16)
        for dtype in ["bfloat16", "float16"] {
            for extra in [[String: String](), ["gqa-pool": "mean", "slot-order": "position"]] {
                var values = ["budget": "40", "divide": "16", "score-dtype": dtype]
                values.merge(extra) { $1 }
                let swift = PythonReference.byKey(
                    try TestTraces.replay(path, [try PolicySpec(name: "rkv", values: values)]).1)
                let numpy = PythonReference.byKey(
                    try PythonReference.keptEvents(
                        script: "rkv_reference.py",
                        [path, "--budget", "40", "--divide", "16", "--score-dtype", dtype]
                            + extra.flatMap { ["--\($0.key)", $0.value] }))
                XCTAssertGreaterThan(swift.count, 10, "\(dtype) \(extra)")
                XCTAssertEqual(swift, numpy, "\(dtype) \(extra)")
            }
        }
    }
}

/// Kept events of one policy on the first decode steps of one layer of the recorded trace.
func realTraceEvents(_ spec: PolicySpec, layer: Int, steps: Int) throws -> [String: [Int32]] {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("traces/smollm2-135m-math.h5").path
    let reader = try TraceReader(path: path)
    var configuration = ReplayConfiguration(policies: [spec], topK: 32)
    configuration.layers = [layer]
    configuration.maxSteps = steps
    let engine = ReplayEngine(reader: reader, configuration: configuration)
    let collector = KeptEventCollector()
    engine.keptSink = collector
    _ = try engine.run()
    return PythonReference.byKey(collector.events)
}

/// Mean over the events of `a` of the Jaccard index with the same event of `b` (0 if absent).
func meanJaccard(_ a: [String: [Int32]], _ b: [String: [Int32]]) -> Double {
    guard !a.isEmpty else { return 1 }
    var total = 0.0
    for (key, x) in a {
        let y = Set(b[key] ?? [])
        let union = Set(x).union(y).count
        total += union == 0 ? 1 : Double(Set(x).intersection(y).count) / Double(union)
    }
    return total / Double(a.count)
}
