import Foundation
import XCTest
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The policy algebra (Policies/Algebra): the spelling and its usage errors, existing policies
/// equal to their compositions on a synthetic trace and on the shipped traces, and each part on
/// a case small enough to check on paper.
final class PolicyAlgebraTests: XCTestCase {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    private static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    // MARK: Spelling

    func testACompositionTakesItsPartsParametersAndItsNameSetsTheTriggers() throws {
        let spec = try PolicySpec(name: "keydiff@every-64", values: ["budget": "32"])
        XCTAssertEqual(spec.parameters.int("every"), 64)
        XCTAssertEqual(spec.label, "keydiff@every-64(budget=32)")
        let names = Set(spec.type.parameters.map { $0.name })
        XCTAssertFalse(names.contains("interval"), "the press's own cadence is replaced")
        XCTAssertTrue(names.isSuperset(of: ["budget", "score-dtype", "every"]))

        let quantized = try XCTUnwrap(PolicyRegistry.type(named: "snapkv@every-8+kivi")).parameters.map { $0.name }
        XCTAssertTrue(Set(quantized).isSuperset(of: ["budget", "window", "k-bits", "residual", "every"]))
        XCTAssertFalse(quantized.contains("divide"))

        // A part's parameter whose name the base has already is renamed PART-NAME.
        let clash = try XCTUnwrap(PolicyRegistry.type(named: "thinkv-tbe+tbq")).parameters.map { $0.name }
        XCTAssertTrue(clash.contains("calibration") && clash.contains("tbq-calibration"))
        XCTAssertEqual(Set(clash).count, clash.count)

        XCTAssertThrowsError(try PolicySpec(name: "keydiff@every-64", values: ["budget": "32", "every": "8"]))
    }

    func testImpossibleOrUnknownPartsAreOneLineUsageErrorsListingWhatIsAllowed() {
        let cases: [(String, String)] = [
            ("h2o@every-8", "triggers apply to: rkv, snapkv, tova"),
            ("rkv+foo", "quantizers: kivi, tbq, uniform; wrappers: adakv"),
            ("kivi+tbq", "kivi quantizes the cache itself"),
            ("h2o+adakv", "it wraps: tova, knorm, keydiff"),
            ("rkv@sometimes", "triggers: @every-step, @every-N, @on-overflow, @on-thought"),
            ("rkv+kivi+uniform", "one quantizer at most"),
            ("rkvv+kivi", "did you mean rkv?"),
            ("tova+adakv@every-8", "right after the base policy")
        ]
        for (name, expected) in cases {
            XCTAssertThrowsError(try PolicySpec.specs(items: [PolicyItem(name: name)], options: []), name) { error in
                XCTAssertTrue(error is UsageError, "\(name): \(error)")
                let text = String(describing: error)
                XCTAssertTrue(text.contains(expected), "\(name): \(text)")
                XCTAssertFalse(text.contains("\n"), name)
            }
        }
    }

    /// From the command line: exit 2 and one line before anything is replayed, and
    /// `thinkv-sim policies` lists every part with the bases it takes.
    func testTheCommandLineRefusesImpossibleCompositionsWithExitTwoAndListsTheParts() throws {
        let dir = try temporaryDirectory()
        let trace = Self.path("traces/sample-synthetic.h5")
        let refused = try CommandRunner.run(["replay", trace, "--policy", "rkv,h2o+adakv", "--budget", "64"], in: dir)
        XCTAssertEqual(refused.status, 2, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("h2o has no per-head scores for +adakv to pool"), refused.stderr)
        XCTAssertEqual(refused.stdout, "")
        let listing = try CommandRunner.run(["policies"], in: dir)
        XCTAssertEqual(listing.status, 0, listing.stderr)
        for part in PolicyAlgebra.triggers.map({ "@" + $0.spelling }) + PolicyAlgebra.quantizers.map({ "+" + $0.name })
            + PolicyAlgebra.wrappers.map({ "+" + $0.name })
        {
            XCTAssertTrue(listing.stdout.contains("    \(part): "), part)
        }
        XCTAssertTrue(listing.stdout.contains("bases: \(PolicyAlgebra.triggerableBases.joined(separator: ", "))"))
    }

