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

    public init(theta1: Float, theta2: Float, layers: [Int], refreshInterval: Int = 128, sparsityRatio: Float = Sparsity.defaultRatio) {
        self.theta1 = theta1
        self.theta2 = theta2
        self.layers = layers
        self.refreshInterval = refreshInterval
        self.sparsityRatio = sparsityRatio
    }

    enum CodingKeys: String, CodingKey {
        case theta1, theta2, layers
        case refreshInterval = "refresh_interval"
        case sparsityRatio = "sparsity_ratio"
    }

    /// The type of one sparsity value.
    public func classify(_ sparsity: Float) -> ThoughtType {
        if sparsity > theta2 { return .transition }
        if sparsity < theta1 { return .execution }
        return .reasoning
    }
}

public enum ThoughtClassifier {
    /// Types of every decode step from the step-wise sparsity averaged over L*: step t takes
    /// the type of step τ·⌊t/τ⌋ (the last refresh), so types change only at refresh steps.
    public static func timeline(averagedSparsity: [Float], thresholds: ThoughtThresholds) -> [ThoughtType] {
        let tau = max(1, thresholds.refreshInterval)
        var out: [ThoughtType] = []
        out.reserveCapacity(averagedSparsity.count)
        var current = ThoughtType.reasoning
        for (t, s) in averagedSparsity.enumerated() {
            if t % tau == 0 { current = thresholds.classify(s) }
            out.append(current)
        }
        return out
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
