import Foundation

/// The thought type of every decode step of a trace, decided once per replay and shared by
/// every layer (ThinKV classifies a step once, from several layers, and all layers follow).
public struct ThoughtTimeline: Sendable, Equatable {
    public enum Source: String, Sendable, CaseIterable {
        /// ThinKV's classifier: thresholds over the full-cache sparsity averaged over L*.
        case classifier
        /// The trace's `/tokens/thought` labels (an oracle, for ablations).
        case labels
    }

    /// Type of decode step t (position P + t), for every generated token.
    public let types: [ThoughtType]
    public let source: Source
    /// The thresholds used (classifier only).
    public let thresholds: ThoughtThresholds?

    public init(types: [ThoughtType], source: Source, thresholds: ThoughtThresholds? = nil) {
        self.types = types
        self.source = source
        self.thresholds = thresholds
    }

    /// Ground-truth labels of the decode positions. A decode position labelled −1 (unknown)
    /// continues the previous step's type (reasoning at the first step): the cache must put
    /// every token somewhere, and the surrounding thought is the best guess.
    public static func fromLabels(_ reader: TraceReader, policy: String) throws -> ThoughtTimeline {
        guard let labels = try reader.readThoughtLabels() else {
            throw PolicyError("\(policy): --thoughts labels needs /tokens/thought, which \(reader.path) does not record (use --thoughts classifier)")
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
    public static func fromClassifier(_ reader: TraceReader, thresholds: ThoughtThresholds, policy: String) throws -> ThoughtTimeline {
        guard thresholds.theta1 < thresholds.theta2, (0...1).contains(thresholds.theta1), (0...1).contains(thresholds.theta2) else {
            throw PolicyError("\(policy): thresholds need 0 ≤ θ1 < θ2 ≤ 1, got θ1 = \(thresholds.theta1), θ2 = \(thresholds.theta2)")
        }
        guard !thresholds.layers.isEmpty else { throw PolicyError("\(policy): the classifier needs at least one layer in L*") }
        guard thresholds.refreshInterval >= 1 else {
            throw PolicyError("\(policy): the refresh interval τ must be at least 1, got \(thresholds.refreshInterval)")
        }
        // The sparsity the replay computes uses the default ratio; other ratios cannot be honoured.
        guard abs(thresholds.sparsityRatio - Sparsity.defaultRatio) <= 1e-6 else {
            throw PolicyError("\(policy): thresholds calibrated with sparsity ratio \(thresholds.sparsityRatio); the replay measures sparsity at \(Sparsity.defaultRatio)")
        }
        let recorded = reader.recordedLayerIndices
        for layer in thresholds.layers where reader.layerInfo(layer) == nil {
            throw PolicyError("\(policy): the classifier averages the sparsity of layers \(thresholds.layers.map(String.init).joined(separator: ",")), but layer \(layer) is not recorded in \(reader.path) (recorded: \(recorded.map(String.init).joined(separator: ",")))")
        }
        // θ1 = 0 and θ2 = 1 (calibration's single-type fallback) classify every sparsity as
        // reasoning: no need for the attention pass that measures it.
        if thresholds.theta1 <= 0 && thresholds.theta2 >= 1 {
            return ThoughtTimeline(types: Array(repeating: .reasoning, count: reader.header.generatedLength), source: .classifier, thresholds: thresholds)
        }
        let averaged = try AveragedSparsityMemo.shared.averaged(reader, layers: thresholds.layers)
        let types = ThoughtClassifier.timeline(averagedSparsity: averaged, thresholds: thresholds)
        return ThoughtTimeline(types: types, source: .classifier, thresholds: thresholds)
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
    private var averaged: [Float] = []

    func averaged(_ reader: TraceReader, layers: [Int]) throws -> [Float] {
        lock.lock()
        defer { lock.unlock() }
        if self.reader === reader && self.layers == layers { return averaged }
        let profile = try SparsityProfile.compute(reader, layers: layers)
        self.reader = reader
        self.layers = layers
        averaged = profile.averaged(over: layers)
        return averaged
    }
}
