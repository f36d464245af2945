import Foundation

/// Everything that decides a synthetic trace: its shape, the seed, and the parameters of the
/// generative model (docs/synthetic-traces.md explains each one). Same configuration, same
/// tensors, bit for bit.
public struct SyntheticTraceConfig: Sendable, Equatable {
    // Shape of the trace.
    public var tokens = 2048
    public var promptLength = 128
    public var layers = 4
    public var queryHeads = 8
    public var kvHeads = 2
    public var headDim = 64
    public var dtype: TraceDType = .float16
    public var seed: UInt64 = 1
    /// Write `/layers/<n>/v`.
    public var includeValues = true
    /// Also write `/layers/<n>/attn` (the exact rows; large: G × Hq × T per layer).
    public var includeAttention = false
    public var model = "synthetic-reasoner"
    public var vocabularySize = 32_000

    public var thoughts = ThoughtChainModel()
    public var sparsity = SparsityTargets()
    public var attention = AttentionStructure()

    /// Up to this many visible positions a step's sparsity is computed over all of them; beyond,
    /// it is estimated from `sparsitySampleSize` random positions plus every position that could
    /// hold the row's maximum (sinks, the recent window, revisited anchors, the most salient keys).
    public var exactSparsityPositions = 2048
    public var sparsitySampleSize = 1024
    /// Worker threads for building queries (nil: all cores). The output does not depend on it.
    public var threads: Int?

    public init() {}

    public var generatedLength: Int { tokens - promptLength }

    /// Checks the shape and the model parameters; the message names the offending setting.
    public func validate() throws {
        func fail(_ message: String) -> UsageError { UsageError(message) }
        guard tokens >= 2 else { throw fail("--tokens must be at least 2, got \(tokens)") }
        guard tokens <= Int(Int32.max) else { throw fail("--tokens must fit in int32") }
        guard promptLength >= 1, promptLength < tokens else {
            throw fail("--prompt must be between 1 and tokens - 1 (\(tokens - 1)), got \(promptLength)")
        }
        guard layers >= 1 else { throw fail("--layers must be at least 1, got \(layers)") }
        guard kvHeads >= 1 else { throw fail("--kv-heads must be at least 1, got \(kvHeads)") }
        guard queryHeads >= 1, queryHeads % kvHeads == 0 else {
            throw fail("--q-heads (\(queryHeads)) must be a positive multiple of --kv-heads (\(kvHeads))")
        }
        guard headDim >= 8 else { throw fail("--head-dim must be at least 8, got \(headDim)") }
        guard vocabularySize >= 8 else { throw fail("vocabulary size must be at least 8") }
        guard exactSparsityPositions >= 1, sparsitySampleSize >= 64 else {
            throw fail("sparsity estimation needs at least 64 sampled positions")
        }
        if let threads, threads < 1 { throw fail("--threads must be at least 1, got \(threads)") }
        try thoughts.validate()
        try sparsity.validate()
        try attention.validate()
    }
}

/// The Markov chain that lays out the chain of thought after the prompt: the type of each
/// segment depends on the previous segment's type, and its length is drawn from the type's
/// length distribution.
public struct ThoughtChainModel: Sendable, Equatable {
    /// Probabilities of the first generated segment's type, in R, E, T order.
    public var initial: [Double] = [0.8, 0.2, 0.0]
    /// `transitions[from][to]` in R, E, T order (rows are normalised). The diagonal is 0 by
    /// default, so consecutive segments always differ in type.
    public var transitions: [[Double]] = [
        [0.00, 0.55, 0.45],  // after reasoning: execute a step, or change course
        [0.45, 0.00, 0.55],  // after execution: reason about the result, or check / change course
        [0.75, 0.25, 0.00]  // after a transition: mostly back to reasoning
    ]
    /// Segment length of each type, R, E, T order: `minimum` plus a geometric excess.
    public var lengths: [SegmentLength] = [
        SegmentLength(minimum: 48, mean: 200),
        SegmentLength(minimum: 32, mean: 150),
        SegmentLength(minimum: 12, mean: 36)
    ]
    /// Multiplies every minimum and mean length (`--segment-scale`): long segments suit a
    /// classifier that refreshes its decision only every τ steps.
    public var lengthScale: Double = 1

