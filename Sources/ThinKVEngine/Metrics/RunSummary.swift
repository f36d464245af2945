import Foundation

/// Distribution of one metric over all (decode step, layer, query head) samples of a run.
public struct MetricSummary: Codable, Equatable, Sendable {
    public var mean: Double
    /// Percentiles with linear interpolation between order statistics (numpy's default).
    public var p5: Double
    public var p50: Double
    public var p95: Double
    public var min: Double
    public var max: Double
    public var count: Int
    /// Half-width of the 95 % confidence interval of `mean` when the fidelity metrics were
    /// measured on a sample of decode steps (`MetricSampling`); nil when every step was measured.
    public var ci95HalfWidth: Double? = nil

    public init(samples: [Float]) {
        count = samples.count
        guard !samples.isEmpty else {
            mean = .nan; p5 = .nan; p50 = .nan; p95 = .nan; min = .nan; max = .nan
            return
        }
        let sorted = samples.sorted()
        var sum = 0.0
        for x in samples { sum += Double(x) }
        mean = sum / Double(samples.count)
        min = Double(sorted.first!)
        max = Double(sorted.last!)
        p5 = MetricSummary.percentile(sorted, 0.05)
        p50 = MetricSummary.percentile(sorted, 0.5)
        p95 = MetricSummary.percentile(sorted, 0.95)
    }

    public static func percentile(_ sorted: [Float], _ q: Double) -> Double {
        let position = q * Double(sorted.count - 1)
        let lower = Int(position.rounded(.down))
        let upper = Swift.min(lower + 1, sorted.count - 1)
        let fraction = position - Double(lower)
        let a = Double(sorted[lower]), b = Double(sorted[upper])
        // Equal neighbours (infinite KL samples among them) would give inf - inf = NaN below.
        if fraction == 0 || a == b { return a }
        return a + fraction * (b - a)
    }
}

/// Memory of a run, extrapolated from the replayed layers to all `num_layers` of the model.
public struct MemorySummary: Codable, Equatable, Sendable {
    /// Largest attended-set bytes over decode steps (the peak a real cache must hold).
    public var peakBytes: Double
    public var meanBytes: Double
    public var peakResidentBytes: Double
    public var finalResidentBytes: Double
    /// Attended bytes as a percentage of the full 16-bit cache at the same step.
    public var meanPercentOfFull: Double
    public var finalPercentOfFull: Double
    /// Attended tokens per kv head, mean over steps and layers, and resident after the last step.
    public var meanAttendedTokens: Double
    public var finalResidentTokens: Double
    /// Full cache bytes at the last step (for scale).
    public var finalFullBytes: Double
    /// Paging: most blocks held at once, mean slot occupancy over steps, peak bytes of the
    /// held blocks, and the bytes gather-compaction would have copied over the whole run.
    public var peakBlocks: Double
    public var meanSlotOccupancy: Double
    public var peakPagedBytes: Double
    public var totalCompactionBytes: Double
    /// Share of (layer, decode step) pairs on which the policy evicted anything, in percent:
    /// how often compression runs (ThinKV reports 4.59 % for TBE against 82.93 % for R-KV).
    public var evictionStepPercent: Double
    /// Attended bytes (metadata included) per attended K or V element, in bits, mean over
    /// steps and layers: 16 for the full cache, ThinKV reports 3.4–3.8.
    public var meanBitsPerElement: Double
}

/// Everything a report prints for one policy configuration.
public struct RunSummary: Codable, Equatable, Sendable {
    /// The summary of per-step records and samples gathered over `replayedLayers` layers, in
    /// layer order (the engine's, and a layer-shard merge's: the same sums in the same order).
    public static func of(
        records: [StepRecord], samples: MetricSamples, counters: [(name: String, value: Int)],
        numLayers: Int, replayedLayers: Int, anyValues: Bool,
        sampling: MetricSampling? = nil, headsPerStep: Int = 0
    ) -> RunSummary {
        func summary(_ values: [Float]) -> MetricSummary {
            var s = MetricSummary(samples: values)
            if let sampling {
                s.ci95HalfWidth = MetricSummary.stepSampleHalfWidth(
                    values, sampledSteps: sampling.sampledSteps,
                    headsPerStep: headsPerStep,
                    decodeSteps: sampling.decodeSteps)
            }
            return s
        }
        return RunSummary(
            massRecall: summary(samples.massRecall),
            topKRecall: summary(samples.topKRecall),
            attentionKL: summary(samples.attentionKL),
            outputError: anyValues ? summary(samples.outputError) : nil,
            memory: MemorySummary(records: records, numLayers: numLayers, replayedLayers: replayedLayers),
            thoughtBreakdown: ThoughtBreakdownSummary(records: records, numLayers: numLayers),
            policyCounters: counters.isEmpty
                ? nil : Dictionary(counters.map { ($0.name, $0.value) }, uniquingKeysWith: +))
    }

