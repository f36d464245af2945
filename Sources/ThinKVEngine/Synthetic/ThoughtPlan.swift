import Foundation

/// A run of consecutive positions of one kind: the prompt (`type == nil`) or one thought.
public struct PlannedSegment: Equatable, Sendable {
    public var type: ThoughtType?
    public var start: Int
    public var length: Int
    /// Anchors (indices into `ThoughtPlan.anchors`) that this segment's queries look back at.
    public var revisits: [Int] = []

    public var end: Int { start + length }
    public var range: Range<Int> { start..<end }
}

/// The token-level structure shared by every layer of a synthetic trace: segments, labels,
/// anchor tokens and which segment revisits which anchors, plus token ids. Layers differ only in
/// how this structure is realised as vectors.
public struct ThoughtPlan: Sendable {
    /// The prompt segment first, then the thought segments, covering 0..<T in order.
    public let segments: [PlannedSegment]
    /// Positions of anchor tokens, ascending.
    public let anchors: [Int]
    /// Ground truth for `/tokens/thought`: -1 on the prompt, the segment's type after it.
    public let labels: [Int8]
    public let tokenIDs: [Int32]
    /// Segment index of each position.
    public let segmentOfPosition: [Int32]
    /// Anchor index of each position, -1 for ordinary tokens.
    public let anchorOfPosition: [Int32]
    /// Heavy-hitter tokens (extra salience in every layer).
    public let isHeavyHitter: [Bool]

    public init(config: SyntheticTraceConfig) {
        let T = config.tokens, P = config.promptLength
        let chain = config.thoughts
        let structure = config.attention
        var rng = SeededRandom(seed: config.seed, stream: [StreamTag.plan.rawValue])

        // Segments: the prompt, then a Markov chain over thought types.
        var segments = [PlannedSegment(type: nil, start: 0, length: P)]
        var position = P
        var type = ThoughtType(rawValue: Int8(rng.categorical(chain.initial)))!
        while position < T {
            let spec = chain.lengths[Int(type.rawValue)]
            let minimum = max(1, Int((Double(spec.minimum) * chain.lengthScale).rounded()))
            let excess = max(0, spec.mean - Double(spec.minimum)) * chain.lengthScale
            let length = min(T - position, minimum + rng.geometric(mean: excess))
            segments.append(PlannedSegment(type: type, start: position, length: length))
            position += length
            type = ThoughtType(rawValue: Int8(rng.categorical(chain.transitions[Int(type.rawValue)])))!
        }

        var labels = [Int8](repeating: -1, count: T)
        var segmentOfPosition = [Int32](repeating: 0, count: T)
        for (s, segment) in segments.enumerated() {
            for p in segment.range {
                labels[p] = segment.type?.rawValue ?? -1
                segmentOfPosition[p] = Int32(s)
            }
        }

        let anchors: [Int]
        if structure.importance.legacyAnchors {
            anchors = ThoughtPlan.placeLegacyAnchors(&segments, prompt: P, structure: structure, rng: &rng)
        } else {
            anchors = ThoughtPlan.chooseRevisitedTokens(&segments, labels: labels, structure: structure, rng: &rng)
        }
        var anchorOfPosition = [Int32](repeating: -1, count: T)
        for (i, p) in anchors.enumerated() { anchorOfPosition[p] = Int32(i) }

        // Token ids carry no meaning; position 0 is a BOS-like id.
        var ids = [Int32](repeating: 0, count: T)
        var heavy = [Bool](repeating: false, count: T)
        for p in 0..<T {
            ids[p] = p == 0 ? 1 : Int32(3 + rng.integer(below: config.vocabularySize - 3))
            // Legacy: uniform. Otherwise the rate scales with the importance of the token's type
            // (the draw is the same either way, so the legacy stream is unchanged).
            let rate =
                structure.importance.legacyAnchors
                ? structure.heavyHitterRate
                : min(1, structure.heavyHitterRate * structure.importance.weight(label: labels[p]))
            heavy[p] = p >= structure.sinkCount && rng.chance(rate)
        }

        self.segments = segments
        self.anchors = anchors
        self.labels = labels
        self.tokenIDs = ids
        self.segmentOfPosition = segmentOfPosition
        self.anchorOfPosition = anchorOfPosition
        self.isHeavyHitter = heavy
    }

