import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// `OnlinePolicyDriver` (thinkv-sim serve-policy): a policy fed a trace's rows one step and one
/// layer at a time decides exactly what the replay engine decides on the whole trace — the same
/// attended set at every step and the same quantizations at the same steps — for every policy
/// that needs no whole-trace preparation, with a header longer than the trace.
final class OnlinePolicyDriverTests: XCTestCase {

    private static let T = 70, P = 14, Hq = 4, Hkv = 2, D = 8

    /// Two random layers; with `sharpness`, the queries of each run of 8 positions are scaled by
    /// 0.2, 1 or 6 in turn, so the attention's sparsity changes along the trace (thought types).
    private func twoLayerTrace(sharpness: Bool = false) throws -> TraceReader {
        let (T, P, Hq, Hkv, D) = (Self.T, Self.P, Self.Hq, Self.Hkv, Self.D)
        let dir = try TestTraces.directory(self)
        var layers = [
            TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 5),
            TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 6, index: 1)
        ]
        if sharpness {
            let factors: [Float] = [0.2, 1, 6]
            for l in layers.indices {
                for p in 0..<T { for i in 0..<(Hq * D) { layers[l].q![p * Hq * D + i] *= factors[(p / 8) % 3] } }
            }
        }
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("t.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D, numLayers: 2,
            layers: layers)
        return try TraceReader(path: path)
    }

    /// Every registered policy whose `prepare` reads nothing of the trace, with the settings the
    /// conformance tests derive from its declarations (`PolicyConformance`), at its smallest
    /// accepted budget and a moderate one: a new policy is covered without an edit here.
    func testOnlineDecisionsEqualTheReplayForEveryPolicy() throws {
        let reader = try twoLayerTrace()
        var tested = 0
        for type in PolicyRegistry.all {
            let budgets: [PolicyConformance.Budget] =
                PolicyConformance.declaresBudget(type)
                ? [.smallest, .moderate] : [.smallest]
            for budget in budgets {
                let spec: PolicySpec
                do {
                    let values = try PolicyConformance.settings(for: type, reader: reader, budget: budget)
                    spec = try PolicyConformance.spec(type, values)
                } catch {
                    XCTFail("\(type.name): \(error)")
                    continue
                }
                // Whole-trace preparation (ThinKV's thought timeline) is tested online below.
                let layers = reader.recordedLayerIndices
                guard try type.prepare(reader, parameters: spec.parameters, layers: layers) == nil else { continue }
                try assertOnlineEqualsReplay(spec, reader: reader)
                tested += 1
            }
        }
        XCTAssertGreaterThan(tested, PolicyRegistry.all.count, "most policies need no preparation")
    }

    /// ThinKV types its thoughts online from the sparsity over its own cache, a refresh reading
    /// the steps before it (`--type-lag 1`): the same types, attended sets and quantizations as a
    /// replay with the same lag, with thresholds that make all three thought types occur.
    func testOnlineThinKVEqualsTheReplayWithTheSameTypeLag() throws {
        let reader = try twoLayerTrace(sharpness: true)
        var base = [
            "budget": "24", "recent": "8", "sinks": "2", "schedule": "8,4,2", "tau": "4", "type-lag": "1",
            "thought-layers": "0,1", "theta1": "0.1", "theta2": "0.9"
        ]
        // θ1 and θ2 at the tertiles of the sparsity over ThinKV's own cache, averaged over L*.
        let probe = try PolicySpec(name: "thinkv", values: base)
        let thresholds = ThoughtThresholds(theta1: 0.1, theta2: 0.9, layers: [0, 1], refreshInterval: 4)
        let (_, profile) = try CacheSparsityClassifier.run(
            reader, policyType: ThinKVPolicy.self, parameters: probe.parameters,
            thresholds: thresholds, window: 1, lag: 1, policy: "thinkv",
            profiledLayers: [0, 1])
        let a = profile!.byLayer[0]!, b = profile!.byLayer[1]!
        let mean = zip(a, b).map { ($0 + $1) / 2 }.sorted()
        base["theta1"] = String(mean[mean.count / 3])
        base["theta2"] = String(mean[2 * mean.count / 3])
        for name in ["thinkv", "thinkv-tbe", "thinkv-tbq"] {
            var values = base
            if name == "thinkv-tbq" { for key in ["budget", "recent", "sinks", "schedule"] { values[key] = nil } }
            let spec = try PolicySpec(name: name, values: values)
            let timeline = try ThinKVParameters.timeline(
                reader, parameters: spec.parameters, policyType: spec.type as! ThinKVPolicy.Type)
            XCTAssertGreaterThanOrEqual(
                Set(timeline.types).count, 2, "\(name): the thresholds must make the types change")
            let driver = try assertOnlineEqualsReplay(spec, reader: reader)
            XCTAssertEqual(driver.thoughtTypes, timeline.types, "\(name): the online types are the replay's")
        }
    }

    /// Feeds the trace row by row (a header 10 positions longer than the trace) and checks, at
    /// every step and kv head, the attended set and the quantizations against the replay's
    /// `--cache-timeline`, and the mean KV bytes and attention KL against the replay's.
    @discardableResult
    private func assertOnlineEqualsReplay(_ spec: PolicySpec, reader: TraceReader) throws -> OnlinePolicyDriver {
        let (T, P, Hkv) = (Self.T, Self.P, Self.Hkv)
        let name = spec.label
        let engine = ReplayEngine(reader: reader, configuration: ReplayConfiguration(policies: [spec], threads: 1))
        let sink = CacheTimelineCollector()
        engine.timelineSink = sink
        let replayed = try engine.run()

        var header = reader.header
        header.numTokens = T + 10
        let driver = try OnlinePolicyDriver(spec: spec, header: header)
        let layers = reader.recordedLayerIndices
        var droppedAt = Array(
            repeating: Array(repeating: [Int32](repeating: -1, count: T), count: Hkv), count: layers.count)
        var groups = Array(repeating: Array(repeating: [QuantizedGroup](), count: Hkv), count: layers.count)
        var previous = Array(
            repeating: Array(repeating: Set((0..<P).map { Int32($0) }), count: Hkv), count: layers.count)
        for (l, layer) in layers.enumerated() {
            try driver.prefill(
                layer: l, queries: reader.readRows(.q, layer: layer, rows: 0..<P),
                keys: reader.readRows(.k, layer: layer, rows: 0..<P),
                values: reader.readRows(.v, layer: layer, rows: 0..<P))
        }
        for t in 0..<(T - P) {
            for (l, layer) in layers.enumerated() {
                let row = (P + t)..<(P + t + 1)
                let answer = try driver.step(
                    layer: l, step: t, queries: reader.readRows(.q, layer: layer, rows: row),
                    keys: reader.readRows(.k, layer: layer, rows: row),
                    values: reader.readRows(.v, layer: layer, rows: row))
                for g in 0..<Hkv {
                    let now = Set(answer.attended[g])
                    XCTAssertTrue(now.contains(Int32(P + t)), "\(name): the new position is attended")
                    for p in previous[l][g].subtracting(now) where droppedAt[l][g][Int(p)] < 0 {
                        droppedAt[l][g][Int(p)] = Int32(t)
                    }
                    previous[l][g] = now
                    XCTAssertEqual(answer.attended[g], answer.attended[g].sorted())
                }
                for (g, group) in answer.groups {
                    var stamped = group
                    stamped.step = t
                    groups[l][g].append(stamped)
                }
            }
        }
        for timeline in sink.timelines {
            let l = layers.firstIndex(of: timeline.layer)!
            XCTAssertEqual(
                droppedAt[l][timeline.kvHead], timeline.droppedAt,
                "\(name) layer \(timeline.layer) head \(timeline.kvHead)")
            XCTAssertEqual(
                groups[l][timeline.kvHead], timeline.groups, "\(name) layer \(timeline.layer) head \(timeline.kvHead)")
        }
        XCTAssertEqual(sink.timelines.count, layers.count * Hkv)
        let summary = driver.summary()
        XCTAssertEqual(driver.completedSteps, T - P)
        XCTAssertEqual(summary.memory.meanBytes, replayed.runs[0].summary.memory.meanBytes, accuracy: 1e-6, name)
        XCTAssertEqual(
            summary.attentionKL.mean, replayed.runs[0].summary.attentionKL.mean,
            accuracy: 1e-5 * max(1, abs(replayed.runs[0].summary.attentionKL.mean)), name)
        return driver
    }

    func testRefusesStepsOutOfOrderAndPoliciesThatNeedTheWholeTrace() throws {
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: 2, numKVHeads: 1, headDim: 4, promptLength: 2, numTokens: 6)
        let driver = try OnlinePolicyDriver(spec: try PolicySpec(name: "h2o", values: ["budget": "3"]), header: header)
        XCTAssertThrowsError(
            try driver.step(
                layer: 0, step: 0, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0]))
        try driver.prefill(
            layer: 0, queries: [Float](repeating: 0.1, count: 16), keys: [Float](repeating: 0.2, count: 8),
            values: [Float](repeating: 0.3, count: 8))
        XCTAssertThrowsError(
            try driver.step(
                layer: 0, step: 1, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0]))
        for t in 0..<4 {
            _ = try driver.step(
                layer: 0, step: t, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0])
        }
        XCTAssertThrowsError(
            try driver.step(
                layer: 0, step: 4, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0]))
        // ThinKV online: no trace to calibrate on, and a refresh may read only finished steps.
        for (values, expected) in [
            (["budget": "24"], "no trace to calibrate on"),
            (["budget": "24", "theta1": "0.2", "theta2": "0.8"], "--type-lag 1"),
            (["theta1": "0.2", "theta2": "0.8", "type-lag": "1", "thoughts": "labels"], "--thoughts classifier"),
            (["theta1": "0.2", "theta2": "0.8", "type-lag": "1", "sparsity-source": "full"], "--sparsity-source cache")
        ] {
            let name = values["budget"] == nil ? "thinkv-tbq" : "thinkv"
            XCTAssertThrowsError(
                try OnlinePolicyDriver(spec: try PolicySpec(name: name, values: values), header: header)
            ) { error in
                XCTAssertTrue(error is UsageError && "\(error)".contains(expected), "\(values): \(error)")
            }
        }
        // R-KV's newline division reads the trace's token text before the first step.
        let rkv = try OnlinePolicyDriver(
            spec: try PolicySpec(name: "rkv", values: ["budget": "16", "divide-method": "newline"]),
            header: header)
        XCTAssertThrowsError(
            try rkv.prefill(
                layer: 0, queries: [Float](repeating: 0.1, count: 16), keys: [Float](repeating: 0.2, count: 8),
                values: [Float](repeating: 0.3, count: 8))
        ) { error in
            XCTAssertTrue("\(error)".contains("cannot run online"), "\(error)")
        }
    }
}
