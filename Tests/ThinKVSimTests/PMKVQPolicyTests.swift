import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// PM-KVQ (progressive halving of the bit width under a memory budget): a schedule counted by
/// hand, properties, and bytes and output errors against tools/reference/pmkvq_reference.py.
final class PMKVQPolicyTests: XCTestCase {
    /// One kv head, D = 4 (one group per token), sink 1, window 4, budget B = 6 tokens at 16 bits
    /// = 96 bits per element slot. Memory (per element slot) = 16·sink + 16·window + b·rest:
    /// - prefill (P = 2): sink {0}, window {1}: 32. p 2, 3: 48, 64. p 4 fills the window: [1, 5)
    ///   flushed at b = 16, window empty: 16 + 64 = 80. p 5: 96 (not over).
    /// - p 6: 16 + 32 + 64 = 112 > 96: b = 8, [1, 5) re-quantized at 8.
    /// - p 7: 16 + 48 + 32 = 96; p 8 flushes [5, 9) at 8: 80; p 9: 96; p 10: 112: b = 4 on [1, 9).
    /// - p 11: 96; p 12 flushes [9, 13) at 4: 64; p 13, 14: 80, 96; p 15: 16 + 48 + 12·4 = 112:
    ///   b = 2 on [1, 13).
    /// - p 16 flushes [13, 17) at 2: 48; … p 20 flushes [17, 21): 56; p 21, 22: 72, 88; p 23: 104
    ///   > 96 but b cannot halve below 2 (the code raises MemoryError): one step over budget.
    /// Bytes: each position's K and V at its width (2·4·b/8 bytes) plus 2·4 bytes of scale and
    /// zero point per position ever below 16 bits.
    func testBitWidthHalvesByHand() throws {
        let dir = try TestTraces.directory(self)
        let T = 24, P = 2
        let layer = TestTraces.randomLayer(T: T, Hq: 1, Hkv: 1, D: 4, seed: 5)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("pm.h5"), T: T, P: P, Hq: 1, Hkv: 1, D: 4, layers: [layer])
        let spec = try PolicySpec(name: "pmkvq", values: ["budget": "6", "window": "4"])
        let (result, events) = try TestTraces.replay(path, [spec])
        XCTAssertTrue(events.isEmpty, "nothing is evicted")
        let run = result.runs[0]
        func bytes(_ bits: [Int], charged: Int) -> Int { bits.reduce(0, +) * 2 * 4 / 8 + charged * 8 }
        let resident = Dictionary(uniqueKeysWithValues: run.steps.map { ($0.position, $0.residentBytes) })
        XCTAssertEqual(resident[5], bytes([Int](repeating: 16, count: 6), charged: 0))
        XCTAssertEqual(resident[6], bytes([16] + [Int](repeating: 8, count: 4) + [16, 16], charged: 4))
        XCTAssertEqual(resident[9], bytes([16] + [Int](repeating: 8, count: 8) + [16], charged: 8))
        XCTAssertEqual(resident[10], bytes([16] + [Int](repeating: 4, count: 8) + [16, 16], charged: 8))
        XCTAssertEqual(resident[15], bytes([16] + [Int](repeating: 2, count: 12) + [16, 16, 16], charged: 12))
        XCTAssertEqual(resident[23], bytes([16] + [Int](repeating: 2, count: 20) + [16, 16, 16], charged: 20))
        let counters = Dictionary(uniqueKeysWithValues: run.counters.map { ($0.name, $0.value) })
        XCTAssertEqual(counters["halvings"], 3)
        XCTAssertEqual(counters["steps over budget"], 1)
    }

    /// A constant group stays exact; a group's extremes stay exact; the rest rounds to the grid
    /// (2 bits, D = 4: min 0, max 3, scale 1: 0.4 → 0, 1.6 → 2).
    func testPerTokenGroupsRoundToTheGroupGrid() throws {
        let setup = PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 4,
                promptLength: 0, numTokens: 2),
            layer: LayerInfo(index: 0))
        _ = setup
        let data = LayerData(
            info: LayerInfo(index: 0), numTokens: 2, numKVHeads: 1, headDim: 4,
            keys: [0, 0.4, 1.6, 3, 5, 5, 5, 5], values: [0, 0.4, 1.6, 3, 5, 5, 5, 5])
        let cache = LayerCache(data: data)
        cache.append(position: 0)
        cache.append(position: 1)
        KVGrouping.quantizeKeysPerToken(cache, kvHead: 0, positions: [0, 1], groupSize: 4, quantizer: .integer(bits: 2))
        XCTAssertEqual(cache.storedKeys!, [0, 0, 2, 3, 5, 5, 5, 5])
    }

    /// SmoothAttention's factors: per kv head, channels i and i + D/2 share max |k| over the
    /// prompt, to the power α. D = 4, prompt of 2: |k| maxima (4, 1) and (0.25, 9) → pairs
    /// max(4, 0.25) = 4 and max(1, 9) = 9; α = 0.5 → factors 2, 3, 2, 3.
    func testSmoothingFactorsComeFromThePromptsKeyMaxima() {
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 4, promptLength: 2, numTokens: 3)
        let keys: [Float] = [4, -1, 0.25, 0, 1, 0.5, -0.1, 9, 100, 100, 100, 100]
        let data = LayerData(
            info: LayerInfo(index: 0), numTokens: 3, numKVHeads: 1, headDim: 4, keys: keys, values: nil)
        XCTAssertEqual(PMKVQPolicy.smoothScales(keys: keys, data: data, header: header, alpha: 0.5), [[2, 3, 2, 3]])
    }

    func testRefusesAnAllocationOfTheWrongLength() throws {
        let setup = PolicySetup(
            header: TraceHeader(
                model: "m", numLayers: 3, numQHeads: 2, numKVHeads: 1, headDim: 8,
                promptLength: 4, numTokens: 40),
            layer: LayerInfo(index: 2))
        func make(_ values: [String: String]) throws -> PMKVQPolicy {
            let spec = try PolicySpec(name: "pmkvq", values: values)
            return try PMKVQPolicy(parameters: spec.parameters, setup: setup)
        }
        XCTAssertThrowsError(try make(["budget": "10", "layer-bits": "4,2"]))
        XCTAssertThrowsError(try make(["budget": "10", "layer-bits": "4,2,x"]))
        // Layer 2 of bits 4, 2, 6 (mean 4): 10 · 6/4 = 15 tokens at 16 bits.
        XCTAssertEqual(try make(["budget": "10", "layer-bits": "4,2,6"]).budgetBitsPerElement, 16 * 15)
        XCTAssertEqual(try make(["budget": "10"]).groupSize, 8, "groups of min(128, D)")
        XCTAssertNil(try make(["budget": "10"]).residentCap)
    }

    /// Nothing is evicted, every step holds every position, memory never exceeds the 16-bit
    /// cache, and two replays (one and several threads) give the same bytes and errors.
    func testHoldsEverythingAndIsDeterministic() throws {
        let dir = try TestTraces.directory(self)
        let T = 140, P = 9
        let layer = TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 8, seed: 31)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 8, layers: [layer])
        for values in [["budget": "30", "window": "8"], ["budget": "12", "window": "0", "sink": "0", "init-bits": "8"]]
        {
            let spec = try PolicySpec(name: "pmkvq", values: values)
            let one = try TestTraces.replay(path, [spec]).0.runs[0].steps
            let many = try TestTraces.replay(path, [spec], threads: nil).0.runs[0].steps
            for (a, b) in zip(one, many) {
                XCTAssertEqual(a.residentTokens, Double(a.position + 1))
                XCTAssertLessThanOrEqual(a.residentBytes, a.fullBytes)
                XCTAssertEqual(a.residentBytes, b.residentBytes)
                XCTAssertEqual(a.outputError, b.outputError)
            }
            XCTAssertLessThan(
                one.last!.residentBytes, one.last!.fullBytes / 2,
                "\(values): the width came down (D = 8: a group's scale and zero cost as much as 16 codes at 2 bits)")
        }
    }

    /// Bytes of every step equal exactly, output errors within float32 attention rounding, for
    /// every option and an allocation, GQA, two layers.
    func testBytesAndOutputErrorsMatchTheNumPyRederivation() throws {
        try PythonReference.requireNumPy()
        let dir = try TestTraces.directory(self)
        let T = 200, P = 23
        let layers = [
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 61, index: 0),
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 16, seed: 62, index: 1)
        ]
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("pm.h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 16,
            numLayers: 2, layers: layers, dtype: .float16)
        let cases: [[String: String]] = [
            ["budget": "60", "window": "16", "group": "8"],
            ["budget": "100", "window": "32", "sink": "4", "init-bits": "8", "smooth-alpha": "0.9"],
            ["budget": "40", "window": "0", "sink": "0", "group": "16", "smooth-alpha": "0"],
            ["budget": "80", "window": "8", "sink-bits": "8", "window-bits": "4", "layer-bits": "2,4"]
        ]
        for values in cases {
            let steps = try TestTraces.replay(path, [try PolicySpec(name: "pmkvq", values: values)]).0.runs[0].steps
            let swift = Dictionary(uniqueKeysWithValues: steps.map { ("\($0.layer) \($0.step)", $0) })
            let lines = try PythonReference.lines(
                script: "pmkvq_reference.py", [path] + values.flatMap { ["--\($0.key)", $0.value] })
            XCTAssertEqual(lines.count, swift.count, "\(values)")
            var bitsSeen = Set<Int>()
            for line in lines {
                let e = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                let key = "\(e["layer"] as! Int) \(e["step"] as! Int)"
                let record = try XCTUnwrap(swift[key], key)
                XCTAssertEqual(record.residentBytes, e["resident_bytes"] as? Int, "\(values) \(key)")
                XCTAssertEqual(
                    Double(record.outputError!), e["output_error"] as! Double, accuracy: 1e-4, "\(values) \(key)")
                bitsSeen.insert(e["kv_bits"] as! Int)
            }
            XCTAssertGreaterThan(bitsSeen.count, 1, "\(values): the width changed")
        }
    }
}