    /// A sweep config names compositions as the command line does, with the same refusals.
    func testASweepConfigTakesCompositionsAndRefusesImpossibleOnes() throws {
        let trace = Self.path("traces/sample-synthetic.h5")
        let base = #""traces": ["\#(trace)"], "output": "o.csv", "parameters": {"budget": [64]}"#
        let policies = #""policies": ["rkv+kivi", "snapkv@every-8+uniform", "keydiff@every-16"]"#
        let grid = try SweepGrid(config: SweepConfig.decode(Data("{\(base), \(policies)}".utf8), file: "c.json"))
        XCTAssertFalse(grid.runs.isEmpty)
        let refused = Data(#"{\#(base), "policies": ["h2o@every-8"]}"#.utf8)
        XCTAssertThrowsError(try SweepConfig.decode(refused, file: "c.json")) {
            let error = $0 as? SweepConfigError
            XCTAssertEqual(error?.path, "policies[0].policy")
            XCTAssertTrue(error?.problem.contains("cannot hand its compression to a trigger") == true, "\($0)")
        }
    }

    // MARK: Triggers, Ada-KV, a quantizer, by hand

    func testTriggersFireOnTheStepsTheirSpellingSays() throws {
        XCTAssertEqual(EveryNTrigger.parse("every-64"), ["every": "64"])
        XCTAssertNil(EveryNTrigger.parse("every-0"))
        XCTAssertNil(EveryNTrigger.parse("every-step"))
        XCTAssertEqual(EveryStepTrigger.parse("every-step"), [:])
        let every4 = try EveryNTrigger(
            parameters: try PolicyParameters(
                policy: "t", specs: EveryNTrigger.parameters,
                values: ["every": "4"]), prepared: nil)
        // Decode steps 3 and 7 end the first two runs of 4 generated tokens.
        XCTAssertEqual((0..<10).filter { every4.fires(step: $0, overflow: false) }, [3, 7])
        XCTAssertEqual(every4.stepsBetween, 4)
        let none = try PolicyParameters(policy: "t", specs: [], values: [:])
        let everyStep = EveryStepTrigger(parameters: none, prepared: nil)
        XCTAssertEqual((0..<3).filter { everyStep.fires(step: $0, overflow: false) }, [0, 1, 2])
        let overflow = OverflowTrigger(parameters: none, prepared: nil)
        let overflowing = [false, true, false]
        XCTAssertEqual(overflowing.indices.filter { overflow.fires(step: $0, overflow: overflowing[$0]) }, [1])
        // Thought types R R E E E T R: new thoughts begin at steps 2, 5 and 6.
        let types: [ThoughtType] = [.reasoning, .reasoning, .execution, .execution, .execution, .transition, .reasoning]
        let timeline = ThoughtTimeline(types: types, source: .labels)
        let onThought = try ThoughtTransitionTrigger(
            parameters: try PolicyParameters(
                policy: "t", specs: ThoughtTransitionTrigger.parameters, values: [:]), prepared: timeline)
        XCTAssertEqual((0..<types.count).filter { onThought.fires(step: $0, overflow: true) }, [2, 5, 6])
        XCTAssertNil(onThought.stepsBetween)
    }

    /// Two heads of four tokens, two per head on average (four in all). Head 1's scores are the
    /// higher: with no safeguard it takes three of the four places; α = 0.5 guarantees each head
    /// its ⌊0.5 · 2⌋ = 1 best (no change here); α = 1 guarantees two each, the uniform split.
    func testAdaKVKeepsTheLayersBestScoresPooledAcrossHeadsAfterTheSafeguard() {
        let scores: [[Double]] = [[5, 1, 0.5, 0], [3, 2, 6, 7]]
        XCTAssertEqual(AdaKV.keep(scores: scores, target: 2, alpha: 0)!, [[0], [0, 2, 3]])
        XCTAssertEqual(AdaKV.keep(scores: scores, target: 2, alpha: 0.5)!, [[0], [0, 2, 3]])
        XCTAssertEqual(AdaKV.keep(scores: scores, target: 2, alpha: 1)!, [[0, 1], [2, 3]])
        // Heads of different lengths (after earlier allocations): the layer keeps 2 × 3 = 6 of 11.
        // α = 0: head 1's five and head 0's best. α = 0.75: each head's ⌊0.75 · 3⌋ = 2 best first
        // (head 0: 3 and 2), then the best two left (head 1: 7 and 6).
        let uneven: [[Double]] = [[1, 0.5, 2, 3, -1, -2], [9, 8, 7, 6, 5]]
        XCTAssertEqual(AdaKV.keep(scores: uneven, target: 3, alpha: 0)!, [[3], [0, 1, 2, 3, 4]])
        XCTAssertEqual(AdaKV.keep(scores: uneven, target: 3, alpha: 0.75)!, [[2, 3], [0, 1, 2, 3]])
        // A layer holding no more than heads × target is left as it is.
        XCTAssertNil(AdaKV.keep(scores: [[1, 2, 3], [4]], target: 2, alpha: 0.2))
    }

    /// `full+uniform` at 4 bits, D = 4, one group of 4 channels: a quantized token holds 4 bytes
    /// of codes (K and V, 4 × 4 bits each) and 8 of scales and zero points (two fp16 pairs),
    /// 12 bytes; the step's own token is still 16-bit, 16 bytes. At decode step t (position
    /// P + t) one kv head attends P + t quantized tokens and one 16-bit: 12(P + t) + 16.
    func testUniformQuantizerChargesWhatAPaperCountGives() throws {
        let (T, P, D) = (10, 4, 4)
        let dir = try temporaryDirectory()
        let layer = TestTraces.randomLayer(T: T, Hq: 1, Hkv: 1, D: D, seed: 7)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("u.h5"), T: T, P: P, Hq: 1, Hkv: 1, D: D,
            layers: [layer])
        let spec = try PolicySpec(name: "full+uniform", values: ["bits": "4", "group": "4"])
        let (result, _) = try TestTraces.replay(path, [spec])
        let bytes = result.runs[0].steps.map { $0.attendedBytes }
        XCTAssertEqual(bytes, (0..<(T - P)).map { 12 * (P + $0) + 16 })
    }

