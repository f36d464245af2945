import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The retention schedule, and TBE's decisions (rules 1–4 of `ThoughtSegments`) on hand-built
/// segment sequences with sizes computed by hand.
final class RetentionScheduleTests: XCTestCase {
    private let schedule = RetentionSchedule.paperDefault

    // MARK: Schedule

    func testParsingAndValidation() throws {
        XCTAssertEqual(try RetentionSchedule(parsing: "64, 32,16,8,4").sizes, [64, 32, 16, 8, 4])
        XCTAssertEqual(try RetentionSchedule(parsing: "10").floor, 10)
        for bad in ["", "64,,4", "64,32,32", "4,8", "64,0", "64,-4", "a,b"] {
            XCTAssertThrowsError(try RetentionSchedule(parsing: bad), "'\(bad)'")
        }
    }

    func testTransitionStepsWalkTheScheduleByLevelWhateverTheSize() {
        // A 100-token segment: 64, 32, 16, 8, 4, then it stays at the floor.
        var level = 0, count = 100
        var sizes: [Int] = []
        for _ in 0..<7 {
            (level, count) = schedule.transitionStep(level: level, count: count)
            sizes.append(count)
        }
        XCTAssertEqual(sizes, [64, 32, 16, 8, 4, 4, 4])
        XCTAssertEqual(level, 5)
        // A 20-token segment keeps its tokens for two transitions (64 and 32 exceed it), then 16.
        XCTAssertEqual(schedule.transitionStep(level: 0, count: 20).size, 20)
        XCTAssertEqual(schedule.transitionStep(level: 1, count: 20).size, 20)
        XCTAssertEqual(schedule.transitionStep(level: 2, count: 20).size, 16)
    }

    func testPressureStepsAlwaysFreeTokens() {
        XCTAssertEqual(schedule.pressureStep(level: 0, count: 100)?.size, 64)
        XCTAssertEqual(schedule.pressureStep(level: 0, count: 100)?.level, 1)
        // 20 tokens at level 0: 64 and 32 would free nothing, so the step goes to 16 (level 3).
        XCTAssertEqual(schedule.pressureStep(level: 0, count: 20)?.size, 16)
        XCTAssertEqual(schedule.pressureStep(level: 0, count: 20)?.level, 3)
        // Already at level 3 (16) with 16 tokens: 8.
        XCTAssertEqual(schedule.pressureStep(level: 3, count: 16)?.size, 8)
        XCTAssertNil(schedule.pressureStep(level: 5, count: 4), "at the floor")
        XCTAssertNil(schedule.pressureStep(level: 0, count: 3), "below the floor: nothing to free")
    }

    // MARK: Decisions on hand-built segments

    /// Builds segments from a prompt length and runs of (type, length).
    private func build(prompt: Int, runs: [(ThoughtType, Int)], numTokens: Int = 1000) -> ThoughtSegments {
        let segments = ThoughtSegments(numTokens: numTokens)
        segments.beginPrompt(length: prompt)
        var p = prompt
        for (type, length) in runs {
            for _ in 0..<length {
                segments.append(position: p, type: type)
                p += 1
            }
        }
        return segments
    }

    /// What a cache would hold after `decision`: per segment its protected positions plus the
    /// earliest unprotected ones up to the decided size (which ones does not matter here).
    private func apply(
        _ decision: ThoughtSegments.Decision, to resident: [Int32], segments: ThoughtSegments,
        protection: ThoughtSegments.Protection
    ) -> [Int32] {
        var kept = [Int](repeating: 0, count: segments.segments.count)
        let current = segments.currentIndex
        return resident.filter { p in
            let s = segments.segmentIndex(of: Int(p))
            if s == current || segments.isProtected(Int(p), protection) { return true }
            guard kept[s] < decision.after[s] - decision.protected[s] else { return false }
            kept[s] += 1
            return true
        }
    }

    private func sizes(_ resident: [Int32], _ segments: ThoughtSegments) -> [Int] {
        var out = [Int](repeating: 0, count: segments.segments.count)
        for p in resident { out[segments.segmentIndex(of: Int(p))] += 1 }
        return out
    }

