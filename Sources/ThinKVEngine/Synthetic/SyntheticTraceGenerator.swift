import Foundation

/// Writes synthetic thinkv-trace files whose attention behaves like a reasoning model's: a chain
/// of reasoning, execution and transition thoughts with distinct attention sparsity, attention
/// sinks, recency, old tokens that regain attention, and near-duplicate stretches of keys.
/// docs/synthetic-traces.md describes the generative model.
///
/// Layers are generated one after the other; within a layer all keys are built first (every
/// query needs them), then values and queries are produced and written a chunk of rows at a time.
/// Each query position draws from its own random stream, so the chunk's positions are shared
/// among worker threads without changing the output.
public final class SyntheticTraceGenerator {
    public let config: SyntheticTraceConfig
    public let plan: ThoughtPlan
    public var progress: ProgressReporting?

    /// Rows written per call; the writer's chunk size along T.
    static let rowsPerWrite = TraceWriter.chunkRows

    public init(config: SyntheticTraceConfig) throws {
        try config.validate()
        self.config = config
        plan = ThoughtPlan(config: config)
    }

    public var header: TraceHeader {
        TraceHeader(
            model: config.model, numLayers: config.layers, numQHeads: config.queryHeads,
            numKVHeads: config.kvHeads, headDim: config.headDim, promptLength: config.promptLength,
            numTokens: config.tokens, source: "synthetic",
            generator: "thinkv-sim synth \(ThinKVSimVersion.current)",
            seed: Int64(bitPattern: config.seed))
    }

    /// Generates the trace into `path` (created, or truncated if it exists).
    @discardableResult
    public func write(to path: String) throws -> SyntheticTraceSummary {
        let started = Date()
        defer { progress?.finish() }  // also on failure, so an error starts on a clean line
        let writer = try TraceWriter(path: path, header: header)
        defer { writer.close() }
        try writer.writeTokens(ids: plan.tokenIDs, thought: plan.labels)
        var layerSummaries: [SyntheticTraceSummary.Layer] = []
        for layer in 0..<config.layers {
            layerSummaries.append(try writeLayer(layer, writer))
        }
        writer.close()
        let bytes = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0
        return SyntheticTraceSummary(
            path: path, header: header, plan: plan, layers: layerSummaries,
            fileBytes: bytes, seconds: Date().timeIntervalSince(started))
    }

    private func report(_ layer: Int, _ fraction: Double, _ what: String) {
        progress?.update(
            fraction: (Double(layer) + fraction) / Double(config.layers),
            detail: "layer \(layer + 1)/\(config.layers) \(what)")
    }

    private func writeLayer(_ index: Int, _ writer: TraceWriter) throws -> SyntheticTraceSummary.Layer {
        let T = config.tokens, P = config.promptLength, Hq = config.queryHeads, D = config.headDim
        let chunk = SyntheticTraceGenerator.rowsPerWrite
        report(index, 0, "keys")
        let layer = SyntheticLayer(index: index, config: config, plan: plan)

        try writer.createTensor(.k, layer: index, dtype: config.dtype)
        for start in stride(from: 0, to: T, by: chunk) {
            try writer.writeRows(.k, layer: index, start: start, layer.keyRows(start..<min(T, start + chunk)))
        }
        if config.includeValues {
            report(index, 0.02, "values")
            try writer.createTensor(.v, layer: index, dtype: config.dtype)
            var values = SyntheticLayer.ValueStream(layer: layer)
            for start in stride(from: 0, to: T, by: chunk) {
                try writer.writeRows(.v, layer: index, start: start, values.rows(min(chunk, T - start)))
            }
        }

        try writer.createTensor(.q, layer: index, dtype: config.dtype)
        if config.includeAttention { try writer.createTensor(.attn, layer: index, dtype: config.dtype) }
        let workers = max(1, min(config.threads ?? ProcessInfo.processInfo.activeProcessorCount, chunk))
        let solvers = (0..<workers).map { _ in
            QueryTemperatureSolver(
                layer: layer, exactLimit: config.exactSparsityPositions, sampleSize: config.sparsitySampleSize)
        }
        var queries = [Float](repeating: 0, count: chunk * Hq * D)
        var reached = [Float](repeating: 0, count: T)  // the solver's sparsity at each position
        var attention = AttentionRowWriter(layer: layer, writer: writer, enabled: config.includeAttention)
        for start in stride(from: 0, to: T, by: chunk) {
            let rows = min(chunk, T - start)
            queries.withUnsafeMutableBufferPointer { qBuffer in
                reached.withUnsafeMutableBufferPointer { reachedBuffer in
                    let q = qBuffer.baseAddress!, achieved = reachedBuffer.baseAddress!
                    let parts = min(workers, rows)
                    let build = { (w: Int) in
                        var directions = [Float](repeating: 0, count: Hq * D)
                        for i in (rows * w / parts)..<(rows * (w + 1) / parts) {
                            let p = start + i
                            var rng = SeededRandom(
                                seed: self.config.seed, stream: [StreamTag.query.rawValue, UInt64(index), UInt64(p), 1])
                            directions.withUnsafeMutableBufferPointer { u in
                                layer.queryDirections(position: p, into: u.baseAddress!)
                                let solution = solvers[w].solve(
                                    directions: u.baseAddress!, position: p,
                                    target: layer.targets[p], rng: &rng)
                                achieved[p] = solution.sparsity
                                let out = q + i * Hq * D
                                for e in 0..<(Hq * D) { out[e] = self.stored(solution.beta * u[e]) }
                            }
                        }
                    }
                    if parts <= 1 {
                        build(0)
                    } else {
                        DispatchQueue.concurrentPerform(iterations: parts, execute: build)
                    }
                }
            }
            let rowsQueries = rows == chunk ? queries : Array(queries[0..<(rows * Hq * D)])
            try writer.writeRows(.q, layer: index, start: start, rowsQueries)
            try attention.write(queries: rowsQueries, positions: start..<(start + rows))
            report(index, 0.05 + 0.95 * Double(start + rows) / Double(T), "queries")
        }

        var sums = [Double](repeating: 0, count: 3), targetSums = sums, counts = [Int](repeating: 0, count: 3)
        for p in P..<T where plan.labels[p] >= 0 {
            sums[Int(plan.labels[p])] += Double(reached[p])
            targetSums[Int(plan.labels[p])] += Double(layer.targets[p])
            counts[Int(plan.labels[p])] += 1
        }
        let mean = { (x: [Double], t: Int) -> Float in counts[t] > 0 ? Float(x[t] / Double(counts[t])) : .nan }
        return SyntheticTraceSummary.Layer(
            index: index, typeMeans: layer.typeMeans,
            targetMeans: (0..<3).map { mean(targetSums, $0) }, reachedMeans: (0..<3).map { mean(sums, $0) })
    }

