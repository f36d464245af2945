import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// RaaS (paged LRU with Quest-estimate refreshes): steps counted by hand, properties on random
/// traces, and `--kept` against tools/reference/raas_reference.py.
final class RaaSPolicyTests: XCTestCase {
    // MARK: By hand

    /// Pages of 2, budget 6 = 3 pages, prompt = page 0. Page j's two keys are e_j for j < 4
    /// (pages 4 and 5: zero keys), so Quest's bound for page j is the query's component along
    /// e_j (2·ln w) and a zero query ties every page. k = min(min(3, pages) − 1, 1) = 1: one page
    /// is refreshed per step, to p + 1.
    ///
    /// `--prefill lru` (default, the authors' code):
    /// - prefill: ts = [2]. p 2 opens page 1 (ts 3); p 2, 3: page 0 is the only candidate → ts[0] = 4.
    /// - p 4 opens page 2 (ts 5); p 4, 5 favour page 1 → ts[1] = 6. ts = [4, 6, 5].
    /// - p 6 opens page 3 (ts 7): 4 pages > 3, the oldest (page 0, ts 4) goes → [2…6]. The query
    ///   then favours page 0: evicted, its top-1 place is spent and nothing is refreshed.
    /// - p 7 favours page 2 → ts[2] = 8. ts = [–, 6, 8, 7].
    /// - p 8 opens page 4 (ts 9): page 1 (6) goes → [4…8]. Zero queries from here on: the tie
    ///   goes to page 0, evicted, so nothing is refreshed.
    /// - p 10 opens page 5 (ts 11): page 3 (7) goes (page 2 has 8, page 4 has 9) → [4, 5, 8, 9, 10].
    ///
    /// `--prefill keep` (the paper's description): page 0 is never a victim.
    /// - p 6: victims are pages 1 (ts 6) and 2 (ts 5): page 2 goes → [0, 1, 2, 3, 6]; the query's
    ///   favourite, page 0, is held: ts[0] = 7.
    /// - p 7 favours page 2, evicted: nothing. p 8 opens page 4: page 1 (6) goes before page 3 (7)
    ///   → [0, 1, 6, 7, 8]; the zero query's tie picks page 0 (ts 9, then 10 at p 9).
    /// - p 10 opens page 5: page 3 (7) goes before page 4 (9) → [0, 1, 8, 9, 10].
    func testPagesAgeOutByHand() throws {
        let dir = try TestTraces.directory(self)
        var trace = HandTrace(T: 12, P: 2)
        for page in 0..<4 {
            trace.key(2 * page, direction: page)
            trace.key(2 * page + 1, direction: page)
        }
        trace.query(4, [1: 4])
        trace.query(5, [1: 4])
        trace.query(6, [0: 4])
        trace.query(7, [2: 4])
        let path = try trace.write(in: dir)
        func kept(_ prefill: String) throws -> [Int: [Int32]] {
            let spec = try PolicySpec(name: "raas", values: ["budget": "6", "page-size": "2", "prefill": prefill])
            return keptByStep(try TestTraces.replay(path, [spec]).1)
        }
        XCTAssertEqual(try kept("lru"), [4: [2, 3, 4, 5, 6], 6: [4, 5, 6, 7, 8], 8: [4, 5, 8, 9, 10]])
        XCTAssertEqual(try kept("keep"), [4: [0, 1, 2, 3, 6], 6: [0, 1, 6, 7, 8], 8: [0, 1, 8, 9, 10]])
    }

    /// Zero keys and queries tie every page, so every top-1 place goes to the lowest page, page
    /// 0, which then never ages; the other pages leave first in, first out. Budget 3 pages of
    /// 2, prompt of 3 positions (pages 0 and 1, page 1 completed by decode position 3).
    func testTiesRefreshTheLowestPageAndOtherwiseFirstInFirstOut() throws {
        let dir = try TestTraces.directory(self)
        let path = try HandTrace(T: 12, P: 3).write(in: dir)
        let spec = try PolicySpec(name: "raas", values: ["budget": "6", "page-size": "2", "prefill": "lru"])
        // ts after prefill [3, 3]; p 3 refreshes page 0 → 4. p 4 opens page 2 (5); p 4, 5 refresh
        // page 0 → 6. p 6 opens page 3 (7): page 1 (3) goes. p 6, 7 refresh page 0 (8). p 8
        // opens page 4 (9): page 2 (5) goes. p 8 … the tie now goes to page 0 still held → 9, 10.
        // p 10 opens page 5: page 3 (7) goes.
        XCTAssertEqual(
            keptByStep(try TestTraces.replay(path, [spec]).1),
            [3: [0, 1, 4, 5, 6], 5: [0, 1, 6, 7, 8], 7: [0, 1, 8, 9, 10]])
    }

