import Foundation

/// A run of consecutive positions of one kind: the prompt, or one thought type.
public struct ThoughtSegment: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case prompt
        case thought(ThoughtType)
    }

    public let kind: Kind
    /// First position and one past the last.
    public let start: Int
    public fileprivate(set) var end: Int
    /// Retention-schedule steps applied so far (0 = untouched; see `RetentionSchedule`).
    public fileprivate(set) var level = 0

    /// Eviction order under budget pressure: lower ranks shrink first. Transition thoughts
    /// matter least, then execution, then reasoning; the prompt (the problem statement) last.
    public var evictionRank: Int {
        switch kind {
        case .thought(.transition): return 0
        case .thought(.execution): return 1
        case .thought(.reasoning): return 2
        case .prompt: return 3
        }
    }

    public var length: Int { end - start }
}

/// ThinKV's view of the cache as a sequence of thought segments, and the eviction decisions
/// (TBE) made on it. Segment boundaries and sizes are shared by every kv head: each head keeps
/// the same number of tokens per segment and differs only in which ones (k-means per head).
///
/// Rules, decided by `decide`:
/// 1. **Transition.** When a transition thought begins (a new segment of type T), every older
///    thought segment takes one schedule step (`RetentionSchedule.transitionStep`). The prompt
///    is not a thought and is not touched by transitions.
/// 2. **Budget.** While the resident tokens exceed the budget, the least important old segment
///    that can still lose tokens heads for its next schedule size
///    (`RetentionSchedule.pressureStep`) and gives up only the excess: it reaches that size
///    (and its new level) after as many steps as it takes. Ranks T, E, R, prompt
///    (`ThoughtSegment.evictionRank`), older first within a rank.
/// 3. **Split.** If no old segment can shrink (all at the floor) and the current segment holds
///    tokens older than the recent window, those tokens are closed off as a segment of the same
///    type (a *continuation*), which rule 2 can then shrink. Without this a long current
///    thought alone could exceed the budget, since the current segment is never evicted.
/// 4. **Floor breach.** If still over budget, the least important old segment loses unprotected
///    tokens below the floor, again only the excess. Counted, because it is what the floor
///    exists to avoid.
///
/// Never evicted: the attention sinks (first positions), the current segment, and the newest
/// positions (the recent window). A cut therefore never goes below a segment's protected
/// tokens; with a budget of at least sinks + recent, rules 1–4 always reach the budget.
public final class ThoughtSegments {
    public private(set) var segments: [ThoughtSegment] = []
    /// Segment index of each position appended so far (−1 before).
    private var segmentOfPosition: [Int32]

    public init(numTokens: Int) {
        segmentOfPosition = [Int32](repeating: -1, count: numTokens)
    }

    /// Opens the prompt segment `0..<length` (nothing when the prompt is empty).
    public func beginPrompt(length: Int) {
        precondition(segments.isEmpty, "the prompt comes first")
        guard length > 0 else { return }
        segments.append(ThoughtSegment(kind: .prompt, start: 0, end: length))
        for p in 0..<length { segmentOfPosition[p] = 0 }
    }

    /// Adds the next decode position with its type: extends the current segment, or opens a
    /// new one when the type changes or `opensSegment` is set (the first step of a refresh
    /// interval, under `SegmentRule.refresh`). Returns true when the position begins a
    /// transition (a new T segment).
    @discardableResult
    public func append(position: Int, type: ThoughtType, opensSegment: Bool = false) -> Bool {
        precondition(position == (segments.last?.end ?? 0), "positions arrive in order, one at a time")
        if !opensSegment, let last = segments.indices.last, segments[last].kind == .thought(type) {
            segments[last].end += 1
            segmentOfPosition[position] = Int32(last)
            return false
        }
        segments.append(ThoughtSegment(kind: .thought(type), start: position, end: position + 1))
        segmentOfPosition[position] = Int32(segments.count - 1)
        return type == .transition
    }

    /// The segment holding `position`.
    public func segmentIndex(of position: Int) -> Int { Int(segmentOfPosition[position]) }

    /// The current (newest) thought segment; nil before the first decode position.
    public var currentIndex: Int? {
        guard let last = segments.last, last.kind != .prompt else { return nil }
        return segments.count - 1
    }

    /// Closes positions `current.start..<cut` of the current segment as a segment of its own
    /// (same type, untouched level); the current segment then starts at `cut`.
    func splitCurrent(at cut: Int) {
        guard let c = currentIndex else { preconditionFailure("no current segment to split") }
        let current = segments[c]
        precondition(cut > current.start && cut < current.end, "split point inside the current segment")
        segments[c] = ThoughtSegment(kind: current.kind, start: current.start, end: cut, level: current.level)
        segments.append(ThoughtSegment(kind: current.kind, start: cut, end: current.end))
        for p in cut..<current.end { segmentOfPosition[p] = Int32(c + 1) }
    }

    // MARK: Decisions

    /// What never leaves the cache at this point: positions below `sinks`, positions above
    /// `newest − recent`, and the current segment.
    public struct Protection: Sendable {
        public var sinks: Int
        public var recent: Int
        /// The newest position in the cache (the current decode position, or P − 1 at prefill).
        public var newest: Int

        public init(sinks: Int, recent: Int, newest: Int) {
            self.sinks = sinks
            self.recent = recent
            self.newest = newest
        }

        /// First position of the recent window.
        public var recentStart: Int { newest - recent + 1 }
    }

