import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// R-KV's token-driven options (`divide_method=newline`, `compression_content=think`): when
/// compressions fire on a trace whose token pieces are set by hand, the token-id overrides,
/// refusals, and agreement with tools/reference/rkv_reference.py.
final class RKVTokenTriggerTests: XCTestCase {
    private let T = 40, P = 10

    /// A random one-layer trace (Hq 2, Hkv 1, D 8) whose token pieces are "a" except `pieces`;
    /// token ids are 1000 + p except `ids`.
    private func trace(pieces: [Int: String], ids: [Int: Int32] = [:]) throws -> String {
        let dir = try TestTraces.directory(self)
        let path = dir.appendingPathComponent("tokens.h5").path
        let header = TraceHeader(
            model: "test-model", numLayers: 1, numQHeads: 2, numKVHeads: 1, headDim: 8,
            promptLength: P, numTokens: T, source: "synthetic", generator: "tests")
        let writer = try TraceWriter(path: path, header: header)
        try writer.writeTokens(
            ids: (0..<T).map { ids[$0] ?? Int32(1000 + $0) }, text: (0..<T).map { pieces[$0] ?? "a" })
        let layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 8, seed: 5, values: false)
        try writer.writeTensor(.q, layer: 0, dtype: .float16, layer.q!)
        try writer.writeTensor(.k, layer: 0, dtype: .float16, layer.k!)
        writer.close()
        return path
    }

    private func steps(_ path: String, _ values: [String: String]) throws -> [Int] {
        var all = ["budget": "8", "window": "2"]
        all.merge(values) { $1 }
        let (_, events) = try TestTraces.replay(path, [try PolicySpec(name: "rkv", values: all)])
        return keptByStep(events).keys.sorted()
    }

    /// B = 8, w = 2, P = 10 (the prompt is compressed to 8 at once, silently). Newline pieces at
    /// positions 15 ("\n"), 22 (".\n\n") and 30 ("\n"); 23 holds " \n", not one of the six
    /// pieces. Every marked position finds ≥ B tokens, so the compressions are at steps 5, 12, 20.
    func testNewlineCompressesAtNewlineTokensOnly() throws {
        let path = try trace(pieces: [15: "\n", 22: ".\n\n", 23: " \n", 30: "\n"])
        XCTAssertEqual(try steps(path, ["divide-method": "newline"]), [5, 12, 20])
    }

    /// `</think>` at position 25. With the step-length trigger (divide 4: positions 12, 16, …, 36)
    /// compression stops from 25 on: steps 2, 6, 10, 14. With newlines at 15, 22, 30: 5 and 12.
    /// A `</think>` inside the prompt does not count (only generated tokens end the thinking).
    func testThinkStopsCompressingAfterTheEndOfThinking() throws {
        let path = try trace(pieces: [3: "</think>", 15: "\n", 22: ".\n\n", 25: "</think>", 30: "\n"])
        XCTAssertEqual(try steps(path, ["divide": "4"]), [2, 6, 10, 14, 18, 22, 26])
        XCTAssertEqual(try steps(path, ["divide": "4", "compression-content": "think"]), [2, 6, 10, 14])
        XCTAssertEqual(try steps(path, ["divide-method": "newline", "compression-content": "think"]), [5, 12])
    }

    /// Explicit ids replace the text lookup: id 7 at positions 15 and 30 (their pieces are "a").
    func testTokenIDListsOverrideTheText() throws {
        let path = try trace(pieces: [22: "\n"], ids: [15: 7, 30: 7, 20: 9])
        XCTAssertEqual(try steps(path, ["divide-method": "newline", "newline-ids": "7"]), [5, 20])
        XCTAssertEqual(
            try steps(
                path,
                [
                    "divide-method": "newline", "newline-ids": "7", "compression-content": "think",
                    "think-end-ids": "9, 11"
                ]), [5])
    }

    func testRefusesMissingTextBadListsAndTheBufferTrigger() throws {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: 20, Hq: 2, Hkv: 1, D: 8, seed: 6)
        let plain = try TestTraces.write(
            to: dir.appendingPathComponent("plain.h5"), T: 20, P: 5, Hq: 2, Hkv: 1, D: 8, layers: [layer])
        func failure(_ values: [String: String]) -> String? {
            do {
                _ = try TestTraces.replay(
                    plain, [try PolicySpec(name: "rkv", values: ["budget": "12"].merging(values) { $1 })])
                return nil
            } catch {
                return "\(error)"
            }
        }
        let noText = failure(["divide-method": "newline"])
        XCTAssertTrue(noText?.contains("/tokens/text") == true && noText?.contains("plain.h5") == true, noText ?? "")
        XCTAssertNil(failure(["divide-method": "newline", "newline-ids": "3"]), "ids need no text")
        XCTAssertTrue(failure(["divide-method": "newline", "newline-ids": "3,x"])?.contains("comma-separated") == true)
        XCTAssertTrue(
            failure(["trigger": "buffer", "compression-content": "think", "think-end-ids": "3"])?.contains("legacy")
                == true)
    }

    /// The NumPy model of the legacy loop with the same options keeps the same tokens.
    func testAgreesWithTheNumPyModel() throws {
        try PythonReference.requireNumPy()
        let path = try trace(pieces: [14: "\n", 19: ")\n", 21: "\n\n", 27: "</think>", 33: "\n"])
        for options in [
            ["divide-method": "newline"], ["compression-content": "think", "divide": "4"],
            ["divide-method": "newline", "compression-content": "think"]
        ] {
            let values = ["budget": "8", "window": "2"].merging(options) { $1 }
            let swift = PythonReference.byKey(
                try TestTraces.replay(path, [try PolicySpec(name: "rkv", values: values)]).1)
            let numpy = PythonReference.byKey(
                try PythonReference.keptEvents(
                    script: "rkv_reference.py", [path] + values.flatMap { ["--\($0.key)", $0.value] }))
            XCTAssertFalse(swift.isEmpty, "\(options)")
            XCTAssertEqual(swift, numpy, "\(options)")
        }
    }
}