    public var massRecall: MetricSummary
    public var topKRecall: MetricSummary
    public var attentionKL: MetricSummary
    /// nil when no replayed layer has values.
    public var outputError: MetricSummary?
    public var memory: MemorySummary
    /// Tokens and bytes by thought type and precision (policies with thought types only).
    public var thoughtBreakdown: ThoughtBreakdownSummary? = nil
    /// The policy's event counts summed over replayed layers (e.g. ThinKV's cuts by reason).
    public var policyCounters: [String: Int]? = nil
}

/// Collects per-sample metric values while a run progresses (kept with a run, so that layer
/// shards of one replay merge into exactly the summaries of the whole).
public struct MetricSamples: Codable, Equatable, Sendable {
    public var massRecall: [Float] = []
    public var topKRecall: [Float] = []
    public var attentionKL: [Float] = []
    public var outputError: [Float] = []

    public init() {}

    mutating func reserve(_ n: Int, values: Bool) {
        massRecall.reserveCapacity(n)
        topKRecall.reserveCapacity(n)
        attentionKL.reserveCapacity(n)
        if values { outputError.reserveCapacity(n) }
    }

    public mutating func append(_ other: MetricSamples) {
        massRecall += other.massRecall
        topKRecall += other.topKRecall
        attentionKL += other.attentionKL
        outputError += other.outputError
    }
}

extension MemorySummary {
    /// Combines per-layer step records: bytes at a step are summed over replayed layers, then
    /// scaled by `num_layers / replayed layers`.
    init(records: [StepRecord], numLayers: Int, replayedLayers: Int) {
        let scale = Double(numLayers) / Double(max(replayedLayers, 1))
        var attended: [Int: Int] = [:], resident: [Int: Int] = [:], full: [Int: Int] = [:]
        var blocks: [Int: Int] = [:], paged: [Int: Int] = [:]
        var occupancySum = 0.0, moved = 0
        var tokens = 0.0
        var evictionSteps = 0, bitsSum = 0.0
        var lastStep = -1
        var lastTokens = 0.0
        for r in records {
            attended[r.step, default: 0] += r.attendedBytes
            resident[r.step, default: 0] += r.residentBytes
            full[r.step, default: 0] += r.fullBytes
            blocks[r.step, default: 0] += r.blocks
            paged[r.step, default: 0] += r.pagedBytes
            occupancySum += r.slotOccupancy
            moved += r.compactionBytes
            tokens += r.attendedTokens
            if r.evicted { evictionSteps += 1 }
            // attendedTokens is the mean over kv heads; fullBytes / (p + 1) is 4 bytes per (head, dim).
            let elementsPerToken = 2 * Double(r.fullBytes) / 4 / Double(r.position + 1)
            bitsSum += r.attendedTokens > 0 ? 8 * Double(r.attendedBytes) / (r.attendedTokens * elementsPerToken) : 0
            if r.step > lastStep { lastStep = r.step; lastTokens = 0 }
            if r.step == lastStep { lastTokens += r.residentTokens }
        }
        let steps = attended.keys.sorted()
        var peak = 0.0, sum = 0.0, peakResident = 0.0, percentSum = 0.0
        for s in steps {
            let a = Double(attended[s]!) * scale
            peak = Swift.max(peak, a)
            sum += a
            peakResident = Swift.max(peakResident, Double(resident[s]!) * scale)
            percentSum += 100 * Double(attended[s]!) / Double(Swift.max(full[s]!, 1))
        }
        let n = Double(Swift.max(steps.count, 1))
        let last = steps.last
        peakBytes = peak
        meanBytes = sum / n
        peakResidentBytes = peakResident
        finalResidentBytes = last.map { Double(resident[$0]!) * scale } ?? 0
        meanPercentOfFull = percentSum / n
        finalPercentOfFull = last.map { 100 * Double(attended[$0]!) / Double(Swift.max(full[$0]!, 1)) } ?? 0
        meanAttendedTokens = tokens / Double(Swift.max(records.count, 1))
        finalResidentTokens = lastTokens / Double(Swift.max(replayedLayers, 1))
        finalFullBytes = last.map { Double(full[$0]!) * scale } ?? 0
        peakBlocks = Double(blocks.values.max() ?? 0) * scale
        meanSlotOccupancy = occupancySum / Double(Swift.max(records.count, 1))
        peakPagedBytes = Double(paged.values.max() ?? 0) * scale
        totalCompactionBytes = Double(moved) * scale
        evictionStepPercent = 100 * Double(evictionSteps) / Double(Swift.max(records.count, 1))
        meanBitsPerElement = bitsSum / Double(Swift.max(records.count, 1))
    }
}