    /// `streaming+kivi` (B = 4, one sink; KIVI at 4 bits, G = R = 2) on one kv head with D = 2:
    /// a 16-bit token's K+V is 8 bytes, a quantized key or value 1 byte, a key group's scales
    /// D × 4 = 8 bytes, a value's 4. Prefill quantizes keys 0-3 (groups {0,1}, {2,3}) and values
    /// 0-1. Each step StreamingLLM drops the oldest non-sink token; KIVI then frees a value's
    /// scales with it, a key group's once no member is held, and quantizes on:
    /// step 0 attends 0-4: keys 4·1 + 4, values 2·1 + 3·4, scales 16 + 8: 46 bytes;
    /// step 1 attends 0,2-5: keys 3 + 8, values 2 + 12, scales 16 + 8 (value 2 in, value 1 out): 49;
    /// step 2 attends 0,3-6: keys 4 + 4 (group {4,5} in), values 2 + 12, scales 24 + 8: 54;
    /// step 3 attends 0,4-7: keys 3 + 8, values 2 + 12, scales 16 ({2,3} out) + 8: 49.
    func testKIVIOnAnEvictingBaseFreesTheScalesOfTokensThatLeave() throws {
        let (T, P, D) = (8, 4, 2)
        let dir = try temporaryDirectory()
        let layer = TestTraces.randomLayer(T: T, Hq: 1, Hkv: 1, D: D, seed: 11)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("k.h5"), T: T, P: P, Hq: 1, Hkv: 1, D: D,
            layers: [layer])
        let values = ["budget": "4", "sinks": "1", "k-bits": "4", "v-bits": "4", "group": "2", "residual": "2"]
        let (result, _) = try TestTraces.replay(path, [try PolicySpec(name: "streaming+kivi", values: values)])
        XCTAssertEqual(result.runs[0].steps.map { $0.attendedBytes }, [46, 49, 54, 49])
    }

    // MARK: Existing policies as compositions

    private func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("thinkv-algebra-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    /// Everything a replay of one policy reports, as exact text: every step record, the metric
    /// samples, the counters, the `--kept` events and the `--cache-timeline` records (not the
    /// label, which names the policy as written).
    private func outputs(
        _ path: String, _ spec: PolicySpec, layers: [Int]? = nil,
        maxSteps: Int? = nil
    ) throws -> [(what: String, text: String)] {
        var configuration = ReplayConfiguration(policies: [spec], layers: layers, maxSteps: maxSteps, threads: 1)
        configuration.threads = 1
        let engine = ReplayEngine(reader: try TraceReader(path: path), configuration: configuration)
        let kept = KeptEventCollector(), timelines = CacheTimelineCollector()
        engine.keptSink = kept
        engine.timelineSink = timelines
        let run = try engine.run().runs[0]
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf",
            nan: "nan")
        func text<T: Encodable>(_ value: T) throws -> String {
            String(decoding: try encoder.encode(value), as: UTF8.self)
        }
        var parts = try run.steps.map { (what: "step record of layer \($0.layer) step \($0.step)", text: try text($0)) }
        parts.append(("metric samples", try text(run.samples)))
        parts.append(("counters", try text(run.counters)))
        parts += try kept.events.map { event in
            var unnamed = event
            unnamed.policy = ""  // the label, as written
            return ("kept event of layer \(event.layer) step \(event.step) head \(event.kvHead)", try text(unnamed))
        }
        parts += timelines.timelines.sorted { ($0.layer, $0.kvHead) < ($1.layer, $1.kvHead) }
            .map { timeline in
                var unnamed = timeline
                unnamed.policy = ""  // the label, as written
                return ("cache timeline of layer \(timeline.layer) head \(timeline.kvHead)", unnamed.jsonLine)
            }
        return parts
    }

    private func assertSameOutputs(
        _ path: String, _ a: PolicySpec, _ b: PolicySpec, layers: [Int]? = nil,
        maxSteps: Int? = nil, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let x = try outputs(path, a, layers: layers, maxSteps: maxSteps)
        let y = try outputs(path, b, layers: layers, maxSteps: maxSteps)
        XCTAssertEqual(x.count, y.count, "\(a.label) vs \(b.label) on \(path)", file: file, line: line)
        if let i = (0..<min(x.count, y.count)).first(where: { x[$0].text != y[$0].text }) {
            XCTFail("\(a.label) vs \(b.label) on \(path): \(x[i].what) differs", file: file, line: line)
        }
        // Not vacuous: the replay evicted or quantized something.
        let acted = x.contains { $0.what.hasPrefix("kept event") } || x.contains { $0.text.contains("\"step\"") }
        XCTAssertTrue(acted, "\(a.label) did nothing", file: file, line: line)
    }

    /// The pairs each trace is replayed with: an existing policy and the composition it is.
    private func equalPairs(
        budget: Int, interval: Int, calibration: String?,
        withTBQ: Bool = true
    ) throws -> [(PolicySpec, PolicySpec)] {
        let b = String(budget), n = String(interval)
        var tbq: [String: String] = [:]
        // On the shipped traces the classifier reads the full cache's sparsity: the same timeline
        // for both, without replaying TBQ's own cache over the whole trace first (slow in debug).
        if let calibration {
            tbq = ["calibration": calibration, "sparsity-source": "full"]
        } else {
            tbq["thoughts"] = "labels"
        }
        let snap = ["snap-variant": "kvpress", "budget": b, "interval": n, "window": "2"]
        var pairs = [
            (try PolicySpec(name: "kivi"), try PolicySpec(name: "full+kivi")),
            (
                try PolicySpec(name: "kivi", values: ["k-bits": "4", "residual": "64"]),
                try PolicySpec(name: "full+kivi", values: ["k-bits": "4", "residual": "64"])
            ),
            // kvpress's SnapKV also buffers min(interval, 256) queries to score with: `interval`
            // stays a parameter of the composition.
            (try PolicySpec(name: "snapkv", values: snap), try PolicySpec(name: "snapkv@every-\(n)", values: snap))
        ]
        if withTBQ {
            pairs.append(
                (
                    try PolicySpec(name: "thinkv-tbq", values: tbq),
                    try PolicySpec(name: "full+tbq", values: tbq)
                ))
        }
        for scorer in PolicyAlgebra.poolableBases {
            pairs.append(
                (
                    try PolicySpec(name: scorer, values: ["budget": b, "interval": n]),
                    try PolicySpec(name: "\(scorer)@every-\(n)", values: ["budget": b])
                ))
        }
        pairs.append(
            (
                try PolicySpec(name: "tova", values: ["budget": b, "interval": "1"]),
                try PolicySpec(name: "tova@every-step", values: ["budget": b])
            ))
        pairs.append(
            (
                try PolicySpec(name: "knorm", values: ["compression-ratio": "0.5", "interval": n]),
                try PolicySpec(name: "knorm@every-\(n)", values: ["compression-ratio": "0.5"])
            ))
        return pairs
    }

    /// A random two-layer trace with thought labels (runs of 8 steps of each type).
    func testExistingPoliciesEqualTheirCompositionsOnASyntheticTrace() throws {
        let (T, P, D) = (120, 24, 16)
        let dir = try temporaryDirectory()
        let layers = (0..<2).map { TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: D, seed: 40 + UInt64($0), index: $0) }
        let thought = (0..<T).map { $0 < P ? Int8(-1) : Int8((($0 - P) / 8) % 3) }
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("s.h5"), T: T, P: P, Hq: 4, Hkv: 2, D: D,
            numLayers: 2, layers: layers, thought: thought)
        for (a, b) in try equalPairs(budget: 20, interval: 4, calibration: nil) {
            try assertSameOutputs(path, a, b)
        }
    }

    /// The shipped traces, first recorded layer, 128 decode steps, ThinKV with its shipped
    /// calibration. TBQ's timeline reads every step of the thought layers: on the synthetic
    /// sample only (on SmolLM2's 30 layers it would take minutes in a debug build).
    func testExistingPoliciesEqualTheirCompositionsOnTheShippedTraces() throws {
        let traces = [
            ("traces/sample-synthetic.h5", "configs/thinkv-synthetic.json", true),
            ("traces/smollm2-135m-math.h5", "configs/thinkv-smollm2-135m.json", false)
        ]
        for (trace, calibration, withTBQ) in traces {
            let path = Self.path(trace)
            let first = try TraceReader(path: path).recordedLayerIndices[0]
            let pairs = try equalPairs(budget: 96, interval: 32, calibration: Self.path(calibration), withTBQ: withTBQ)
            for (a, b) in pairs {
                try assertSameOutputs(path, a, b, layers: [first], maxSteps: 128)
            }
        }
    }
}