    /// Why a segment was cut.
    public enum CutReason: Sendable, Equatable {
        case transition, pressure, split, floorBreach
    }

    /// One decided change: a segment cut to `size` tokens on its way to `target` (the schedule
    /// size it heads for; equal to `size` unless a pressure step stopped at the excess).
    /// `split` events carry the new segment's index and its size, nothing evicted.
    public struct Event: Sendable, Equatable {
        public let reason: CutReason
        public let segment: Int
        public let size: Int
        public let target: Int

        public init(reason: CutReason, segment: Int, size: Int, target: Int? = nil) {
            self.reason = reason
            self.segment = segment
            self.size = size
            self.target = target ?? size
        }
    }

    /// The outcome of `decide`: every segment's resident size before and after, and the
    /// events in order. Sizes are per kv head (the same in every head).
    public struct Decision: Sendable {
        public var before: [Int]
        public var after: [Int]
        public var protected: [Int]
        public var events: [Event]

        /// Segments that lose tokens.
        public var cutSegments: [Int] { after.indices.filter { after[$0] < before[$0] } }
    }

    /// Resident and protected tokens per segment, from one head's position-ordered slots.
    public func census(resident: [Int32], protection: Protection) -> (counts: [Int], protected: [Int]) {
        var counts = [Int](repeating: 0, count: segments.count)
        var protectedCounts = [Int](repeating: 0, count: segments.count)
        let current = currentIndex
        for p in resident {
            let s = Int(segmentOfPosition[Int(p)])
            counts[s] += 1
            if s == current || isProtected(Int(p), protection) { protectedCounts[s] += 1 }
        }
        return (counts, protectedCounts)
    }

    @inline(__always)
    func isProtected(_ position: Int, _ protection: Protection) -> Bool {
        position < protection.sinks || position >= protection.recentStart
    }

    /// Applies rules 1–4 to the census of `resident` (one head's slots; every head holds the
    /// same number per segment): advances segment levels, may split the current segment, and
    /// returns the target size of every segment. The caller evicts accordingly in every head.
    public func decide(
        resident: [Int32], transition: Bool, budget: Int?, schedule: RetentionSchedule,
        protection: Protection, pressureCut: PressureCut = .excess
    ) -> Decision {
        var (counts, protectedCounts) = census(resident: resident, protection: protection)
        var before = counts
        var events: [Event] = []

        if transition {
            let current = currentIndex
            for s in segments.indices where s != current && segments[s].kind != .prompt {
                let step = schedule.transitionStep(level: segments[s].level, count: counts[s])
                segments[s].level = step.level
                let size = max(step.size, protectedCounts[s])
                if size < counts[s] {
                    counts[s] = size
                    events.append(Event(reason: .transition, segment: s, size: size))
                }
            }
        }

        guard let budget else {
            return Decision(before: before, after: counts, protected: protectedCounts, events: events)
        }
        var excess = counts.reduce(0, +) - budget
        while excess > 0 {
            // Old segments by eviction rank, older first (segments are in position order).
            let old = segments.indices.filter { $0 != currentIndex }
                .sorted { (segments[$0].evictionRank, $0) < (segments[$1].evictionRank, $1) }

            if let (s, step) = old.lazy.compactMap({ s -> (Int, (level: Int, size: Int))? in
                guard let step = schedule.pressureStep(level: self.segments[s].level, count: counts[s]),
                    max(step.size, protectedCounts[s]) < counts[s]
                else { return nil }
                return (s, step)
            }).first {
                // Only the excess leaves; the segment reaches its next size (and level) once it
                // has given up everything above it, possibly over several steps.
                let target = max(step.size, protectedCounts[s])
                let give = pressureCut == .step ? counts[s] - target : min(excess, counts[s] - target)
                counts[s] -= give
                excess -= give
                if counts[s] == target { segments[s].level = step.level }
                events.append(Event(reason: .pressure, segment: s, size: counts[s], target: target))
                continue
            }

            if let c = currentIndex, protection.recentStart > segments[c].start,
                protection.recentStart < segments[c].end
            {
                // The current segment is fully resident: its older part has cut − start tokens.
                let cut = protection.recentStart
                let olderPart = cut - segments[c].start
                var sinksInside = 0
                for p in segments[c].start..<cut where p < protection.sinks { sinksInside += 1 }
                splitCurrent(at: cut)
                counts.insert(olderPart, at: c)
                before.insert(olderPart, at: c)
                protectedCounts.insert(sinksInside, at: c)
                counts[c + 1] -= olderPart
                before[c + 1] -= olderPart
                protectedCounts[c + 1] -= olderPart
                events.append(Event(reason: .split, segment: c, size: olderPart))
                continue
            }

            if let s = old.first(where: { counts[$0] > protectedCounts[$0] }) {
                let give = min(excess, counts[s] - protectedCounts[s])
                counts[s] -= give
                excess -= give
                events.append(Event(reason: .floorBreach, segment: s, size: counts[s]))
                continue
            }
            break  // only protected tokens left (a budget below sinks + recent)
        }
        return Decision(before: before, after: counts, protected: protectedCounts, events: events)
    }
}

/// What one thought segment is: the unit TBE's retention schedule shrinks.
public enum SegmentRule: String, Sendable, CaseIterable {
    /// Every refresh interval (τ decode steps, one classifier decision) is a segment of its own,
    /// also when the next interval has the same type: a 512-step reasoning run is four segments.
    case refresh
    /// A maximal run of one thought type is one segment, however long.
    case runs
}
