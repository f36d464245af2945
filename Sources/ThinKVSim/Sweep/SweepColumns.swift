import Foundation

/// The columns of a sweep's results CSV (docs/csv.md describes each one) and the formatting of
/// their cells. The formatting is deterministic, so a resumed or sharded sweep writes the same
/// bytes as one uninterrupted run.
public enum SweepColumns {
    /// One summary metric column.
    public struct Metric: Sendable {
        public let name: String
        public let help: String
        /// Whether a run may have no value (an empty cell): output error without values, the
        /// ThinKV-only columns for other policies.
        var mayBeEmpty = false
        let value: @Sendable (RunSummary) -> Double?
    }

    public static let metrics: [Metric] = [
        Metric(name: "mass_recall_mean", help: "attention mass recall, mean over steps, layers, query heads") {
            $0.massRecall.mean
        },
        Metric(name: "mass_recall_p5", help: "5th percentile of mass recall") { $0.massRecall.p5 },
        Metric(name: "mass_recall_min", help: "minimum mass recall") { $0.massRecall.min },
        Metric(name: "topk_recall_mean", help: "top-k recall, mean") { $0.topKRecall.mean },
        Metric(name: "attention_kl_mean", help: "KL(policy || full) in nats, mean (inf when a head attends to nothing)")
        { $0.attentionKL.mean },
        Metric(
            name: "output_error_mean", help: "relative L2 attention-output error, mean (empty without values)",
            mayBeEmpty: true
        ) { $0.outputError?.mean },
        Metric(
            name: "output_error_p95", help: "95th percentile of the output error (empty without values)",
            mayBeEmpty: true
        ) { $0.outputError?.p95 },
        Metric(name: "kv_bytes_peak", help: "largest attended KV bytes over steps, all model layers") {
            $0.memory.peakBytes
        },
        Metric(name: "kv_bytes_mean", help: "mean attended KV bytes over steps, all model layers") {
            $0.memory.meanBytes
        },
        Metric(name: "kv_bytes_final_resident", help: "resident KV bytes after the last step, all model layers") {
            $0.memory.finalResidentBytes
        },
        Metric(name: "full_bytes_final", help: "bytes of the 16-bit full cache at the last step, all model layers") {
            $0.memory.finalFullBytes
        },
        Metric(name: "percent_of_full_mean", help: "attended bytes as % of the full cache at the same step, mean") {
            $0.memory.meanPercentOfFull
        },
        Metric(name: "percent_of_full_final", help: "attended bytes as % of the full cache at the last step") {
            $0.memory.finalPercentOfFull
        },
        Metric(name: "tokens_attended_mean", help: "attended tokens per kv head, mean over steps and layers") {
            $0.memory.meanAttendedTokens
        },
        Metric(name: "tokens_resident_final", help: "resident tokens per kv head after the last step") {
            $0.memory.finalResidentTokens
        },
        Metric(name: "paging_blocks_peak", help: "most PagedAttention blocks held at once, all model layers") {
            $0.memory.peakBlocks
        },
        Metric(name: "slot_occupancy_mean", help: "live tokens / block slots, mean") { $0.memory.meanSlotOccupancy },
        Metric(name: "paged_bytes_peak", help: "largest bytes of the held blocks, all model layers") {
            $0.memory.peakPagedBytes
        },
        Metric(
            name: "compaction_bytes_total",
            help: "bytes a dense gather would have copied over the run, all model layers"
        ) { $0.memory.totalCompactionBytes },
        Metric(
            name: "eviction_step_percent", help: "% of (layer, decode step) pairs on which the policy evicted anything"
        ) { $0.memory.evictionStepPercent },
        Metric(name: "bits_per_element_mean", help: "attended KV bits (metadata included) per K or V element, mean") {
            $0.memory.meanBitsPerElement
        },
        Metric(
            name: "thought_transitions",
            help: "ThinKV: transitions its classifier saw, summed over replayed layers (empty for other policies)",
            mayBeEmpty: true
        ) {
            $0.policyCounters?["transitions"].map(Double.init)
        },
        Metric(
            name: "transition_evicted_percent",
            help:
                "ThinKV: % of evicted tokens that transition cuts evicted (the rest: budget pressure, floor breaches)",
            mayBeEmpty: true
        ) {
            guard let c = $0.policyCounters, let cut = c["transition_evicted_tokens"] else { return nil }
            let total = cut + (c["pressure_evicted_tokens"] ?? 0) + (c["floor_breach_evicted_tokens"] ?? 0)
            return total > 0 ? 100 * Double(cut) / Double(total) : nil
        }
    ]

