import Foundation

/// One policy driven step by step by a model that generates with its cache (closed loop:
/// `thinkv-sim serve-policy`, tools/end_to_end --closed-loop). Not a second engine: every layer
/// is the replay's own `PolicyLayerRun`, started by `PolicyLayerRun.prefilled` and stepped by
/// `advance(through:)` over a one-step `ReferenceChunk`, so the policy sees the hooks in the
/// engine's order (`PolicyLayerRun`: prefill; per step: append, `beforeAttention`, attention over
/// its own cache from the stored keys, `afterAttention`) with the same contexts. The only difference is where
/// the tensors come from: position p's q, k and v arrive when the model has computed them, and
/// are written into the layer's `LayerData` before any hook of step p - P runs (the rows of later
/// positions are zero until then; no policy reads past the current position).
///
/// `header.numTokens` is the most positions a run may reach (prompt + the generation limit);
/// buffers are sized by it, as a replay's by the trace's length.
public final class OnlinePolicyDriver {
    public let header: TraceHeader
    public let spec: PolicySpec
    public let topK: Int

    /// What one step's query attends, per kv head (ascending positions), and the quantizations
    /// that take effect at this step (made in the prefill hook, in the previous step's
    /// `afterAttention`, or in this step's `beforeAttention`) — as `replay --cache-timeline`
    /// stamps them.
    public struct StepAnswer {
        public var attended: [[Int32]]
        public var groups: [(kvHead: Int, group: QuantizedGroup)]
    }

    private final class Layer {
        let data: LayerData
        var reference: ReferenceAttention
        let scratch: [ReferenceAttention.Scratch]
        let chunk: ReferenceChunk
        let run: PolicyLayerRun
        var nextStep = 0
        var answer = StepAnswer(attended: [], groups: [])

        init(
            data: LayerData, reference: ReferenceAttention, scratch: [ReferenceAttention.Scratch],
            chunk: ReferenceChunk, run: PolicyLayerRun
        ) {
            self.data = data
            self.reference = reference
            self.scratch = scratch
            self.chunk = chunk
            self.run = run
        }
    }

    private var layers: [Layer?]
    /// ThinKV's thought types, decided as the steps arrive (nil for other policies).
    private let classifier: OnlineThoughtClassifier?

    /// Policies whose `prepare` reads a whole trace before the first step (R-KV's token marks)
    /// cannot run online; their `init` refuses without it. ThinKV types its thoughts online
    /// (`OnlineThoughtClassifier`); the parameters that cannot run online throw a `UsageError`.
    public init(spec: PolicySpec, header: TraceHeader, topK: Int = TraceLimits.defaultTopK) throws {
        self.spec = spec
        self.header = header
        self.topK = topK
        layers = Array(repeating: nil, count: header.numLayers)
        if spec.type is ThinKVPolicy.Type {
            classifier = try ThinKVParameters.onlineClassifier(
                parameters: spec.parameters, header: header, policy: spec.type.name)
        } else {
            classifier = nil
        }
    }

    public var promptLength: Int { header.promptLength }

    /// The prompt of `layer`: queries `[P][Hq][D]`, keys and values `[P][Hkv][D]` (position-major,
    /// as a trace stores them). Runs the policy's prefill hook.
    public func prefill(layer l: Int, queries: [Float], keys: [Float], values: [Float]) throws {
        let h = header
        guard l >= 0 && l < h.numLayers else { throw PolicyError("layer \(l) is not in 0..<\(h.numLayers)") }
        guard layers[l] == nil else { throw PolicyError("layer \(l) was prefilled already") }
        let P = h.promptLength, Hkv = h.numKVHeads, D = h.headDim, T = h.numTokens
        let info = LayerInfo(index: l, dtypes: ["q": .float32, "k": .float32, "v": .float32])
        let data = LayerData(
            info: info, numTokens: T, numKVHeads: Hkv, headDim: D,
            keys: [Float](repeating: 0, count: Hkv * T * D), values: [Float](repeating: 0, count: Hkv * T * D))
        keys.withUnsafeBufferPointer { K in
            values.withUnsafeBufferPointer { V in
                for p in 0..<P {
                    data.setRow(
                        position: p, keys: UnsafeBufferPointer(rebasing: K[(p * Hkv * D)..<((p + 1) * Hkv * D)]),
                        values: UnsafeBufferPointer(rebasing: V[(p * Hkv * D)..<((p + 1) * Hkv * D)]))
                }
            }
        }
        let reference = ReferenceAttention(header: h, data: data, workers: 1)
        let setup = PolicySetup(
            header: h, layer: info, layerOrdinal: l, layerCount: h.numLayers, prepared: classifier?.log)
        let run: PolicyLayerRun
        do {
            run = try PolicyLayerRun.prefilled(
                spec: spec, data: data, setup: setup, promptQueries: P > 0 ? queries : nil,
                steps: h.generatedLength, blockSize: spec.type.preferredBlockSize,
                logsQuantizations: true)
        } catch let error as PolicyError where error.description.contains("prepare") {
            throw PolicyError(
                "\(error.description) (a policy whose preparation reads the whole trace cannot run online)")
        }
        let layer = Layer(
            data: data, reference: reference, scratch: reference.makeScratch(k: topK, count: 1),
            chunk: ReferenceChunk(numQHeads: h.numQHeads, headDim: D, topK: topK), run: run)
        if let classifier, classifier.reads(layer: l) {
            run.appendObserver = { cache, context in
                guard let queries = context.queries?.baseAddress else { return }
                classifier.measure(
                    layer: l, step: context.step, cache: cache, data: data, queries: queries,
                    position: context.position)
            }
        }
        run.attendObserver = { [unowned layer] cache in
            layer.answer.attended = cache.slots.map { $0.sorted() }
            layer.answer.groups = cache.quantizationLog ?? []
            cache.quantizationLog = []
        }
        layers[l] = layer
    }

