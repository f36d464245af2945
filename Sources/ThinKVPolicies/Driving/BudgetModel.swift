import Foundation

/// A prediction of a policy's memory figure at any budget, from how many tokens it holds at
/// each decode step: `min(visible, budget + excess)` tokens, each of some bytes. The excess is
/// how far the cache runs over its budget (a policy that compresses every c positions holds up
/// to B + c − 1). `MemoryMatcher` uses it to choose the few budgets it replays; the replays, not
/// the model, decide the match.
struct BudgetModel {
    struct Step {
        /// Tokens the full cache holds at this step (position + 1).
        let visible: Double
        /// Held tokens over the budget; nil where the run it was learned from held everything.
        let excess: Double?
        /// Bytes of one held token and of the full cache, summed over the replayed layers.
        let bytesPerToken: Double
        let fullBytes: Double
    }

    let steps: [Step]
    /// All the model's layers over the replayed ones: bytes are extrapolated as reports do.
    let scale: Double
    /// The excess assumed where it is unknown.
    let typicalExcess: Double

    /// Before any replay: every token at 16 bits, and a cache that runs over its budget by half
    /// its cadence on average (the whole cadence at its peak).
    static func generic(
        header: TraceHeader, layers: Int, steps: Int, cadence: Int,
        statistic: MemoryStatistic
    ) -> BudgetModel {
        let perToken = Double(header.numKVHeads * header.headDim * 4 * max(layers, 1))
        let excess = statistic == .mean ? Double(max(cadence, 1) - 1) / 2 : Double(max(cadence, 1) - 1)
        let rows = (0..<steps).map { t -> Step in
            let visible = Double(header.promptLength + t + 1)
            return Step(visible: visible, excess: excess, bytesPerToken: perToken, fullBytes: visible * perToken)
        }
        return BudgetModel(steps: rows, scale: Double(header.numLayers) / Double(max(layers, 1)), typicalExcess: excess)
    }

    /// Learned from a replay at `budget`: its own excess and bytes per token at every step, so
    /// it reproduces that replay's figure exactly and moves from it as the budget moves.
    static func learned(from run: PolicyRun, budget: Int, numLayers: Int, replayedLayers: Int) -> BudgetModel {
        var held: [Int: Double] = [:], bytes: [Int: Double] = [:]
        var full: [Int: Double] = [:], visible: [Int: Double] = [:]
        for record in run.steps {
            held[record.step, default: 0] += record.attendedTokens
            bytes[record.step, default: 0] += Double(record.attendedBytes)
            full[record.step, default: 0] += Double(record.fullBytes)
            visible[record.step] = Double(record.position + 1)
        }
        let layers = Double(max(replayedLayers, 1))
        var rows: [Step] = []
        var excesses: [Double] = []
        for step in held.keys.sorted() {
            let tokens = held[step]! / layers, seen = visible[step]!
            let excess: Double? = tokens < seen - 1e-9 ? tokens - Double(budget) : nil
            if let excess { excesses.append(excess) }
            rows.append(
                Step(
                    visible: seen, excess: excess, bytesPerToken: tokens > 0 ? bytes[step]! / tokens : 0,
                    fullBytes: full[step]!))
        }
        let typical = excesses.isEmpty ? 0 : excesses.reduce(0, +) / Double(excesses.count)
        return BudgetModel(steps: rows, scale: Double(numLayers) / layers, typicalExcess: typical)
    }

    /// The predicted figure at `budget`, in the target's unit (as `MemoryMatcher.value`).
    func figure(budget: Int, statistic: MemoryStatistic, target: MemoryTarget) -> Double {
        guard !steps.isEmpty else { return 0 }
        var sum = 0.0, peak = 0.0, percentSum = 0.0
        for step in steps {
            let tokens = min(step.visible, Double(budget) + (step.excess ?? typicalExcess))
            let bytes = step.bytesPerToken * max(tokens, 0)
            sum += bytes
            peak = max(peak, bytes)
            percentSum += 100 * bytes / max(step.fullBytes, 1)
        }
        let n = Double(steps.count)
        switch (target, statistic) {
        case (.percent, .mean): return percentSum / n
        case (.percent, .peak): return 100 * peak / max(steps.last!.fullBytes, 1)
        case (.bytes, .mean): return sum / n * scale
        case (.bytes, .peak): return peak * scale
        }
    }

    /// The largest budget in `range` whose predicted figure is not above `goal`
    /// (`range.lowerBound − 1` when none is). The figure grows with the budget here.
    func largestBudget(
        notAbove goal: Double, in range: ClosedRange<Int>, statistic: MemoryStatistic,
        target: MemoryTarget
    ) -> Int {
        var lo = range.lowerBound - 1, hi = range.upperBound + 1  // figure(lo) ≤ goal < figure(hi)
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2
            if figure(budget: mid, statistic: statistic, target: target) <= goal { lo = mid } else { hi = mid }
        }
        return lo
    }
}
