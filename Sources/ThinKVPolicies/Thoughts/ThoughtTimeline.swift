import Foundation

/// The thought type of every decode step of a trace, decided once per replay and shared by
/// every layer (ThinKV classifies a step once, from several layers, and all layers follow).
public struct ThoughtTimeline: Sendable, Equatable, ReplayNotes {
    public enum Source: String, Sendable, CaseIterable {
        /// ThinKV's classifier: thresholds over the sparsity averaged over L*.
        case classifier
        /// The trace's `/tokens/thought` labels at every step (an oracle, for ablations).
        case labels
        /// The labels read only at refresh steps (majority over the sparsity window) and held
        /// for τ steps like the classifier's types: label quality apart from refresh granularity.
        case heldLabels = "held-labels"
    }

    /// Whose attention the classifier reads.
    public enum SparsitySource: String, Sendable, CaseIterable {
        /// The attention over the policy's own compressed, quantized cache (what a deployed
        /// system computes).
        case cache
        /// The full cache's attention (an oracle ablation: no deployed policy sees it).
        case full
    }

    /// Type of decode step t (position P + t), for every generated token.
    public let types: [ThoughtType]
    public let source: Source
    /// The thresholds used (classifier only).
    public let thresholds: ThoughtThresholds?
    /// What a report should say about how the types were obtained (self-calibration, fallback).
    public var notes: [String] = []

    public init(types: [ThoughtType], source: Source, thresholds: ThoughtThresholds? = nil, notes: [String] = []) {
        self.types = types
        self.source = source
        self.thresholds = thresholds
        self.notes = notes
    }

    public var replayNotes: [String] { notes }

    /// Labels read every τ steps and held: the type at a refresh step is the most frequent
    /// label of the last `window` steps (ties: R, E, T in that order).
    public static func fromHeldLabels(_ reader: TraceReader, refreshInterval tau: Int, window: Int, policy: String)
        throws -> ThoughtTimeline
    {
        let labels = try fromLabels(reader, policy: policy).types
        var types: [ThoughtType] = []
        types.reserveCapacity(labels.count)
        var current = ThoughtType.reasoning
        for t in labels.indices {
            if t % tau == 0 {
                var votes = [0, 0, 0]
                for u in max(0, t - window + 1)...t { votes[Int(labels[u].rawValue)] += 1 }
                let best = votes.max()!
                current = ThoughtType(rawValue: Int8(votes.firstIndex(of: best)!))!
            }
            types.append(current)
        }
        return ThoughtTimeline(types: types, source: .heldLabels)
    }

    /// Ground-truth labels of the decode positions. A decode position labelled −1 (unknown)
    /// continues the previous step's type (reasoning at the first step): the cache must put
    /// every token somewhere, and the surrounding thought is the best guess.
    public static func fromLabels(_ reader: TraceReader, policy: String) throws -> ThoughtTimeline {
        guard let labels = try reader.readThoughtLabels() else {
            throw PolicyError(
                "\(policy): --thoughts labels needs /tokens/thought, which \(reader.path) does not record (use "
                    + "--thoughts classifier)"
            )
        }
        let P = reader.header.promptLength
        var types: [ThoughtType] = []
        types.reserveCapacity(labels.count - P)
        var previous = ThoughtType.reasoning
        for label in labels[P...] {
            if let type = ThoughtType(rawValue: label) { previous = type }
            types.append(previous)
        }
        return ThoughtTimeline(types: types, source: .labels)
    }

