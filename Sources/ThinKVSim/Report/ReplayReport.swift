import Foundation

/// Renders a `ReplayResult` as a readable table, as JSON, or as a tidy per-step CSV.
public enum ReplayReport {
    // MARK: Text

    public static func text(_ result: ReplayResult) -> String {
        let h = result.header
        var out: [String] = []
        out.append("trace   \(result.tracePath)")
        out.append(
            "model   \(Format.printable(h.model)): \(h.numLayers) layers, \(h.numQHeads) q-heads / \(h.numKVHeads) "
                + "kv-heads, head dim \(h.headDim)"
        )
        out.append("tokens  \(h.numTokens) (prompt \(h.promptLength), replayed \(result.decodeSteps) decode steps)")
        out.append(
            "layers  \(result.layers.map(String.init).joined(separator: ", ")) (bytes extrapolated to all "
                + "\(h.numLayers) layers)"
        )
        if let sampling = result.metricSampling { out.append("sampled \(sampling.summaryLine)") }
        out.append("")
        // Fidelity leads (KL, output error); mass recall, blind to quantization error, follows.
        var table = TextTable(headers: [
            "policy", "tokens", "KV peak", "KV mean", "% full", "KL", "out err", "err p95",
            "recall", "recall p5", "recall min", "top-k"
        ])
        var pagingTable = TextTable(headers: ["policy", "blocks peak", "occupancy", "paged peak", "compaction copies"])
        for run in result.runs {
            let s = run.summary
            table.add([
                run.spec.label,
                String(format: "%.0f", s.memory.meanAttendedTokens),
                Format.bytes(s.memory.peakBytes),
                Format.bytes(s.memory.meanBytes),
                String(format: "%.1f", s.memory.meanPercentOfFull),
                Format.fixed(s.attentionKL.mean),
                s.outputError.map { Format.fixed($0.mean) } ?? "n/a",
                s.outputError.map { Format.fixed($0.p95) } ?? "n/a",
                Format.fixed(s.massRecall.mean),
                Format.fixed(s.massRecall.p5),
                Format.fixed(s.massRecall.min),
                Format.fixed(s.topKRecall.mean)
            ])
            pagingTable.add([
                run.spec.label,
                String(format: "%.0f", s.memory.peakBlocks),
                String(format: "%.3f", s.memory.meanSlotOccupancy),
                Format.bytes(s.memory.peakPagedBytes),
                Format.bytes(s.memory.totalCompactionBytes)
            ])
        }
        out.append(table.render())
        if let sampling = result.metricSampling {
            out.append("")
            out.append(sampledTable(result, sampling))
        }
        out.append("")
        out.append(cadenceTable(result))
        if result.paging != .none {
            out.append("")
            out.append("paging: \(result.paging.rawValue), block size \(result.blockSizes)")
            out.append(pagingTable.render())
        }
        out.append("")
        out.append("tokens: attended per kv head (mean over steps); KV: attended bytes incl. quantization metadata;")
        out.append(
            "% full: of the 16-bit full cache at the same step (mean); KL/err/recall/top-k: over steps, layers, heads.")
        if let match = result.runs.lazy.compactMap(\.memoryMatch).first {
            out.append(
                "budget: found by bisection so that each policy's \(match.statistic.rawValue) KV is "
                    + "\(describeTarget(match)) within 1 point;"
            )
            out.append("  achieved: that figure as replayed; policies without a budget run as given (not matched).")
        }
        if result.paging != .none {
            out.append(
                "occupancy: live tokens / block slots (mean); compaction copies: bytes a dense gather would have "
                    + "moved (total)."
            )
        }
        let thoughtRuns = result.runs.filter { $0.summary.thoughtBreakdown != nil }
        if !thoughtRuns.isEmpty {
            out.append("")
            out.append(
                "by thought type (attended, mean per step; tokens per kv head, bytes of K+V elements in all layers):")
            var thoughts = TextTable(headers: [
                "policy", "R tokens", "E tokens", "T tokens", "prompt", "R bytes", "E bytes", "T bytes",
                "prompt bytes", "@16b", "@8b", "@4b", "@2b"
            ])
            for run in thoughtRuns {
                let b = run.summary.thoughtBreakdown!
                let kinds = ThoughtStepBreakdown.kinds.map { b.byThought[$0]! }
                thoughts.add(
                    [run.spec.label] + kinds.map { String(format: "%.1f", $0.meanTokens) }
                        + kinds.map { Format.bytes($0.meanBytes) }
                        + ["16", "8", "4", "2"].map { String(format: "%.1f", b.tokensByBits[$0] ?? 0) })
            }
            out.append(thoughts.render())
        }
        for run in result.runs {
            guard let counters = run.summary.policyCounters, !counters.isEmpty else { continue }
            out.append(
                "events \(run.spec.label): "
                    + counters.sorted { $0.key < $1.key }.map {
                        "\($0.key.replacingOccurrences(of: "_", with: " ")) \($0.value)"
                    }.joined(separator: ", "))
        }
        for note in result.notes { out.append("note: \(note)") }
        return out.joined(separator: "\n")
    }