    /// A value as the trace stores it (float16 rounds to nearest, ties to even, as the writer does).
    private func stored(_ x: Float) -> Float {
        config.dtype == .float16 ? Float(Float16(x)) : x
    }
}

/// What a generation produced, for the command's summary line and for checks.
public struct SyntheticTraceSummary: Sendable {
    public struct Layer: Sendable {
        public var index: Int
        /// The levels the layer's R, E, T targets were drawn around (they hold at the reference
        /// position when sparsity grows with context length).
        public var typeMeans: [Float]
        /// Mean target sparsity of the layer's R, E, T steps.
        public var targetMeans: [Float]
        /// Mean sparsity the solver reached for R, E, T steps (sampled estimate on long contexts;
        /// `thinkv-sim inspect` measures it exactly).
        public var reachedMeans: [Float]
    }

    public var path: String
    public var header: TraceHeader
    public var plan: ThoughtPlan
    public var layers: [Layer]
    public var fileBytes: Int
    public var seconds: Double

    /// One line: shape, seed, thought segments and shares, size and time.
    public var line: String {
        let h = header
        let G = h.generatedLength
        let counts = plan.tokenCounts
        let shares = ThoughtType.allCases.map { t in
            "\(t.letter) \(Format.fixed(100 * Double(counts[Int(t.rawValue)]) / Double(max(G, 1)), 0))%"
        }.joined(separator: " ")
        let megabytes = Format.fixed(Double(fileBytes) / 1_048_576, 2)
        return
            "\(path): \(h.numTokens) tokens (\(h.promptLength) prompt + \(G) generated), \(h.numLayers) "
            + "layer\(h.numLayers == 1 ? "" : "s"), "
            + "\(h.numQHeads) q-heads / \(h.numKVHeads) kv-heads, head dim \(h.headDim), seed \(h.seed ?? 0); "
            + "\(plan.segments.count - 1) thought segments (\(shares)); \(megabytes) MB in "
            + "\(Format.fixed(seconds, 1)) s"
    }
}

/// Writes the exact attention rows of decode positions (`--attn`), computed in float32 from the
/// queries and keys as stored, in blocks of rows so that memory stays at a few rows × Hq × T.
struct AttentionRowWriter {
    let layer: SyntheticLayer
    let writer: TraceWriter
    let enabled: Bool
    static let blockRows = 16

    mutating func write(queries: [Float], positions: Range<Int>) throws {
        guard enabled else { return }
        let T = layer.T, Hq = layer.Hq, D = layer.D, P = layer.config.promptLength
        let decode = max(positions.lowerBound, P)..<positions.upperBound
        guard !decode.isEmpty else { return }
        var rows = [Float]()
        for blockStart in stride(from: decode.lowerBound, to: decode.upperBound, by: AttentionRowWriter.blockRows) {
            let block = blockStart..<min(decode.upperBound, blockStart + AttentionRowWriter.blockRows)
            rows = [Float](repeating: 0, count: block.count * Hq * T)
            rows.withUnsafeMutableBufferPointer { R in
                queries.withUnsafeBufferPointer { Q in
                    layer.keys.withUnsafeBufferPointer { K in
                        for (i, p) in block.enumerated() {
                            for h in 0..<Hq {
                                let g = h / layer.groupSize
                                let q = Q.baseAddress! + ((p - positions.lowerBound) * Hq + h) * D
                                let row = R.baseAddress! + (i * Hq + h) * T
                                var m = -Float.infinity
                                for j in 0...p {
                                    let logit =
                                        layer.softmaxScale * SyntheticMath.dot(q, K.baseAddress! + (g * T + j) * D, D)
                                    row[j] = logit
                                    m = max(m, logit)
                                }
                                var z: Float = 0
                                for j in 0...p {
                                    let e = Kernels.exp8(SIMD8<Float>(repeating: row[j] - m))[0]
                                    row[j] = e
                                    z += e
                                }
                                let inverse = 1 / z
                                for j in 0...p { row[j] *= inverse }
                            }
                        }
                    }
                }
            }
            try writer.writeRows(.attn, layer: layer.index, start: block.lowerBound - P, rows)
        }
    }
}