    public init() {}

    func validate() throws {
        func fail(_ message: String) -> UsageError { UsageError("thought chain: " + message) }
        guard initial.count == 3, transitions.count == 3, transitions.allSatisfy({ $0.count == 3 }), lengths.count == 3
        else {
            throw fail("initial, transitions and lengths need one entry per thought type (R, E, T)")
        }
        for row in [initial] + transitions {
            guard row.allSatisfy({ $0 >= 0 && $0.isFinite }), row.reduce(0, +) > 0 else {
                throw fail("probabilities must be non-negative with a positive sum, got \(row)")
            }
        }
        guard lengthScale > 0, lengthScale.isFinite else {
            throw fail("--segment-scale must be positive, got \(lengthScale)")
        }
        for l in lengths where l.minimum < 1 || l.mean < Double(l.minimum) {
            throw fail("a segment length needs minimum ≥ 1 and mean ≥ minimum, got \(l)")
        }
    }
}

/// Length distribution of one thought type: `minimum + Geometric`, with the given mean.
public struct SegmentLength: Sendable, Equatable, CustomStringConvertible {
    public var minimum: Int
    public var mean: Double

    public init(minimum: Int, mean: Double) {
        self.minimum = minimum
        self.mean = mean
    }

    public var description: String { "minimum \(minimum), mean \(mean)" }
}

/// The per-step attention sparsity each thought type aims at, and how it varies by layer.
/// A step's target is its layer's mean for the type, plus a per-segment offset, plus noise
/// that persists from step to step within a segment; the query's temperature is then solved so
/// that the step's head-averaged attention has exactly that sparsity.
public struct SparsityTargets: Sendable, Equatable {
    /// Mean sparsity of reasoning, execution and transition steps in a separated layer (R, E, T
    /// order). ThinKV's ordering: execution lowest, reasoning in the middle, transition highest.
    public var means: [Float] = [0.68, 0.42, 0.92]
    /// Target of prompt positions (their queries matter to policies that score the prefill).
    public var prompt: Float = 0.6
    /// Standard deviation of the step-to-step noise, and its lag-1 correlation within a segment.
    public var stepSpread: Float = 0.03
    public var persistence: Float = 0.7
    /// Standard deviation of a segment's offset from its type's mean.
    public var segmentSpread: Float = 0.02
    /// How each step's target rises with its position (context length), as in recorded traces.
    public var growth = SparsityGrowth()
    /// Layers whose three types are pulled towards their common centre, so that a classifier
    /// has to choose its layers (ignored in a one-layer trace).
    public var blendedLayers: [Int] = [0]
    /// In a blended layer the types keep this fraction of their distance from the centre...
    public var blendedSeparation: Float = 0.15
    /// ... and steps vary more.
    public var blendedStepSpread: Float = 0.05
    /// Other layers keep a fraction drawn uniformly in [minimumSeparation, 1], and shift all
    /// three types by an offset drawn uniformly in ±layerOffset.
    public var minimumSeparation: Float = 0.85
    public var layerOffset: Float = 0.03

    public init() {}

    func validate() throws {
        func fail(_ message: String) -> UsageError { UsageError("sparsity targets: " + message) }
        guard means.count == 3, (means + [prompt]).allSatisfy({ $0 > 0 && $0 < 1 }) else {
            throw fail("means (R, E, T) and the prompt target must lie in (0, 1)")
        }
        guard stepSpread >= 0, segmentSpread >= 0, blendedStepSpread >= 0, persistence >= 0, persistence < 1 else {
            throw fail("spreads must be non-negative and persistence in [0, 1)")
        }
        guard (0...1).contains(blendedSeparation), (0...1).contains(minimumSeparation), layerOffset >= 0 else {
            throw fail("separations must lie in [0, 1] and the layer offset be non-negative")
        }
        try growth.validate()
    }
}