    /// Decode step `step` (position P + step) of `layer`: its queries `[Hq][D]`, keys and values
    /// `[Hkv][D]`. Runs the policy's hooks of this step and returns what the query attended.
    public func step(layer l: Int, step t: Int, queries: [Float], keys: [Float], values: [Float]) throws -> StepAnswer {
        let h = header
        guard l >= 0 && l < h.numLayers, let layer = layers[l] else {
            throw PolicyError("layer \(l) has not been prefilled (or is not in 0..<\(h.numLayers))")
        }
        guard t == layer.nextStep else {
            throw PolicyError("layer \(l): step \(t) arrived where step \(layer.nextStep) was due")
        }
        let p = h.promptLength + t
        guard p < h.numTokens else {
            throw PolicyError("layer \(l): step \(t) is position \(p), beyond the header's \(h.numTokens) positions")
        }
        if let classifier {
            // Step t's type must be known before its first layer runs.
            if let behind = layers.firstIndex(where: { ($0?.nextStep ?? 0) < t }) {
                throw PolicyError(
                    "layer \(l): step \(t) arrived before layer \(behind) finished step \(t - 1) (\(spec.type.name) "
                        + "types a step from every layer's previous steps)"
                )
            }
            try classifier.beginStep(t)
        }
        let D = h.headDim, Hkv = h.numKVHeads
        keys.withUnsafeBufferPointer { K in
            values.withUnsafeBufferPointer { V in
                layer.data.setRow(position: p, keys: K, values: V)
                // The cache's stored tensors started as the exact ones; position p is not yet
                // in the cache, so its stored rows are the exact rows.
                let cache = layer.run.cache
                for g in 0..<Hkv {
                    let o = layer.data.offset(kvHead: g, position: p)
                    for d in 0..<D {
                        cache.storedKeys?[o + d] = K[g * D + d]
                        cache.storedValues?[o + d] = V[g * D + d]
                    }
                }
            }
        }
        layer.reference.refreshKeyPanels(position: p)
        let chunk = layer.chunk
        chunk.prepare(firstStep: t, stepCount: 1, hasValues: true)
        chunk.queries = queries
        layer.reference.compute(chunk, scratch: layer.scratch)
        if let bad = chunk.logSumExp.prefix(h.numQHeads).firstIndex(where: { !$0.isFinite }) {
            throw PolicyError(
                "layer \(l): attention logits overflow float32 at step \(t), query head \(bad) (q·k too large)")
        }
        layer.run.advance(through: chunk)
        _ = layer.run.takeFLOPs()
        layer.nextStep = t + 1
        defer { layer.answer = StepAnswer(attended: [], groups: []) }
        return layer.answer
    }

    /// ThinKV's thought type of every started step (empty for other policies).
    public var thoughtTypes: [ThoughtType] { classifier?.log.types ?? [] }

    /// Decode steps every layer has run.
    public var completedSteps: Int { layers.map { $0?.nextStep ?? 0 }.min() ?? 0 }

    /// The run's replay metrics and memory over the steps every layer has run (attention KL etc.
    /// against the full-cache attention over the run's own keys).
    public func summary() -> RunSummary {
        let steps = completedSteps
        var records: [StepRecord] = []
        var samples = MetricSamples()
        var counters: [(name: String, value: Int)] = []
        for layer in layers.compactMap({ $0 }) {
            records += layer.run.records.prefix(steps)
            samples.append(layer.run.samples)
            for (k, counter) in layer.run.policy.reportCounters.enumerated() {
                if k < counters.count { counters[k].value += counter.value } else { counters.append(counter) }
            }
        }
        return RunSummary.of(
            records: records, samples: samples, counters: counters, numLayers: header.numLayers,
            replayedLayers: layers.compactMap({ $0 }).count, anyValues: true)
    }
}
