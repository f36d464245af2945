import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Builds small traces in a temporary directory for tests.
enum TestTraces {
    /// A fresh temporary directory, removed when the test case finishes.
    static func directory(_ testCase: XCTestCase) throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("thinkv-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        testCase.addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// Tensors for one layer, row-major as the format stores them: q `[T][Hq][D]`, k/v `[T][Hkv][D]`,
    /// attn `[G][H][T]`.
    struct Layer {
        var index = 0
        var q: [Float]? = nil
        var k: [Float]? = nil
        var v: [Float]? = nil
        var attn: [Float]? = nil
        var attnHeads: AttentionHeads = .query
    }

    /// Writes a trace file with the given header fields and layers; labels default to none.
    static func write(
        to url: URL, T: Int, P: Int, Hq: Int, Hkv: Int, D: Int, numLayers: Int = 1,
        layers: [Layer], dtype: TraceDType = .float32, thought: [Int8]? = nil,
        softmaxScale: Float? = nil
    ) throws -> String {
        let header = TraceHeader(
            model: "test-model", numLayers: numLayers, numQHeads: Hq, numKVHeads: Hkv, headDim: D,
            promptLength: P, numTokens: T, softmaxScale: softmaxScale, source: "synthetic",
            generator: "tests")
        let writer = try TraceWriter(path: url.path, header: header)
        try writer.writeTokens(ids: (0..<T).map { Int32($0) }, thought: thought)
        for layer in layers {
            if let q = layer.q { try writer.writeTensor(.q, layer: layer.index, dtype: dtype, q) }
            if let k = layer.k { try writer.writeTensor(.k, layer: layer.index, dtype: dtype, k) }
            if let v = layer.v { try writer.writeTensor(.v, layer: layer.index, dtype: dtype, v) }
            if let a = layer.attn {
                try writer.writeTensor(.attn, layer: layer.index, dtype: dtype, a, attentionHeads: layer.attnHeads)
            }
        }
        writer.close()
        return url.path
    }

    /// Gaussian q/k/v from a seeded generator: a random layer of the given shape.
    static func randomLayer(T: Int, Hq: Int, Hkv: Int, D: Int, seed: UInt64, index: Int = 0, values: Bool = true)
        -> Layer
    {
        var rng = SplitMix64(seed: seed)
        func gaussian(_ n: Int) -> [Float] { (0..<n).map { _ in rng.nextGaussian() } }
        return Layer(
            index: index, q: gaussian(T * Hq * D), k: gaussian(T * Hkv * D), v: values ? gaussian(T * Hkv * D) : nil)
    }

    /// Replays `path` with the given specs and returns the result and kept events.
    static func replay(_ path: String, _ specs: [PolicySpec], threads: Int? = 1, topK: Int = 32) throws -> (
        ReplayResult, [KeptEvent]
    ) {
        let reader = try TraceReader(path: path)
        var configuration = ReplayConfiguration(policies: specs, topK: topK)
        configuration.threads = threads
        let engine = ReplayEngine(reader: reader, configuration: configuration)
        let collector = KeptEventCollector()
        engine.keptSink = collector
        let result = try engine.run()
        return (result, collector.events)
    }

    /// Path of a file under Tests/Fixtures.
    static func fixture(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures").appendingPathComponent(name).path
    }
}

/// A small deterministic generator for tests (SplitMix64) with Box-Muller Gaussians.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func nextUniform() -> Float { Float(next() >> 40) / Float(1 << 24) }
    mutating func nextGaussian() -> Float {
        let u1 = max(nextUniform(), 1e-7), u2 = nextUniform()
        return (-2 * logf(u1)).squareRoot() * cosf(2 * .pi * u2)
    }
}