    func testTransitionsShrinkEveryOlderThoughtSegmentAndPressureGoesTEROlderFirst() {
        // prompt 0..<4 | R 4..<104 (100) | E 104..<144 (40) | R 144..<224 (80) | T begins at 224.
        let segments = build(prompt: 4, runs: [(.reasoning, 100), (.execution, 40), (.reasoning, 80)])
        XCTAssertTrue(segments.append(position: 224, type: .transition), "a new T segment begins a transition")
        var resident = (0...224).map { Int32($0) }
        var protection = ThoughtSegments.Protection(sinks: 4, recent: 2, newest: 224)

        // First transition: R 100 → 64; E 40 stays (64 > 40); R 80 → 64; the prompt and the
        // current T segment are untouched.
        var d = segments.decide(
            resident: resident, transition: true, budget: nil, schedule: schedule, protection: protection)
        XCTAssertEqual(d.before, [4, 100, 40, 80, 1])
        XCTAssertEqual(d.after, [4, 64, 40, 64, 1])
        XCTAssertEqual(d.protected, [4, 0, 0, 1, 1], "sinks; position 223 is in the recent window; the current segment")
        XCTAssertEqual(d.events.map(\.reason), [.transition, .transition])
        XCTAssertEqual(segments.segments.map(\.level), [0, 1, 1, 1, 0])
        resident = apply(d, to: resident, segments: segments, protection: protection)
        XCTAssertEqual(sizes(resident, segments), [4, 64, 40, 64, 1])

        // T 224..<240, then R 240..<300, then the second transition at 300.
        for p in 225..<240 { XCTAssertFalse(segments.append(position: p, type: .transition)) }
        for p in 240..<300 { XCTAssertFalse(segments.append(position: p, type: .reasoning)) }
        XCTAssertTrue(segments.append(position: 300, type: .transition))
        resident += (225...300).map { Int32($0) }
        protection.newest = 300
        d = segments.decide(
            resident: resident, transition: true, budget: nil, schedule: schedule, protection: protection)
        // Level 2 for the three first segments (32), level 1 for T 16 (no cut) and R 60 (no cut).
        XCTAssertEqual(d.after, [4, 32, 32, 32, 16, 60, 1])
        XCTAssertEqual(segments.segments.map(\.level), [0, 2, 2, 2, 1, 1, 0])
        resident = apply(d, to: resident, segments: segments, protection: protection)

        // One more T token; now the budget is 150: total 4+32+32+32+16+60+2 = 178.
        segments.append(position: 301, type: .transition)
        resident.append(301)
        protection.newest = 301
        d = segments.decide(
            resident: resident, transition: false, budget: 150, schedule: schedule, protection: protection)
        // T (least important) first: 16 → 8 → 4 (its floor); then E: 32 → 16, total 150.
        XCTAssertEqual(
            d.events,
            [
                .init(reason: .pressure, segment: 4, size: 8),
                .init(reason: .pressure, segment: 4, size: 4),
                .init(reason: .pressure, segment: 2, size: 16)
            ])
        XCTAssertEqual(d.after, [4, 32, 16, 32, 4, 60, 2])
        resident = apply(d, to: resident, segments: segments, protection: protection)

        // Budget 100: E 16 → 8 → 4, then the older R first: 32 → 16 → 8 → 4, then the next R
        // gives up only the remaining excess on its way to 16: 32 → 22, exactly the budget.
        d = segments.decide(
            resident: resident, transition: false, budget: 100, schedule: schedule, protection: protection)
        XCTAssertEqual(d.events.map(\.segment), [2, 2, 1, 1, 1, 3])
        XCTAssertEqual(d.events.last, .init(reason: .pressure, segment: 3, size: 22, target: 16))
        XCTAssertEqual(d.after, [4, 4, 4, 22, 4, 60, 2])
        XCTAssertEqual(d.after.reduce(0, +), 100)
        XCTAssertEqual(segments.segments[3].level, 2, "not yet at 16: its level waits")
    }

