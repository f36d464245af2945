import Foundation

/// ThinKV's classifier as a deployed system runs it: the sparsity of a decode step is that of
/// the attention over the policy's *own* cache (what it kept, at the precision it stored),
/// averaged over L*, so the thought types depend on the policy's earlier decisions.
///
/// A replay processes one layer at a time, while a step's type needs every layer of L* at that
/// step. So `prepare` runs the policy on the layers of L* alone, in lockstep, each layer a
/// `PolicyLayerRun` in its unmeasured mode (the engine's hooks in the engine's order, without a
/// reference): at each step every lane's `beginStep` appends the new token, the classifier
/// measures the sparsity of the attention over each lane's cache, decides the type (at refresh
/// steps) and hands it to the policy instances, then every lane's `finishStep` runs the hooks.
/// The replay then gives every layer this timeline; on the L* layers it repeats exactly the
/// same decisions (same types, same caches), so the timeline is the one the policy would have
/// produced online.
/// The lanes get what the replay gives a layer (the prompt's queries at prefill, the step's
/// attention for a policy that reads it); ThinKV reads neither, and its types are those of the
/// classifier that stepped its instances itself without them (the shipped traces' results are
/// unchanged bit for bit).
///
/// Sparsity over a cache: each query head's softmax over its kv head's held positions, summed
/// into one row over the positions any head holds (a position a head does not hold adds 0),
/// divided by the query heads; then the fraction of those positions below `ratio` × the row's
/// maximum (`Sparsity.of`). With the full cache this is exactly the full-cache definition.
enum CacheSparsityClassifier {
    static func timeline(
        _ reader: TraceReader, policyType: any CachePolicy.Type, parameters: PolicyParameters,
        thresholds: ThoughtThresholds, window: Int, lag: Int = 0, policy: String
    ) throws -> ThoughtTimeline {
        try run(
            reader, policyType: policyType, parameters: parameters, thresholds: thresholds, window: window, lag: lag,
            policy: policy
        ).timeline
    }

    /// The timeline, and with `profiledLayers` the sparsity over the policy's own cache of every
    /// decode step in each of those layers (they are stepped beside L*): what a classifier
    /// calibrated in the compressed-cache domain is calibrated on.
    static func run(
        _ reader: TraceReader, policyType: any CachePolicy.Type, parameters: PolicyParameters,
        thresholds: ThoughtThresholds, window: Int, lag: Int = 0, policy: String,
        profiledLayers: [Int] = []
    ) throws -> (timeline: ThoughtTimeline, profile: SparsityProfile?) {
        try ThoughtTimeline.checkClassifier(reader, thresholds: thresholds, policy: policy)
        let header = reader.header
        let G = header.generatedLength, P = header.promptLength
        if thresholds.isSingleType && profiledLayers.isEmpty {
            return (
                ThoughtTimeline(
                    types: Array(repeating: .reasoning, count: G), source: .classifier, thresholds: thresholds), nil
            )
        }
        let log = ThoughtTypeLog(refreshInterval: thresholds.refreshInterval)
        log.types.reserveCapacity(G)
        // The lanes are the policy's own layer runs, stepped unmeasured through the engine's
        // hooks (`PolicyLayerRun`): the same prefill (with the prompt's queries), the same order.
        var lanes: [PolicyLayerRun] = []
        let classifierLanes = thresholds.layers.count
        let laneLayers = thresholds.layers + profiledLayers.filter { !thresholds.layers.contains($0) }
        for (ordinal, layer) in laneLayers.enumerated() {
            guard let info = reader.layerInfo(layer), info.hasQueriesAndKeys else {
                throw PolicyError(
                    "\(policy): --sparsity-source cache needs q and k in every layer of L* (layer \(layer) of "
                        + "\(reader.path) has none); use --sparsity-source full"
                )
            }
            let data = try LayerData.load(from: reader, layer: layer)
            let setup = PolicySetup(
                header: header, layer: info, layerOrdinal: ordinal, layerCount: laneLayers.count, prepared: log)
            let promptQueries = P > 0 ? try reader.readRows(.q, layer: layer, rows: 0..<P) : nil
            let instance = try policyType.init(parameters: parameters, setup: setup)
            lanes.append(
                try PolicyLayerRun.prefilled(
                    instance, label: policy, data: data, setup: setup,
                    promptQueries: promptQueries, mode: .unmeasured, steps: G))
        }

        let tau = max(1, thresholds.refreshInterval)
        let window = max(1, window)
        var history = [Float](repeating: 0, count: G)
        var profiled = Array(repeating: [Float](), count: profiledLayers.isEmpty ? 0 : lanes.count)
        var current = ThoughtType.reasoning
        var scratch = Scratch(header: header)
        let queryRun = 256
        var queries: [[Float]] = Array(repeating: [], count: lanes.count)
        let width = header.numQHeads * header.headDim
        for t in 0..<G {
            let p = P + t
            if t % queryRun == 0 {
                let rows = p..<min(header.numTokens, p + queryRun)
                for (i, lane) in lanes.enumerated() {
                    try reader.readRows(.q, layer: lane.setup.layer.index, rows: rows, into: &queries[i])
                }
            }
            let row = t % queryRun
            func stepQueries(_ all: UnsafeBufferPointer<Float>) -> UnsafeBufferPointer<Float> {
                UnsafeBufferPointer(rebasing: all[(row * width)..<((row + 1) * width)])
            }
            for (i, lane) in lanes.enumerated() {
                queries[i].withUnsafeBufferPointer { lane.beginStep(context(lane, step: t, queries: stepQueries($0))) }
            }
            // Between the append and the hooks: the step's sparsity over each lane's cache.
            if ThoughtClassifier.isRead(step: t, refreshInterval: tau, window: window, lag: lag) || !profiled.isEmpty {
                var sum: Float = 0
                for (i, lane) in lanes.enumerated() where i < classifierLanes || !profiled.isEmpty {
                    let offset = row * width
                    let sparsity = queries[i].withUnsafeBufferPointer {
                        scratch.sparsity(
                            of: lane.cache, data: lane.data, queries: $0.baseAddress! + offset,
                            position: p, ratio: thresholds.sparsityRatio, gqa: thresholds.gqa)
                    }
                    if i < classifierLanes { sum += sparsity }
                    if !profiled.isEmpty { profiled[i].append(sparsity) }
                }
                history[t] = sum / Float(classifierLanes)
            }
            if let decided = ThoughtClassifier.refresh(
                at: t, history: history, thresholds: thresholds, window: window, lag: lag)
            {
                current = decided
            }
            log.types.append(current)
            for (i, lane) in lanes.enumerated() {
                queries[i].withUnsafeBufferPointer { all in
                    lane.finishStep(context(lane, step: t, queries: stepQueries(all)))
                }
            }
        }
        let timeline = ThoughtTimeline(types: log.types, source: .classifier, thresholds: thresholds)
        guard !profiled.isEmpty else { return (timeline, nil) }
        var byLayer: [Int: [Float]] = [:]
        for (i, layer) in laneLayers.enumerated() where profiledLayers.contains(layer) { byLayer[layer] = profiled[i] }
        return (timeline, SparsityProfile(byLayer: byLayer, layers: profiledLayers, gqa: thresholds.gqa))
    }

