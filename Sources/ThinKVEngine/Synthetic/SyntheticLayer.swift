import Foundation

/// One layer of a synthetic trace: the plan's structure realised as vectors. Holds the layer's
/// keys (as stored, i.e. rounded to the trace's dtype) and the drift vectors queries need;
/// values and queries are produced a chunk of positions at a time and not kept.
///
/// All directions are unit vectors in R^D drawn independently per layer and kv head. A key is a
/// weighted sum of directions (`KeyWeights`) scaled by √D, so that with the default softmax
/// scale 1/√D a query β·u gives the logit β·(u·k̂) against the unit-scale key k̂.
final class SyntheticLayer {
    let index: Int
    let config: SyntheticTraceConfig
    let plan: ThoughtPlan
    let T: Int, D: Int, Hq: Int, Hkv: Int, groupSize: Int
    let keyScale: Float
    let softmaxScale: Float

    /// [Hkv][D] each.
    private(set) var sinkDirection: [Float]
    private(set) var salienceDirection: [Float]
    /// [segment][Hkv][D] and [anchor][Hkv][D].
    private(set) var topicDirections: [Float]
    private(set) var anchorDirections: [Float]
    /// [Hq][D]: each query head's private direction (GQA heads share targets, not details).
    private(set) var headDirections: [Float]
    /// Salience of each position's key (shared by the kv heads of the layer).
    private(set) var salience: [Float]
    /// Keys as stored, per kv head contiguous: element (g, j, d) at (g·T + j)·D + d.
    private(set) var keys: [Float]
    /// The drift component of each key (same layout): a query at p includes its own drift d_p.
    private(set) var drift: [Float]
    /// Target sparsity of each position's query.
    let targets: [Float]
    /// Mean target of R, E, T steps in this layer (what the targets were drawn around).
    let typeMeans: [Float]
    /// Positions in decreasing order of salience (heavy hitters first).
    let salienceOrder: [Int32]

    init(index: Int, config: SyntheticTraceConfig, plan: ThoughtPlan) {
        self.index = index
        self.config = config
        self.plan = plan
        // Locals: the closures below may not capture self before every property is set.
        let T = config.tokens, D = config.headDim, Hq = config.queryHeads, Hkv = config.kvHeads
        self.T = T
        self.D = D
        self.Hq = Hq
        self.Hkv = Hkv
        groupSize = Hq / Hkv
        keyScale = Float(D).squareRoot()
        softmaxScale = 1 / Float(D).squareRoot()
        let seed = config.seed, layer = UInt64(index), structure = config.attention

        // Directions.
        let segmentCount = plan.segments.count, anchorCount = plan.anchors.count
        var sink = [Float](repeating: 0, count: Hkv * D)
        var salienceDirection = [Float](repeating: 0, count: Hkv * D)
        var topics = [Float](repeating: 0, count: segmentCount * Hkv * D)
        var anchorDirections = [Float](repeating: 0, count: anchorCount * Hkv * D)
        var heads = [Float](repeating: 0, count: Hq * D)
        for g in 0..<Hkv {
            var rng = SeededRandom(seed: seed, stream: [StreamTag.directions.rawValue, layer, UInt64(g)])
            sink.withUnsafeMutableBufferPointer { rng.fillUnitVector($0.baseAddress! + g * D, count: D) }
            salienceDirection.withUnsafeMutableBufferPointer { rng.fillUnitVector($0.baseAddress! + g * D, count: D) }
            topics.withUnsafeMutableBufferPointer { buffer in
                for s in 0..<segmentCount { rng.fillUnitVector(buffer.baseAddress! + (s * Hkv + g) * D, count: D) }
            }
            anchorDirections.withUnsafeMutableBufferPointer { buffer in
                for a in 0..<anchorCount { rng.fillUnitVector(buffer.baseAddress! + (a * Hkv + g) * D, count: D) }
            }
        }
        var headRNG = SeededRandom(seed: seed, stream: [StreamTag.headNoise.rawValue, layer])
        heads.withUnsafeMutableBufferPointer { buffer in
            for h in 0..<Hq { headRNG.fillUnitVector(buffer.baseAddress! + h * D, count: D) }
        }
        sinkDirection = sink
        self.salienceDirection = salienceDirection
        topicDirections = topics
        self.anchorDirections = anchorDirections
        headDirections = heads

        // Salience: Gaussian per token, strongly correlated between neighbours inside execution
        // segments (near-duplicates), plus a boost on heavy-hitter tokens and a shift by the
        // importance of the token's type.
        let rho = structure.duplicateCorrelation
        let innovation = (1 - rho * rho).squareRoot()
        var salience = [Float](repeating: 0, count: T)
        var salienceRNG = SeededRandom(seed: seed, stream: [StreamTag.salience.rawValue, layer])
        var base: Float = 0
        for p in 0..<T {
            base =
                SyntheticLayer.continuesDuplicateRun(plan, p)
                ? rho * base + innovation * salienceRNG.gaussian()
                : salienceRNG.gaussian()
            salience[p] =
                base + (plan.isHeavyHitter[p] ? structure.heavyHitterBoost : 0)
                + (p < structure.sinkCount ? 0 : structure.importance.salienceOffset(label: plan.labels[p]))
        }
        self.salience = salience
        salienceOrder = (0..<T).sorted { salience[$0] > salience[$1] || (salience[$0] == salience[$1] && $0 < $1) }
            .map { Int32($0) }

        keys = [Float](repeating: 0, count: Hkv * T * D)
        drift = [Float](repeating: 0, count: Hkv * T * D)
        (targets, typeMeans) = SyntheticLayer.makeTargets(index: index, config: config, plan: plan)
        buildKeys()
    }