    func testAnOverlongCurrentSegmentIsSplitAtTheRecentWindow() {
        // prompt 0..<4 (all sinks, nothing to shrink) | current R 4..<100; budget 40, recent 8.
        let segments = build(prompt: 4, runs: [(.reasoning, 96)])
        let resident = (0..<100).map { Int32($0) }
        let protection = ThoughtSegments.Protection(sinks: 4, recent: 8, newest: 99)
        let d = segments.decide(
            resident: resident, transition: false, budget: 40, schedule: schedule, protection: protection)
        // R 4..<92 (88 tokens) is closed off, then shrinks 64, 32, and on its way to 16 stops at
        // the budget: 4 + 28 + 8 = 40.
        XCTAssertEqual(
            d.events,
            [
                .init(reason: .split, segment: 1, size: 88),
                .init(reason: .pressure, segment: 1, size: 64),
                .init(reason: .pressure, segment: 1, size: 32),
                .init(reason: .pressure, segment: 1, size: 28, target: 16)
            ])
        XCTAssertEqual(segments.segments.map { [$0.start, $0.end] }, [[0, 4], [4, 92], [92, 100]])
        XCTAssertEqual(segments.segments[1].kind, .thought(.reasoning))
        XCTAssertEqual(segments.currentIndex, 2)
        XCTAssertEqual(d.before, [4, 88, 8])
        XCTAssertEqual(d.after, [4, 28, 8])
        XCTAssertEqual(segments.segmentIndex(of: 95), 2)
    }

    func testFloorBreachEvictsWholeLeastImportantSegmentsOnlyAsALastResort() {
        // T 0..<4 | E 4..<8 | T 8..<12 | current R 12..<16; no sinks, recent 4, budget 8.
        let segments = build(prompt: 0, runs: [(.transition, 4), (.execution, 4), (.transition, 4), (.reasoning, 4)])
        let protection = ThoughtSegments.Protection(sinks: 0, recent: 4, newest: 15)
        let d = segments.decide(
            resident: (0..<16).map { Int32($0) }, transition: false, budget: 8, schedule: schedule,
            protection: protection)
        // Every old segment is at the floor (4) and the current one is all recent: the two T
        // segments go, older first.
        XCTAssertEqual(
            d.events,
            [
                .init(reason: .floorBreach, segment: 0, size: 0),
                .init(reason: .floorBreach, segment: 2, size: 0)
            ])
        XCTAssertEqual(d.after, [0, 4, 0, 4])
    }

    func testProtectedTokensBoundACut() {
        // prompt 0..<10 with 8 sinks; R 10..<20 current. Budget 12 forces the prompt to shrink,
        // but its 8 sinks stay: 64/32/16 free nothing (10 tokens), 8 = the sinks, 4 < 8 → 8.
        let segments = build(prompt: 10, runs: [(.reasoning, 10)])
        let protection = ThoughtSegments.Protection(sinks: 8, recent: 2, newest: 19)
        let d = segments.decide(
            resident: (0..<20).map { Int32($0) }, transition: false, budget: 12, schedule: schedule,
            protection: protection)
        XCTAssertEqual(d.protected[0], 8)
        XCTAssertEqual(d.events.first, .init(reason: .pressure, segment: 0, size: 8))
        // Then the current R (10 tokens, 2 recent) is split: R 10..<18 (8) shrinks to 4, total 8 + 4 + 2 = 14 > 12,
        // and no further schedule step frees anything: the floor breach takes the 2 tokens still over.
        XCTAssertEqual(d.events.dropFirst().map(\.reason), [.split, .pressure, .floorBreach])
        XCTAssertEqual(d.after, [8, 2, 2])
    }

    func testTheFirstDecodeTokenOfTypeTAfterThePromptTouchesNothing() {
        let segments = build(prompt: 6, runs: [])
        XCTAssertTrue(segments.append(position: 6, type: .transition))
        let d = segments.decide(
            resident: (0...6).map { Int32($0) }, transition: true, budget: nil, schedule: schedule,
            protection: .init(sinks: 0, recent: 1, newest: 6))
        XCTAssertTrue(d.events.isEmpty, "the prompt is not a thought: transitions leave it alone")
        XCTAssertEqual(d.after, [6, 1])
    }
}
