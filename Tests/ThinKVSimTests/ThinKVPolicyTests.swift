import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// What a ThinKV policy instance held after one hook, as `ThinKVProbe` records it.
struct ThinKVSnapshot {
    let layer: Int
    /// nil after prefill.
    let step: Int?
    let position: Int
    /// Per kv head: the attended slots (nil after prefill) and the resident slots afterwards.
    let attended: [[Int32]]?
    let resident: [[Int32]]
    /// The policy's segments after the hook, and which one is current.
    let segments: [ThoughtSegment]
    let currentSegment: Int?
    let counters: ThinKVCounters
    let pagingClass: [UInt8]
    let keyBits: [UInt8]
    let metadataBytes: [Int]
    let chargedMetadataBytes: [Int]?
}

let thinKVObservations = ObservationLog<ThinKVSnapshot>()

/// Records a ThinKV policy's cache, segments, counters and quantization charges.
enum ThinKVProbe<Inner: ThinKVPolicy>: PolicyProbe {
    static var log: ObservationLog<ThinKVSnapshot> { thinKVObservations }
    static func snapshot(
        of inner: Inner, layer: Int, step: Int?, position: Int, attended: [[Int32]]?,
        cache: LayerCache
    ) -> ThinKVSnapshot {
        let quantizer = inner.quantizer
        return ThinKVSnapshot(
            layer: layer, step: step, position: position, attended: attended, resident: cache.slots,
            segments: inner.segments?.segments ?? [], currentSegment: inner.segments?.currentIndex,
            counters: inner.counters,
            pagingClass: cache.pagingClass, keyBits: cache.keyBits, metadataBytes: cache.metadataBytes,
            chargedMetadataBytes: quantizer.map { q in (0..<cache.numKVHeads).map { q.chargedMetadataBytes(kvHead: $0) }
            })
    }
}

final class ThinKVPolicyTests: XCTestCase {
    // MARK: Helpers

    /// Thought labels from letters: R, E, T (decode positions), after P prompt positions (−1).
    private func labels(prompt P: Int, _ letters: String) -> [Int8] {
        Array(repeating: -1, count: P) + letters.map { ["R": 0, "E": 1, "T": 2][$0]! }
    }

