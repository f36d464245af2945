import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Every kind of bad file the format lists (trace-format.md, "What a reader must do with a bad
/// file") is made for real, and the reader must stop with one line naming the file, the object
/// and the problem, never crash and never hand out numbers.
final class BadTraceTests: XCTestCase {
    // The base trace: 8 positions (4 prompt + 4 decode), 4 query heads over 2 kv heads, D = 4,
    // layer 0 with q/k/v, layer 2 with recorded attention only, labels and token text.
    static let T = 8, P = 4, Hq = 4, Hkv = 2, D = 4, numLayers = 3
    static var G: Int { T - P }

    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    /// Writes a valid base trace and returns its path.
    private func validTrace(_ name: String, dtype: TraceDType = .float32, attnOnQKLayer: Bool = false) throws -> String
    {
        let T = Self.T, P = Self.P, Hq = Self.Hq, Hkv = Self.Hkv, D = Self.D
        let path = directory.appendingPathComponent(name).path
        let header = TraceHeader(
            model: "bad-input-test", numLayers: Self.numLayers, numQHeads: Hq, numKVHeads: Hkv,
            headDim: D, promptLength: P, numTokens: T, source: "synthetic", generator: "tests")
        let writer = try TraceWriter(path: path, header: header)
        try writer.writeTokens(
            ids: (0..<T).map { Int32($0) }, text: (0..<T).map { "t\($0)" },
            thought: [-1, -1, -1, -1, 0, 1, 2, 0])
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 11)
        try writer.writeTensor(.q, layer: 0, dtype: dtype, layer.q!)
        try writer.writeTensor(.k, layer: 0, dtype: dtype, layer.k!)
        try writer.writeTensor(.v, layer: 0, dtype: dtype, layer.v!)
        try writer.writeTensor(.attn, layer: 2, dtype: dtype, Self.uniformCausalAttention(heads: Hq))
        if attnOnQKLayer {
            try writer.writeTensor(.attn, layer: 0, dtype: dtype, Self.uniformCausalAttention(heads: Hq))
        }
        writer.close()
        return path
    }

    /// Valid attention rows `[G][heads][T]`: each decode query spreads its weight evenly over
    /// the positions it can see (exact in float16 too, as 1/5 ... 1/8 round the same everywhere).
    static func uniformCausalAttention(heads: Int) -> [Float] {
        var rows = [Float](repeating: 0, count: G * heads * T)
        for g in 0..<G {
            let visible = P + g + 1
            for h in 0..<heads {
                for j in 0..<visible { rows[(g * heads + h) * T + j] = 1 / Float(visible) }
            }
        }
        return rows
    }

    /// A valid trace changed by `edit`.
    private func malformed(
        _ name: String, dtype: TraceDType = .float32, attnOnQKLayer: Bool = false,
        _ edit: (HDF5Editor) throws -> Void
    ) throws -> String {
        let path = try validTrace(name, dtype: dtype, attnOnQKLayer: attnOnQKLayer)
        try HDF5Editor.edit(path, edit)
        return path
    }

    private func replayFull(_ path: String) throws {
        _ = try TestTraces.replay(path, [try PolicySpec(name: "full")])
    }

    // MARK: Not HDF5, truncated

    func testTextFileIsNotAnHDF5File() throws {
        let path = directory.appendingPathComponent("notes.h5").path
        try Data("model,tokens\nQwen3,128\n".utf8).write(to: URL(fileURLWithPath: path))
        assertTraceError(path: path, object: nil, mentions: ["not an HDF5 file"]) { _ = try TraceReader(path: path) }
    }

    func testEmptyFileIsNotAnHDF5File() throws {
        let path = directory.appendingPathComponent("empty.h5").path
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data()))
        assertTraceError(path: path, object: nil, mentions: ["not an HDF5 file"]) { _ = try TraceReader(path: path) }
    }

    func testMissingFileAndDirectory() throws {
        let missing = directory.appendingPathComponent("nowhere.h5").path
        assertTraceError(path: missing, object: nil, mentions: ["no such file"]) { _ = try TraceReader(path: missing) }
        assertTraceError(path: directory.path, object: nil, mentions: ["directory"]) {
            _ = try TraceReader(path: self.directory.path)
        }
    }

    func testTruncatedFilesAreReportedAsDamaged() throws {
        let path = try validTrace("whole.h5")
        let whole = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertGreaterThan(whole.count, 4096, "the base trace should span more than its metadata")
        // Half the file, just the 8-byte signature, and a cut inside the first kilobyte.
        for length in [whole.count / 2, 8, 700] {
            let cut = directory.appendingPathComponent("cut-\(length).h5").path
            try whole.prefix(length).write(to: URL(fileURLWithPath: cut))
            assertTraceError(path: cut, object: nil, mentions: ["truncated"]) { _ = try TraceReader(path: cut) }
        }
    }

    // MARK: Root attributes

    func testFormatMissing() throws {
        let path = try malformed("no-format.h5") { try $0.deleteAttribute("format") }
        assertTraceError(path: path, object: "attribute 'format'", mentions: ["missing"]) {
            _ = try TraceReader(path: path)
        }
    }

    func testFormatDifferent() throws {
        let path = try malformed("other-format.h5") { try $0.setAttribute("format", .string("kv-dump")) }
        assertTraceError(path: path, object: "attribute 'format'", mentions: ["'kv-dump'", "expected 'thinkv-trace'"]) {
            _ = try TraceReader(path: path)
        }
        let numeric = try malformed("numeric-format.h5") { try $0.setAttribute("format", .int32(1)) }
        assertTraceError(path: numeric, object: "attribute 'format'", mentions: ["int32", "expected a string"]) {
            _ = try TraceReader(path: numeric)
        }
    }

    func testUnsupportedVersion() throws {
        for version in [2, 0] {
            let path = try malformed("version-\(version).h5") { try $0.setAttribute("version", .int32(Int32(version))) }
            assertTraceError(path: path, object: "attribute 'version'", mentions: ["unsupported", "version \(version)"])
            {
                _ = try TraceReader(path: path)
            }
        }
    }

    func testEachRequiredRootAttributeMissing() throws {
        for name in [
            "format", "version", "model", "num_layers", "num_q_heads", "num_kv_heads", "head_dim", "prompt_len",
            "num_tokens"
        ] {
            let path = try malformed("no-\(name).h5") { try $0.deleteAttribute(name) }
            assertTraceError(path: path, object: "attribute '\(name)'", mentions: ["missing"]) {
                _ = try TraceReader(path: path)
            }
        }
    }

    func testOptionalRootAttributesMayBeAbsent() throws {
        let path = try malformed("minimal.h5") { editor in
            for name in ["source", "generator"] { try editor.deleteAttribute(name) }
        }
        let reader = try TraceReader(path: path)
        XCTAssertNil(reader.header.source)
        XCTAssertNil(reader.header.generator)
        XCTAssertNil(reader.header.softmaxScale)
        XCTAssertEqual(reader.header.effectiveSoftmaxScale, 0.5, "1/sqrt(4)")
    }

    func testIntegerAttributeStoredAsString() throws {
        for name in ["version", "num_layers", "num_q_heads", "num_kv_heads", "head_dim", "prompt_len", "num_tokens"] {
            let path = try malformed("string-\(name).h5") { try $0.setAttribute(name, .string("4")) }
            assertTraceError(path: path, object: "attribute '\(name)'", mentions: ["string", "expected an integer"]) {
                _ = try TraceReader(path: path)
            }
        }
    }

    func testIntegerAttributeOfOtherKinds() throws {
        let float = try malformed("float-head-dim.h5") { try $0.setAttribute("head_dim", .float64(4)) }
        assertTraceError(path: float, object: "attribute 'head_dim'", mentions: ["float64", "expected an integer"]) {
            _ = try TraceReader(path: float)
        }
        let array = try malformed("array-layers.h5") { try $0.setAttribute("num_layers", .int32Array([3, 3])) }
        assertTraceError(path: array, object: "attribute 'num_layers'", mentions: ["single value"]) {
            _ = try TraceReader(path: array)
        }
        let zero = try malformed("zero-kv.h5") { try $0.setAttribute("num_kv_heads", .int32(0)) }
        assertTraceError(path: zero, object: "attribute 'num_kv_heads'", mentions: ["got 0"]) {
            _ = try TraceReader(path: zero)
        }
        let negative = try malformed("negative-prompt.h5") { try $0.setAttribute("prompt_len", .int32(-1)) }
        assertTraceError(path: negative, object: "attribute 'prompt_len'", mentions: ["got -1"]) {
            _ = try TraceReader(path: negative)
        }
        let huge = try malformed("huge-tokens.h5") { try $0.setAttribute("num_tokens", .int64(1 << 40)) }
        assertTraceError(path: huge, object: "attribute 'num_tokens'", mentions: ["2147483647", "got 1099511627776"]) {
            _ = try TraceReader(path: huge)
        }
    }

    func testSoftmaxScaleMustBeAPositiveNumber() throws {
        let text = try malformed("scale-text.h5") { try $0.setAttribute("softmax_scale", .string("0.5")) }
        assertTraceError(path: text, object: "attribute 'softmax_scale'", mentions: ["expected a number"]) {
            _ = try TraceReader(path: text)
        }
        let negative = try malformed("scale-negative.h5") { try $0.setAttribute("softmax_scale", .float64(-1)) }
        assertTraceError(path: negative, object: "attribute 'softmax_scale'", mentions: ["positive"]) {
            _ = try TraceReader(path: negative)
        }
    }

    func testQueryHeadsNotAMultipleOfKVHeads() throws {
        let path = try malformed("gqa.h5") { try $0.setAttribute("num_kv_heads", .int32(3)) }
        assertTraceError(path: path, object: "attribute 'num_q_heads'", mentions: ["not a multiple", "3"]) {
            _ = try TraceReader(path: path)
        }
    }

    func testPromptLongerThanTrace() throws {
        let path = try malformed("long-prompt.h5") { try $0.setAttribute("prompt_len", .int32(Int32(Self.T + 1))) }
        assertTraceError(path: path, object: "attribute 'prompt_len'", mentions: ["exceeds num_tokens"]) {
            _ = try TraceReader(path: path)
        }
    }

    // MARK: Datasets and groups

    func testTokenIDsMissing() throws {
        let path = try malformed("no-ids.h5") { try $0.delete("/tokens/ids") }
        assertTraceError(path: path, object: "/tokens/ids", mentions: ["missing"]) { _ = try TraceReader(path: path) }
        let noGroup = try malformed("no-tokens.h5") { try $0.delete("/tokens") }
        assertTraceError(path: noGroup, object: "/tokens/ids", mentions: ["missing"]) {
            _ = try TraceReader(path: noGroup)
        }
    }

    func testLayersMissingEmptyOrNotAGroup() throws {
        let missing = try malformed("no-layers.h5") { try $0.delete("/layers") }
        assertTraceError(path: missing, object: "/layers", mentions: ["missing"]) { _ = try TraceReader(path: missing) }
        let empty = try malformed("empty-layers.h5") { editor in
            try editor.delete("/layers")
            try editor.createGroup("/layers")
        }
        assertTraceError(path: empty, object: "/layers", mentions: ["no recorded layer"]) {
            _ = try TraceReader(path: empty)
        }
        let dataset = try malformed("layers-dataset.h5") { editor in
            try editor.delete("/layers")
            try editor.setDataset("/layers", type: .float32, shape: [2])
        }
        assertTraceError(path: dataset, object: "/layers", mentions: ["not a group"]) {
            _ = try TraceReader(path: dataset)
        }
    }

    func testLayerGroupNames() throws {
        let beyond = try malformed("layer-3.h5") { try $0.createGroup("/layers/3") }
        assertTraceError(path: beyond, object: "/layers/3", mentions: ["not below num_layers 3"]) {
            _ = try TraceReader(path: beyond)
        }
        let named = try malformed("layer-first.h5") { try $0.createGroup("/layers/first") }
        assertTraceError(path: named, object: "/layers/first", mentions: ["decimal"]) {
            _ = try TraceReader(path: named)
        }
        let padded = try malformed("layer-01.h5") { try $0.createGroup("/layers/01") }
        assertTraceError(path: padded, object: "/layers/01", mentions: ["decimal"]) {
            _ = try TraceReader(path: padded)
        }
        let dataset = try malformed("layer-dataset.h5") { try $0.setDataset("/layers/1", type: .float32, shape: [2]) }
        assertTraceError(path: dataset, object: "/layers/1", mentions: ["not a group"]) {
            _ = try TraceReader(path: dataset)
        }
    }

    func testShapesThatDisagreeWithTheHeader() throws {
        let T = Self.T, G = Self.G, Hq = Self.Hq, Hkv = Self.Hkv, D = Self.D
        let cases: [(object: String, shape: [Int], expected: [Int])] = [
            ("/layers/0/q", [T, Hq, D + 1], [T, Hq, D]),
            ("/layers/0/q", [T, Hq * D], [T, Hq, D]),  // flattened heads: wrong rank
            ("/layers/0/k", [T - 1, Hkv, D], [T, Hkv, D]),
            ("/layers/0/v", [T, Hq, D], [T, Hkv, D]),  // query heads where kv heads belong
            ("/layers/2/attn", [G, Hq, T - 1], [G, Hq, T]),
            ("/layers/2/attn", [T, Hq, T], [G, Hq, T]),  // a row per position instead of per decode step
            ("/tokens/ids", [T + 1], [T]),
            ("/tokens/thought", [T, 1], [T])
        ]
        for (n, c) in cases.enumerated() {
            let type: HDF5Editor.ElementType =
                c.object.hasPrefix("/tokens/ids") ? .int32 : c.object.hasPrefix("/tokens") ? .int8 : .float32
            let path = try malformed("shape-\(n).h5") { editor in
                try editor.setDataset(c.object, type: type, shape: c.shape)
                if c.object.hasSuffix("attn") { try editor.setAttribute("heads", of: c.object, .string("q")) }
            }
            assertTraceError(path: path, object: c.object, mentions: ["shape \(c.shape)", "expected \(c.expected)"]) {
                _ = try TraceReader(path: path)
            }
        }
    }

    func testLayerWithNeitherQueriesAndKeysNorAttention() throws {
        let valuesOnly = try malformed("v-only.h5") { editor in
            try editor.delete("/layers/0/q")
            try editor.delete("/layers/0/k")
        }
        assertTraceError(path: valuesOnly, object: "/layers/0", mentions: ["neither q+k nor attn"]) {
            _ = try TraceReader(path: valuesOnly)
        }
        let empty = try malformed("empty-group.h5") { try $0.createGroup("/layers/1") }
        assertTraceError(path: empty, object: "/layers/1", mentions: ["neither q+k nor attn"]) {
            _ = try TraceReader(path: empty)
        }
        let queriesOnly = try malformed("q-only.h5") { try $0.delete("/layers/0/k") }
        assertTraceError(path: queriesOnly, object: "/layers/0", mentions: ["has q but no k"]) {
            _ = try TraceReader(path: queriesOnly)
        }
    }

    func testUnknownDtypes() throws {
        let T = Self.T, G = Self.G, Hq = Self.Hq, Hkv = Self.Hkv, D = Self.D
        let cases: [(object: String, type: HDF5Editor.ElementType, shape: [Int], says: String)] = [
            ("/layers/0/q", .int32, [T, Hq, D], "int32"),
            ("/layers/0/k", .float64, [T, Hkv, D], "float64"),
            ("/layers/0/v", .int8, [T, Hkv, D], "int8"),
            ("/layers/2/attn", .float64, [G, Hq, T], "float64"),
            ("/tokens/ids", .float32, [T], "float32"),
            ("/tokens/thought", .float32, [T], "float32")
        ]
        for (n, c) in cases.enumerated() {
            let path = try malformed("dtype-\(n).h5") { try $0.setDataset(c.object, type: c.type, shape: c.shape) }
            assertTraceError(path: path, object: c.object, mentions: ["dtype \(c.says)", "expected"]) {
                _ = try TraceReader(path: path)
            }
        }
    }

    // MARK: Values

    /// NaN and ±infinity in each tensor, in float32 and float16 files: the structure is fine,
    /// so the file opens, but reading the values (validate, or a replay) must stop.
    func testNonFiniteValuesStopValidationAndReplay() throws {
        let P = Self.P, Hq = Self.Hq, Hkv = Self.Hkv, D = Self.D, T = Self.T
        // One element in row 5 of each tensor (row 1 of attn), inside the decode range a replay reads.
        let targets: [(object: String, element: Int, row: Int)] = [
            ("/layers/0/q", ((P + 1) * Hq + 2) * D + 3, P + 1),
            ("/layers/0/k", ((P + 1) * Hkv + 1) * D, P + 1),
            ("/layers/0/v", (P + 1) * Hkv * D + 2, P + 1),
            ("/layers/2/attn", (1 * Hq + 3) * T + 2, 1)
        ]
        let badValues: [(HDF5Editor.BadValue, String)] = [
            (.nan, "NaN"), (.positiveInfinity, "infinite"), (.negativeInfinity, "infinite")
        ]
        for dtype in TraceDType.allCases {
            for target in targets {
                for (bad, word) in badValues {
                    let name = "\(dtype)-\(target.object.split(separator: "/").joined(separator: "-"))-\(bad).h5"
                    let path = try malformed(name, dtype: dtype) {
                        try $0.patch(target.object, element: target.element, with: bad)
                    }
                    let reader = try TraceReader(path: path)
                    XCTAssertEqual(reader.layerInfo(0)?.dtypes["q"], dtype)
                    assertTraceError(path: path, object: target.object, mentions: [word, "row \(target.row)"]) {
                        try reader.checkValues()
                    }
                    assertTraceError(path: path, object: target.object, mentions: [word]) { try self.replayFull(path) }
                }
            }
        }
    }

    /// A layer with q+k uses attn only as a cross-check; validate still reads it.
    func testNonFiniteCrossCheckAttentionFailsValidation() throws {
        let path = try malformed("attn-cross-check.h5", attnOnQKLayer: true) {
            try $0.patch("/layers/0/attn", element: 0, with: .nan)
        }
        assertTraceError(path: path, object: "/layers/0/attn", mentions: ["NaN", "row 0"]) {
            try TraceReader(path: path).checkValues()
        }
    }

    /// Recorded attention that is not a probability, or that gives weight to positions a decode
    /// query cannot see (a row misaligned by a step looks like this), would give made-up recall.
    func testRecordedAttentionMustBeCausalProbabilities() throws {
        let P = Self.P, Hq = Self.Hq, T = Self.T
        let cases: [(element: Int, value: Float, mentions: [String])] = [
            ((0 * Hq + 1) * T + (P + 1), 0.25, ["row 0, head 1", "position \(P + 1)", "after its own position \(P)"]),
            (
                (2 * Hq + 0) * T + (T - 1), 0.125,
                ["row 2, head 0", "position \(T - 1)", "after its own position \(P + 2)"]
            ),
            ((1 * Hq + 2) * T + 0, -0.25, ["-0.25", "row 1, head 2, position 0", "not a probability"]),
            ((3 * Hq + 3) * T + 1, 1.5, ["1.5", "row 3, head 3, position 1", "not a probability"])
        ]
        for dtype in TraceDType.allCases {
            for (n, c) in cases.enumerated() {
                let path = try malformed("attn-\(dtype)-\(n).h5", dtype: dtype) {
                    try $0.patch("/layers/2/attn", element: c.element, with: .number(c.value))
                }
                assertTraceError(path: path, object: "/layers/2/attn", mentions: c.mentions) {
                    try TraceReader(path: path).checkValues()
                }
                assertTraceError(path: path, object: "/layers/2/attn", mentions: c.mentions) {
                    try self.replayFull(path)
                }
            }
        }
    }

    /// A filter the HDF5 library lacks makes a dataset unreadable; that is not damage.
    func testCompressionFilterTheLibraryLacks() throws {
        let T = Self.T, Hq = Self.Hq, D = Self.D
        let path = try malformed("foreign-filter.h5") {
            try $0.setDatasetWithForeignFilter("/layers/0/q", shape: [T, Hq, D])
        }
        assertTraceError(
            path: path, object: "/layers/0/q", mentions: ["filter 300 'test-only filter'", "does not provide"]
        ) {
            _ = try TraceReader(path: path)
        }
        let ids = try malformed("foreign-filter-ids.h5") {
            try $0.setDatasetWithForeignFilter("/tokens/ids", shape: [T])
        }
        assertTraceError(path: ids, object: "/tokens/ids", mentions: ["filter 300"]) { _ = try TraceReader(path: ids) }
    }

    func testThoughtLabelsOutOfRange() throws {
        for bad in [-2, 3] {
            let path = try malformed("label\(bad).h5") { editor in
                try editor.setDataset(
                    "/tokens/thought", type: .int8, shape: [Self.T], values: [-1, -1, -1, -1, 0, Double(bad), 1, 2])
            }
            let reader = try TraceReader(path: path)
            assertTraceError(path: path, object: "/tokens/thought", mentions: ["value \(bad) at position 5"]) {
                _ = try reader.readThoughtLabels()
            }
            assertTraceError(path: path, object: "/tokens/thought", mentions: ["value \(bad)"]) {
                try reader.checkValues()
            }
            assertTraceError(path: path, object: "/tokens/thought", mentions: ["value \(bad)"]) {
                _ = try TraceSummary(reader: reader, profile: nil)
            }
        }
    }

    // MARK: Attention-only layers and the `heads` attribute

    func testAttentionOnlyLayerWithKVHeads() throws {
        let T = Self.T, P = Self.P, Hq = Self.Hq, Hkv = Self.Hkv, D = Self.D
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("attn-kv.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D, numLayers: 2,
            layers: [TestTraces.Layer(index: 1, attn: Self.uniformCausalAttention(heads: Hkv), attnHeads: .keyValue)])
        let reader = try TraceReader(path: path)
        let info = try XCTUnwrap(reader.layerInfo(1))
        XCTAssertEqual(info.attentionHeads, .keyValue)
        XCTAssertTrue(info.hasAttention)
        XCTAssertFalse(info.hasQueriesAndKeys)
        XCTAssertEqual(reader.shape(of: .attn, layer: 1), [Self.G, Hkv, T])
        try reader.checkValues()
        let (result, _) = try TestTraces.replay(path, [try PolicySpec(name: "full")])
        let summary = result.runs[0].summary
        XCTAssertEqual(summary.massRecall.min, 1, accuracy: 1e-6)
        XCTAssertEqual(summary.attentionKL.max, 0, accuracy: 1e-6)
        XCTAssertNil(summary.outputError, "no values recorded: output error is unavailable, not zero")
        XCTAssertEqual(summary.massRecall.count, Self.G * Hq, "one sample per query head, even with kv-head rows")
    }

    func testHeadsAttributeInferredWhenAbsent() throws {
        let T = Self.T, P = Self.P, Hq = Self.Hq, Hkv = Self.Hkv, D = Self.D
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("attn-infer.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D, numLayers: 1,
            layers: [TestTraces.Layer(index: 0, attn: Self.uniformCausalAttention(heads: Hkv), attnHeads: .keyValue)])
        try HDF5Editor.edit(path) { try $0.deleteAttribute("heads", of: "/layers/0/attn") }
        XCTAssertEqual(try TraceReader(path: path).layerInfo(0)?.attentionHeads, .keyValue, "Hkv rows mean kv heads")
    }

    func testHeadsAttributeThatDisagreesOrIsInvalid() throws {
        let mismatch = try malformed("heads-kv-but-q-rows.h5") {
            try $0.setAttribute("heads", of: "/layers/2/attn", .string("kv"))
        }
        assertTraceError(
            path: mismatch, object: "/layers/2/attn",
            mentions: ["shape [\(Self.G), \(Self.Hq), \(Self.T)]", "expected [\(Self.G), \(Self.Hkv), \(Self.T)]"]
        ) {
            _ = try TraceReader(path: mismatch)
        }
        let unknown = try malformed("heads-x.h5") { try $0.setAttribute("heads", of: "/layers/2/attn", .string("all")) }
        assertTraceError(
            path: unknown, object: "/layers/2/attn", mentions: ["'heads'", "'all'", "expected 'q' or 'kv'"]
        ) {
            _ = try TraceReader(path: unknown)
        }
        let numeric = try malformed("heads-int.h5") { try $0.setAttribute("heads", of: "/layers/2/attn", .int32(1)) }
        assertTraceError(
            path: numeric, object: "/layers/2/attn", mentions: ["attribute 'heads'", "int32", "expected a string"]
        ) {
            _ = try TraceReader(path: numeric)
        }
    }

    func testValidBaseTraceReads() throws {
        // The control for every case above: the unedited trace is accepted as a whole.
        for dtype in TraceDType.allCases {
            let path = try validTrace("valid-\(dtype).h5", dtype: dtype)
            let reader = try TraceReader(path: path)
            XCTAssertEqual(reader.recordedLayerIndices, [0, 2])
            try reader.checkValues()
            try replayFull(path)
        }
    }
}

/// Asserts that `body` throws a `TraceError` for `path` about `object` (nil: the file as a
/// whole) whose one-line description names both and whose problem mentions each of `mentions`.
func assertTraceError(
    path: String, object: String?, mentions: [String], _ body: () throws -> Void,
    file: StaticString = #filePath, line: UInt = #line
) {
    do {
        try body()
        XCTFail("\(path): expected a TraceError about \(object ?? "the file")", file: file, line: line)
    } catch let error as TraceError {
        let text = error.description
        XCTAssertEqual(error.file, path, text, file: file, line: line)
        XCTAssertEqual(error.object, object, text, file: file, line: line)
        XCTAssertFalse(text.contains("\n"), "the message must be one line: \(text)", file: file, line: line)
        XCTAssertTrue(
            text.hasPrefix(path + ": "), "the message must start with the file: \(text)", file: file, line: line)
        if let object {
            XCTAssertTrue(text.contains(object), "the message must name \(object): \(text)", file: file, line: line)
        }
        for word in mentions {
            XCTAssertTrue(error.problem.contains(word), "'\(word)' missing from: \(text)", file: file, line: line)
        }
    } catch {
        XCTFail("\(path): expected a TraceError, got \(type(of: error)): \(error)", file: file, line: line)
    }
}
