import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// KIVI's residual timing, its bytes (reference-policies 5.3), and a replay.
final class KIVIPolicyTests: XCTestCase {
    /// A KIVI instance on an in-memory layer, driven like the engine drives it.
    private struct Harness {
        let policy: KIVIPolicy
        let cache: LayerCache
        let setup: PolicySetup
        let data: LayerData
        let P: Int

        init(T: Int, P: Int, Hkv: Int = 1, D: Int, values: [String: String], seed: UInt64 = 1) throws {
            cache = QuantTestSupport.cache(T: T, Hkv: Hkv, D: D, seed: seed, appendAll: false)
            data = LayerData(
                info: LayerInfo(index: 0), numTokens: T, numKVHeads: Hkv, headDim: D,
                keys: cache.storedKeys, values: cache.storedValues)
            let header = TraceHeader(
                model: "test", numLayers: 1, numQHeads: Hkv, numKVHeads: Hkv, headDim: D,
                promptLength: P, numTokens: T)
            setup = PolicySetup(header: header, layer: data.info)
            let spec = try PolicySpec(name: "kivi", values: values)
            policy = try KIVIPolicy(parameters: spec.parameters, setup: setup)
            self.P = P
            for p in 0..<P { cache.append(position: p) }
            policy.prefill(PrefillContext(setup: setup, data: data, promptQueries: nil), cache: cache)
        }

        /// One decode step at `position` (attention itself is the engine's business).
        func step(_ position: Int) {
            cache.append(position: position)
            let context = StepContext(
                setup: setup, data: data, step: position - P, position: position, queries: nil,
                fullCacheSparsity: 0)
            policy.beforeAttention(context, cache: cache)
            let empty = UnsafeBufferPointer<Float>(start: nil, count: 0)
            policy.afterAttention(
                context, attention: AttentionView(storage: empty, offsets: [], counts: []), cache: cache)
        }

        func fp16Count(_ bits: [UInt8], head: Int = 0) -> Int {
            cache.slots[head].filter { bits[head * cache.numTokens + Int($0)] == 16 }.count
        }
    }

    /// reference-policies 5.3, per kv head: codes + fp16 (scale, min) per group + fp16 residual.
    private func expectedBytes(
        quantizedKeys nk: Int, fp16Keys fk: Int, quantizedValues nv: Int, fp16Values fv: Int,
        D: Int, G: Int, kBits: Int, vBits: Int
    ) -> Int {
        let keys = nk * D * kBits / 8 + (nk / G) * D * 2 * 2 + fk * D * 2
        let values = nv * D * vBits / 8 + nv * ((D + G - 1) / G) * 2 * 2 + fv * D * 2
        return keys + values
    }

    func testPrefillQuantizesWholeKeyBlocksAndAllButTheLastRValues() throws {
        let h = try Harness(T: 80, P: 70, D: 32, values: [:])  // G = R = 32
        XCTAssertEqual(h.policy.keysQuantizedEnd, 64, "P − (P mod R)")
        XCTAssertEqual(h.policy.valuesQuantizedEnd, 38, "P − R")
        for p in 0..<70 {
            XCTAssertEqual(h.cache.keyBits[p], p < 64 ? 2 : 16, "key \(p)")
            XCTAssertEqual(h.cache.valueBits[p], p < 38 ? 2 : 16, "value \(p)")
        }
        XCTAssertEqual(
            h.cache.bytes(kvHead: 0),
            expectedBytes(
                quantizedKeys: 64, fp16Keys: 6, quantizedValues: 38, fp16Values: 32, D: 32, G: 32, kBits: 2, vBits: 2))

        let short = try Harness(T: 40, P: 20, D: 32, values: [:])
        XCTAssertEqual(short.policy.keysQuantizedEnd, 0, "a prompt shorter than R stays 16-bit")
        XCTAssertEqual(short.policy.valuesQuantizedEnd, 0)
        XCTAssertEqual(short.cache.metadataBytes[0], 0)
    }

    func testKeysFlushInBlocksValuesSlideAndBytesMatchTheReferenceFormula() throws {
        let D = 16, G = 8, R = 16
        let h = try Harness(
            T: 100, P: 21, Hkv: 2, D: D, values: ["group": "8", "residual": "16", "k-bits": "4", "v-bits": "2"])
        for p in 21..<100 {
            h.step(p)
            let n = p + 1
            let fk = h.fp16Count(h.cache.keyBits), fv = h.fp16Count(h.cache.valueBits)
            XCTAssertEqual(fk, n % R, "keys keep 0…R−1 16-bit tokens (block flush), after position \(p)")
            XCTAssertEqual(fv, min(n, R), "values keep exactly the last R, after position \(p)")
            for head in 0..<2 {
                XCTAssertEqual(
                    h.cache.bytes(kvHead: head),
                    expectedBytes(
                        quantizedKeys: n - fk, fp16Keys: fk, quantizedValues: n - fv, fp16Values: fv,
                        D: D, G: G, kBits: 4, vBits: 2), "head \(head) after position \(p)")
            }
        }
    }