    /// The fidelity means with their 95 % confidence half-widths, when the metrics were sampled.
    static func sampledTable(_ result: ReplayResult, _ sampling: MetricSampling) -> String {
        var table = TextTable(headers: ["policy", "KL ± 95 %", "out err ± 95 %", "recall ± 95 %", "top-k ± 95 %"])
        func interval(_ m: MetricSummary?) -> String {
            guard let m else { return "n/a" }
            return Format.fixed(m.mean) + " ± " + (m.ci95HalfWidth.map { $0.isNaN ? "n/a" : Format.fixed($0) } ?? "n/a")
        }
        for run in result.runs {
            let s = run.summary
            table.add([
                run.spec.label, interval(s.attentionKL), interval(s.outputError), interval(s.massRecall),
                interval(s.topKRecall)
            ])
        }
        return table.render() + "\n" + "sampled: fidelity on \(sampling.sampledSteps) of \(sampling.decodeSteps) steps "
            + "(\(sampling.selection)); percentiles and minima are of those steps; tokens, KV and paging of every "
            + "step;\n"
            + "  ±: the confidence half-width, \(sampling.interval)."
    }

    /// Each run's compression cadence and, after a memory match, the budget found.
    static func cadenceTable(_ result: ReplayResult) -> String {
        let matched = result.runs.contains { $0.memoryMatch != nil }
        var table = TextTable(
            headers: matched
                ? ["policy", "budget", "achieved", "match", "evicts", "bits/elem", "compresses"]
                : ["policy", "evicts", "bits/elem", "compresses"])
        table.leftAligned = matched ? [0, 3, 6] : [0, 3]
        for run in result.runs {
            let cadence = run.spec.type.compressionCadence(run.spec.parameters)
            // How often eviction actually ran, and the precision it left.
            let activity = [
                String(format: "%.1f %% of steps", run.summary.memory.evictionStepPercent),
                String(format: "%.2f", run.summary.memory.meanBitsPerElement)
            ]
            if let m = run.memoryMatch {
                let achieved =
                    m.targetBytes == nil
                    ? String(format: "%.2f %%", m.achievedPercent)
                    : "\(Format.bytes(m.achievedBytes)) (\(String(format: "%.2f %%", m.achievedPercent)))"
                table.add(
                    [run.spec.label, m.budget.map(String.init) ?? "-", achieved, m.status.rawValue] + activity + [
                        cadence
                    ])
            } else {
                table.add([run.spec.label] + activity + [cadence])
            }
        }
        // The last column is left-aligned: no padding after it.
        var lines = table.render().split(separator: "\n", omittingEmptySubsequences: false).map { line in
            String(line.reversed().drop { $0 == " " }.reversed())
        }
        for note in result.runs.compactMap({ $0.memoryMatch?.note }) { lines.append("unreachable: \(note)") }
        return lines.joined(separator: "\n")
    }

    static func describeTarget(_ m: MemoryMatch) -> String {
        if let p = m.targetPercent { return String(format: "%g %% of the full cache", p) }
        return Format.bytes(m.targetBytes ?? 0)
    }

    // MARK: JSON

    struct JSONRun: Encodable {
        let policy: String
        let label: String
        let parameters: [String: ParameterValue]
        let compresses: String
        let memoryMatch: MemoryMatch?
        let summary: RunSummary
    }

    /// Version of the --json layout (docs/metrics.md); raised when a field changes meaning or type.
    public static let schemaVersion = 2

    struct JSONReport: Encodable {
        let schemaVersion: Int
        let trace: String
        let header: TraceHeader
        let layers: [Int]
        let decodeSteps: Int
        let notes: [String]
        let timing: ReplayTiming
        let runs: [JSONRun]
        /// Present only when fidelity was measured on a sample of the steps.
        let metricSteps: MetricSampling?
    }

    public static func json(_ result: ReplayResult) throws -> String {
        let report = JSONReport(
            schemaVersion: schemaVersion, trace: result.tracePath, header: result.header, layers: result.layers,
            decodeSteps: result.decodeSteps,
            notes: result.notes, timing: result.timing,
            runs: result.runs.map { run in
                JSONRun(
                    policy: run.spec.name, label: run.spec.label,
                    parameters: run.spec.parameters.typedEffective,
                    compresses: run.spec.type.compressionCadence(run.spec.parameters),
                    memoryMatch: run.memoryMatch, summary: run.summary)
            }, metricSteps: result.metricSampling)
        return try encodeJSON(report)
    }