    /// Step t of a lane, as the engine builds it, without the full-cache sparsity (there is no
    /// reference here; no policy reads it).
    private static func context(
        _ lane: PolicyLayerRun, step t: Int,
        queries: UnsafeBufferPointer<Float>
    ) -> StepContext {
        StepContext(
            setup: lane.setup, data: lane.data, step: t, position: lane.setup.header.promptLength + t,
            queries: queries, fullCacheSparsity: .nan)
    }

    /// Buffers reused every step.
    struct Scratch {
        let header: TraceHeader
        var logits: [Float] = []
        var pooled: [Float] = []
        var row: [Float]
        var held: [Bool]

        init(header: TraceHeader) {
            self.header = header
            row = [Float](repeating: 0, count: header.numTokens)
            held = [Bool](repeating: false, count: header.numTokens)
        }

        /// Sparsity of the head-averaged attention of `queries` (`[Hq][D]`) over `cache` (of the
        /// layer whose tensors are `data`).
        mutating func sparsity(
            of cache: LayerCache, data: LayerData, queries: UnsafePointer<Float>, position p: Int,
            ratio: Float, gqa: GQASparsity
        ) -> Float {
            let h = header, D = h.headDim, gs = h.groupSize
            guard let keys = cache.storedKeys else { return 0 }
            for i in 0...p { row[i] = 0; held[i] = false }
            for g in 0..<h.numKVHeads {
                let n = cache.slots[g].count
                guard n > 0 else { continue }
                if logits.count < gs * n { logits = [Float](repeating: 0, count: gs * n) }
                if pooled.count < n { pooled = [Float](repeating: 0, count: n) }
                cache.slots[g].withUnsafeBufferPointer { slots in
                    keys.withUnsafeBufferPointer { K in
                        logits.withUnsafeMutableBufferPointer { out in
                            Kernels.scores(
                                queries: queries + g * gs * D, rows: gs, headDim: D,
                                keys: K.baseAddress! + data.offset(kvHead: g, position: 0),
                                indices: slots.baseAddress!, count: n, scale: h.effectiveSoftmaxScale,
                                out: out.baseAddress!, outStride: n)
                            switch gqa {
                            case .maxPool:
                                pooled.withUnsafeMutableBufferPointer { m in
                                    Sparsity.maxPooledSoftmax(
                                        out.baseAddress!, rows: gs, stride: n, count: n, into: m.baseAddress!)
                                    for j in 0..<n { row[Int(slots[j])] += m[j] }
                                }
                            case .meanHeads:
                                for r in 0..<gs {
                                    let x = out.baseAddress! + r * n
                                    Kernels.softmaxFast(x, n)
                                    for j in 0..<n { row[Int(slots[j])] += x[j] }
                                }
                            }
                        }
                    }
                    for j in 0..<n { held[Int(slots[j])] = true }
                }
            }
            var maximum: Float = 0, count = 0
            for i in 0...p where held[i] {
                count += 1
                if row[i] > maximum { maximum = row[i] }
            }
            guard count > 0 else { return 0 }
            // The head average divides every entry and the maximum alike: compare the sums.
            let cut = ratio * maximum
            var below = 0
            for i in 0...p where held[i] && row[i] < cut { below += 1 }
            return Float(below) / Float(count)
        }
    }
}