    func testRefusesABudgetOfFewerThanTwoPages() throws {
        let setup = PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 1, numQHeads: 2, numKVHeads: 1, headDim: 4,
                promptLength: 10, numTokens: 100),
            layer: LayerInfo(index: 0))
        func make(_ values: [String: String]) throws -> RaaSPolicy {
            let spec = try PolicySpec(name: "raas", values: values)
            return try RaaSPolicy(parameters: spec.parameters, setup: setup)
        }
        XCTAssertThrowsError(try make(["budget": "31"])) { error in
            XCTAssertTrue("\(error)".contains("--budget ≥ 32"), "\(error)")
        }
        XCTAssertEqual(try make(["budget": "40"]).pageBudget, 2, "token_budget // page_size")
        XCTAssertEqual(try make(["budget": "64"]).residentCap, 64)
        XCTAssertEqual(try make(["budget": "32", "page-size": "4"]).residentCap, 32)
        // A prompt of 3 pages with a 2-page budget: the prompt plus the page being filled.
        XCTAssertEqual(try make(["budget": "8", "page-size": "4", "prefill": "keep"]).residentCap, 16)
        XCTAssertEqual(try make(["budget": "8", "page-size": "4"]).residentCap, 12)
    }

    // MARK: Properties on random traces

    /// The resident set never exceeds `residentCap`; the cache changes only when a decode
    /// position opens a page, then by whole pages, before the step's attention; with `keep` no
    /// prompt position ever goes; two replays (one and several threads) agree.
    func testResidentStaysWithinTheCapAndEvictsWholePagesWhenAPageOpens() throws {
        let dir = try TestTraces.directory(self)
        for (P, seed) in [(5, UInt64(71)), (37, UInt64(72))] {
            let T = 160
            let layer = TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 8, seed: seed, values: false)
            let path = try TestTraces.write(
                to: dir.appendingPathComponent("r\(seed).h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 8,
                layers: [layer])
            for values in [
                ["budget": "24", "page-size": "4"],
                ["budget": "20", "page-size": "4", "prefill": "keep"],
                ["budget": "30", "page-size": "3", "refresh-among": "resident"],
                ["budget": "16", "page-size": "8", "prefill": "keep", "refresh-among": "resident"]
            ] {
                let label = "P \(P) \(values)"
                let (_, events, snapshots) = try TestTraces.observe(path, RaaSPolicy.self, values)
                let setup = PolicySetup(
                    header: TraceHeader(
                        model: "m", numLayers: 1, numQHeads: 4, numKVHeads: 2, headDim: 8,
                        promptLength: P, numTokens: T),
                    layer: LayerInfo(index: 0))
                let policy = try RaaSPolicy(
                    parameters: try PolicySpec(name: "raas", values: values).parameters, setup: setup)
                let S = policy.pageSize, cap = policy.residentCap!
                XCTAssertGreaterThan(events.count, 4, label)
                var previous = snapshots[0].resident
                XCTAssertEqual(previous[0], (0..<P).map { Int32($0) }, "the prompt stays whole: \(label)")
                for s in snapshots.dropFirst() {
                    let p = P + s.step!
                    for g in 0..<2 {
                        XCTAssertLessThanOrEqual(s.resident[g].count, cap, label)
                        XCTAssertEqual(s.attended![g], s.resident[g], "evictions come before the attention: \(label)")
                        let before = Set(previous[g] + [Int32(p)])
                        let gone = before.subtracting(s.resident[g])
                        if !gone.isEmpty {
                            XCTAssertEqual(p % S, 0, "only a page opening evicts: \(label)")
                            for page in Set(gone.map { Int($0) / S }) {
                                let whole = Set((page * S..<min((page + 1) * S, p)).map { Int32($0) })
                                XCTAssertEqual(
                                    whole.intersection(before), whole.intersection(gone), "whole pages go: \(label)")
                            }
                            if policy.prefillRule == .keep {
                                XCTAssertTrue(
                                    gone.allSatisfy { Int($0) / S >= (P + S - 1) / S }, "prompt pages stay: \(label)")
                            }
                        }
                    }
                    previous = s.resident
                }
                let spec = try PolicySpec(name: "raas", values: values)
                let again = try TestTraces.replay(path, [spec], threads: nil).1
                XCTAssertEqual(PythonReference.byKey(again), PythonReference.byKey(events), "deterministic: \(label)")
            }
        }
    }

    // MARK: NumPy re-derivation

    /// Every option, GQA, two layers, a prompt ending mid-page: the kept sets of every event
    /// equal those of tools/reference/raas_reference.py.
    func testKeptSetsMatchTheNumPyRederivation() throws {
        try PythonReference.requireNumPy()
        let dir = try TestTraces.directory(self)
        let T = 260, P = 37
        let layers = [
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 81, index: 0),
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 82, index: 2)
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("raas.h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 16,
            numLayers: 3, layers: layers, dtype: .float16)
        let cases: [[String: String]] = [
            ["budget": "64", "page-size": "8"],
            ["budget": "64", "page-size": "8", "prefill": "keep"],
            ["budget": "48", "page-size": "4", "refresh-among": "resident"],
            ["budget": "40", "page-size": "8", "prefill": "keep", "refresh-among": "resident"],
            ["budget": "32", "page-size": "16"],
            ["budget": "20", "page-size": "2", "prefill": "keep"]
        ]
        for values in cases {
            let swift = PythonReference.byKey(
                try TestTraces.replay(path, [try PolicySpec(name: "raas", values: values)]).1)
            let numpy = PythonReference.byKey(
                try PythonReference.keptEvents(
                    script: "raas_reference.py", [path] + values.flatMap { ["--\($0.key)", $0.value] }))
            XCTAssertGreaterThan(swift.count, 5, "\(values)")
            XCTAssertEqual(swift, numpy, "\(values)")
        }
    }
}