    /// Encodes with sorted snake_case keys; non-finite numbers become null-like strings never
    /// silently (summaries of empty sets are NaN and print as "nan").
    public static func encodeJSON<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    // MARK: CSV

    public static let stepColumns = [
        "policy", "layer", "step", "position", "attended_tokens", "resident_tokens", "attended_bytes", "resident_bytes",
        "full_bytes", "percent_of_full", "blocks", "slot_occupancy", "paged_bytes", "compaction_bytes", "mass_recall",
        "mass_recall_min", "topk_recall", "attention_kl", "output_error",
        "sparsity", "kv_target_percent", "kv_target_bytes", "kv_match", "matched_budget", "achieved_percent",
        "thought_reasoning_tokens", "thought_execution_tokens", "thought_transition_tokens", "thought_prompt_tokens",
        "thought_reasoning_bytes", "thought_execution_bytes", "thought_transition_bytes", "thought_prompt_bytes",
        "tokens_16bit", "tokens_8bit", "tokens_4bit", "tokens_2bit", "tokens_other_bits"
    ]

    /// One row per (policy, layer, decode step); an unavailable output error is an empty cell, and
    /// so are the fidelity and sparsity cells of a step whose metrics were not sampled (NaN).
    /// After the fixed columns: `policy_name`, then every parameter of the chosen policies as a
    /// column of its own (its effective value; empty for a policy without it), so a script need
    /// not parse labels.
    /// With `tokenText` (the trace's `/tokens/text`), a last `token_text` column gives the
    /// decoded piece of each step's token (control characters escaped).
    public static func stepCSV(_ result: ReplayResult, tokenText: [String]? = nil) -> String {
        var names: [String] = []
        for run in result.runs {
            for (name, _) in run.spec.parameters.effective where !names.contains(name) { names.append(name) }
        }
        names.sort()
        let text = tokenText.flatMap { $0.count == result.header.numTokens ? $0 : nil }
        var out =
            (stepColumns + ["policy_name"]
            + names.map { stepColumns.contains($0) || $0 == "policy_name" ? "param_\($0)" : $0 }
            + (text == nil ? [] : ["token_text"])).joined(separator: ",") + "\n"
        for run in result.runs {
            let label = csvField(run.spec.label)
            let effective = Dictionary(uniqueKeysWithValues: run.spec.parameters.effective.map { ($0.name, $0.value) })
            let suffix = "," + ([run.spec.name] + names.map { csvField(effective[$0] ?? "") }).joined(separator: ",")
            for r in run.steps {
                out += stepRow(label, r, match: run.memoryMatch).dropLast() + suffix
                if let text { out += "," + csvField(Format.printable(text[r.position])) }
                out += "\n"
            }
        }
        return out
    }

    static func stepRow(_ label: String, _ r: StepRecord, match: MemoryMatch? = nil) -> String {
        let fields: [String] =
            [
                label, String(r.layer), String(r.step), String(r.position),
                Format.csv(r.attendedTokens), Format.csv(r.residentTokens),
                String(r.attendedBytes), String(r.residentBytes), String(r.fullBytes),
                Format.csv(100 * Double(r.attendedBytes) / Double(max(r.fullBytes, 1))),
                String(r.blocks), Format.csv(r.slotOccupancy), String(r.pagedBytes), String(r.compactionBytes),
                Format.csv(Double(r.massRecall)), Format.csv(Double(r.massRecallMin)), Format.csv(Double(r.topKRecall)),
                Format.csv(Double(r.attentionKL)), r.outputError.map { Format.csv(Double($0)) } ?? "",
                Format.csv(Double(r.sparsity))
            ] + matchFields(match)
        // Thought columns are empty for policies without thought types.
        let thought: [String] =
            r.thought.map { t in
                t.tokens.map { Format.csv($0) } + t.bytes.map(String.init) + t.tokensByBits.map { Format.csv($0) }
            } ?? Array(repeating: "", count: 13)
        return (fields + thought).joined(separator: ",") + "\n"
    }

    /// The memory-match columns of the per-step CSV (empty without a match): the target, the
    /// figure matched (mean|peak), the budget found (empty: not matched) and the percentage achieved.
    static func matchFields(_ m: MemoryMatch?) -> [String] {
        guard let m else { return ["", "", "", "", ""] }
        return [
            m.targetPercent.map { Format.csv($0) } ?? "", m.targetBytes.map { Format.csv($0) } ?? "",
            m.statistic.rawValue,
            m.budget.map(String.init) ?? "", Format.csv(m.achievedPercent)
        ]
    }

    /// Quotes a CSV field when it holds a comma, quote or newline (RFC 4180).
    public static func csvField(_ s: String) -> String { CSV.field(s) }
}