/// Sparsity that climbs with context length. In a recorded trace the share of visible positions
/// below 1 % of a row's maximum rises as the context grows (traces/smollm2-135m-math.h5, layer
/// 29: 0.83 around position 280, 0.96 around 1180). Per layer of that trace, the curve
/// s(p) = σ(α + γ·ln(p + 1)) was fitted by tools/fit_sparsity_growth.py; the generator keeps each
/// thought type's own level and borrows the slope γ: a step's target is σ(logit(level) +
/// strength·γ·ln((p + 1)/(reference + 1))), so the types' odds of sparsity all grow as (p + 1)^γ,
/// their order at any position is unchanged, and the type means hold at `referencePosition`.
public struct SparsityGrowth: Sendable, Equatable {
    /// Multiplies the fitted slopes (`--sparsity-growth`): 1 as fitted, 0 fixed per-type
    /// sparsity whatever the position (the generator before growth existed, bit for bit).
    public var strength: Double = 1
    /// Position at which each type's target equals its mean (`--sparsity-reference`); 512 is
    /// the geometric middle of the default trace's generated positions, 128 … 2047.
    public var referencePosition = 512
    /// Fitted curves, by layer of the recorded trace. A synthetic layer l of L takes the curve
    /// of the recorded layer nearest to the same relative depth, l/(L−1)·(recordedLayers−1).
    public var curves: [SparsityCurve] = SparsityGrowth.fittedCurves
    /// Layers in the model the curves come from (SmolLM2-135M: 30).
    public var recordedLayers = 30

    /// tools/fit_sparsity_growth.py on `thinkv-sim replay traces/smollm2-135m-math.h5 --policy
    /// full --csv` (1005 decode steps, positions 227 … 1231). RMSE over steps 0.197, 0.024,
    /// 0.030, 0.045; over ten position bins 0.042, 0.009, 0.017, 0.016 (docs/synthetic-traces.md).
    public static let fittedCurves = [
        SparsityCurve(layer: 0, alpha: -18.563, gamma: 2.552),
        SparsityCurve(layer: 10, alpha: -3.051, gamma: 0.902),
        SparsityCurve(layer: 20, alpha: 0.732, gamma: 0.345),
        SparsityCurve(layer: 29, alpha: -4.537, gamma: 1.094)
    ]

    public init() {}

    public var isEnabled: Bool { strength != 0 }

    /// The fitted curve a synthetic layer follows.
    public func curve(forLayer layer: Int, of layers: Int) -> SparsityCurve {
        let depth =
            layers > 1 ? Double(layer) / Double(layers - 1) * Double(recordedLayers - 1) : Double(recordedLayers - 1)
        // Nearest by depth; ties go to the shallower layer.
        return curves.min { a, b in
            let da = abs(Double(a.layer) - depth), db = abs(Double(b.layer) - depth)
            return da < db || (da == db && a.layer < b.layer)
        }!
    }

    /// Logit shift of the target at position p in that layer.
    public func logitShift(position p: Int, layer: Int, of layers: Int) -> Double {
        guard isEnabled else { return 0 }
        let gamma = curve(forLayer: layer, of: layers).gamma
        return strength * gamma * (PortableMath.log(Double(p + 1)) - PortableMath.log(Double(referencePosition + 1)))
    }

    func validate() throws {
        func fail(_ message: String) -> UsageError { UsageError("sparsity growth: " + message) }
        guard strength.isFinite, strength >= 0 else {
            throw fail("--sparsity-growth must be a non-negative number, got \(strength)")
        }
        guard referencePosition >= 0 else {
            throw fail("--sparsity-reference must be non-negative, got \(referencePosition)")
        }
        guard !curves.isEmpty, curves.allSatisfy({ $0.gamma.isFinite && $0.layer >= 0 }), recordedLayers >= 1 else {
            throw fail("needs at least one curve with a finite slope")
        }
    }
}

/// s(p) = σ(alpha + gamma·ln(p + 1)), fitted to one layer of a recorded trace.
public struct SparsityCurve: Sendable, Equatable {
    public var layer: Int
    public var alpha: Double
    public var gamma: Double

    public init(layer: Int, alpha: Double, gamma: Double) {
        self.layer = layer
        self.alpha = alpha
        self.gamma = gamma
    }

    public func sparsity(at p: Int) -> Double {
        1 / (1 + PortableMath.exp(-(alpha + gamma * PortableMath.log(Double(p + 1)))))
    }
}

