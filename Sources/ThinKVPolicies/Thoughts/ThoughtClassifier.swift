import Foundation

/// ThinKV's thought decomposition: a decode step's type follows from its attention sparsity
/// averaged over a calibrated set of layers L*. Transition thoughts are the sparsest,
/// execution the least sparse: sparsity > θ2 → T, θ1 ≤ sparsity ≤ θ2 → R, sparsity < θ1 → E.
public struct ThoughtThresholds: Codable, Equatable, Sendable {
    /// θ1 < θ2, on the sparsity scale [0, 1].
    public var theta1: Float
    public var theta2: Float
    /// L*: the layers whose sparsity is averaged (recorded layer indices).
    public var layers: [Int]
    /// τ: the type is re-evaluated every `refreshInterval` decode steps and held in between
    /// (1 = every step).
    public var refreshInterval: Int
    /// A position counts as "sparse" below this fraction of the row maximum (ThinKV: 1 %).
    public var sparsityRatio: Float
    /// How a GQA group's query heads make one row (`sparsity_gqa`; files without the key were
    /// calibrated before the choice existed, on `mean-heads`).
    public var gqa: GQASparsity
    /// Whose attention the calibration read: "full" (the full cache) or "cache@B" (ThinKV's own
    /// cache at budget B; `CacheDomainCalibration`); nil in files that predate the choice.
    public var domain: String? = nil

    /// τ when nothing sets it: ThinKV's 128 steps.
    public static let defaultRefreshInterval = 128

    public init(
        theta1: Float, theta2: Float, layers: [Int], refreshInterval: Int = defaultRefreshInterval,
        sparsityRatio: Float = Sparsity.defaultRatio, gqa: GQASparsity = .maxPool
    ) {
        self.theta1 = theta1
        self.theta2 = theta2
        self.layers = layers
        self.refreshInterval = refreshInterval
        self.sparsityRatio = sparsityRatio
        self.gqa = gqa
    }

    enum CodingKeys: String, CodingKey {
        case theta1, theta2, layers
        case refreshInterval = "refresh_interval"
        case sparsityRatio = "sparsity_ratio"
        case gqa = "sparsity_gqa"
        case domain = "sparsity_domain"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        theta1 = try c.decode(Float.self, forKey: .theta1)
        theta2 = try c.decode(Float.self, forKey: .theta2)
        layers = try c.decode([Int].self, forKey: .layers)
        refreshInterval = try c.decode(Int.self, forKey: .refreshInterval)
        sparsityRatio = try c.decode(Float.self, forKey: .sparsityRatio)
        gqa = try c.decodeIfPresent(GQASparsity.self, forKey: .gqa) ?? .meanHeads
        domain = try c.decodeIfPresent(String.self, forKey: .domain)
    }

    /// θ1 = 0 and θ2 = 1, calibration's single-type fallback: every sparsity is reasoning.
    public var isSingleType: Bool { theta1 <= 0 && theta2 >= 1 }

    /// The type of one sparsity value.
    public func classify(_ sparsity: Float) -> ThoughtType {
        if sparsity > theta2 { return .transition }
        if sparsity < theta1 { return .execution }
        return .reasoning
    }
}

public enum ThoughtClassifier {
    /// Types of every decode step from the step-wise sparsity averaged over L*: step t takes
    /// the type decided at step τ·⌊t/τ⌋ (the last refresh), so types change only at refresh
    /// steps. At a refresh step r the type is that of the mean sparsity of steps
    /// max(0, r − window + 1)...r (window 1: step r alone); with `lag` k, of the window ending at
    /// r − k instead (before step 0 nothing is known, and the type stays reasoning).
    public static func timeline(
        averagedSparsity: [Float], thresholds: ThoughtThresholds, window: Int = 1,
        lag: Int = 0
    ) -> [ThoughtType] {
        var out: [ThoughtType] = []
        out.reserveCapacity(averagedSparsity.count)
        var current = ThoughtType.reasoning
        for t in averagedSparsity.indices {
            if let decided = refresh(at: t, history: averagedSparsity, thresholds: thresholds, window: window, lag: lag)
            {
                current = decided
            }
            out.append(current)
        }
        return out
    }

    /// The type a refresh at step `t` decides, nil when `t` is not a refresh step or (with `lag`)
    /// no step has been measured yet. `history[u]` must be known for the window ending at t − lag.
    static func refresh(at t: Int, history: [Float], thresholds: ThoughtThresholds, window: Int, lag: Int)
        -> ThoughtType?
    {
        guard t % max(1, thresholds.refreshInterval) == 0, t - lag >= 0 else { return nil }
        return thresholds.classify(windowMean(history, endingAt: t - lag, window: window))
    }

    /// Whether step `t`'s sparsity enters some refresh's window (a refresh r reads the steps
    /// r − lag − window + 1 ... r − lag).
    static func isRead(step t: Int, refreshInterval: Int, window: Int, lag: Int) -> Bool {
        let tau = max(1, refreshInterval)
        return (tau - (t + lag) % tau) % tau < max(1, window)
    }

    /// Mean of values[max(0, t − window + 1)...t], summed in order.
    static func windowMean(_ values: [Float], endingAt t: Int, window: Int) -> Float {
        let first = max(0, t - max(1, window) + 1)
        var sum: Float = 0
        for u in first...t { sum += values[u] }
        return sum / Float(t - first + 1)
    }

    /// Token-level agreement with reference labels (decode positions with label ≥ 0 only) and
    /// the confusion matrix `[reference][predicted]` in R, E, T order.
    public static func accuracy(predicted: [ThoughtType], reference: [Int8]) -> (accuracy: Double, confusion: [[Int]]) {
        var confusion = Array(repeating: [0, 0, 0], count: 3)
        var hits = 0, total = 0
        for (p, r) in zip(predicted, reference) where r >= 0 && r <= 2 {
            confusion[Int(r)][Int(p.rawValue)] += 1
            total += 1
            if Int(p.rawValue) == Int(r) { hits += 1 }
        }
        return (total > 0 ? Double(hits) / Double(total) : .nan, confusion)
    }
}