    /// A random trace (Gaussian q/k/v) with the given decode labels.
    private func trace(
        prompt P: Int, _ letters: String, Hq: Int = 1, Hkv: Int = 1, D: Int = 16, seed: UInt64 = 1,
        layers: [Int] = [0]
    ) throws -> String {
        let T = P + letters.count
        let dir = try TestTraces.directory(self)
        let tensors = layers.map {
            TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: seed &+ UInt64($0), index: $0)
        }
        return try TestTraces.write(
            to: dir.appendingPathComponent("thinkv.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            numLayers: (layers.max() ?? 0) + 1, layers: tensors, thought: labels(prompt: P, letters))
    }

    /// Decode letters made of runs: (letter, length) pairs.
    private func runs(_ pairs: [(Character, Int)]) -> String {
        String(pairs.flatMap { Array(repeating: $0.0, count: $0.1) })
    }

    private func observe<P: ThinKVPolicy>(
        _ path: String, _ type: P.Type, _ values: [String: String],
        threads: Int = 1
    ) throws -> (ReplayResult, [KeptEvent], [ThinKVSnapshot]) {
        try TestTraces.observe(path, probe: ThinKVProbe<P>.self, values, threads: threads)
    }

    private func spec(_ name: String, _ values: [String: String]) throws -> PolicySpec {
        try PolicySpec(name: name, values: values)
    }

    // MARK: Registry

    func testThreePoliciesAreRegisteredWithTheirComponentsAndBlockSize() throws {
        XCTAssertTrue(PolicyRegistry.type(named: "thinkv") == ThinKVPolicy.self)
        XCTAssertTrue(PolicyRegistry.type(named: "thinkv-tbq") == ThinKVQuantizationOnlyPolicy.self)
        XCTAssertTrue(PolicyRegistry.type(named: "thinkv-tbe") == ThinKVEvictionOnlyPolicy.self)
        for name in ["thinkv", "thinkv-tbq", "thinkv-tbe"] {
            XCTAssertEqual(PolicyRegistry.type(named: name)!.preferredBlockSize, 8, name)
        }
        let names = { (type: any CachePolicy.Type) in Set(type.parameters.map(\.name)) }
        XCTAssertTrue(
            names(ThinKVQuantizationOnlyPolicy.self).isDisjoint(with: [
                "budget", "schedule", "sinks", "recent", "kmeans-iters", "seed"
            ]))
        XCTAssertTrue(
            names(ThinKVEvictionOnlyPolicy.self).isDisjoint(with: [
                "format", "r-bits", "e-bits", "t-bits", "group", "prompt-bits"
            ]))
        XCTAssertEqual(
            names(ThinKVPolicy.self),
            names(ThinKVQuantizationOnlyPolicy.self).union(names(ThinKVEvictionOnlyPolicy.self)))
        XCTAssertEqual(
            ThinKVQuantizationOnlyPolicy.requirements, [], "quantization alone runs on attention-only layers")
        XCTAssertEqual(ThinKVPolicy.requirements, .queriesAndKeys, "k-means needs the keys")
    }

    // MARK: Bytes, by hand

    func testBytesOfATinyCacheWithoutEvictionMatchHandCounts() throws {
        // D = 16, one kv head, prompt 4, then 16 R and 20 T decode tokens; paper formats.
        let path = try trace(prompt: 4, runs([("R", 16), ("T", 20)]))
        let (result, events, snapshots) = try observe(
            path, ThinKVPolicy.self, ["thoughts": "labels", "tbe-trigger": "transition-start"])
        let steps = result.runs[0].steps
        let token16 = 16 * 16 * 2 / 8  // 64 B: K and V, 16 channels at 16 bits
        // Step 15 (position 19) completes the R group: attended all at 16 bits, then quantized.
        XCTAssertEqual(steps[15].attendedBytes, 20 * token16)
        // Prompt 256 B; R group: 16 tokens × 16 channels × 4 bits × (K, V) = 256 B, plus NVFP4
        // scales: 16 key groups (one per channel) and 16 value groups (one per token), 1 B each.
        XCTAssertEqual(steps[15].residentBytes, 4 * token16 + 256 + 32)
        // Last step (position 39): the T group 20..<36 is ternary: 16×16×2×2/8 = 128 B plus an
        // E4M3 scale per key channel and per value token (32 B); 36..<40 still open at 16 bits.
        XCTAssertEqual(steps[35].residentBytes, 4 * token16 + (256 + 32) + (128 + 32) + 4 * token16)
        XCTAssertEqual(steps[35].residentBytes, 960)
        // The transition at position 20 found R at 16 tokens, below the schedule's 64: no eviction.
        XCTAssertTrue(events.isEmpty)
        XCTAssertEqual(snapshots.last?.counters.transitions, 1)
        XCTAssertEqual(snapshots.last?.counters.transitionCuts, 0)
        XCTAssertEqual(snapshots.last?.metadataBytes, [32 + 32])
        XCTAssertEqual(snapshots.last?.chargedMetadataBytes, [32 + 32])
    }

    func testBytesAfterTransitionsShrinkAQuantizedSegment() throws {
        // Prompt 4 (the sinks) | R 4..<20 | T 20..<24 | R 24..<28 | T 28; schedule 8,4; recent 2.
        let path = try trace(prompt: 4, runs([("R", 16), ("T", 4), ("R", 4), ("T", 1)]))
        let (result, events, snapshots) = try observe(
            path, ThinKVPolicy.self,
            [
                "thoughts": "labels", "schedule": "8,4", "recent": "2",
                "tbe-trigger": "transition-start", "partial-groups": "keep16"
            ])
        let steps = result.runs[0].steps
        let token16 = 64, token4 = 16  // bytes of one token's K and V at 16 / 4 bits
        // Step 16 (position 20, T begins): R (16 quantized tokens) shrinks to 8 — position 19 is
        // in the recent window, k-means picks 7 of 4..<19 — its group's 16 B of key scales stay
        // and the 8 kept tokens keep their 1 B value scales (the evicted 8 take theirs along).
        let atFirst = snapshots.first { $0.step == 16 }!
        XCTAssertEqual(atFirst.resident[0].filter { (4..<20).contains($0) }.count, 8)
        XCTAssertTrue(atFirst.resident[0].contains(19))
        XCTAssertEqual(steps[16].residentBytes, 4 * token16 + 8 * token4 + (16 + 8) + token16)
        XCTAssertEqual(steps[16].residentBytes, 472)
        // Step 24 (position 28, second T): R 8 → 4; T 20..<24 and R 24..<28 have 4 ≤ 8 tokens.
        // T 20..<24 never filled a group (16-bit), nor did R 24..<28.
        let atSecond = snapshots.first { $0.step == 24 }!
        XCTAssertEqual(atSecond.resident[0].filter { (4..<20).contains($0) }.count, 4)
        XCTAssertEqual(Set(atSecond.resident[0]).isSuperset(of: (20..<29).map { Int32($0) }), true)
        XCTAssertEqual(
            steps[24].residentBytes, 4 * token16 + (4 * token4 + 16 + 4) + 4 * token16 + 4 * token16 + token16)
        XCTAssertEqual(steps[24].residentBytes, 916)
        // Kept events at exactly the two transitions.
        XCTAssertEqual(Set(events.map(\.step)), [16, 24])
        XCTAssertEqual(
            snapshots.last?.counters, ThinKVCounters(transitions: 2, transitionCuts: 2, transitionEvictions: 8 + 4))
    }

    // MARK: Ablations

    func testQuantizationOnlyKeepsEveryTokenAndStillChangesAttention() throws {
        let letters = runs([("R", 40), ("E", 30), ("T", 20), ("R", 30)])
        let path = try trace(prompt: 8, letters, Hq: 4, Hkv: 2, D: 32, seed: 3)
        let (result, events, snapshots) = try observe(path, ThinKVQuantizationOnlyPolicy.self, ["thoughts": "labels"])
        XCTAssertTrue(events.isEmpty, "nothing is evicted")
        for r in result.runs[0].steps {
            XCTAssertEqual(r.residentTokens, Double(r.position + 1))
            XCTAssertEqual(r.massRecall, 1, accuracy: 1e-5)
            XCTAssertEqual(r.topKRecall, 1)
        }
        XCTAssertGreaterThan(result.runs[0].summary.attentionKL.mean, 0, "quantized keys change attention")
        XCTAssertGreaterThan(result.runs[0].summary.outputError!.mean, 0)
        // Final bits: T tokens 2, R and E 4 (in whole groups), prompt 16.
        let last = snapshots.last!
        XCTAssertEqual(last.keyBits[0..<8].allSatisfy { $0 == 16 }, true)
        XCTAssertEqual(last.keyBits[8 + 40 + 30 + 2], 2, "a transition token in a full group")
        XCTAssertEqual(last.keyBits[8 + 5], 4)
    }

    func testEvictionOnlyStoresEveryKeptTokenAt16Bits() throws {
        let letters = runs([("R", 120), ("T", 10), ("E", 80), ("T", 10), ("R", 60)])
        let path = try trace(prompt: 8, letters, Hq: 2, Hkv: 2, D: 16, seed: 4)
        let (result, events, snapshots) = try observe(
            path, ThinKVEvictionOnlyPolicy.self, ["thoughts": "labels", "budget": "90"])
        XCTAssertFalse(events.isEmpty)
        for r in result.runs[0].steps {
            XCTAssertEqual(Double(r.residentBytes), r.residentTokens * 2 * 16 * 4, "K and V at 2 bytes per element")
            XCTAssertLessThanOrEqual(r.residentTokens, 90)
        }
        XCTAssertTrue(
            snapshots.allSatisfy { $0.metadataBytes.allSatisfy { $0 == 0 } && $0.keyBits.allSatisfy { $0 == 16 } })
        XCTAssertLessThan(result.runs[0].summary.massRecall.mean, 1)
    }

    // MARK: Eviction rules end to end

    func testATransitionShrinksTheLongReasoningSegmentTo64KMeansRepresentativesPerHead() throws {
        let path = try trace(prompt: 4, runs([("R", 100), ("T", 3)]), Hq: 2, Hkv: 2, D: 16, seed: 5)
        let (_, events, snapshots) = try observe(
            path, ThinKVEvictionOnlyPolicy.self,
            ["thoughts": "labels", "recent": "8", "tbe-trigger": "transition-start"])
        let at = snapshots.first { $0.step == 100 }!
        var picks: [[Int32]] = []
        for h in 0..<2 {
            let kept = at.resident[h].filter { (4..<104).contains($0) }
            XCTAssertEqual(kept.count, 64, "head \(h)")
            XCTAssertTrue(Set(kept).isSuperset(of: (97..<104).map { Int32($0) }), "the recent window stays")
            picks.append(kept)
        }
        XCTAssertNotEqual(picks[0], picks[1], "each head clusters its own keys")
        XCTAssertEqual(Set(events.filter { $0.step == 100 }.map(\.kvHead)), [0, 1])
        // Before the transition nothing was evicted.
        XCTAssertTrue(snapshots.filter { ($0.step ?? -1) < 100 }.allSatisfy { $0.resident[0].count == $0.position + 1 })
    }

    /// Every step, every head: resident ≤ budget; sinks, the newest `recent` positions and the
    /// current segment resident; nothing evicted comes back; every head holds the same number of
    /// tokens per segment; paging classes are the thought types.
    func testProtectedSetsAndBudgetHoldAtEveryStep() throws {
        var random = SeededRandom(seed: 11)
        var letters = ""
        while letters.count < 400 {
            let letter: Character = ["R", "E", "T"][Int(random.next() % 3)]
            letters += String(repeating: String(letter), count: 1 + Int(random.next() % 70))
        }
        let P = 20
        let path = try trace(prompt: P, letters, Hq: 4, Hkv: 2, D: 16, seed: 6)
        let labelled = labels(prompt: P, letters)
        for (budget, recent) in [(60, 16), (24, 8)] {
            // The excess rule over maximal runs (the paper's whole-step cut is tested on its own).
            let values = [
                "thoughts": "labels", "budget": String(budget), "recent": String(recent), "sinks": "4",
                "ct-blocks": "type",
                "pressure-cut": "excess", "segments": "runs"
            ]
            let (_, _, snapshots) = try observe(path, ThinKVPolicy.self, values)
            var previous: [Set<Int32>]? = nil
            var previousCounters = ThinKVCounters()
            for s in snapshots {
                // Budget pressure removes only the excess: a step without a transition cut holds
                // min(budget, what it held + the new token); one with pressure holds the budget.
                let c = s.counters
                if let previous, c.transitionEvictions == previousCounters.transitionEvictions {
                    for h in 0..<2 {
                        XCTAssertEqual(
                            s.resident[h].count, min(budget, previous[h].count + 1),
                            "step \(s.step ?? -1): no over-eviction")
                    }
                }
                if s.step != nil,
                    c.pressureEvictions + c.floorBreachEvictions > previousCounters.pressureEvictions
                        + previousCounters.floorBreachEvictions
                {
                    XCTAssertEqual(s.resident[0].count, budget, "step \(s.step ?? -1): pressure stops at the budget")
                }
                previousCounters = c
                let current = s.currentSegment.map { s.segments[$0] }
                for h in 0..<2 {
                    let resident = Set(s.resident[h])
                    XCTAssertLessThanOrEqual(resident.count, budget, "step \(s.step ?? -1)")
                    XCTAssertTrue(resident.isSuperset(of: (0..<4).map { Int32($0) }), "sinks")
                    let newest = (max(0, s.position - recent + 1)...s.position).map { Int32($0) }
                    XCTAssertTrue(resident.isSuperset(of: newest), "recent window at step \(s.step ?? -1)")
                    if let current {
                        XCTAssertTrue(
                            resident.isSuperset(of: (current.start..<current.end).map { Int32($0) }), "current segment")
                        XCTAssertEqual(current.end, s.position + 1)
                    }
                    if let previous {
                        XCTAssertTrue(resident.isSubset(of: previous[h].union([Int32(s.position)])), "no token returns")
                        XCTAssertEqual(Set(s.attended![h]), previous[h].union([Int32(s.position)]))
                    }
                    for p in resident where Int(p) >= P {
                        XCTAssertEqual(Int8(s.pagingClass[Int(p)]), labelled[Int(p)], "paging class is the type")
                    }
                }
                for segment in s.segments {
                    let counts = (0..<2).map { h in
                        s.resident[h].filter { (segment.start..<segment.end).contains(Int($0)) }.count
                    }
                    XCTAssertEqual(counts[0], counts[1], "same size in every head")
                }
                previous = s.resident.map(Set.init)
            }
            let counters = snapshots.last!.counters
            XCTAssertGreaterThan(counters.pressureCuts, 0, "budget \(budget) made segments shrink")
            if budget == 24 { XCTAssertGreaterThan(counters.splits, 0) }
        }
    }

    func testAPromptLongerThanTheBudgetShrinksAtPrefillByTheExcessOnly() throws {
        // P = 50, budget 30, 4 sinks, 16 recent (20 protected). The prompt heads for 32: it keeps
        // 12 k-means representatives of its 30 unprotected tokens (18 leave, level 2); the 2
        // tokens still over budget leave on the way to 16 (below the protected 20, so 20): the
        // plan for 20 keeps no unprotected token and the two oldest representatives go first.
        let path = try trace(prompt: 50, runs([("R", 5)]), Hq: 2, Hkv: 2, D: 16)
        let (_, _, snapshots) = try observe(
            path, ThinKVPolicy.self, ["thoughts": "labels", "budget": "30", "pressure-cut": "excess"])
        let prefill = try XCTUnwrap(snapshots.first { $0.step == nil })
        for h in 0..<2 {
            XCTAssertEqual(prefill.resident[h].count, 30, "head \(h): exactly the budget, not half the prompt")
            XCTAssertTrue(
                Set(prefill.resident[h]).isSuperset(of: (0..<4).map { Int32($0) } + (34..<50).map { Int32($0) }))
        }
        XCTAssertEqual(prefill.counters.pressureCuts, 2)
        XCTAssertEqual(prefill.counters.pressureEvictions, 20)
        XCTAssertEqual(prefill.segments.first?.level, 2, "at 32 (schedule level 2, 64 freed nothing), on its way to 20")
        // Each decode step then removes one more prompt token; the budget holds exactly.
        for s in snapshots where s.step != nil { XCTAssertEqual(s.resident.map(\.count), [30, 30]) }
    }

    func testAfterTransitionTriggerShrinksOlderThoughtsWhenTheNextThoughtBegins() throws {
        // R 4..<104 | T 104..<107 | E 107..<112. Nothing happens while T is written; when E
        // begins, R (100 tokens) takes its first schedule step to 64 and T (3) keeps its tokens.
        let path = try trace(prompt: 4, runs([("R", 100), ("T", 3), ("E", 5)]), Hq: 2, Hkv: 2, D: 16, seed: 5)
        let (_, events, snapshots) = try observe(
            path, ThinKVEvictionOnlyPolicy.self,
            [
                "thoughts": "labels", "recent": "2", "tbe-trigger": "after-transition"
            ])
        XCTAssertTrue(
            snapshots.filter { ($0.step ?? -1) < 103 }.allSatisfy { $0.resident[0].count == $0.position + 1 },
            "the transition itself evicts nothing")
        let at = snapshots.first { $0.step == 103 }!
        for h in 0..<2 {
            XCTAssertEqual(at.resident[h].filter { (4..<104).contains($0) }.count, 64, "head \(h)")
            XCTAssertEqual(at.resident[h].filter { (104..<107).contains($0) }.count, 3)
        }
        XCTAssertEqual(Set(events.map(\.step)), [103])
        XCTAssertEqual(at.counters.transitions, 1)
        XCTAssertEqual(at.segments[2].level, 1, "the transition segment took its step too")
    }

    func testSegmentsFollowTheLabelsWhenThereIsNoBudget() throws {
        let pairs: [(Character, Int)] = [("R", 30), ("E", 12), ("R", 5), ("T", 7), ("E", 40), ("T", 1), ("R", 9)]
        let path = try trace(prompt: 6, runs(pairs))
        let (_, _, snapshots) = try observe(path, ThinKVEvictionOnlyPolicy.self, ["thoughts": "labels"])
        let segments = snapshots.last!.segments
        XCTAssertEqual(segments.first?.kind, .prompt)
        XCTAssertEqual(segments.first.map { [$0.start, $0.end] }, [0, 6])
        var start = 6
        var expected: [[Int]] = []
        for (_, n) in pairs { expected.append([start, start + n]); start += n }
        XCTAssertEqual(segments.dropFirst().map { [$0.start, $0.end] }, expected)
        let types: [Character: ThoughtType] = ["R": .reasoning, "E": .execution, "T": .transition]
        XCTAssertEqual(segments.dropFirst().map(\.kind), pairs.map { .thought(types[$0.0]!) })
        XCTAssertEqual(snapshots.last!.counters.transitions, 2)
    }

    func testThreadsDoNotChangeAnything() throws {
        let letters = runs([("R", 90), ("T", 20), ("E", 50), ("T", 5), ("R", 40), ("T", 10)])
        let path = try trace(prompt: 12, letters, Hq: 4, Hkv: 2, D: 16, seed: 8)
        let specs = [
            try spec("thinkv", ["thoughts": "labels", "budget": "64"]),
            try spec("thinkv-tbe", ["thoughts": "labels", "budget": "64"]),
            try spec("thinkv-tbq", ["thoughts": "labels"])
        ]
        let (one, eventsOne) = try TestTraces.replay(path, specs, threads: 1)
        let (four, eventsFour) = try TestTraces.replay(path, specs, threads: 4)
        for (a, b) in zip(one.runs, four.runs) { XCTAssertEqual(a.steps, b.steps, a.spec.label) }
        XCTAssertEqual(eventsOne.count, eventsFour.count)
        XCTAssertEqual(Set(eventsOne.map(\.jsonLine)), Set(eventsFour.map(\.jsonLine)))
        // A different k-means seed picks different representatives.
        let (reseeded, _) = try TestTraces.replay(
            path, [try spec("thinkv-tbe", ["thoughts": "labels", "budget": "64", "seed": "1"])])
        XCTAssertNotEqual(reseeded.runs[0].steps.map(\.attentionKL), one.runs[1].steps.map(\.attentionKL))
    }

    // MARK: Thought source

    func testClassifierTimelineIsTheThresholdedAveragedSparsity() throws {
        // Queries scaled in blocks of 10 positions by 0.2, 2 or 6: flat, medium and peaked attention.
        let T = 316, P = 16
        let layers = [0, 2].map { index -> TestTraces.Layer in
            var layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 16, seed: 9 + UInt64(index), index: index)
            for i in 0..<(T * 2 * 16) { layer.q![i] *= [0.2, 2, 6][(i / 32 / 10) % 3] }
            return layer
        }
        let path = try TestTraces.write(
            to: TestTraces.directory(self).appendingPathComponent("c.h5"), T: T, P: P, Hq: 2, Hkv: 1,
            D: 16, numLayers: 3, layers: layers)
        let reader = try TraceReader(path: path)
        let profile = try SparsityProfile.compute(reader, layers: [0, 2])
        let averaged = profile.averaged(over: [0, 2])
        // Thresholds at the terciles of the refresh steps' sparsity, so all three types occur.
        let sorted = stride(from: 0, to: averaged.count, by: 7).map { averaged[$0] }.sorted()
        let n = sorted.count
        let theta1 = (sorted[n / 3] + sorted[n / 3 + 1]) / 2, theta2 = (sorted[2 * n / 3] + sorted[2 * n / 3 + 1]) / 2
        XCTAssertLessThan(sorted[n / 3], sorted[n / 3 + 1], "a gap to place θ1 in")
        let parameters = try PolicyParameters(
            policy: "thinkv", specs: ThinKVPolicy.parameters,
            values: [
                "theta1": String(theta1), "theta2": String(theta2), "tau": "7", "sparsity-source": "full"
            ])
        let timeline = try XCTUnwrap(
            ThinKVPolicy.prepare(reader, parameters: parameters, layers: [0, 2]) as? ThoughtTimeline)
        let thresholds = ThoughtThresholds(
            theta1: Float(Double(String(theta1))!), theta2: Float(Double(String(theta2))!),
            layers: [0, 2], refreshInterval: 7)
        XCTAssertEqual(timeline.types, ThoughtClassifier.timeline(averagedSparsity: averaged, thresholds: thresholds))
        XCTAssertEqual(timeline.thresholds?.layers, [0, 2], "default L*: every recorded layer")
        XCTAssertEqual(Set(timeline.types).count, 3)
        // Held for τ = 7 steps.
        for t in timeline.types.indices where t % 7 != 0 { XCTAssertEqual(timeline.types[t], timeline.types[t - 1]) }

        // The same thresholds from a calibration file, with τ overridden on the command line.
        let file = try TestTraces.directory(self).appendingPathComponent("thresholds.json")
        var stored = thresholds
        stored.refreshInterval = 128
        try JSONEncoder().encode(stored).write(to: file)
        let fromFile = try PolicyParameters(
            policy: "thinkv", specs: ThinKVPolicy.parameters,
            values: [
                "calibration": file.path, "tau": "7", "sparsity-source": "full"
            ])
        let read = try XCTUnwrap(ThinKVPolicy.prepare(reader, parameters: fromFile, layers: [0]) as? ThoughtTimeline)
        XCTAssertEqual(read.types, timeline.types)
        XCTAssertEqual(read.thresholds, timeline.thresholds)

        // The deployed classifier reads its own cache; a cache that keeps every token (no
        // quantization, a schedule larger than the trace) sees exactly the full cache's attention.
        let everything = try PolicyParameters(
            policy: "thinkv-tbe", specs: ThinKVEvictionOnlyPolicy.parameters,
            values: [
                "theta1": String(theta1), "theta2": String(theta2), "tau": "7", "schedule": "100000"
            ])
        let own = try XCTUnwrap(
            ThinKVEvictionOnlyPolicy.prepare(reader, parameters: everything, layers: [0, 2]) as? ThoughtTimeline)
        XCTAssertEqual(own.types, timeline.types)
        // A window of 3 averages the refresh step with the two before it.
        let windowed = try PolicyParameters(
            policy: "thinkv", specs: ThinKVPolicy.parameters,
            values: [
                "theta1": String(theta1), "theta2": String(theta2), "tau": "7", "sparsity-source": "full",
                "sparsity-window": "3"
            ])
        let smoothed = try XCTUnwrap(
            ThinKVPolicy.prepare(reader, parameters: windowed, layers: [0, 2]) as? ThoughtTimeline)
        for t in stride(from: 0, to: averaged.count, by: 7) {
            let mean = averaged[max(0, t - 2)...t].reduce(0, +) / Float(t - max(0, t - 2) + 1)
            XCTAssertEqual(smoothed.types[t], thresholds.classify(mean), "refresh step \(t)")
        }
    }

