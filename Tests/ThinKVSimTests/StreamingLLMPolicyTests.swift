import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// StreamingLLM (reference-policies 4 and 2.7) with both triggers, and the shared
/// `CompressionSchedule` rules. Kept sets do not depend on the tensors, so random q/k serve.
final class StreamingLLMPolicyTests: XCTestCase {
    private func streaming(_ values: [String: String]) throws -> PolicySpec {
        try PolicySpec(name: "streaming", values: values)
    }

    private func randomTrace(T: Int, P: Int, Hq: Int = 2, Hkv: Int = 1, seed: UInt64 = 1) throws -> String {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: 4, seed: seed)
        return try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: 4,
            layers: [layer])
    }

    // MARK: every-step

    /// T = 10, P = 3, B = 4, sinks = 1, so recent = 3. The prompt fits; pos 3 fills the cache to
    /// 4 (no event); from pos 4 on, each step attends to 5 tokens and keeps [0, p−2, p−1, p].
    func testEveryStepKeepsTheSinksAndTheRecentWindow() throws {
        let path = try randomTrace(T: 10, P: 3)
        let (result, events) = try TestTraces.replay(path, [try streaming(["budget": "4", "sinks": "1"])])
        var expected: [Int: [Int32]] = [:]
        for p in 4..<10 { expected[p - 3] = [0, Int32(p - 2), Int32(p - 1), Int32(p)] }
        XCTAssertEqual(keptByStep(events), expected)
        XCTAssertEqual(result.runs[0].steps.map(\.attendedTokens), [4, 5, 5, 5, 5, 5, 5])
        XCTAssertEqual(result.runs[0].steps.map(\.residentTokens), [4, 4, 4, 4, 4, 4, 4])
    }

    /// P = 8 > B = 5, sinks = 2, recent = 3: the prompt is cut to [0 1 5 6 7]; pos 8 attends
    /// to 6 tokens and keeps [0 1 6 7 8], pos 9 keeps [0 1 7 8 9]. With the legacy trigger the
    /// prompt is cut the same way and, no position being a multiple of 128, nothing more.
    func testPromptLongerThanBudgetIsCutToSinksAndRecent() throws {
        let path = try randomTrace(T: 10, P: 8)
        let (result, events, snapshots) = try TestTraces.observe(
            path, StreamingLLMPolicy.self, ["budget": "5", "sinks": "2"])
        XCTAssertEqual(snapshots.first?.resident, [[0, 1, 5, 6, 7]])
        XCTAssertEqual(keptByStep(events), [0: [0, 1, 6, 7, 8], 1: [0, 1, 7, 8, 9]])
        XCTAssertEqual(result.runs[0].steps[0].attendedTokens, 6)

        let (legacy, legacyEvents, legacySnapshots) = try TestTraces.observe(
            path, StreamingLLMPolicy.self, ["budget": "5", "sinks": "2", "trigger": "legacy"])
        XCTAssertEqual(legacySnapshots.first?.resident, [[0, 1, 5, 6, 7]])
        XCTAssertTrue(legacyEvents.isEmpty)
        XCTAssertEqual(legacy.runs[0].steps.map(\.residentTokens), [6, 7])
    }

    // MARK: legacy

    /// P = 2, T = 20, B = 6, sinks = 2 (recent 4), divide = 4. Positions 4, 8, 12, 16 fire.
    /// pos 4 (step 2): the cache holds 5 < 6 tokens, nothing happens. pos 8 (step 6): 9 tokens
    /// attended, keep [0 1 5 6 7 8]. pos 12 (step 10): 10 attended (B + divide), keep
    /// [0 1 9 10 11 12]. pos 16 (step 14): keep [0 1 13 14 15 16]. In between the cache grows
    /// by one per step, up to 9 = B + divide − 1 resident.
    func testLegacyTriggerFiresAtMultiplesOfDivide() throws {
        let path = try randomTrace(T: 20, P: 2)
        let spec = try streaming(["budget": "6", "sinks": "2", "trigger": "legacy", "divide": "4"])
        let (result, events) = try TestTraces.replay(path, [spec])
        XCTAssertEqual(
            keptByStep(events), [6: [0, 1, 5, 6, 7, 8], 10: [0, 1, 9, 10, 11, 12], 14: [0, 1, 13, 14, 15, 16]])
        XCTAssertEqual(
            result.runs[0].steps.map(\.residentTokens),
            [3, 4, 5, 6, 7, 8, 6, 7, 8, 9, 6, 7, 8, 9, 6, 7, 8, 9])
        XCTAssertEqual(
            result.runs[0].steps.map(\.attendedTokens),
            [3, 4, 5, 6, 7, 8, 9, 7, 8, 9, 10, 7, 8, 9, 10, 7, 8, 9])
    }

    /// P = 8 is a multiple of divide = 4, so the first decode step (pos 8) compresses:
    /// B = 8, sinks = 1: the prompt fits; pos 8 holds 9 → [0 2 3 4 5 6 7 8]; pos 9-11 grow;
    /// pos 12 holds 12 → [0 6 7 8 9 10 11 12].
    func testLegacyTriggerFiresOnTheFirstDecodeStepWhenThePromptLengthIsAMultiple() throws {
        let path = try randomTrace(T: 13, P: 8)
        let spec = try streaming(["budget": "8", "sinks": "1", "trigger": "legacy", "divide": "4"])
        let (_, events) = try TestTraces.replay(path, [spec])
        XCTAssertEqual(keptByStep(events), [0: [0, 2, 3, 4, 5, 6, 7, 8], 4: [0, 6, 7, 8, 9, 10, 11, 12]])
    }

    // MARK: Parameters and schedule

    func testParametersAndCaps() throws {
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 4, promptLength: 1, numTokens: 8)
        let setup = PolicySetup(header: header, layer: LayerInfo(index: 0))
        func make(_ values: [String: String]) throws -> StreamingLLMPolicy {
            try StreamingLLMPolicy(parameters: try streaming(values).parameters, setup: setup)
        }
        let defaults = try make(["budget": "100"])
        XCTAssertEqual(defaults.sinks, 4)
        XCTAssertEqual(defaults.recent, 96)
        XCTAssertEqual(defaults.trigger, .everyStep)
        XCTAssertEqual(defaults.residentCap, 100)
        XCTAssertEqual(try make(["budget": "100", "trigger": "legacy"]).residentCap, 100 + 128 - 1)
        XCTAssertEqual(try make(["budget": "5", "sinks": "0"]).recent, 5, "no sinks: a plain sliding window")
        XCTAssertThrowsError(try make(["budget": "4", "sinks": "4"])) { error in
            XCTAssertTrue((error as? PolicyError)?.description.contains("must be below --budget") == true, "\(error)")
        }
        XCTAssertThrowsError(try streaming([:]), "--budget is required")
        XCTAssertThrowsError(try streaming(["budget": "8", "trigger": "sometimes"]))
    }

    func testCompressionScheduleRules() {
        let legacy = (0..<20).filter { CompressionSchedule.legacyFires(position: $0, divide: 8) }
        XCTAssertEqual(legacy, [0, 8, 16])
        XCTAssertTrue(CompressionSchedule.legacyFires(position: 256, divide: 128))
        XCTAssertFalse(CompressionSchedule.legacyFires(position: 255, divide: 128))
        let every = (0..<12).filter { CompressionSchedule.everyNFires(step: $0, interval: 4) }
        XCTAssertEqual(every, [3, 7, 11], "after the 4th, 8th and 12th generated token")
        XCTAssertEqual((0..<3).filter { CompressionSchedule.everyNFires(step: $0, interval: 1) }, [0, 1, 2])
    }

    // MARK: Properties on random traces

    /// Every step and kv head matches a direct simulation of the rule, and the caps hold:
    /// resident ≤ residentCap, attended ≤ residentCap + 1, the newest `recent` positions and the
    /// sinks always resident.
    func testRandomTracesFollowTheRuleAtEveryStep() throws {
        let T = 45, P = 10
        let path = try randomTrace(T: T, P: P, Hq: 4, Hkv: 2, seed: 7)
        var evictions = 0
        for (budget, sinks, divide) in [(6, 4, 8), (5, 0, 3), (12, 2, 5), (9, 1, 1)] {
            for trigger in StreamingLLMPolicy.Trigger.allCases {
                let values = [
                    "budget": String(budget), "sinks": String(sinks), "trigger": trigger.rawValue,
                    "divide": String(divide)
                ]
                let label = values.description
                let (_, events, snapshots) = try TestTraces.observe(path, StreamingLLMPolicy.self, values)
                evictions += events.count
                let cap = trigger == .everyStep ? budget : budget + divide - 1
                let recent = budget - sinks
                func cut(_ s: [Int32]) -> [Int32] { Array(s.prefix(sinks)) + s.suffix(recent) }
                var expected = (0..<P).map { Int32($0) }
                if expected.count > budget { expected = cut(expected) }
                XCTAssertEqual(snapshots[0].resident, [expected, expected], label)
                for s in snapshots.dropFirst() {
                    let p = P + s.step!
                    expected.append(Int32(p))
                    XCTAssertEqual(s.attended!, [expected, expected], "attended at \(p), \(label)")
                    let fires = trigger == .everyStep || p % divide == 0
                    if fires && expected.count > budget { expected = cut(expected) }
                    XCTAssertEqual(s.resident, [expected, expected], "resident at \(p), \(label)")
                    XCTAssertLessThanOrEqual(expected.count, cap)
                    XCTAssertLessThanOrEqual(s.attended![0].count, cap + 1)
                    for r in (max(0, p - recent + 1)...p) where !expected.contains(Int32(r)) {
                        XCTFail("recent position \(r) missing at \(p), \(label)")
                    }
                    for r in 0..<min(sinks, p + 1) where !expected.contains(Int32(r)) {
                        XCTFail("sink \(r) missing at \(p), \(label)")
                    }
                }
            }
        }
        XCTAssertGreaterThan(evictions, 0)
    }

    func testBudgetCoveringTheTraceEqualsTheFullCache() throws {
        let path = try randomTrace(T: 30, P: 6, Hq: 4, Hkv: 2, seed: 3)
        for trigger in ["every-step", "legacy"] {
            let (result, events) = try TestTraces.replay(
                path, [try streaming(["budget": "30", "trigger": trigger, "divide": "2"])])
            XCTAssertTrue(events.isEmpty, trigger)
            XCTAssertEqual(result.runs[0].summary.massRecall.min, 1, accuracy: 1e-5)
            for r in result.runs[0].steps {
                XCTAssertEqual(r.attendedTokens, Double(r.position + 1))
                XCTAssertEqual(r.residentTokens, Double(r.position + 1))
            }
        }
    }

    func testRunsAreDeterministicAndIndependentOfThreads() throws {
        let path = try randomTrace(T: 50, P: 9, Hq: 4, Hkv: 2, seed: 5)
        let specs = [
            try streaming(["budget": "10"]),
            try streaming(["budget": "10", "sinks": "2", "trigger": "legacy", "divide": "6"])
        ]
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