/// How keys are built and what each kind of query looks for (docs/synthetic-traces.md).
public struct AttentionStructure: Sendable, Equatable {
    /// The first positions are attention sinks: keys dominated by one shared direction that
    /// every query includes.
    public var sinkCount = 4
    /// Correlation length, in tokens, of the slowly drifting key component that the current
    /// query shares: attention decays with distance over roughly this many positions.
    public var recencyLength: Float = 32
    /// Lag-1 correlation of key content inside execution segments (near-duplicate keys).
    public var duplicateCorrelation: Float = 0.92
    /// Share of tokens whose keys carry extra salience (attended by every query: heavy hitters),
    /// and the extra salience in standard deviations.
    public var heavyHitterRate = 0.02
    public var heavyHitterBoost: Float = 2
    /// How much later thoughts come back to old tokens of each type: revisits and heavy hitters
    /// (`--importance`, `--legacy-anchors`).
    public var importance = TokenImportance()
    /// Legacy anchors only (`TokenImportance.legacyAnchors`): the first token of every transition
    /// and reasoning segment, one inner token of each reasoning segment, and this many prompt
    /// tokens carry a key direction of their own that later queries can look up.
    public var promptAnchors = 4
    /// Revisited anchors are at least this many positions older than the revisiting segment.
    public var revisitMinimumAge = 128
    /// Anchors each transition segment looks back at, and the chance that a reasoning segment
    /// looks back at one.
    public var transitionRevisits = 2
    public var reasoningRevisitProbability = 0.5
    public var keys = KeyWeights()
    /// Query composition for reasoning, execution and transition steps (R, E, T order).
    public var queries: [QueryWeights] = [
        QueryWeights(sink: 1.0, topic: 0.8, recency: 0.8, salience: 1.0, revisit: 1.6),
        QueryWeights(sink: 1.0, topic: 1.0, recency: 1.4, salience: 1.0, revisit: 0),
        QueryWeights(sink: 1.5, topic: 0.2, recency: 0.4, salience: 0.8, revisit: 2.4)
    ]
    public var promptQueries = QueryWeights(sink: 1.0, topic: 0.8, recency: 1.0, salience: 1.0, revisit: 0)
    /// Length of each query head's fixed private direction, and of the fresh per-step noise:
    /// heads of a group share the targets but not the details.
    public var headNoise: Float = 0.4
    public var stepNoise: Float = 0.25

    public init() {}

    func validate() throws {
        func fail(_ message: String) -> UsageError { UsageError("attention structure: " + message) }
        guard sinkCount >= 0, promptAnchors >= 0, revisitMinimumAge >= 0, transitionRevisits >= 0 else {
            throw fail("counts must be non-negative")
        }
        guard recencyLength > 0, (0..<1).contains(duplicateCorrelation), (0...1).contains(heavyHitterRate),
            (0...1).contains(reasoningRevisitProbability)
        else {
            throw fail("recency length must be positive, correlations and probabilities in [0, 1)")
        }
        guard queries.count == 3 else { throw fail("queries needs one entry per thought type (R, E, T)") }
        try importance.validate()
    }
}

/// The importance of a thought type's tokens: how much attention later thoughts give to old
/// tokens of that type. ThinKV's premise is that reasoning tokens matter most and transition
/// tokens least (it evicts and quantizes transitions first), so by default an old transition
/// token draws clearly less attention than an old reasoning token.
///
/// Importance acts in three places. (1) Revisits: a revisiting segment picks the old tokens it
/// looks back at (anchors, each given a key direction of its own) from every token at least
/// `revisitMinimumAge` older, with probability proportional to the importance of the token's
/// type (the prompt's tokens, sinks excepted, weigh `prompt`). (2) Heavy hitters: a token is one
/// with probability `heavyHitterRate × importance` (capped at 1). (3) Salience: a token's
/// salience scalar (which every query looks for) is shifted by `salienceShift × (importance − 1)`
/// standard deviations, so every later query, not only revisiting ones, favours important types.
///
/// `legacyAnchors` restores the generator from before importance was a parameter: anchors are
/// the first token of every transition and reasoning segment, one inner token of each reasoning
/// segment and `promptAnchors` prompt tokens, revisits pick among them uniformly, heavy hitters
/// are uniform. A transition's first token is then an anchor in a short segment, so per token old
/// transition tokens draw more attention than reasoning ones. With `legacyAnchors` and a growth
/// strength of 0 the generator writes the same tensors as before, bit for bit.
public struct TokenImportance: Sendable, Equatable {
    /// Reasoning, execution, transition.
    public var byType: [Double] = [1, 0.6, 0.15]
    /// Prompt tokens (the question, re-read later).
    public var prompt: Double = 1
    /// Salience shift per unit of importance, in standard deviations of the salience scalar.
    public var salienceShift: Double = 1
    public var legacyAnchors = false