    /// Inside an execution segment, after its first token: where keys and values continue the
    /// previous token's with a little noise.
    static func continuesDuplicateRun(_ plan: ThoughtPlan, _ p: Int) -> Bool {
        p > 0 && plan.labels[p] == ThoughtType.execution.rawValue
            && plan.segmentOfPosition[p] == plan.segmentOfPosition[p - 1]
    }

    private func round(_ x: Float) -> Float {
        config.dtype == .float16 ? Float(Float16(x)) : x
    }

    private func buildKeys() {
        let structure = config.attention, w = structure.keys
        let gamma = Float(PortableMath.exp(-1 / Double(structure.recencyLength)))
        let driftInnovation = (1 - gamma * gamma).squareRoot()
        let rho = structure.duplicateCorrelation
        let contentInnovation = (1 - rho * rho).squareRoot()
        let elementScale = 1 / Float(D).squareRoot()  // N(0, 1/D) elements: unit length on average
        var noise = [Float](repeating: 0, count: D)
        var content = [Float](repeating: 0, count: D)
        var driftNow = [Float](repeating: 0, count: D)
        var composed = [Float](repeating: 0, count: D)
        for g in 0..<Hkv {
            var rng = SeededRandom(seed: config.seed, stream: [StreamTag.keys.rawValue, UInt64(index), UInt64(g)])
            noise.withUnsafeMutableBufferPointer { rng.fillGaussian($0.baseAddress!, count: D, scale: elementScale) }
            driftNow = noise
            for p in 0..<T {
                noise.withUnsafeMutableBufferPointer {
                    rng.fillGaussian($0.baseAddress!, count: D, scale: elementScale)
                }
                if p > 0 {
                    for d in 0..<D { driftNow[d] = gamma * driftNow[d] + driftInnovation * noise[d] }
                }
                noise.withUnsafeMutableBufferPointer {
                    rng.fillGaussian($0.baseAddress!, count: D, scale: elementScale)
                }
                if SyntheticLayer.continuesDuplicateRun(plan, p) {
                    for d in 0..<D { content[d] = rho * content[d] + contentInnovation * noise[d] }
                } else {
                    content = noise
                }
                let segment = Int(plan.segmentOfPosition[p])
                let anchor = Int(plan.anchorOfPosition[p])
                composed.withUnsafeMutableBufferPointer { buffer in
                    let k = buffer.baseAddress!
                    for d in 0..<D { k[d] = w.content * content[d] }
                    if p < structure.sinkCount {
                        // A sink: the shared direction dominates.
                        sinkDirection.withUnsafeBufferPointer {
                            SyntheticMath.addScaled(w.sink, $0.baseAddress! + g * D, to: k, D)
                        }
                    } else {
                        topicDirections.withUnsafeBufferPointer {
                            SyntheticMath.addScaled(w.topic, $0.baseAddress! + (segment * Hkv + g) * D, to: k, D)
                        }
                        driftNow.withUnsafeBufferPointer { SyntheticMath.addScaled(w.drift, $0.baseAddress!, to: k, D) }
                        salienceDirection.withUnsafeBufferPointer {
                            SyntheticMath.addScaled(w.salience * salience[p], $0.baseAddress! + g * D, to: k, D)
                        }
                        if anchor >= 0 {
                            anchorDirections.withUnsafeBufferPointer {
                                SyntheticMath.addScaled(w.anchor, $0.baseAddress! + (anchor * Hkv + g) * D, to: k, D)
                            }
                        }
                    }
                }
                let offset = (g * T + p) * D
                for d in 0..<D {
                    keys[offset + d] = round(keyScale * composed[d])
                    drift[offset + d] = driftNow[d]
                }
            }
        }
    }

