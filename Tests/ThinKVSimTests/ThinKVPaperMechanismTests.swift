import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// ThinKV's mechanisms as the paper's second version specifies them, each on an example small
/// enough to count by hand (docs/thinkv.md, "What the paper says and what we chose").
final class ThinKVPaperMechanismTests: XCTestCase {
    private func labels(prompt P: Int, _ letters: String) -> [Int8] {
        Array(repeating: -1, count: P) + letters.map { ["R": 0, "E": 1, "T": 2][$0]! }
    }

    private func trace(prompt P: Int, _ pairs: [(Character, Int)], Hq: Int = 2, Hkv: Int = 1, D: Int = 8) throws
        -> String
    {
        let letters = String(pairs.flatMap { Array(repeating: $0.0, count: $0.1) })
        let T = P + letters.count
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 3)
        return try TestTraces.write(
            to: TestTraces.directory(self).appendingPathComponent("paper.h5"), T: T, P: P, Hq: Hq,
            Hkv: Hkv, D: D, layers: [layer], thought: labels(prompt: P, letters))
    }

    private func observe(_ path: String, _ values: [String: String]) throws -> [ThinKVSnapshot] {
        try TestTraces.observe(path, probe: ThinKVProbe<ThinKVEvictionOnlyPolicy>.self, values, threads: 1).2
    }

    // MARK: Segments and Case 1

    /// A 512-token reasoning run is four segments of τ = 128; the transition that follows takes
    /// every one of them to 64: 4 × 64 = 256 kept, not the 64 a single run-long segment keeps.
    func testA512TokenReasoningRunAfterwardsKeepsFourTimes64() throws {
        let path = try trace(prompt: 4, [("R", 512), ("T", 20)])
        let paper = try observe(path, ["thoughts": "labels"])
        let at = try XCTUnwrap(paper.first { $0.step == 512 }, "the first transition step")
        XCTAssertEqual(at.segments.filter { $0.kind == .thought(.reasoning) }.map(\.length), [128, 128, 128, 128])
        XCTAssertEqual(at.resident[0].filter { (4..<516).contains($0) }.count, 4 * 64)
        XCTAssertEqual(at.counters.transitions, 1)
        XCTAssertEqual(at.counters.transitionEvictions, 4 * 64)
        // Before the transition nothing left.
        let before = try XCTUnwrap(paper.first { $0.step == 511 })
        XCTAssertEqual(before.resident[0].count, 516)

        let runs = try observe(path, ["thoughts": "labels", "segments": "runs"])
        let one = try XCTUnwrap(runs.first { $0.step == 512 })
        XCTAssertEqual(one.resident[0].filter { (4..<516).contains($0) }.count, 64)
    }

    /// `--tbe-trigger after-transition` waits for the thought after the transition; the default
    /// acts in the transition's first step.
    func testTheDefaultTriggerActsWhenTheTransitionIsGenerated() throws {
        let path = try trace(prompt: 4, [("R", 100), ("T", 3), ("E", 5)])
        let start = try observe(path, ["thoughts": "labels"])
        XCTAssertEqual(start.first { $0.step == 100 }?.resident[0].filter { (4..<104).contains($0) }.count, 64)
        let after = try observe(path, ["thoughts": "labels", "tbe-trigger": "after-transition"])
        XCTAssertEqual(after.first { $0.step == 100 }?.resident[0].filter { (4..<104).contains($0) }.count, 100)
        XCTAssertEqual(after.first { $0.step == 103 }?.resident[0].filter { (4..<104).contains($0) }.count, 64)
    }

    // MARK: Case 2

    /// No transition, budget 200, segments of 128: the oldest least important old segment drops a
    /// whole schedule step each time the cache passes the budget (128 → 64 → 32 → 16).
    ///   p = 200: 201 held; segment [4, 132) to 64: 137.
    ///   p = 264: 201 again; the same segment (oldest; both old segments are R) to 32: 169.
    ///   p = 296: 201 again; to 16: 185. After p = 303: 192.
    func testCaseTwoDemotesTheOldestLeastImportantSegmentByWholeSteps() throws {
        let path = try trace(prompt: 4, [("R", 300)])
        let snapshots = try observe(path, ["thoughts": "labels", "budget": "200"])
        func resident(_ p: Int) -> Int { snapshots.first { $0.position == p && $0.step != nil }!.resident[0].count }
        XCTAssertEqual(resident(199), 200)
        XCTAssertEqual(resident(200), 137)
        XCTAssertEqual(resident(263), 200)
        XCTAssertEqual(resident(264), 169)
        XCTAssertEqual(resident(296), 185)
        XCTAssertEqual(resident(303), 192)
        let last = snapshots.last!.counters
        XCTAssertEqual(last.pressureCuts, 3)
        XCTAssertEqual(last.pressureEvictions, 64 + 32 + 16)
        XCTAssertEqual(last.transitions, 0)
        // The other reading: only the excess leaves, so the cache sits at the budget.
        let excess = try observe(path, ["thoughts": "labels", "budget": "200", "pressure-cut": "excess"])
        XCTAssertEqual(excess.first { $0.position == 264 && $0.step != nil }!.resident[0].count, 200)
    }

    /// Transitions come before execution, execution before reasoning, whatever their age.
    func testCaseTwoTakesTheLeastImportantTypeFirst() throws {
        // R [4, 132) | E [132, 260) | R [260, ...): at p = 200 nothing but R is old (E is current);
        // at p = 264 the E segment is old and less important than the older R, so it goes first.
        let path = try trace(prompt: 4, [("R", 128), ("E", 128), ("R", 60)])
        let snapshots = try observe(path, ["thoughts": "labels", "budget": "200"])
        let at = try XCTUnwrap(snapshots.first { $0.position == 264 && $0.step != nil })
        XCTAssertEqual(at.resident[0].filter { (132..<260).contains($0) }.count, 64, "E demoted")
        XCTAssertEqual(at.resident[0].filter { (4..<132).contains($0) }.count, 64, "R keeps its earlier step only")
    }

    // MARK: Saying when it is not running

    /// A run that evicts only under budget pressure says so, with the classifier's transitions;
    /// one driven by transitions says nothing.
    func testARunEvictingMostlyUnderPressureSaysSo() throws {
        let pressure = try trace(prompt: 4, [("R", 300)])
        let (result, _) = try TestTraces.replay(
            pressure, [PolicySpec(name: "thinkv-tbe", values: ["thoughts": "labels", "budget": "200"])])
        let note = try XCTUnwrap(result.notes.first { $0.contains("ThinKV ran mostly as") }, "\(result.notes)")
        XCTAssertTrue(
            note.hasPrefix("thinkv-tbe(budget=200,thoughts=labels): ThinKV ran mostly as budget pressure"), note)
        XCTAssertTrue(note.contains("transition cuts 0.0 %, budget pressure 100.0 %, floor breaches 0.0 %"), note)
        XCTAssertTrue(note.hasSuffix("its thought labels held 0 transitions"), note)
        XCTAssertEqual(result.runs[0].summary.policyCounters?["pressure_evicted_tokens"], 112)

        let transitions = try trace(prompt: 4, [("R", 300), ("T", 20), ("R", 20)])
        let (driven, _) = try TestTraces.replay(
            transitions, [PolicySpec(name: "thinkv-tbe", values: ["thoughts": "labels"])])
        XCTAssertFalse(driven.notes.contains { $0.contains("ran mostly as") }, "\(driven.notes)")
        XCTAssertGreaterThan(driven.runs[0].summary.memory.evictionStepPercent, 0)
        XCTAssertLessThan(driven.runs[0].summary.memory.evictionStepPercent, 1, "one transition step of 340")
    }

    // MARK: GQA sparsity

    /// Two query heads of one group over three keys. Head a puts logit ln 1000 on key 0, head b
    /// is uniform. Max-pooled: softmax(ln 1000, 0, 0) = (1000, 1, 1)/1002, and both small entries
    /// are below 1 % of the maximum: sparsity 2/3. Heads averaged: head b's 1/3 everywhere lifts
    /// keys 1 and 2 to a quarter of the maximum: sparsity 0.
    func testMaxPoolingWithinAGroupByHand() {
        let L = Float(log(1000.0))
        let logits: [Float] = [L, 0, 0, 0, 0, 0]
        var pooled = [Float](repeating: 0, count: 3)
        logits.withUnsafeBufferPointer { l in
            pooled.withUnsafeMutableBufferPointer {
                Sparsity.maxPooledSoftmax(l.baseAddress!, rows: 2, stride: 3, count: 3, into: $0.baseAddress!)
            }
        }
        XCTAssertEqual(pooled[0], 1000 / 1002, accuracy: 1e-6)
        XCTAssertEqual(pooled[1], 1 / 1002, accuracy: 1e-7)
        XCTAssertEqual(pooled.withUnsafeBufferPointer { Sparsity.of(averagedRow: $0.baseAddress!, count: 3) }, 2 / 3)
        let a: [Float] = [1000 / 1002, 1 / 1002, 1 / 1002], b: [Float] = [1 / 3, 1 / 3, 1 / 3]
        let averaged = zip(a, b).map { ($0 + $1) / 2 }
        XCTAssertEqual(averaged.withUnsafeBufferPointer { Sparsity.of(averagedRow: $0.baseAddress!, count: 3) }, 0)
    }

    /// The profile's max-pool sparsity equals a re-derivation in Double from q and k: per kv
    /// group the element-wise maximum of its heads' logits, softmax, summed over groups, then
    /// the fraction of visible positions below 1 % of the maximum.
    func testProfileMaxPoolEqualsARederivationFromQueriesAndKeys() throws {
        let T = 40, P = 6, Hq = 4, Hkv = 2, D = 8
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 17)
        let path = try TestTraces.write(
            to: TestTraces.directory(self).appendingPathComponent("gqa.h5"), T: T, P: P, Hq: Hq,
            Hkv: Hkv, D: D, layers: [layer])
        let reader = try TraceReader(path: path)
        let profile = try SparsityProfile.compute(reader, threads: 1, gqa: .maxPool)
        let q = layer.q!, k = layer.k!, scale = 1 / Double(D).squareRoot()
        for t in 0..<(T - P) {
            let p = P + t, n = p + 1
            var row = [Double](repeating: 0, count: n)
            for g in 0..<Hkv {
                var pooled = [Double](repeating: -.infinity, count: n)
                for hh in 0..<(Hq / Hkv) {
                    let h = g * (Hq / Hkv) + hh
                    for j in 0..<n {
                        var dot = 0.0
                        // [T][H][D]
                        for d in 0..<D { dot += Double(q[(p * Hq + h) * D + d]) * Double(k[(j * Hkv + g) * D + d]) }
                        pooled[j] = max(pooled[j], dot * scale)
                    }
                }
                let m = pooled.max()!
                let e = pooled.map { exp($0 - m) }, sum = e.reduce(0, +)
                for j in 0..<n { row[j] += e[j] / sum }
            }
            let cut = 0.01 * row.max()!
            let expected = Double(row.filter { $0 < cut }.count) / Double(n)
            XCTAssertEqual(Double(profile.byLayer[0]![t]), expected, accuracy: 1e-6, "step \(t)")
        }
    }
}