    func testKeyBlockFlushQuantizesPerChannelWithNonZeroError() throws {
        let D = 16, R = 32
        let h = try Harness(T: 80, P: 10, D: D, values: [:])
        let exact = h.data.keys!
        for p in 10..<31 { h.step(p) }
        XCTAssertEqual(
            Array(h.cache.storedKeys![0..<(31 * D)]), Array(exact[0..<(31 * D)]),
            "no key quantized before the block fills")
        XCTAssertFalse(h.cache.keysModified)
        h.step(31)  // the 32nd token fills the block: flushed after the step
        XCTAssertTrue(h.cache.keysModified)
        var maxError: Float = 0
        for d in 0..<D {
            let column = (0..<R).map { exact[$0 * D + d] }
            let s = (column.max()! - column.min()!) / 3
            for t in 0..<R {
                let e = abs(h.cache.storedKeys![t * D + d] - exact[t * D + d])
                XCTAssertLessThanOrEqual(
                    e, s / 2 + 1e-5, "channel \(d) token \(t): within half a step of its channel group")
                maxError = max(maxError, e)
            }
        }
        XCTAssertGreaterThan(maxError, 0.05, "a 32-token channel group at 2 bits cannot round-trip exactly")
        h.step(32)
        XCTAssertEqual(
            Array(h.cache.storedKeys![(32 * D)..<(33 * D)]), Array(exact[(32 * D)..<(33 * D)]),
            "the new block starts 16-bit")
    }

    func testValuesAreQuantizedOneTokenAtATimeOldestFirst() throws {
        let D = 8
        let h = try Harness(T: 60, P: 40, D: D, values: [:])  // D < G: one 8-channel group per token
        XCTAssertEqual(h.policy.valuesQuantizedEnd, 8)
        let before = h.cache.metadataBytes[0]
        h.step(40)
        XCTAssertEqual(h.policy.valuesQuantizedEnd, 9)
        XCTAssertEqual(h.cache.valueBits[8], 2)
        XCTAssertEqual(h.cache.valueBits[9], 16)
        XCTAssertEqual(h.cache.metadataBytes[0] - before, 4, "one value group (scale + min, fp16) per token")
        let exactRow = Array(h.data.values![(8 * D)..<(9 * D)])
        let row = Array(h.cache.storedValues![(8 * D)..<(9 * D)])
        XCTAssertNotEqual(row, exactRow)
        XCTAssertLessThanOrEqual(Set(row).count, 4, "2-bit per-token group")
    }

    func testParametersAreChecked() throws {
        XCTAssertNotNil(PolicyRegistry.type(named: "kivi"))
        let header = TraceHeader(
            model: "t", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 8, promptLength: 4, numTokens: 8)
        let setup = PolicySetup(header: header, layer: LayerInfo(index: 0))
        func make(_ values: [String: String]) throws -> KIVIPolicy {
            try KIVIPolicy(parameters: try PolicySpec(name: "kivi", values: values).parameters, setup: setup)
        }
        XCTAssertThrowsError(try make(["group": "32", "residual": "48"]), "R must be a multiple of G")
        XCTAssertThrowsError(try make(["format": "paper", "k-bits": "3"]))
        let paper = try make(["format": "paper", "k-bits": "4", "v-bits": "8"])
        XCTAssertEqual(paper.keyQuantizer, .nvfp4)
        XCTAssertEqual(paper.valueQuantizer, .fp8E4M3)
        let defaults = try make([:])
        XCTAssertEqual(defaults.keyQuantizer, .integer(bits: 2))
        XCTAssertEqual(defaults.groupSize, 32)
        XCTAssertEqual(defaults.residual, 32)
        XCTAssertNil(defaults.residentCap)
    }

    func testReplayKeepsRecallButNotOutputsAndSavesBytes() throws {
        let dir = try TestTraces.directory(self)
        let T = 160, P = 40, Hq = 4, Hkv = 2, D = 32
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 17)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("k.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D, layers: [layer])
        let specs = [
            try PolicySpec(name: "full"),
            try PolicySpec(name: "kivi", values: ["group": "16", "residual": "32"]),
            try PolicySpec(name: "kivi", values: ["format": "paper", "group": "16", "residual": "32"])
        ]
        let (result, events) = try TestTraces.replay(path, specs)
        XCTAssertTrue(events.isEmpty, "KIVI evicts nothing")
        let full = result.runs[0], kivi = result.runs[1], paper = result.runs[2]
        for run in [kivi, paper] {
            XCTAssertEqual(run.summary.massRecall.min, 1, accuracy: 1e-4, "\(run.spec.label): every token is attended")
            XCTAssertEqual(run.summary.topKRecall.min, 1)
            XCTAssertGreaterThan(
                run.summary.outputError!.mean, 1e-3, "\(run.spec.label): quantized V and K change the output")
            XCTAssertGreaterThan(
                run.summary.attentionKL.mean, 1e-6, "\(run.spec.label): quantized keys change the attention")
            XCTAssertLessThan(run.summary.memory.finalResidentBytes, 0.5 * full.summary.memory.finalResidentBytes)
            for (a, b) in zip(run.steps, full.steps) {
                XCTAssertEqual(a.attendedTokens, b.attendedTokens)
                XCTAssertLessThanOrEqual(a.attendedBytes, b.attendedBytes)
            }
        }
        // The int run's last step, against 5.3 (D = 32, G = 16: two value groups per token).
        let last = kivi.steps.last!
        let n = T, fk = n % 32, fv = 32
        let perHead = expectedBytes(
            quantizedKeys: n - fk, fp16Keys: fk, quantizedValues: n - fv, fp16Values: fv,
            D: D, G: 16, kBits: 2, vBits: 2)
        XCTAssertEqual(last.residentBytes, Hkv * perHead)
        XCTAssertEqual(full.summary.outputError!.max, 0, accuracy: 1e-6)
    }
}
