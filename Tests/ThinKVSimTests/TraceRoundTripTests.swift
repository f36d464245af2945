import CHDF5
import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim
@testable import ThinKVTrace

/// What TraceWriter writes, TraceReader reads back: exactly for float32, rounded to nearest
/// (ties to even) for float16; chunked along T with shuffle + deflate; streamable by row range.
final class TraceRoundTripTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func fullHeader(T: Int, P: Int, Hq: Int, Hkv: Int, D: Int, numLayers: Int = 4) -> TraceHeader {
        TraceHeader(
            model: "Qwen3-0.6B", numLayers: numLayers, numQHeads: Hq, numKVHeads: Hkv, headDim: D,
            promptLength: P, numTokens: T, softmaxScale: 0.123456789, source: "recorded",
            generator: "round-trip test 1.0", prompt: "Prove that √2 is irrational. Réponds en français 🙂",
            seed: -9_007_199_254_740_993)
    }

    private func gaussian(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in scale * rng.nextGaussian() }
    }

    // MARK: Values

    func testFloat32RoundTripIsExact() throws {
        let T = 40, P = 9, Hq = 4, Hkv = 2, D = 8, G = T - P
        let header = fullHeader(T: T, P: P, Hq: Hq, Hkv: Hkv, D: D)
        let q = gaussian(T * Hq * D, seed: 1), k = gaussian(T * Hkv * D, seed: 2), v = gaussian(T * Hkv * D, seed: 3)
        // Extremes float32 holds but float16 would not.
        var attn = gaussian(G * Hkv * T, seed: 4).map { abs($0) / 8 }
        for g in 0..<G { for h in 0..<Hkv { for j in (P + g + 1)..<T { attn[(g * Hkv + h) * T + j] = 0 } } }
        attn[0] = 1e-30
        attn[1] = .leastNonzeroMagnitude
        // Rows of probabilities: each row scaled to sum to 1, the two tiny entries kept as they are.
        for g in 0..<G {
            for h in 0..<Hkv {
                let base = (g * Hkv + h) * T
                let fixed = base == 0 ? 2 : 0
                let sum = attn[(base + fixed)..<(base + T)].reduce(0, +)
                for j in (base + fixed)..<(base + T) { attn[j] /= sum }
            }
        }
        let path = directory.appendingPathComponent("f32.h5").path
        do {
            let writer = try TraceWriter(path: path, header: header)
            try writer.writeTokens(
                ids: (0..<T).map { Int32($0 * 1000 - 7) }, thought: (0..<T).map { $0 < P ? -1 : Int8($0 % 3) })
            try writer.writeTensor(.q, layer: 3, dtype: .float32, q)
            try writer.writeTensor(.k, layer: 3, dtype: .float32, k)
            try writer.writeTensor(.v, layer: 3, dtype: .float32, v)
            try writer.writeTensor(.attn, layer: 1, dtype: .float32, attn, attentionHeads: .keyValue)
            writer.close()
        }
        let reader = try TraceReader(path: path)
        XCTAssertEqual(reader.header, header, "every root attribute, optional ones included")
        XCTAssertEqual(reader.recordedLayerIndices, [1, 3])
        XCTAssertEqual(reader.layerInfo(3)?.dtypes, ["q": .float32, "k": .float32, "v": .float32])
        XCTAssertEqual(reader.layerInfo(1)?.attentionHeads, .keyValue)
        XCTAssertEqual(try reader.readRows(.q, layer: 3, rows: 0..<T), q)
        XCTAssertEqual(try reader.readRows(.k, layer: 3, rows: 0..<T), k)
        XCTAssertEqual(try reader.readRows(.v, layer: 3, rows: 0..<T), v)
        XCTAssertEqual(try reader.readRows(.attn, layer: 1, rows: 0..<G), attn)
        XCTAssertEqual(try reader.readTokenIDs(), (0..<T).map { Int32($0 * 1000 - 7) })
        XCTAssertEqual(try reader.readThoughtLabels(), (0..<T).map { $0 < P ? -1 : Int8($0 % 3) })
        XCTAssertNil(try reader.readTokenText(), "no text was written")
    }

    func testFloat16RoundTripRoundsToNearestEven() throws {
        let T = 16, P = 4, Hq = 2, Hkv = 1, D = 16
        var q = gaussian(T * Hq * D, seed: 5, scale: 3)
        // Hand-picked cases, each with its float16 result:
        let special: [(Float, Float)] = [
            (1 + 1.0 / 2048, 1),  // halfway between 1 and 1+2^-10: ties go to the even one, 1
            (1 + 3.0 / 2048, 1 + 2.0 / 1024),  // halfway between 1+2^-10 and 1+2^-9: to the even 1+2^-9
            (65519, 65504),  // just under the overflow threshold: the largest half
            (1e-7, 2 * 0x1p-24),  // subnormal: 1e-7 / 2^-24 = 1.68 rounds to 2 steps
            (2.9e-8, 0),  // under half the smallest subnormal: 0
            (-0.1, -0.0999755859375),  // nearest half to -0.1
            (1000.3, 1000.5)  // spacing is 0.5 between 512 and 1024
        ]
        for (i, (x, _)) in special.enumerated() { q[i] = x }
        let k = gaussian(T * Hkv * D, seed: 6, scale: 300)
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("f16.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            layers: [TestTraces.Layer(index: 0, q: q, k: k)], dtype: .float16)
        let reader = try TraceReader(path: path)
        XCTAssertEqual(reader.layerInfo(0)?.dtypes, ["q": .float16, "k": .float16])
        let readQ = try reader.readRows(.q, layer: 0, rows: 0..<T)
        let readK = try reader.readRows(.k, layer: 0, rows: 0..<T)
        for (i, (_, expected)) in special.enumerated() {
            XCTAssertEqual(readQ[i], expected, "case \(i)")
        }
        for (written, read) in zip(q + k, readQ + readK) {
            // Exactly IEEE round-to-nearest-even, which is within half a float16 step of the input.
            XCTAssertEqual(read.bitPattern, Float(Float16(written)).bitPattern, "\(written)")
            let step = Float(Float16(written).ulp)
            XCTAssertLessThanOrEqual(abs(read - written), step / 2, "\(written)")
        }
    }

    func testWriterRefusesValuesNoReaderWouldAccept() throws {
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 2, promptLength: 1, numTokens: 3)
        let path = directory.appendingPathComponent("refused.h5").path
        let writer = try TraceWriter(path: path, header: header)
        defer { writer.close() }
        try writer.createTensor(.q, layer: 0, dtype: .float32)
        try writer.createTensor(.k, layer: 0, dtype: .float16)
        let cases: [(LayerTensor, [Float], [String])] = [
            (.q, [0, 1, 2, .nan], ["NaN", "row 1"]),
            (.q, [-.infinity, 0], ["infinite", "row 0"]),
            (.k, [1, 2, 3, 4, 65520, 0], ["65520", "row 2", "float16"]),  // rounds past 65504
            (.k, [-70000, 0], ["-70000", "row 0", "float16"])
        ]
        for (tensor, values, mentions) in cases {
            let object = "/layers/0/\(tensor.rawValue)"
            assertTraceError(path: path, object: object, mentions: mentions) {
                try writer.writeRows(tensor, layer: 0, start: 0, values)
            }
        }
        writer.close()
        assertTraceError(path: path, object: nil, mentions: ["after close()"]) {
            try writer.writeTokens(ids: [0, 1, 2])
        }
    }

    // MARK: Storage layout

    /// Layout, chunk shape and filter pipeline of one dataset, read with the C API.
    private struct Storage: Equatable {
        var chunked: Bool
        var chunk: [Int]
        /// Filter ids in pipeline order.
        var filters: [Int32]
        /// The deflate filter's compression level, when it is present.
        var deflateLevel: Int? = nil
    }

    private func storage(_ path: String, _ object: String) throws -> Storage {
        try HDF5.withLibrary {
            let file = H5Fopen(path, thinkv_H5F_ACC_RDONLY(), thinkv_H5P_DEFAULT())
            guard file >= 0 else { throw HDF5Editor.Failure(description: "cannot open \(path)") }
            defer { H5Fclose(file) }
            let dataset = H5Dopen2(file, object, thinkv_H5P_DEFAULT())
            guard dataset >= 0 else { throw HDF5Editor.Failure(description: "cannot open \(object)") }
            defer { H5Dclose(dataset) }
            let plist = H5Dget_create_plist(dataset)
            defer { H5Pclose(plist) }
            var result = Storage(chunked: H5Pget_layout(plist) == H5D_CHUNKED, chunk: [], filters: [])
            if result.chunked {
                var dims = [hsize_t](repeating: 0, count: 8)
                let rank = H5Pget_chunk(plist, 8, &dims)
                result.chunk = dims.prefix(Int(rank)).map { Int($0) }
            }
            for index in 0..<UInt32(max(0, H5Pget_nfilters(plist))) {
                var flags: UInt32 = 0, count = 4, config: UInt32 = 0
                var values = [UInt32](repeating: 0, count: 4)
                var name = [CChar](repeating: 0, count: 64)
                let id = H5Pget_filter2(plist, index, &flags, &count, &values, name.count, &name, &config)
                result.filters.append(id)
                if id == H5Z_FILTER_DEFLATE, count > 0 { result.deflateLevel = Int(values[0]) }
            }
            return result
        }
    }

    func testTensorsAreChunkedAlongTWithShuffleThenDeflate() throws {
        let T = 600, P = 100, Hq = 4, Hkv = 2, D = 8, G = T - P
        let layer = TestTraces.Layer(
            index: 0, q: gaussian(T * Hq * D, seed: 7), k: gaussian(T * Hkv * D, seed: 8),
            v: gaussian(T * Hkv * D, seed: 9), attn: [Float](repeating: 0, count: G * Hq * T))
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("chunks.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            layers: [layer])
        // Shuffle must come first: it groups the bytes of each float so deflate finds the repeats.
        let filters = [Int32(H5Z_FILTER_SHUFFLE), Int32(H5Z_FILTER_DEFLATE)]
        XCTAssertEqual(
            try storage(path, "/layers/0/q"),
            Storage(chunked: true, chunk: [256, Hq, D], filters: filters, deflateLevel: 4))
        XCTAssertEqual(
            try storage(path, "/layers/0/k"),
            Storage(chunked: true, chunk: [256, Hkv, D], filters: filters, deflateLevel: 4))
        XCTAssertEqual(
            try storage(path, "/layers/0/v"),
            Storage(chunked: true, chunk: [256, Hkv, D], filters: filters, deflateLevel: 4))
        // attn rows span the whole sequence, so its chunks hold 8 decode steps.
        XCTAssertEqual(
            try storage(path, "/layers/0/attn"),
            Storage(chunked: true, chunk: [8, Hq, T], filters: filters, deflateLevel: 4))
    }

    func testShortAndUncompressedTensorsAreStillChunkedAlongT() throws {
        let T = 20, P = 5, Hq = 2, Hkv = 1, D = 4
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: Hq, numKVHeads: Hkv, headDim: D, promptLength: P, numTokens: T)
        let path = directory.appendingPathComponent("plain.h5").path
        do {
            let writer = try TraceWriter(path: path, header: header)
            try writer.writeTokens(ids: (0..<T).map { Int32($0) })
            try writer.createTensor(.q, layer: 0, dtype: .float16, compress: false)
            try writer.writeRows(.q, layer: 0, start: 0, gaussian(T * Hq * D, seed: 10))
            try writer.writeTensor(.k, layer: 0, dtype: .float16, gaussian(T * Hkv * D, seed: 11))
            writer.close()
        }
        XCTAssertEqual(try storage(path, "/layers/0/q"), Storage(chunked: true, chunk: [T, Hq, D], filters: []))
        XCTAssertEqual(try storage(path, "/layers/0/k").chunk, [T, Hkv, D], "a chunk never exceeds the dataset")
    }

    // MARK: Streaming

    func testReadRowsOfASubRangeEqualsTheSliceOfTheWhole() throws {
        let T = 600, P = 40, Hq = 4, Hkv = 2, D = 8, G = T - P
        let q = gaussian(T * Hq * D, seed: 12)
        var attn = gaussian(G * Hkv * T, seed: 13).map { abs($0) / 8 }  // |z| < 5.7 here: stays a probability
        for g in 0..<G { for h in 0..<Hkv { for j in (P + g + 1)..<T { attn[(g * Hkv + h) * T + j] = 0 } } }
        // Each visible row normalised to sum to 1, as attention does.
        for g in 0..<G {
            for h in 0..<Hkv {
                let base = (g * Hkv + h) * T
                let sum = attn[base..<(base + T)].reduce(0, +)
                for j in base..<(base + T) { attn[j] /= sum }
            }
        }
        let path = directory.appendingPathComponent("stream.h5").path
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: Hq, numKVHeads: Hkv, headDim: D, promptLength: P, numTokens: T)
        do {
            // Written in uneven pieces that straddle the 256-row chunks, as a recorder streams.
            let writer = try TraceWriter(path: path, header: header)
            try writer.writeTokens(ids: (0..<T).map { Int32($0) })
            try writer.createTensor(.q, layer: 0, dtype: .float32)
            try writer.createTensor(.attn, layer: 0, dtype: .float32, attentionHeads: .keyValue)
            let qRow = Hq * D, attnRow = Hkv * T
            for piece in [0..<1, 1..<100, 100..<357, 357..<600] {
                try writer.writeRows(
                    .q, layer: 0, start: piece.lowerBound,
                    Array(q[(piece.lowerBound * qRow)..<(piece.upperBound * qRow)]))
            }
            for piece in [0..<7, 7..<300, 300..<G] {
                try writer.writeRows(
                    .attn, layer: 0, start: piece.lowerBound,
                    Array(attn[(piece.lowerBound * attnRow)..<(piece.upperBound * attnRow)]))
            }
            writer.close()
        }
        let reader = try TraceReader(path: path)
        let wholeQ = try reader.readRows(.q, layer: 0, rows: 0..<T)
        XCTAssertEqual(wholeQ, q)
        let qRow = Hq * D
        var buffer = [Float](repeating: 42, count: 3)  // wrong size on purpose: readRows resizes it
        for rows in [250..<520, 0..<1, 599..<600, 256..<512, 255..<257, 10..<10] {
            try reader.readRows(.q, layer: 0, rows: rows, into: &buffer)
            XCTAssertEqual(buffer, Array(wholeQ[(rows.lowerBound * qRow)..<(rows.upperBound * qRow)]), "q rows \(rows)")
        }
        let wholeAttn = try reader.readRows(.attn, layer: 0, rows: 0..<G)
        XCTAssertEqual(wholeAttn, attn)
        let attnRow = Hkv * T
        for rows in [3..<11, 0..<G, 555..<G] {
            XCTAssertEqual(
                try reader.readRows(.attn, layer: 0, rows: rows),
                Array(wholeAttn[(rows.lowerBound * attnRow)..<(rows.upperBound * attnRow)]), "attn rows \(rows)")
        }
    }

    // MARK: Text

    func testTokenTextAndPromptRoundTripAsUTF8() throws {
        // Byte-for-byte: Swift's String == would also accept a differently normalised é.
        let text = [
            "Hello", " wörld", "日本語", "🙂", "", "e\u{301}", "\u{E9}", "line\nbreak", "tab\t", "Ω≈ç√",
            " \u{200B}", "ﬁ", "a,b\"c", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "-", "end"
        ]
        let T = text.count, P = 3
        var header = TraceHeader(
            model: "模型-ß", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 2, promptLength: P,
            numTokens: T)
        header.prompt = "Ünïcödé prompt: ∑ 🙂\nsecond line"
        let path = directory.appendingPathComponent("text.h5").path
        do {
            let writer = try TraceWriter(path: path, header: header)
            try writer.writeTokens(ids: (0..<T).map { Int32($0) }, text: text)
            try writer.writeTensor(.q, layer: 0, dtype: .float32, gaussian(T * 2, seed: 14))
            try writer.writeTensor(.k, layer: 0, dtype: .float32, gaussian(T * 2, seed: 15))
            writer.close()
        }
        let reader = try TraceReader(path: path)
        let read = try XCTUnwrap(try reader.readTokenText())
        XCTAssertEqual(read.map { Array($0.utf8) }, text.map { Array($0.utf8) })
        XCTAssertEqual(reader.header.prompt.map { Array($0.utf8) }, header.prompt.map { Array($0.utf8) })
        XCTAssertEqual(Array(reader.header.model.utf8), Array("模型-ß".utf8))
    }

    // MARK: The h5py-written fixture

    func testH5pyFixtureHeaderAndTokens() throws {
        let reader = try TraceReader(path: TestTraces.fixture("h5py-small.h5"))
        let h = reader.header
        // The script's values: T, P, HQ, HKV, D = 48, 16, 4, 2, 16; python ints stored as int64.
        XCTAssertEqual(h.model, "h5py-fixture")
        XCTAssertEqual(
            [h.numLayers, h.numQHeads, h.numKVHeads, h.headDim, h.promptLength, h.numTokens], [4, 4, 2, 16, 16, 48])
        XCTAssertNil(h.softmaxScale)
        XCTAssertEqual(h.effectiveSoftmaxScale, 0.25)
        XCTAssertEqual(h.source, "synthetic")
        XCTAssertTrue(h.generator?.hasPrefix("make_h5py_fixture.py (h5py ") == true, h.generator ?? "nil")
        XCTAssertEqual(h.seed, 7)
        XCTAssertNil(h.prompt)
        XCTAssertEqual(reader.recordedLayerIndices, [0, 2])
        XCTAssertEqual(reader.layerInfo(0)?.dtypes, ["q": .float16, "k": .float16, "v": .float16])
        XCTAssertEqual(reader.layerInfo(2)?.dtypes, ["attn": .float32])
        XCTAssertEqual(reader.layerInfo(2)?.attentionHeads, .query)
        XCTAssertEqual(try reader.readTokenIDs(), (0..<48).map { Int32($0) })
        XCTAssertEqual(try reader.readTokenText(), (0..<48).map { "tok\($0)" })
        XCTAssertEqual(
            try reader.readThoughtLabels(),
            [Int8](repeating: -1, count: 16) + (0..<32).map { Int8([0, 1, 2, 0][$0 % 4]) })
        try reader.checkValues()
    }

    /// Layer 2 stores only attention (its q and k were not kept), so it cannot be recomputed
    /// here; what the format promises about it can be checked: each row is a softmax over the
    /// positions the query sees (sums to 1, all positive) and exactly 0 after them.
    func testH5pyFixtureRecordedAttentionIsCausalAndNormalised() throws {
        let reader = try TraceReader(path: TestTraces.fixture("h5py-small.h5"))
        let P = 16, T = 48, G = 32, H = 4
        let attn = try reader.readRows(.attn, layer: 2, rows: 0..<G)
        XCTAssertEqual(attn.count, G * H * T)
        for g in 0..<G {
            for h in 0..<H {
                let row = attn[((g * H + h) * T)..<((g * H + h + 1) * T)]
                let visible = row.prefix(P + g + 1)
                XCTAssertEqual(visible.reduce(0, +), 1, accuracy: 1e-5, "row \(g), head \(h)")
                XCTAssertTrue(visible.allSatisfy { $0 > 0 }, "row \(g), head \(h): softmax weights are positive")
                XCTAssertTrue(row.dropFirst(P + g + 1).allSatisfy { $0 == 0 }, "row \(g), head \(h): nothing after P+g")
            }
        }
        // The first decode query sees P+1 positions; with Gaussian logits no weight is near 1.
        XCTAssertLessThan(attn.max()!, 0.999)
    }
}
