import Foundation

/// Which decode steps a replay measures fidelity on (`replay --metric-steps`).
///
/// On a measured step the full-cache reference is computed and every fidelity metric is taken,
/// as always. On any other step no reference exists: each policy attends over its own cache
/// (the softmax over the positions it holds, from its stored keys — what a deployed policy
/// computes), so policies that read attention behave exactly as in a full replay; only the
/// memory accounting is recorded. The fidelity means are then estimates with a confidence
/// interval (`MetricSampling`).
public enum MetricStepSelection: Equatable, Sendable {
    /// Every step (the default; bit for bit the replay without sampling).
    case all
    /// Steps t with t % n == 0, plus the last step (a systematic sample).
    case stride(Int)
    /// `count` steps drawn without replacement with a seeded generator, in step order.
    case random(count: Int, seed: UInt64)

    public static let defaultSeed: UInt64 = 1

    /// Parses `all`, `stride:N` or `random:N[:SEED]`; `option` names the setting in the message.
    public static func parse(_ text: String, option: String = "--metric-steps") throws -> MetricStepSelection {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        func positive(_ s: String, _ what: String) throws -> Int {
            guard let n = Int(s), n >= 1 else {
                throw UsageError("\(option): \(what) must be a positive integer, got '\(s)'")
            }
            return n
        }
        switch (parts.first ?? "", parts.count) {
        case ("all", 1): return .all
        case ("stride", 2): return .stride(try positive(parts[1], "the stride"))
        case ("random", 2): return .random(count: try positive(parts[1], "the step count"), seed: defaultSeed)
        case ("random", 3):
            guard let seed = UInt64(parts[2]) else {
                throw UsageError("\(option): the seed must be a non-negative integer, got '\(parts[2])'")
            }
            return .random(count: try positive(parts[1], "the step count"), seed: seed)
        default:
            throw UsageError("\(option) must be all, stride:N or random:N[:SEED], got '\(text)'")
        }
    }

    public var description: String {
        switch self {
        case .all: return "all"
        case .stride(let n): return "stride:\(n)"
        case .random(let count, let seed): return "random:\(count):\(seed)"
        }
    }

    /// The measured steps among `0..<decodeSteps`, ascending and distinct.
    public func steps(of decodeSteps: Int) -> [Int] {
        guard decodeSteps > 0 else { return [] }
        switch self {
        case .all:
            return Array(0..<decodeSteps)
        case .stride(let n):
            var steps = Array(Swift.stride(from: 0, to: decodeSteps, by: n))
            if steps.last != decodeSteps - 1 { steps.append(decodeSteps - 1) }
            return steps
        case .random(let count, let seed):
            guard count < decodeSteps else { return Array(0..<decodeSteps) }
            // A partial Fisher–Yates shuffle: the first `count` entries are a uniform sample.
            var generator = SeededRandom(seed: seed)
            var pool = Array(0..<decodeSteps)
            for i in 0..<count {
                let j = i + generator.integer(below: decodeSteps - i)
                pool.swapAt(i, j)
            }
            return pool[..<count].sorted()
        }
    }

    /// True for a systematic (every n-th step) sample, whose variance the interval estimates as
    /// if it were random.
    public var isSystematic: Bool {
        if case .stride = self { return true }
        return false
    }
}

/// How a replay's fidelity metrics were sampled, for the report: `sampledSteps` of
/// `decodeSteps` steps (the same steps in every layer).
public struct MetricSampling: Codable, Equatable, Sendable {
    /// The selection as given, e.g. `stride:64` or `random:100:1`.
    public var selection: String
    public var sampledSteps: Int
    public var decodeSteps: Int
    /// Every n-th step rather than a random draw.
    public var systematic: Bool
    /// What the intervals are, in a few words.
    public var interval: String

    public init(selection: MetricStepSelection, sampledSteps: Int, decodeSteps: Int) {
        self.selection = selection.description
        self.sampledSteps = sampledSteps
        self.decodeSteps = decodeSteps
        systematic = selection.isSystematic
        interval =
            "95 % normal approximation over per-step means, finite-population corrected"
            + (systematic ? "; systematic sample, its variance estimated as for a random one" : "")
    }

    /// One line for the text report.
    public var summaryLine: String {
        "fidelity measured on \(sampledSteps) of \(decodeSteps) decode steps (\(selection), "
            + (systematic ? "systematic sample" : "random sample") + "); means ± 95 % confidence half-width"
    }
}

extension MetricSummary {
    /// The half-width of the 95 % confidence interval of the mean when whole decode steps were
    /// sampled: `samples` are `[layer][sampled step][head]` with `headsPerStep` samples per
    /// (layer, step) and `sampledSteps` steps per layer. Each step is one cluster (its samples,
    /// over layers and heads, are taken together); with equal clusters the mean of the samples
    /// is the mean of the step means, whose standard error is s/√n·√(1 − n/G). NaN with fewer
    /// than two steps; infinite when a sample is.
    static func stepSampleHalfWidth(
        _ samples: [Float], sampledSteps n: Int, headsPerStep: Int,
        decodeSteps G: Int
    ) -> Double {
        guard n >= 2, headsPerStep > 0, !samples.isEmpty, samples.count % (n * headsPerStep) == 0 else { return .nan }
        var stepSums = [Double](repeating: 0, count: n)
        for (i, x) in samples.enumerated() { stepSums[(i / headsPerStep) % n] += Double(x) }
        let perStep = Double(samples.count / n)
        let means = stepSums.map { $0 / perStep }
        guard means.allSatisfy(\.isFinite) else { return .infinity }
        let mean = means.reduce(0, +) / Double(n)
        let variance = means.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n - 1)
        let correction = Swift.max(0, 1 - Double(n) / Double(Swift.max(G, n)))
        return 1.959964 * (variance / Double(n) * correction).squareRoot()
    }
}