    /// Per-position targets: the layer's mean for the segment's type, a per-segment offset, and
    /// AR(1) noise within the segment; clamped to [0.02, 0.985]. With sparsity growth the value
    /// is then moved in logit space by the layer's fitted rise between the reference position
    /// and p (`SparsityGrowth`), and clamped to [0.02, `growthCeiling(p)`].
    static func makeTargets(index: Int, config: SyntheticTraceConfig, plan: ThoughtPlan) -> ([Float], [Float]) {
        let s = config.sparsity
        var rng = SeededRandom(seed: config.seed, stream: [StreamTag.targets.rawValue, UInt64(index)])
        let center = s.means.reduce(0, +) / Float(s.means.count)
        let blended = config.layers > 1 && s.blendedLayers.contains(index)
        let separation =
            blended ? s.blendedSeparation : s.minimumSeparation + (1 - s.minimumSeparation) * Float(rng.uniform())
        let offset = blended ? 0 : s.layerOffset * Float(2 * rng.uniform() - 1)
        let spread = blended ? s.blendedStepSpread : s.stepSpread
        let means = s.means.map { center + separation * ($0 - center) + offset }
        let innovation = (1 - s.persistence * s.persistence).squareRoot()

        var targets = [Float](repeating: s.prompt, count: config.tokens)
        for segment in plan.segments {
            guard let type = segment.type else { continue }
            let level = means[Int(type.rawValue)] + s.segmentSpread * rng.gaussian()
            var noise = spread * rng.gaussian()
            for p in segment.range {
                if p > segment.start { noise = s.persistence * noise + innovation * spread * rng.gaussian() }
                targets[p] = min(0.985, max(0.02, level + noise))
            }
        }
        if s.growth.isEnabled {
            for p in 0..<config.tokens {
                let x = Double(targets[p])
                let shifted =
                    PortableMath.log(x / (1 - x)) + s.growth.logitShift(position: p, layer: index, of: config.layers)
                let grown = 1 / (1 + PortableMath.exp(min(600, max(-600, -shifted))))
                targets[p] = Float(min(growthCeiling(position: p, sinks: config.attention.sinkCount), max(0.02, grown)))
            }
        }
        return (targets, means)
    }

    /// Highest target with sparsity growth: 0.985, or higher on long contexts, up to leaving the
    /// sinks and four more positions above the threshold (at most 0.998), so that transition
    /// steps can still be sparser than reasoning steps late in a long trace.
    static func growthCeiling(position p: Int, sinks: Int) -> Double {
        min(0.998, max(0.985, 1 - Double(sinks + 4) / Double(p + 1)))
    }

    // MARK: Rows for the writer

    /// Keys of positions `range` in the file's layout [rows][Hkv][D].
    func keyRows(_ range: Range<Int>) -> [Float] {
        var out = [Float](repeating: 0, count: range.count * Hkv * D)
        for (i, p) in range.enumerated() {
            for g in 0..<Hkv {
                let from = (g * T + p) * D, to = (i * Hkv + g) * D
                for d in 0..<D { out[to + d] = keys[from + d] }
            }
        }
        return out
    }

    /// Produces values in position order, one chunk at a time: v = 0.5·(segment's value topic)
    /// + 0.85·c, with c Gaussian and, inside execution segments, continuing the previous token's.
    struct ValueStream {
        let layer: SyntheticLayer
        var rngs: [SeededRandom]
        var topics: [Float]  // [segment][Hkv][D], N(0, 1) elements
        var content: [Float]  // [Hkv][D], the last position's c
        var next = 0

        init(layer: SyntheticLayer) {
            self.layer = layer
            let Hkv = layer.Hkv, D = layer.D, segments = layer.plan.segments.count
            var rngs = (0..<Hkv).map {
                SeededRandom(
                    seed: layer.config.seed, stream: [StreamTag.values.rawValue, UInt64(layer.index), UInt64($0)])
            }
            var topics = [Float](repeating: 0, count: segments * Hkv * D)
            for g in 0..<Hkv {
                topics.withUnsafeMutableBufferPointer { buffer in
                    for s in 0..<segments { rngs[g].fillGaussian(buffer.baseAddress! + (s * Hkv + g) * D, count: D) }
                }
            }
            self.rngs = rngs
            self.topics = topics
            content = [Float](repeating: 0, count: Hkv * D)
        }