    /// Salience shift of a position's token (0 with legacy anchors).
    public func salienceOffset(label: Int8) -> Float {
        legacyAnchors ? 0 : Float(salienceShift * (weight(label: label) - 1))
    }

    public init() {}

    public init(byType: [Double], prompt: Double = 1, legacyAnchors: Bool = false) {
        self.byType = byType
        self.prompt = prompt
        self.legacyAnchors = legacyAnchors
    }

    /// Reads `--importance`: comma-separated `KEY=WEIGHT` with KEY one of R, E, T (thought types)
    /// or P (prompt), e.g. `R=1,E=0.6,T=0.15`; keys not given keep their current weight.
    public mutating func parse(_ text: String) throws {
        let keys = ["R": 0, "E": 1, "T": 2, "P": 3]
        var seen = Set<Int>()
        let items = try CommaList.items(text, of: "--importance", error: UsageError.init)
        for item in items {
            let parts = item.split(separator: "=", omittingEmptySubsequences: false)
            guard parts.count == 2, let key = keys[parts[0].trimmingCharacters(in: .whitespaces).uppercased()],
                let weight = Double(parts[1].trimmingCharacters(in: .whitespaces)), weight >= 0, weight.isFinite
            else {
                throw UsageError(
                    "--importance expects KEY=WEIGHT items (KEY R, E, T or P; WEIGHT ≥ 0) separated by commas, got "
                        + "'\(item)'"
                )
            }
            guard seen.insert(key).inserted else { throw UsageError("--importance gives \(parts[0]) twice") }
            if key == 3 { prompt = weight } else { byType[key] = weight }
        }
    }

    /// The importance of a position's token from its label (-1: prompt).
    public func weight(label: Int8) -> Double { label < 0 ? prompt : byType[Int(label)] }

    func validate() throws {
        func fail(_ message: String) -> UsageError { UsageError("token importance: " + message) }
        guard byType.count == 3 else { throw fail("needs one weight per thought type (R, E, T)") }
        guard (byType + [prompt]).allSatisfy({ $0 >= 0 && $0.isFinite }), byType.reduce(0, +) > 0,
            salienceShift.isFinite
        else {
            throw fail("weights must be non-negative and finite, with a positive sum over R, E, T")
        }
    }
}

/// Weights of the unit-length directions a key is made of.
public struct KeyWeights: Sendable, Equatable {
    public var sink: Float = 2.0
    public var topic: Float = 0.5
    public var drift: Float = 0.6
    public var salience: Float = 0.5
    public var anchor: Float = 2.0
    public var content: Float = 0.7

    public init() {}
}

/// Weights of the directions a query is made of, before its temperature is solved.
public struct QueryWeights: Sendable, Equatable {
    /// Towards the sink direction (the first positions).
    public var sink: Float
    /// Towards the current segment's topic (tokens of the same thought).
    public var topic: Float
    /// Towards the current drift vector (the most recent tokens).
    public var recency: Float
    /// Towards the shared salience direction (heavy hitters everywhere).
    public var salience: Float
    /// Towards the anchors the segment revisits (old tokens regaining attention).
    public var revisit: Float

    public init(sink: Float, topic: Float, recency: Float, salience: Float, revisit: Float) {
        self.sink = sink
        self.topic = topic
        self.recency = recency
        self.salience = salience
        self.revisit = revisit
    }
}
