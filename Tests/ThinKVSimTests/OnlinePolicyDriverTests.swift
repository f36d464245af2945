import Foundation
import XCTest
@testable import ThinKVSim

/// `OnlinePolicyDriver` (thinkv-sim serve-policy): a policy fed a trace's rows one step and one
/// layer at a time decides exactly what the replay engine decides on the whole trace — the same
/// attended set at every step and the same quantizations at the same steps — for every policy
/// that needs no whole-trace preparation, with a header longer than the trace.
final class OnlinePolicyDriverTests: XCTestCase {

    private static let settings: [String: [String: String]] = [
        "full": [:], "kivi": ["group": "4", "residual": "8"], "pmkvq": ["budget": "24"],
        "h2o": ["budget": "16"], "streaming": ["budget": "12"], "rkv": ["budget": "24", "window": "4", "buffer": "8"],
        "snapkv": ["budget": "16", "window": "4"], "tova": ["budget": "16"], "knorm": ["budget": "16"],
        "keydiff": ["budget": "16"], "pyramidkv": ["budget": "16", "window": "4"], "raas": ["budget": "32"],
        "lazyeviction": ["budget": "24", "window": "8"],
    ]

    func testOnlineDecisionsEqualTheReplayForEveryPolicy() throws {
        let T = 70, P = 14, Hq = 4, Hkv = 2, D = 8
        let dir = try TestTraces.directory(self)
        let path = try TestTraces.write(to: dir.appendingPathComponent("t.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D, numLayers: 2,
                                        layers: [TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 5),
                                                 TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 6, index: 1)])
        let reader = try TraceReader(path: path)
        let online = PolicyRegistry.names.filter { !$0.hasPrefix("thinkv") }
        XCTAssertEqual(Set(online), Set(Self.settings.keys), "a new policy: give it settings here")
        for name in online {
            let spec: PolicySpec
            do { spec = try PolicySpec(name: name, values: Self.settings[name] ?? [:]) } catch {
                XCTFail("\(name): \(error)")
                continue
            }
            let engine = ReplayEngine(reader: reader, configuration: ReplayConfiguration(policies: [spec], threads: 1))
            let sink = CacheTimelineCollector()
            engine.timelineSink = sink
            let replayed = try engine.run()

            // The header says 80 positions; the run stops at the trace's 70.
            var header = reader.header
            header.numTokens = T + 10
            let driver = OnlinePolicyDriver(spec: spec, header: header)
            let layers = reader.recordedLayerIndices
            var droppedAt = Array(repeating: Array(repeating: [Int32](repeating: -1, count: T), count: Hkv), count: layers.count)
            var groups = Array(repeating: Array(repeating: [QuantizedGroup](), count: Hkv), count: layers.count)
            var previous = Array(repeating: Array(repeating: Set((0..<P).map { Int32($0) }), count: Hkv), count: layers.count)
            for (l, layer) in layers.enumerated() {
                try driver.prefill(layer: l, queries: reader.readRows(.q, layer: layer, rows: 0..<P),
                                   keys: reader.readRows(.k, layer: layer, rows: 0..<P), values: reader.readRows(.v, layer: layer, rows: 0..<P))
            }
            for t in 0..<(T - P) {
                for (l, layer) in layers.enumerated() {
                    let row = (P + t)..<(P + t + 1)
                    let answer = try driver.step(layer: l, step: t, queries: reader.readRows(.q, layer: layer, rows: row),
                                                 keys: reader.readRows(.k, layer: layer, rows: row),
                                                 values: reader.readRows(.v, layer: layer, rows: row))
                    for g in 0..<Hkv {
                        let now = Set(answer.attended[g])
                        XCTAssertTrue(now.contains(Int32(P + t)), "\(name): the new position is attended")
                        for p in previous[l][g].subtracting(now) where droppedAt[l][g][Int(p)] < 0 { droppedAt[l][g][Int(p)] = Int32(t) }
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
                XCTAssertEqual(droppedAt[l][timeline.kvHead], timeline.droppedAt, "\(name) layer \(timeline.layer) head \(timeline.kvHead)")
                XCTAssertEqual(groups[l][timeline.kvHead], timeline.groups, "\(name) layer \(timeline.layer) head \(timeline.kvHead)")
            }
            XCTAssertEqual(sink.timelines.count, layers.count * Hkv)
            let summary = driver.summary()
            XCTAssertEqual(driver.completedSteps, T - P)
            XCTAssertEqual(summary.memory.meanBytes, replayed.runs[0].summary.memory.meanBytes, accuracy: 1e-6, name)
            XCTAssertEqual(summary.attentionKL.mean, replayed.runs[0].summary.attentionKL.mean,
                           accuracy: 1e-5 * max(1, abs(replayed.runs[0].summary.attentionKL.mean)), name)
        }
    }

    func testRefusesStepsOutOfOrderAndPoliciesThatNeedTheWholeTrace() throws {
        let header = TraceHeader(model: "m", numLayers: 1, numQHeads: 2, numKVHeads: 1, headDim: 4, promptLength: 2, numTokens: 6)
        let driver = OnlinePolicyDriver(spec: try PolicySpec(name: "h2o", values: ["budget": "3"]), header: header)
        XCTAssertThrowsError(try driver.step(layer: 0, step: 0, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0]))
        try driver.prefill(layer: 0, queries: [Float](repeating: 0.1, count: 16), keys: [Float](repeating: 0.2, count: 8),
                           values: [Float](repeating: 0.3, count: 8))
        XCTAssertThrowsError(try driver.step(layer: 0, step: 1, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0]))
        for t in 0..<4 {
            _ = try driver.step(layer: 0, step: t, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0])
        }
        XCTAssertThrowsError(try driver.step(layer: 0, step: 4, queries: [Float](repeating: 0, count: 8), keys: [0, 0, 0, 0], values: [0, 0, 0, 0]))
        let thinkv = OnlinePolicyDriver(spec: try PolicySpec(name: "thinkv", values: ["budget": "4"]), header: header)
        XCTAssertThrowsError(try thinkv.prefill(layer: 0, queries: [Float](repeating: 0.1, count: 16), keys: [Float](repeating: 0.2, count: 8),
                                                values: [Float](repeating: 0.3, count: 8))) { error in
            XCTAssertTrue("\(error)".contains("cannot run online"), "\(error)")
        }
    }
}