    public static var metricNames: [String] { metrics.map(\.name) }

    /// Columns before the parameters: identity and context of a run.
    public static let leading = [
        "run_id", "run_key", "trace", traceFingerprint, "model", "num_layers", "decode_steps", "policy", "label"
    ]
    /// The trace file a row was computed from (`TraceFingerprint`): a resumed sweep recomputes
    /// rows whose trace has changed since.
    public static let traceFingerprint = "trace_fingerprint"
    /// Replay options, after the parameters.
    public static let replayOptions = ["layers", "steps", "topk", "paging", "block_size"]
    /// Memory-match columns, after the replay options, when the config has `kv_percent`: the
    /// target, the figure matched, the outcome (matched, not matched, unreachable) and the
    /// percentage achieved; the budget found is in the `budget` column.
    public static let memoryMatch = ["kv_percent", "kv_match", "kv_match_status", "achieved_percent"]
    /// Columns after the memory-match ones when the config has `metric_steps` other than `all`:
    /// the sample, and the 95 % confidence half-width of each fidelity mean (docs/metrics.md).
    public static let metricSampling = [
        "metric_steps", "mass_recall_ci95", "topk_recall_ci95", "attention_kl_ci95",
        "output_error_ci95"
    ]
    /// Last column when per-step CSVs are written.
    public static let stepsFile = "steps_csv"

    /// CSV column of a policy parameter: its name with `-` as `_` (pandas-friendly), prefixed
    /// with `param_` if that would collide with a fixed column.
    public static func parameterColumn(_ name: String) -> String {
        let column = name.replacingOccurrences(of: "-", with: "_")
        return (leading + replayOptions + memoryMatch + metricSampling + metricNames + [stepsFile]).contains(column)
            ? "param_" + column : column
    }

    /// What is wrong with `cell` as the value of metric column `name` in a row this tool wrote,
    /// or nil: a number in the canonical form `number` writes, finite and in the metric's range
    /// (recalls and occupancy fractions, the rest non-negative); `inf` only for the KL; empty
    /// only where a run may have no value (`Metric.mayBeEmpty`).
    public static func metricProblem(_ name: String, _ cell: String) -> String? {
        if cell.isEmpty { return metrics.contains { $0.name == name && $0.mayBeEmpty } ? nil : "empty" }
        if cell == "inf" { return name == "attention_kl_mean" ? nil : "infinite" }
        guard let value = Double(cell), value.isFinite, number(value) == cell else {
            return "'\(Format.printable(cell))' is not a number as written"
        }
        guard value >= 0 else { return "\(cell) is negative" }
        let fraction = name.hasPrefix("mass_recall") || name.hasPrefix("topk_recall") || name == "slot_occupancy_mean"
        if fraction && value > 1.001 { return "\(cell) is above 1" }
        return nil
    }

    /// A number as a cell: integers exactly, other values with 8 significant digits, infinities
    /// as `inf`/`-inf`, NaN (a summary of no samples) as an empty cell.
    public static func number(_ value: Double?) -> String {
        guard let value, !value.isNaN else { return "" }
        if value.isInfinite { return value > 0 ? "inf" : "-inf" }
        if value == 0 { return "0" }  // also -0
        if value == value.rounded(), abs(value) < 1e15 { return String(format: "%.0f", value) }
        return String(format: "%.8g", value)
    }
}