    func testACompressedCacheChangesWhatTheClassifierSees() throws {
        // Peaked attention everywhere (queries × 8): late full-cache rows are sparser than θ2 =
        // 0.95. A cache of at most 13 attended tokens cannot be: one of them is the maximum, so
        // its sparsity is at most 12/13.
        let T = 200, P = 8
        var layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 16, seed: 21)
        for i in layer.q!.indices { layer.q![i] *= 8 }
        let path = try TestTraces.write(
            to: TestTraces.directory(self).appendingPathComponent("s.h5"), T: T, P: P, Hq: 2, Hkv: 1,
            D: 16, layers: [layer])
        let reader = try TraceReader(path: path)
        let theta2: Float = 0.95
        func types(_ source: String) throws -> [ThoughtType] {
            let parameters = try PolicyParameters(
                policy: "thinkv-tbe", specs: ThinKVEvictionOnlyPolicy.parameters,
                values: [
                    "theta1": "0.01", "theta2": String(theta2), "tau": "1", "sparsity-source": source, "budget": "12",
                    "recent": "4", "sinks": "2"
                ])
            return try XCTUnwrap(
                ThinKVEvictionOnlyPolicy.prepare(reader, parameters: parameters, layers: [0]) as? ThoughtTimeline
            ).types
        }
        let oracle = try types("full"), deployed = try types("cache")
        XCTAssertGreaterThan(oracle[150...].filter { $0 == .transition }.count, 15, "late full-cache rows are sparse")
        XCTAssertEqual(deployed[150...].filter { $0 == .transition }.count, 0, "its own 12-token cache is not")
    }

    func testThoughtSourceErrorsAreClear() throws {
        let path = try trace(prompt: 4, "RRRRTTTT", layers: [0, 2])
        let reader = try TraceReader(path: path)
        func prepare(_ values: [String: String]) throws -> Any? {
            try ThinKVPolicy.prepare(
                reader, parameters: PolicyParameters(policy: "thinkv", specs: ThinKVPolicy.parameters, values: values),
                layers: [0])
        }
        func message(_ values: [String: String]) -> String {
            do { _ = try prepare(values); return "no error" } catch { return String(describing: error) }
        }
        let selfCalibrated = try XCTUnwrap(prepare([:]) as? ThoughtTimeline)
        XCTAssertTrue(
            selfCalibrated.notes.contains { $0.contains("calibrated on this trace itself") }, "\(selfCalibrated.notes)")
        XCTAssertTrue(message(["theta1": "0.2"]).contains("both --theta1 and --theta2"))
        XCTAssertTrue(
            message(["theta1": "0.2", "theta2": "0.8", "thought-layers": "0,1"]).contains("layer 1 is not recorded"))
        XCTAssertTrue(message(["theta1": "0.8", "theta2": "0.2"]).contains("θ1 < θ2"))
        XCTAssertTrue(message(["theta1": "0.2", "theta2": "0.8", "thought-layers": "0,x"]).contains("comma list"))
        XCTAssertTrue(
            message(["calibration": "/nonexistent/t.json"]).contains("--calibration /nonexistent/t.json: no such file"))

        let unlabelled = try TestTraces.write(
            to: TestTraces.directory(self).appendingPathComponent("u.h5"), T: 8, P: 4, Hq: 1,
            Hkv: 1, D: 16, layers: [TestTraces.randomLayer(T: 8, Hq: 1, Hkv: 1, D: 16, seed: 1)])
        let parameters = try PolicyParameters(
            policy: "thinkv", specs: ThinKVPolicy.parameters, values: ["thoughts": "labels"])
        XCTAssertThrowsError(
            try ThinKVPolicy.prepare(TraceReader(path: unlabelled), parameters: parameters, layers: [0])
        ) {
            XCTAssertTrue(String(describing: $0).contains("/tokens/thought"))
        }
        // Unknown decode labels (−1) continue the previous type.
        var l = labels(prompt: 4, "RRTT")
        l[5] = -1
        l[7] = -1
        let partial = try TestTraces.write(
            to: TestTraces.directory(self).appendingPathComponent("p.h5"), T: 8, P: 4, Hq: 1, Hkv: 1,
            D: 16, layers: [TestTraces.randomLayer(T: 8, Hq: 1, Hkv: 1, D: 16, seed: 1)], thought: l)
        let timeline =
            try ThinKVPolicy.prepare(TraceReader(path: partial), parameters: parameters, layers: [0])
            as? ThoughtTimeline
        XCTAssertEqual(timeline?.types, [.reasoning, .reasoning, .transition, .transition])
    }

    func testCommandLineRunsTheThreePoliciesAndExplainsMissingThresholds() throws {
        let path = try trace(prompt: 8, runs([("R", 40), ("T", 6), ("E", 30)]), Hq: 2, Hkv: 1, D: 16)
        let directory = try TestTraces.directory(self)
        func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
            let outcome = try CommandRunner.run(arguments, in: directory)
            return (outcome.status, outcome.stdout + outcome.stderr)
        }
        let ok = try run([
            "replay", path, "--policy", "full,thinkv,thinkv-tbq,thinkv-tbe", "--thoughts", "labels", "--budget", "40",
            "--threads", "1"
        ])
        XCTAssertEqual(ok.status, 0, ok.output)
        for label in [
            "thinkv(budget=40,thoughts=labels)", "thinkv-tbq(thoughts=labels)", "thinkv-tbe(budget=40,thoughts=labels)"
        ] {
            XCTAssertTrue(ok.output.contains(label), label)
        }
        XCTAssertTrue(ok.output.contains("thinkv 8"), "ThinKV's block size")
        // Without thresholds ThinKV calibrates on the trace itself and says so.
        let selfCalibrated = try run(["replay", path, "--policy", "thinkv", "--json"])
        XCTAssertEqual(selfCalibrated.status, 0, selfCalibrated.output)
        XCTAssertTrue(selfCalibrated.output.contains("calibrated on this trace itself"), selfCalibrated.output)
    }

    func testPerThoughtTokensAndBytesAddUpAndAreReported() throws {
        let path = try trace(
            prompt: 8, runs([("R", 40), ("T", 6), ("E", 30), ("T", 4), ("R", 20)]), Hq: 2, Hkv: 2, D: 16)
        let specs = [
            try spec("thinkv", ["thoughts": "labels", "budget": "40"]),
            try spec("thinkv-tbe", ["thoughts": "labels", "budget": "40"]), try spec("h2o", ["budget": "40"])
        ]
        let (result, _) = try TestTraces.replay(path, specs)
        for run in result.runs.prefix(2) {
            for r in run.steps {
                let t = try XCTUnwrap(r.thought)
                XCTAssertEqual(
                    t.tokens.reduce(0, +), r.attendedTokens, accuracy: 1e-9, "\(run.spec.label) step \(r.step)")
                XCTAssertEqual(t.tokensByBits.reduce(0, +), r.attendedTokens, accuracy: 1e-9)
                XCTAssertLessThanOrEqual(t.bytes.reduce(0, +), r.attendedBytes, "elements without the groups' scales")
                if run.spec.name == "thinkv-tbe" {
                    XCTAssertEqual(t.bytes.reduce(0, +), r.attendedBytes, "all 16-bit, no metadata")
                }
            }
            let counters = try XCTUnwrap(run.summary.policyCounters)
            XCTAssertEqual(counters["transitions"], 2)
            XCTAssertGreaterThan(counters["pressure_evicted_tokens"] ?? 0, 0)
            XCTAssertNotNil(run.summary.thoughtBreakdown?.byThought["transition"])
        }
        // thinkv quantizes: T tokens end at 2 bits, R and E at 4.
        XCTAssertGreaterThan(result.runs[0].summary.thoughtBreakdown!.tokensByBits["2"]!, 0)
        XCTAssertEqual(
            result.runs[1].summary.thoughtBreakdown!.tokensByBits["16"]!,
            result.runs[1].summary.memory.meanAttendedTokens, accuracy: 1e-9)
        XCTAssertNil(result.runs[2].summary.thoughtBreakdown, "h2o has no thought types")
        XCTAssertNil(result.runs[2].summary.policyCounters)
        let json = try ReplayReport.json(result)
        XCTAssertTrue(json.contains("\"thought_breakdown\"") && json.contains("\"policy_counters\""), json)
        let text = ReplayReport.text(result)
        XCTAssertTrue(
            text.contains("by thought type") && text.contains("events thinkv(budget=40,thoughts=labels): floor breach"),
            text)
        let csv = ReplayReport.stepCSV(result).split(separator: "\n")
        let header = csv[0].split(separator: ",", omittingEmptySubsequences: false)
        let column = try XCTUnwrap(header.firstIndex(of: "thought_transition_tokens"))
        let h2oRow = try XCTUnwrap(csv.first { $0.hasPrefix("h2o") }).split(
            separator: ",", omittingEmptySubsequences: false)
        XCTAssertEqual(h2oRow.count, header.count)
        XCTAssertEqual(h2oRow[column], "")
    }

    func testRepresentativeSelectionsKeepWhatTheyPromise() throws {
        // R 4..<64 | T 64..<66 | E 66..<69; schedule 16,8; when E begins, R keeps 16 of its 60.
        let path = try trace(prompt: 4, runs([("R", 60), ("T", 2), ("E", 3)]), Hq: 2, Hkv: 2, D: 16, seed: 13)
        let reader = try TraceReader(path: path)
        let keys = try XCTUnwrap(LayerData.load(from: reader, layer: 0).keys)
        func kept(_ selection: String) throws -> [[Int32]] {
            let (_, _, snapshots) = try observe(
                path, ThinKVEvictionOnlyPolicy.self,
                [
                    "thoughts": "labels", "schedule": "16,8", "recent": "2", "sinks": "0", "representatives": selection,
                    "tbe-trigger": "after-transition"
                ])
            let at = try XCTUnwrap(snapshots.first { $0.step == 62 })
            return at.resident.map { $0.filter { (4..<64).contains($0) }.sorted() }
        }
        let byNorm = try kept("key-norm")
        for h in 0..<2 {
            let norm = { (p: Int) in
                (0..<16).reduce(Float(0)) { $0 + keys[((h * 69) + p) * 16 + $1] * keys[((h * 69) + p) * 16 + $1] }
            }
            let smallest = (4..<64).sorted { norm($0) < norm($1) }.prefix(16).map { Int32($0) }.sorted()
            XCTAssertEqual(byNorm[h], smallest, "head \(h): the 16 smallest key norms")
        }
        let random = try kept("random"), attention = try kept("attention"), kmeans = try kept("kmeans")
        for picks in [random, attention, kmeans] { XCTAssertEqual(picks.map(\.count), [16, 16]) }
        XCTAssertEqual(try kept("random"), random, "seeded")
        XCTAssertNotEqual(random, kmeans)
        XCTAssertNotEqual(attention, byNorm)
    }

    func testACalibrationOnOtherLayersMapsToTheNearestRecordedOnes() throws {
        let path = try trace(prompt: 4, "RRRRTTTTEEEE", layers: [0, 3])
        let reader = try TraceReader(path: path)
        let file = try TestTraces.directory(self).appendingPathComponent("elsewhere.json")
        try JSONEncoder().encode(ThoughtThresholds(theta1: 0.2, theta2: 0.8, layers: [0, 2, 29])).write(to: file)
        let parameters = try PolicyParameters(
            policy: "thinkv", specs: ThinKVPolicy.parameters,
            values: [
                "calibration": file.path, "sparsity-source": "full"
            ])
        let timeline = try XCTUnwrap(
            ThinKVPolicy.prepare(reader, parameters: parameters, layers: [0, 3]) as? ThoughtTimeline)
        XCTAssertEqual(timeline.thresholds?.layers, [0, 3], "2 → 3 (nearer than 0), 29 → 3, repeats dropped")
        XCTAssertTrue(timeline.notes.contains { $0.contains("2→3, 29→3") }, "\(timeline.notes)")
        // Python-style negative indices name recorded layers from the last.
        let negative = try PolicyParameters(
            policy: "thinkv", specs: ThinKVPolicy.parameters,
            values: [
                "theta1": "0.2", "theta2": "0.8", "thought-layers": "-1", "sparsity-source": "full"
            ])
        let last = try XCTUnwrap(ThinKVPolicy.prepare(reader, parameters: negative, layers: [0, 3]) as? ThoughtTimeline)
        XCTAssertEqual(last.thresholds?.layers, [3])
        let tooFar = try PolicyParameters(
            policy: "thinkv", specs: ThinKVPolicy.parameters,
            values: [
                "theta1": "0.2", "theta2": "0.8", "thought-layers": "-3"
            ])
        XCTAssertThrowsError(try ThinKVPolicy.prepare(reader, parameters: tooFar, layers: [0, 3])) {
            XCTAssertTrue(String(describing: $0).contains("before the first recorded layer"), "\($0)")
        }
    }

    func testFiguresSayWhenThinKVRanWithTheSingleTypeFallback() throws {
        let directory = try TestTraces.directory(self)
        let single = directory.appendingPathComponent("single.json"),
            three = directory.appendingPathComponent("three.json")
        try JSONEncoder().encode(ThoughtThresholds(theta1: 0, theta2: 1, layers: [0])).write(to: single)
        try JSONEncoder().encode(ThoughtThresholds(theta1: 0.3, theta2: 0.8, layers: [0])).write(to: three)
        let csv = directory.appendingPathComponent("r.csv")
        try Data(
            """
            trace,policy,label,calibration,budget,attention_kl
            a.h5,thinkv,thinkv(budget=8),\(single.path),8,0.5
            b.h5,thinkv,thinkv(budget=8),\(three.path),8,0.4
            b.h5,h2o,h2o(budget=8),,8,0.3

            """.utf8
        ).write(to: csv)
        let data = try PlotData(path: csv.path)
        XCTAssertEqual(FidelityFigure.singleTypeCalibrations(data, rows: data.rows(of: "a.h5")), [single.path])
        XCTAssertEqual(FidelityFigure.singleTypeCalibrations(data, rows: data.rows(of: "b.h5")), [])
        XCTAssertTrue(
            FidelityFigure.subtitle(data, rows: data.rows(of: "a.h5"), extra: "x").contains("single-type fallback"))
        XCTAssertFalse(FidelityFigure.subtitle(data, rows: data.rows(of: "b.h5"), extra: "x").contains("single-type"))
    }

    func testBadParametersAreRefused() throws {
        let path = try trace(prompt: 4, "RRRRRRRR")
        func run(_ name: String, _ values: [String: String]) -> String {
            do { _ = try TestTraces.replay(path, [spec(name, values)]); return "no error" } catch {
                return String(describing: error)
            }
        }
        XCTAssertTrue(
            run("thinkv", ["thoughts": "labels", "budget": "10", "sinks": "4", "recent": "8"]).contains(
                "at least --sinks + --recent"))
        XCTAssertTrue(run("thinkv", ["thoughts": "labels", "schedule": "4,8"]).contains("strictly decreasing"))
        XCTAssertTrue(run("thinkv", ["thoughts": "labels", "t-bits": "3"]).contains("thinkv:"))
        XCTAssertEqual(run("thinkv", ["thoughts": "labels", "t-bits": "3", "format": "int"]), "no error")
        XCTAssertThrowsError(try spec("thinkv-tbq", ["budget": "10"]), "quantization alone has no budget")
    }
}