    /// ThinKV's classifier: the full-cache attention sparsity of every decode step in each
    /// layer of L*, averaged over L*, thresholded by θ1/θ2 and held for τ steps
    /// (`ThoughtClassifier.timeline`). The sparsity is that of the uncompressed cache, as
    /// everything in a teacher-forced replay; an online system reads the attention it computes.
    public static func fromClassifier(
        _ reader: TraceReader, thresholds: ThoughtThresholds, window: Int = 1, lag: Int = 0,
        policy: String
    ) throws -> ThoughtTimeline {
        try checkClassifier(reader, thresholds: thresholds, policy: policy)
        if thresholds.isSingleType {
            return ThoughtTimeline(
                types: Array(repeating: .reasoning, count: reader.header.generatedLength), source: .classifier,
                thresholds: thresholds)
        }
        let averaged = try AveragedSparsityMemo.shared.averaged(reader, layers: thresholds.layers, gqa: thresholds.gqa)
        let types = ThoughtClassifier.timeline(
            averagedSparsity: averaged, thresholds: thresholds, window: window, lag: lag)
        return ThoughtTimeline(types: types, source: .classifier, thresholds: thresholds)
    }

    /// The checks every classifier source makes on its thresholds and the trace.
    static func checkClassifier(_ reader: TraceReader, thresholds: ThoughtThresholds, policy: String) throws {
        guard thresholds.theta1 < thresholds.theta2, (0...1).contains(thresholds.theta1),
            (0...1).contains(thresholds.theta2)
        else {
            throw PolicyError(
                "\(policy): thresholds need 0 ≤ θ1 < θ2 ≤ 1, got θ1 = \(thresholds.theta1), θ2 = \(thresholds.theta2)")
        }
        guard !thresholds.layers.isEmpty else {
            throw PolicyError("\(policy): the classifier needs at least one layer in L*")
        }
        guard thresholds.refreshInterval >= 1 else {
            throw PolicyError("\(policy): the refresh interval τ must be at least 1, got \(thresholds.refreshInterval)")
        }
        // The sparsity the replay computes uses the default ratio; other ratios cannot be honoured.
        guard abs(thresholds.sparsityRatio - Sparsity.defaultRatio) <= 1e-6 else {
            throw PolicyError(
                "\(policy): thresholds calibrated with sparsity ratio \(thresholds.sparsityRatio); the replay "
                    + "measures sparsity at \(Sparsity.defaultRatio)"
            )
        }
        let recorded = reader.recordedLayerIndices
        for layer in thresholds.layers where reader.layerInfo(layer) == nil {
            throw PolicyError(
                "\(policy): the classifier averages the sparsity of layers "
                    + "\(thresholds.layers.map(String.init).joined(separator: ",")), but layer \(layer) is not "
                    + "recorded in \(reader.path) (recorded: \(recorded.map(String.init).joined(separator: ",")))"
            )
        }
    }
}

/// Thought types known so far: all of them before a replay (a `ThoughtTimeline`), or one step
/// ahead of the policies while the cache-sparsity classifier steps its own layers.
public final class ThoughtTypeLog: @unchecked Sendable {
    public internal(set) var types: [ThoughtType]
    /// τ of the classifier that decided the types (nil: labels, no refresh interval).
    public let refreshInterval: Int?

    public init(types: [ThoughtType] = [], refreshInterval: Int? = nil) {
        self.types = types
        self.refreshInterval = refreshInterval
    }
}

/// The last averaged sparsity profile computed, so that several ThinKV configurations in one
/// replay (e.g. `thinkv,thinkv-tbe` or a budget sweep) pay for the attention pass once. Keyed
/// by the reader object (held weakly) and L*.
private final class AveragedSparsityMemo: @unchecked Sendable {
    static let shared = AveragedSparsityMemo()
    private let lock = NSLock()
    private weak var reader: TraceReader?
    private var layers: [Int] = []
    private var gqa = GQASparsity.maxPool
    private var averaged: [Float] = []

    func averaged(_ reader: TraceReader, layers: [Int], gqa: GQASparsity) throws -> [Float] {
        lock.lock()
        defer { lock.unlock() }
        if self.reader === reader && self.layers == layers && self.gqa == gqa { return averaged }
        let profile = try SparsityProfile.compute(reader, layers: layers, gqa: gqa)
        self.reader = reader
        self.layers = layers
        self.gqa = gqa
        averaged = profile.averaged(over: layers)
        return averaged
    }
}
