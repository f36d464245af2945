import Foundation

/// What `inspect` reports about a trace.
public struct TraceSummary: Encodable, Sendable {
    public struct LayerEntry: Encodable, Sendable {
        public var layer: Int
        public var tensors: [String: String]  // tensor -> dtype
        public var attentionHeads: String?
        public var sparsity: MetricSummary?
        /// Mean sparsity of decode steps by their ground-truth label (when the trace has labels).
        public var sparsityByThought: [String: Double]?
    }

    public var trace: String
    public var header: TraceHeader
    public var layers: [LayerEntry]
    public var labelCounts: [String: Int]?
    /// Over all profiled layers: mean sparsity per ground-truth thought type.
    public var sparsityByThought: [String: Double]?
    /// One character per bin of decode steps: the majority ground-truth label.
    public var labelTimeline: String?
    /// One character per bin: mean sparsity over layers as a block from ▁ (0) to █ (1).
    public var sparsityTimeline: String?
    public var profiledSteps: Int
    /// `inspect --thoughts`: thresholds, classified timeline, accuracy (set after `init`).
    public var thoughts: ThoughtInspection?

    /// Builds the summary; `profile` may be nil to skip the attention pass.
    public init(reader: TraceReader, profile: SparsityProfile?, timelineWidth: Int = 80) throws {
        trace = reader.path
        header = reader.header
        let labels = try reader.readThoughtLabels()
        let P = header.promptLength
        profiledSteps = profile?.byLayer.values.first?.count ?? 0
        let T = reader.header.numTokens
        let decodeLabels: [Int8]? = labels.map { Array($0[P..<T]) }

        func meansByThought(_ sparsity: [Float]) -> [String: Double]? {
            guard let decodeLabels else { return nil }
            var sums = [Double](repeating: 0, count: 3), counts = [Int](repeating: 0, count: 3)
            for (i, s) in sparsity.enumerated() where decodeLabels[i] >= 0 {
                sums[Int(decodeLabels[i])] += Double(s)
                counts[Int(decodeLabels[i])] += 1
            }
            var out: [String: Double] = [:]
            for t in ThoughtType.allCases where counts[Int(t.rawValue)] > 0 {
                out[t.name] = sums[Int(t.rawValue)] / Double(counts[Int(t.rawValue)])
            }
            return out
        }

        layers = reader.layers.map { info in
            let sparsity = profile?.byLayer[info.index]
            return LayerEntry(
                layer: info.index,
                tensors: info.dtypes.mapValues(\.rawValue),
                attentionHeads: info.attentionHeads?.rawValue,
                sparsity: sparsity.map { MetricSummary(samples: $0) },
                sparsityByThought: sparsity.flatMap(meansByThought))
        }
        if let labels {
            var counts: [String: Int] = ["prompt_or_unknown": 0]
            for t in ThoughtType.allCases { counts[t.name] = 0 }
            for l in labels {
                if let t = ThoughtType(rawValue: l) {
                    counts[t.name, default: 0] += 1
                } else {
                    counts["prompt_or_unknown", default: 0] += 1
                }
            }
            labelCounts = counts
        }
        let averaged = profile?.averaged()
        sparsityByThought = averaged.flatMap(meansByThought)

        let G = profiledSteps > 0 ? profiledSteps : header.generatedLength
        let width = max(1, min(timelineWidth, G))
        func bins() -> [Range<Int>] {
            (0..<width).map { b in (b * G / width)..<max((b + 1) * G / width, b * G / width + 1) }
        }
        if let decodeLabels, G > 0 {
            labelTimeline = String(
                bins().map { range -> Character in
                    var counts = [0, 0, 0]
                    for i in range where i < decodeLabels.count && decodeLabels[i] >= 0 {
                        counts[Int(decodeLabels[i])] += 1
                    }
                    guard let best = counts.indices.max(by: { counts[$0] < counts[$1] }), counts[best] > 0 else {
                        return "."
                    }
                    return ThoughtType(rawValue: Int8(best))!.letter
                })
        }
        if let averaged, !averaged.isEmpty {
            let blocks: [Character] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]
            sparsityTimeline = String(
                bins().map { range -> Character in
                    let values = range.filter { $0 < averaged.count }.map { averaged[$0] }
                    let mean = values.reduce(0, +) / Float(max(values.count, 1))
                    return blocks[min(blocks.count - 1, max(0, Int(mean * Float(blocks.count))))]
                })
        }
    }

    public var text: String {
        let h = header
        var out: [String] = []
        out.append("trace      \(trace)")
        var origin = "thinkv-trace v1"
        if let source = h.source { origin += ", \(Format.printable(source))" }
        if let generator = h.generator { origin += ", written by \(Format.printable(generator))" }
        if let seed = h.seed { origin += ", seed \(seed)" }
        out.append("format     \(origin)")
        let heads = "\(h.numQHeads) q-heads / \(h.numKVHeads) kv-heads (group \(h.groupSize)), head dim \(h.headDim)"
        let scale =
            Format.fixed(Double(h.effectiveSoftmaxScale), 5) + (h.softmaxScale == nil ? " (default 1/sqrt(D))" : "")
        out.append("model      \(Format.printable(h.model)): \(h.numLayers) layers, \(heads), softmax scale \(scale)")
        out.append("tokens     \(h.numTokens) = \(h.promptLength) prompt + \(h.generatedLength) generated")
        if let prompt = h.prompt {
            let flat = Format.printable(prompt.replacingOccurrences(of: "\n", with: " "))
            out.append("prompt     \"\(flat.count > 100 ? String(flat.prefix(97)) + "..." : flat)\"")
        }
        out.append("")
        var table = TextTable(headers: ["layer", "tensors", "sparsity mean", "p5", "p50", "p95"])
        for l in layers {
            let tensors =
                LayerTensor.allCases.compactMap { t in
                    l.tensors[t.rawValue].map { "\(t.rawValue):\($0 == "float16" ? "f16" : "f32")" }
                }
                .joined(separator: " ") + (l.attentionHeads.map { " (attn heads: \($0))" } ?? "")
            if let s = l.sparsity {
                table.add([
                    String(l.layer), tensors, Format.fixed(s.mean, 3), Format.fixed(s.p5, 3),
                    Format.fixed(s.p50, 3), Format.fixed(s.p95, 3)
                ])
            } else {
                table.add([String(l.layer), tensors, "-", "-", "-", "-"])
            }
        }
        table.leftAligned = [0, 1]
        out.append(table.render())
        if profiledSteps > 0 {
            out.append(
                "sparsity: fraction of visible positions whose head-averaged attention is below 1% of the row maximum")
            if profiledSteps < h.generatedLength {
                out.append("(profiled the first \(profiledSteps) of \(h.generatedLength) decode steps)")
            }
        }
        if let counts = labelCounts {
            out.append("")
            let total = Double(h.numTokens)
            let parts = (ThoughtType.allCases.map(\.name) + ["prompt_or_unknown"]).map { name in
                "\(name) \(counts[name] ?? 0) (\(String(format: "%.1f", 100 * Double(counts[name] ?? 0) / total))%)"
            }
            out.append("labels     " + parts.joined(separator: ", "))
        }
        if let byType = sparsityByThought {
            let parts = ThoughtType.allCases.compactMap { t in byType[t.name].map { "\(t.name) \(Format.fixed($0, 3))" }
            }
            out.append("sparsity by thought type (mean over layers): " + parts.joined(separator: ", "))
        }
        if labelTimeline != nil || sparsityTimeline != nil {
            out.append("")
            out.append("timeline over \(profiledSteps > 0 ? profiledSteps : h.generatedLength) decode steps:")
            if let t = labelTimeline { out.append("  labels    \(t)") }
            if let s = sparsityTimeline { out.append("  sparsity  \(s)") }
            if labelTimeline != nil { out.append("  (R reasoning, E execution, T transition: majority label per bin)") }
        }
        if let thoughts {
            out.append("")
            out.append(thoughts.text)
        }
        return out.joined(separator: "\n")
    }
}