    /// The generator before token importance was a parameter: a few prompt tokens (the question
    /// re-read later), the first token of every transition and reasoning segment and one inner
    /// token of each reasoning segment are anchors; transitions look back at a few of them,
    /// reasoning sometimes at one, chosen uniformly. Draws exactly the numbers it always drew.
    private static func placeLegacyAnchors(
        _ segments: inout [PlannedSegment], prompt P: Int,
        structure: AttentionStructure, rng: inout SeededRandom
    ) -> [Int] {
        var anchorSet = Set<Int>()
        var pool = Array(min(structure.sinkCount, P)..<P)
        for _ in 0..<min(structure.promptAnchors, pool.count) {
            anchorSet.insert(pool.remove(at: rng.integer(below: pool.count)))
        }
        for segment in segments.dropFirst() {
            switch segment.type {
            case .transition?:
                anchorSet.insert(segment.start)
            case .reasoning?:
                anchorSet.insert(segment.start)
                if segment.length >= 8 { anchorSet.insert(segment.start + 1 + rng.integer(below: segment.length - 1)) }
            default:
                break
            }
        }
        let anchors = anchorSet.sorted()
        for s in segments.indices.dropFirst() {
            let segment = segments[s]
            let wanted = revisitCount(segment, structure, &rng)
            var eligible = anchors.indices.filter { anchors[$0] <= segment.start - structure.revisitMinimumAge }
            var chosen: [Int] = []
            while chosen.count < wanted, !eligible.isEmpty {
                chosen.append(eligible.remove(at: rng.integer(below: eligible.count)))
            }
            segments[s].revisits = chosen.sorted()
        }
        return anchors
    }

    /// Transitions look back at a few old tokens, reasoning sometimes at one, execution never.
    private static func revisitCount(
        _ segment: PlannedSegment, _ structure: AttentionStructure, _ rng: inout SeededRandom
    ) -> Int {
        switch segment.type {
        case .transition?: return structure.transitionRevisits
        case .reasoning?: return rng.chance(structure.reasoningRevisitProbability) ? 1 : 0
        default: return 0
        }
    }

    /// Each revisiting segment picks the old tokens it looks back at from all tokens at least
    /// `revisitMinimumAge` older than its start (sinks excepted), with probability proportional
    /// to the importance of the token's type, without repeats within the segment. The picked
    /// tokens are the anchors (a token picked by several segments is one anchor).
    private static func chooseRevisitedTokens(
        _ segments: inout [PlannedSegment], labels: [Int8],
        structure: AttentionStructure, rng: inout SeededRandom
    ) -> [Int] {
        let T = labels.count, first = min(structure.sinkCount, T)
        // cumulative[j] = total weight of positions first..<j.
        var cumulative = [Double](repeating: 0, count: T + 1)
        for j in 0..<T {
            cumulative[j + 1] = cumulative[j] + (j < first ? 0 : structure.importance.weight(label: labels[j]))
        }
        var picked: [[Int]] = Array(repeating: [], count: segments.count)
        for s in segments.indices.dropFirst() {
            let segment = segments[s]
            let wanted = revisitCount(segment, structure, &rng)
            let limit = segment.start - structure.revisitMinimumAge  // newest eligible position
            guard wanted > 0, limit >= first else { continue }
            let total = cumulative[limit + 1] - cumulative[first]
            var chosen: [Int] = [], chosenWeight = 0.0
            // Rejection sampling: redraw a token already chosen. Bounded, and it stops once the
            // chosen tokens hold (almost) all of the eligible weight.
            var attempts = 0
            while chosen.count < wanted, attempts < 64 * wanted, total - chosenWeight > 1e-9 * total {
                attempts += 1
                let u = cumulative[first] + rng.uniform() * total
                var lo = first, hi = limit  // the smallest j with cumulative[j + 1] > u
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if cumulative[mid + 1] > u { hi = mid } else { lo = mid + 1 }
                }
                let weight = cumulative[lo + 1] - cumulative[lo]
                guard weight > 0, !chosen.contains(lo) else { continue }
                chosen.append(lo)
                chosenWeight += weight
            }
            picked[s] = chosen
        }
        let anchors = Set(picked.joined()).sorted()
        let indexOf = Dictionary(uniqueKeysWithValues: anchors.enumerated().map { ($1, $0) })
        for s in segments.indices { segments[s].revisits = picked[s].map { indexOf[$0]! }.sorted() }
        return anchors
    }

    public func segment(at position: Int) -> PlannedSegment { segments[Int(segmentOfPosition[position])] }

    /// Generated tokens of each type, R, E, T order.
    public var tokenCounts: [Int] {
        var counts = [0, 0, 0]
        for l in labels where l >= 0 { counts[Int(l)] += 1 }
        return counts
    }
}

/// Names of the random streams, so that each purpose draws its own numbers.
enum StreamTag: UInt64 {
    case plan = 1, layerShape, directions, salience, keys, values, headNoise, query, targets
}
