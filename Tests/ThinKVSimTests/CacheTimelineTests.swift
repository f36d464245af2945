import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// `replay --cache-timeline`: per policy, layer and kv head, the step each position leaves the
/// attended set and every quantization with the step it takes effect.
final class CacheTimelineTests: XCTestCase {

    private func replay(_ path: String, _ specs: [PolicySpec]) throws -> (ReplayResult, [CacheTimeline], [KeptEvent]) {
        let reader = try TraceReader(path: path)
        let engine = ReplayEngine(reader: reader, configuration: ReplayConfiguration(policies: specs, threads: 1))
        let timelines = CacheTimelineCollector(), kept = KeptEventCollector()
        engine.timelineSink = timelines
        engine.keptSink = kept
        let result = try engine.run()
        return (result, timelines.timelines, kept.events)
    }

    private func trace(T: Int, P: Int, Hq: Int, Hkv: Int, D: Int, seed: UInt64) throws -> String {
        let dir = try TestTraces.directory(self)
        return try TestTraces.write(
            to: dir.appendingPathComponent("t.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            layers: [TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: seed)])
    }

    /// StreamingLLM with budget 3 and one sink, P = 3, T = 8, worked by hand: after each step's
    /// attention it keeps position 0 and the two newest, so position 1 is gone from step 1 on,
    /// 2 from step 2, 3 from 3 and 4 from 4; what step 4 drops is never attended again.
    func testStreamingHandExample() throws {
        let path = try trace(T: 8, P: 3, Hq: 1, Hkv: 1, D: 4, seed: 1)
        let (_, timelines, _) = try replay(
            path, [try PolicySpec(name: "streaming", values: ["budget": "3", "sinks": "1"])])
        XCTAssertEqual(timelines.count, 1)
        XCTAssertEqual(timelines[0].droppedAt, [-1, 1, 2, 3, 4, -1, -1, -1])
        XCTAssertEqual(timelines[0].groups, [])
    }

    /// KIVI with group 2 and residual 2 (P = 3, T = 8), worked by hand from its rules: the prefill
    /// quantizes keys 0–1 and value 0; after step s the keys flush when two are 16-bit and the
    /// oldest value leaves the 2-token residual; each is seen from the next step.
    func testKIVIHandExample() throws {
        let path = try trace(T: 8, P: 3, Hq: 1, Hkv: 1, D: 4, seed: 2)
        let spec = try PolicySpec(name: "kivi", values: ["group": "2", "residual": "2", "k-bits": "2", "v-bits": "2"])
        let (_, timelines, _) = try replay(path, [spec])
        let groups = timelines[0].groups.map { "\($0.tensor.rawValue)\($0.positions)@\($0.step)" }
        XCTAssertEqual(
            groups,
            [
                "key[0, 1]@0", "value[0]@0", "key[2, 3]@1", "value[1]@1", "value[2]@2",
                "key[4, 5]@3", "value[3]@3", "value[4]@4"
            ])
        XCTAssertEqual(timelines[0].droppedAt, Array(repeating: -1, count: 8))
        XCTAssertTrue(timelines[0].groups.allSatisfy { $0.quantizer == .integer(bits: 2) })
        XCTAssertEqual(timelines[0].groups.first { $0.tensor == .value }?.channelGroup, 2)
    }

    /// The attended set a timeline implies at every step has the size the replay measured, and
    /// after every H2O compression (which drops after attention) it is the kept set of `--kept`.
    func testTimelinesAgreeWithRecordsAndKeptEvents() throws {
        let T = 90, P = 20, Hkv = 2
        let path = try trace(T: T, P: P, Hq: 4, Hkv: Hkv, D: 8, seed: 3)
        let names: [(String, [String: String])] = [
            ("h2o", ["budget": "16"]), ("snapkv", ["budget": "16", "window": "4"]),
            ("streaming", ["budget": "12"]), ("tova", ["budget": "16"]),
            ("full", [:]), ("thinkv", ["budget": "24"])
        ]
        let specs = try names.map { try PolicySpec(name: $0.0, values: $0.1) }
        let (result, timelines, kept) = try replay(path, specs)
        XCTAssertEqual(timelines.count, specs.count * Hkv)
        for run in result.runs {
            let mine = timelines.filter { $0.policy == run.spec.label }
            XCTAssertEqual(mine.count, Hkv, run.spec.label)
            for record in run.steps {
                let t = record.step
                var attended = 0
                for timeline in mine {
                    for j in 0...(P + t) where timeline.droppedAt[j] < 0 || Int(timeline.droppedAt[j]) > t {
                        attended += 1
                    }
                }
                XCTAssertEqual(Double(attended) / Double(Hkv), record.attendedTokens, "\(run.spec.label) step \(t)")
            }
        }
        let h2o = specs[0].label
        let events = kept.filter { $0.policy == h2o }
        XCTAssertFalse(events.isEmpty)
        for event in events where event.step + 1 < T - P {
            let timeline = timelines.first { $0.policy == h2o && $0.kvHead == event.kvHead }!
            let implied = (0...event.position).filter { j in
                let d = Int(timeline.droppedAt[j])
                return d < 0 || d > event.step + 1
            }.map { Int32($0) }
            XCTAssertEqual(implied, event.kept, "step \(event.step) head \(event.kvHead)")
        }
    }

    /// ThinKV quantizes each position's key and value at most once, only positions its
    /// attention has already seen (or the prompt), and never one it dropped before.
    func testThinKVQuantizesEachPositionOnceBeforeItIsSeenQuantized() throws {
        let T = 120, P = 16
        let path = try trace(T: T, P: P, Hq: 2, Hkv: 1, D: 16, seed: 4)
        let (_, timelines, _) = try replay(path, [try PolicySpec(name: "thinkv", values: ["budget": "48"])])
        let timeline = timelines[0]
        XCTAssertFalse(timeline.groups.isEmpty)
        for tensor in [QuantizedGroup.Tensor.key, .value] {
            var seen = Set<Int32>()
            for group in timeline.groups where group.tensor == tensor {
                for p in group.positions {
                    XCTAssertTrue(seen.insert(p).inserted, "\(tensor) of \(p) quantized twice")
                    XCTAssertLessThan(Int(p), P + group.step, "\(p) quantized before step \(group.step) saw it")
                    let d = Int(timeline.droppedAt[Int(p)])
                    XCTAssertTrue(d < 0 || d >= group.step, "\(p) quantized after it was dropped")
                }
            }
        }
    }

    /// Checks every step's attended bytes of every policy in `result` against the recomputation
    /// from its timeline (`CacheTimeline.recomputedAttendedBytes`, in Support); returns how many
    /// steps had quantized tokens and evictions in the attended set.
    @discardableResult
    private func assertBytesMatchTimelines(
        _ result: ReplayResult, _ timelines: [CacheTimeline], promptLength P: Int, headDim D: Int,
        file: StaticString = #filePath, line: UInt = #line
    ) -> (quantized: Int, evicted: Int) {
        var quantized = 0, evicted = 0
        for run in result.runs {
            for record in run.steps {
                let mine = timelines.filter { $0.policy == run.spec.label && $0.layer == record.layer }
                XCTAssertFalse(mine.isEmpty, file: file, line: line)
                let t = record.step
                let expected = mine.reduce(0) { $0 + $1.recomputedAttendedBytes(step: t, promptLength: P, headDim: D) }
                XCTAssertEqual(
                    record.attendedBytes, expected, "\(run.spec.label) layer \(record.layer) step \(t)", file: file,
                    line: line)
                if mine.contains(where: { $0.groups.contains { $0.step <= t } }) { quantized += 1 }
                if mine.contains(where: { $0.droppedAt.contains { $0 >= 0 && Int($0) <= t } }) { evicted += 1 }
            }
        }
        return (quantized, evicted)
    }

    /// ThinKV's bytes at every step are what its timeline implies, to the byte: on a hand-labelled
    /// trace with short thoughts (partial groups) and a budget that evicts, in the paper formats
    /// (NVFP4, ternary; FP8 reasoning and prompt), in the int format, and with a head dim that is
    /// not a multiple of the group size (value groups of 16 and 8 channels).
    func testThinKVBytesEqualARecomputationFromTheTimelineAtEveryStep() throws {
        let P = 20, decode = 150
        var rng = SplitMix64(seed: 17)
        var letters: [Int8] = []
        while letters.count < decode {
            let type = Int8(rng.next() % 3)
            let length = type == 2 ? 1 + Int(rng.next() % 6) : 5 + Int(rng.next() % 30)
            letters += [Int8](repeating: type, count: length)
        }
        let labels = [Int8](repeating: -1, count: P) + letters.prefix(decode)
        let configurations: [(D: Int, values: [String: String])] = [
            (16, ["budget": "48", "thoughts": "labels"]),
            (16, ["budget": "40", "thoughts": "labels", "r-bits": "8", "prompt-bits": "8"]),
            (
                16,
                [
                    "budget": "56", "thoughts": "labels", "format": "int", "r-bits": "4", "e-bits": "3", "t-bits": "2",
                    "prompt-bits": "4"
                ]
            ),
            (24, ["budget": "48", "thoughts": "labels", "r-bits": "8"])
        ]
        for (D, values) in configurations {
            let T = P + decode, Hq = 4, Hkv = 2
            let dir = try TestTraces.directory(self)
            let path = try TestTraces.write(
                to: dir.appendingPathComponent("bytes-\(D).h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
                layers: [TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 5)], thought: labels)
            let (result, timelines, _) = try replay(path, [try PolicySpec(name: "thinkv", values: values)])
            let seen = assertBytesMatchTimelines(result, timelines, promptLength: P, headDim: D)
            // Not vacuous: most steps attend quantized tokens after some evictions.
            XCTAssertGreaterThan(seen.quantized, decode / 2, "\(values)")
            XCTAssertGreaterThan(seen.evicted, decode / 2, "\(values)")
        }
    }

    /// The same on the shipped synthetic sample (first 300 decode steps, last layer).
    func testThinKVBytesEqualARecomputationFromTheTimelineOnTheShippedSample() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
            .appendingPathComponent("traces/sample-synthetic.h5").path
        let reader = try TraceReader(path: path)
        let engine = ReplayEngine(
            reader: reader,
            configuration: ReplayConfiguration(
                policies: [try PolicySpec(name: "thinkv", values: ["budget": "160", "thoughts": "labels"])],
                layers: [reader.layers.last!.index], maxSteps: 300, threads: 1))
        let collector = CacheTimelineCollector()
        engine.timelineSink = collector
        let result = try engine.run()
        let seen = assertBytesMatchTimelines(
            result, collector.timelines, promptLength: reader.header.promptLength,
            headDim: reader.header.headDim)
        XCTAssertGreaterThan(seen.quantized, 150)
        XCTAssertGreaterThan(seen.evicted, 100)
    }

    func testJSONLine() {
        let timeline = CacheTimeline(
            policy: "h2o(budget=\"2\")", layer: 3, kvHead: 1, droppedAt: [-1, 2, -1],
            groups: [
                QuantizedGroup(tensor: .key, positions: [0, 1], quantizer: .nvfp4, channelGroup: 4, step: 1),
                QuantizedGroup(tensor: .value, positions: [0], quantizer: .integer(bits: 2), channelGroup: 2, step: 0)
            ])
        XCTAssertEqual(
            timeline.jsonLine,
            #"{"policy":"h2o(budget=\"2\")","layer":3,"kv_head":1,"dropped_at":[-1,2,-1],"groups":["#
                + #"{"tensor":"key","step":1,"quantizer":"nvfp4","positions":[0,1]},"#
                + #"{"tensor":"value","step":0,"quantizer":"int2","channel_group":2,"positions":[0]}]}"#
        )
        let decoded = try? JSONSerialization.jsonObject(with: Data(timeline.jsonLine.utf8)) as? [String: Any]
        XCTAssertEqual(decoded?["policy"] as? String, "h2o(budget=\"2\")")
    }
}