        /// The next `count` positions' values, [rows][Hkv][D].
        mutating func rows(_ count: Int) -> [Float] {
            let Hkv = layer.Hkv, D = layer.D
            let rho = layer.config.attention.duplicateCorrelation
            let innovation = (1 - rho * rho).squareRoot()
            var out = [Float](repeating: 0, count: count * Hkv * D)
            var fresh = [Float](repeating: 0, count: D)
            for i in 0..<count {
                let p = next + i
                let segment = Int(layer.plan.segmentOfPosition[p])
                let continues = SyntheticLayer.continuesDuplicateRun(layer.plan, p)
                for g in 0..<Hkv {
                    fresh.withUnsafeMutableBufferPointer { rngs[g].fillGaussian($0.baseAddress!, count: D) }
                    for d in 0..<D {
                        let c = continues ? rho * content[g * D + d] + innovation * fresh[d] : fresh[d]
                        content[g * D + d] = c
                        out[(i * Hkv + g) * D + d] = 0.5 * topics[(segment * Hkv + g) * D + d] + 0.85 * c
                    }
                }
            }
            next += count
            return out
        }
    }

    // MARK: Queries

    /// The query directions u of position p, [Hq][D] into `out` (before the temperature β).
    func queryDirections(position p: Int, into out: UnsafeMutablePointer<Float>) {
        let structure = config.attention
        let segmentIndex = Int(plan.segmentOfPosition[p])
        let segment = plan.segments[segmentIndex]
        let w = segment.type.map { structure.queries[Int($0.rawValue)] } ?? structure.promptQueries
        let revisits = segment.revisits.filter { plan.anchors[$0] < p }
        let revisitWeight = revisits.isEmpty ? 0 : w.revisit / Float(revisits.count).squareRoot()
        var rng = SeededRandom(seed: config.seed, stream: [StreamTag.query.rawValue, UInt64(index), UInt64(p)])
        let noiseScale = structure.stepNoise / Float(D).squareRoot()
        sinkDirection.withUnsafeBufferPointer { sink in
            salienceDirection.withUnsafeBufferPointer { sal in
                topicDirections.withUnsafeBufferPointer { topics in
                    anchorDirections.withUnsafeBufferPointer { anchors in
                        headDirections.withUnsafeBufferPointer { heads in
                            drift.withUnsafeBufferPointer { drift in
                                for h in 0..<Hq {
                                    let g = h / groupSize
                                    let u = out + h * D
                                    rng.fillGaussian(u, count: D, scale: noiseScale)
                                    SyntheticMath.addScaled(structure.headNoise, heads.baseAddress! + h * D, to: u, D)
                                    SyntheticMath.addScaled(w.sink, sink.baseAddress! + g * D, to: u, D)
                                    SyntheticMath.addScaled(w.salience, sal.baseAddress! + g * D, to: u, D)
                                    SyntheticMath.addScaled(
                                        w.topic, topics.baseAddress! + (segmentIndex * Hkv + g) * D, to: u, D)
                                    SyntheticMath.addScaled(w.recency, drift.baseAddress! + (g * T + p) * D, to: u, D)
                                    for a in revisits {
                                        SyntheticMath.addScaled(
                                            revisitWeight, anchors.baseAddress! + (a * Hkv + g) * D, to: u, D)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Positions that may hold a row maximum at position p: the sinks, the revisited anchors
    /// and the most salient keys (the recent window is added by the solver).
    func maximumCandidates(position p: Int, salientCount: Int) -> [Int] {
        var out = Array(0..<min(config.attention.sinkCount, p + 1))
        for a in plan.segment(at: p).revisits where plan.anchors[a] <= p { out.append(plan.anchors[a]) }
        var found = 0
        for j in salienceOrder where Int(j) <= p {
            out.append(Int(j))
            found += 1
            if found == salientCount { break }
        }
        return out
    }
}

extension PortableMath {
    /// e^x from IEEE arithmetic: halve x until |x| < 1/2, sum the Taylor series, square back.
    public static func exp(_ x: Double) -> Double {
        precondition(x.isFinite && abs(x) < 700, "exp of \(x)")
        var reduced = x, halvings = 0
        while abs(reduced) >= 0.5 {
            reduced /= 2
            halvings += 1
        }
        var term = 1.0, sum = 1.0
        for k in 1...18 {
            term *= reduced / Double(k)
            sum += term
        }
        for _ in 0..<halvings { sum *= sum }
        return sum
    }
}
