import Foundation

/// The components of ThinKV a policy runs. `thinkv` runs both; the ablations one each.
public struct ThinKVComponents: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// TBQ: each decoded token stored at its thought type's precision (`ThoughtGroupQuantizer`).
    public static let quantization = ThinKVComponents(rawValue: 1)
    /// TBE: old thought segments shrink to k-means representatives (`ThoughtSegments`).
    public static let eviction = ThinKVComponents(rawValue: 2)
}

/// What TBE did in one layer, for tests and diagnostics. Every kv head takes the same decisions.
public struct ThinKVCounters: Sendable, Equatable {
    /// Transition thoughts that began.
    public var transitions = 0
    /// Segments cut by a transition's schedule step (segments already small enough not counted).
    public var transitionCuts = 0
    /// Schedule steps taken because the cache was over budget.
    public var pressureCuts = 0
    /// Current segments whose older part was closed off because nothing else could shrink.
    public var splits = 0
    /// Segments cut below the floor as the last resort to meet the budget.
    public var floorBreaches = 0
    /// Tokens evicted (per kv head) by transition cuts, budget pressure and floor breaches.
    public var transitionEvictions = 0
    public var pressureEvictions = 0
    public var floorBreachEvictions = 0
}

/// ThinKV (Ramachandran et al., ICLR 2026): thought-adaptive KV-cache compression.
///
/// Every decode step has a thought type — reasoning (R), execution (E) or transition (T) —
/// from `--thoughts` (the sparsity classifier, or the trace's labels), decided once per replay
/// in `prepare` and shared by every layer. Then, per layer:
/// - **TBQ** (`ThoughtGroupQuantizer`): a token is attended at 16 bits in its own step, then
///   joins a group of `--group` consecutive tokens of its type, quantized at that type's bits
///   (`--r-bits`, `--e-bits`, `--t-bits`) once full; a group cut short by a type change stays
///   16-bit. Keys and values are really rounded, so attention error includes it.
/// - **TBE** (`ThoughtSegments`, `RetentionSchedule`, `KMeans`): the cache is a sequence of
///   segments; when a transition begins, every older thought segment shrinks one step of the
///   `--schedule`, and while over `--budget` the least important old segment (T, E, R, prompt;
///   older first) shrinks one step. A shrinking segment keeps, per kv head, the tokens nearest
///   the centroids of a k-means over its exact post-RoPE keys. Sinks, the current segment and
///   the newest `--recent` positions are never evicted. Acts after the step's attention.
/// - **Paging**: each token's paging class is its thought type (prompt: its own class), so a
///   block holds one type, i.e. one precision; the engine's CT model reuses freed slots.
///
/// `thinkv-tbq` and `thinkv-tbe` are this class with one component switched off.
public class ThinKVPolicy: CachePolicy {
    public class var name: String { "thinkv" }
    public class var summary: String {
        "ThinKV: thought-typed precision (TBQ) plus thought-segment eviction to k-means representatives (TBE)"
    }
    public class var components: ThinKVComponents { [.quantization, .eviction] }
    public class var parameters: [PolicyParameter] { ThinKVParameters.declared(for: components) }
    /// k-means needs the keys; quantization alone works on attention-only layers (bytes only).
    public class var requirements: PolicyRequirements { components.contains(.eviction) ? .queriesAndKeys : [] }
    /// One block holds one thought type; small blocks waste fewer slots per type.
    public class var preferredBlockSize: Int { 8 }
    /// A type held τ = 128 steps (the default) would not change within a small test trace, and
    /// segments of τ tokens would not shrink at transitions before the schedule reaches 4.
    public class var conformanceSettings: [String: String] {
        components.contains(.eviction) ? ["tau": "8", "schedule": "4,2"] : ["tau": "8"]
    }
    /// Segments shrink by k-means over keys; the step's attention is never read.
    public class var readsAttention: Bool { false }

    /// The thought timeline (`ThoughtTimeline`), computed once per replay.
    public class func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (
        any Sendable
    )? {
        try ThinKVParameters.timeline(reader, parameters: parameters, policyType: self)
    }

    /// The type of every decode step: complete before the replay, or (while the cache-sparsity
    /// classifier steps its own layers) appended one step ahead of the policy.
    public let thoughtTypes: ThoughtTypeLog

    /// Every step reasoning: enough for `init` to check the parameters.
    public class func validationPrepared(header: TraceHeader) -> (any Sendable)? {
        ThoughtTimeline(types: Array(repeating: .reasoning, count: header.generatedLength), source: .labels)
    }

    /// Decodes the configuration of this policy's components: its checks need no timeline.
    public class func checkConfiguration(_ parameters: PolicyParameters, header: TraceHeader, layer: LayerInfo) throws {
        _ = try Configuration(parameters, components: components)
    }
    public let components: ThinKVComponents
    public let quantizerConfiguration: ThoughtGroupQuantizer.Configuration?
    public let budget: Int?
    public let schedule: RetentionSchedule
    public let sinks: Int
    public let recent: Int
    public let kmeansIterations: Int
    public let seed: UInt64
    /// When old segments take a transition step (see `TBETrigger`).
    public let trigger: TBETrigger
    /// How a shrinking segment picks its tokens.
    public let selection: RepresentativeSelection
    /// What one segment is (a refresh interval, or a run of one type).
    public let segmentRule: SegmentRule
    /// How much budget pressure takes from a segment.
    public let pressureCut: PressureCut
    /// τ: decode steps per refresh interval (one segment each under `SegmentRule.refresh`).
    public let refreshInterval: Int
    private var accumulatedAttention: [Float] = []
    private var attentionScratch: [Float] = []
    /// What tokens share a paging block with (see `BlockSharing`).
    public let blockSharing: BlockSharing

    /// Made in `prefill`, the first hook that sees the cache.
    public private(set) var quantizer: ThoughtGroupQuantizer?
    /// Segment bookkeeping (eviction only).
    public let segments: ThoughtSegments?
    public private(set) var counters = ThinKVCounters()

    private let setup: PolicySetup
    /// The layer's exact tensors (k-means clusters the recorded keys), set in prefill.
    private var data: LayerData?
    private var transitionPending = false
    // Scratch reused across steps.
    private var evictedMark: [Bool]
    private var gathered: [Float] = []

    public required init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let name = Self.name
        components = Self.components
        if let timeline = setup.prepared as? ThoughtTimeline {
            guard timeline.types.count == setup.header.generatedLength else {
                throw PolicyError(
                    "\(name): the thought timeline has \(timeline.types.count) steps, the trace "
                        + "\(setup.header.generatedLength)"
                )
            }
            thoughtTypes = ThoughtTypeLog(types: timeline.types, refreshInterval: timeline.thresholds?.refreshInterval)
        } else if let log = setup.prepared as? ThoughtTypeLog {
            thoughtTypes = log
        } else {
            throw PolicyError("\(name): no thought timeline; the replay runs \(name).prepare before the layers")
        }
        self.setup = setup
        let configuration = try Configuration(parameters, components: components)
        let blockSharing = configuration.thoughts.blockSharing
        self.blockSharing = blockSharing
        quantizerConfiguration = configuration.quantization?.quantizer(blockSharing: blockSharing)

        if let eviction = configuration.eviction {
            budget = eviction.budget
            schedule = eviction.schedule
            sinks = eviction.sinks
            recent = eviction.recent
            kmeansIterations = eviction.kmeansIterations
            seed = eviction.seed
            trigger = eviction.trigger
            selection = eviction.selection
            segmentRule = eviction.segmentRule
            pressureCut = eviction.pressureCut
            refreshInterval =
                configuration.thoughts.tau ?? thoughtTypes.refreshInterval
                ?? ThoughtThresholds.defaultRefreshInterval
            segments = ThoughtSegments(numTokens: setup.header.numTokens)
        } else {
            budget = nil
            schedule = .paperDefault
            sinks = 0
            recent = 0
            kmeansIterations = 0
            seed = 0
            trigger = .transitionStart
            selection = .kmeans
            segmentRule = .refresh
            pressureCut = .excess
            refreshInterval = ThoughtThresholds.defaultRefreshInterval
            segments = nil
        }
        evictedMark = [Bool](repeating: false, count: setup.header.numTokens)
    }

    public var residentCap: Int? { budget }

    // MARK: Hooks

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        let P = setup.header.promptLength
        data = context.data
        if let configuration = quantizerConfiguration {
            do {
                let tbq = try ThoughtGroupQuantizer(configuration, cache: cache)
                tbq.prefill(promptLength: P, cache: cache)
                quantizer = tbq
            } catch {
                preconditionFailure("\(Self.name): quantizer configuration was validated in init: \(error)")
            }
        } else {
            for p in 0..<P { cache.pagingClass[p] = blockSharing.promptClass(bits: 16) }
        }
        if let segments {
            segments.beginPrompt(length: P)
            // A prompt longer than the budget shrinks before decoding starts.
            if let budget, P > budget { evict(newest: P - 1, transition: false, cache: cache) }
        }
    }

    public func beforeAttention(_ context: StepContext, cache: LayerCache) {
        let type = thoughtTypes.types[context.step]
        // The engine pages the new token right after this hook: its class must be set now.
        if let quantizer {
            quantizer.setThoughtType(Int(type.rawValue), position: context.position, cache: cache)
        } else {
            cache.pagingClass[context.position] = blockSharing.thoughtClass(type: Int(type.rawValue), bits: 16)
        }
        guard let segments else { return }
        let previous = segments.segments.last?.kind
        let opensSegment = segmentRule == .refresh && context.step % refreshInterval == 0
        let beginsTransition = segments.append(position: context.position, type: type, opensSegment: opensSegment)
        switch trigger {
        case .transitionStart:
            transitionPending = beginsTransition
        case .afterTransition:
            transitionPending = previous == .thought(.transition) && type != .transition
        }
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        if selection == .attention { accumulateAttention(context, cache: cache) }
        quantizer?.append(
            position: context.position, thoughtType: Int(thoughtTypes.types[context.step].rawValue), cache: cache)
        if segments != nil {
            evict(newest: context.position, transition: transitionPending, cache: cache)
            transitionPending = false
        }
    }

    // MARK: Report

    public func thoughtBreakdown(cache: LayerCache) -> ThoughtStepBreakdown? {
        let P = setup.header.promptLength
        return ThoughtStepBreakdown.measure(cache) { p in p < P ? 3 : Int(thoughtTypes.types[p - P].rawValue) }
    }

    public var reportCounters: [(name: String, value: Int)] {
        guard segments != nil else { return [] }
        let c = counters
        return [
            ("transitions", c.transitions), ("transition_cuts", c.transitionCuts),
            ("transition_evicted_tokens", c.transitionEvictions),
            ("pressure_cuts", c.pressureCuts), ("pressure_evicted_tokens", c.pressureEvictions), ("splits", c.splits),
            ("floor_breaches", c.floorBreaches), ("floor_breach_evicted_tokens", c.floorBreachEvictions)
        ]
    }

    // MARK: Eviction

    /// Decides the segment sizes (the same in every head) and, per head, which tokens leave:
    /// a transition cut keeps k-means representatives; a pressure step removes the excess from
    /// the tokens its next schedule size will not keep (`pressurePlans`); a floor breach
    /// removes the oldest unprotected tokens.
    private func evict(newest: Int, transition: Bool, cache: LayerCache) {
        guard let segments else { return }
        if transition { counters.transitions += 1 }
        // Nothing to decide between transitions while under budget (every head holds as many).
        guard transition || budget.map({ cache.count(kvHead: 0) > $0 }) == true else { return }
        let protection = ThoughtSegments.Protection(sinks: sinks, recent: recent, newest: newest)
        let decision = segments.decide(
            resident: cache.slots[0], transition: transition, budget: budget,
            schedule: schedule, protection: protection, pressureCut: pressureCut)
        var sizeBefore = decision.before
        for event in decision.events {
            let freed = event.reason == .split ? 0 : sizeBefore[event.segment] - event.size
            if event.reason != .split { sizeBefore[event.segment] = event.size }
            switch event.reason {
            case .transition:
                counters.transitionCuts += 1
                counters.transitionEvictions += freed
            case .pressure:
                counters.pressureCuts += 1
                counters.pressureEvictions += freed
            case .split: counters.splits += 1
            case .floorBreach:
                counters.floorBreaches += 1
                counters.floorBreachEvictions += freed
            }
        }
        let cuts = decision.events.filter { $0.reason != .split }
        guard !cuts.isEmpty else { return }
        // A transition cut or a breach changes a segment outside its pressure plan.
        for event in cuts where event.reason != .pressure { pressurePlans[event.segment] = nil }
        let current = segments.currentIndex

        for h in 0..<cache.numKVHeads {
            // Unprotected resident positions of each cut segment, in position order.
            var pools = [Int: [Int32]]()
            for event in cuts { pools[event.segment] = [] }
            for p in cache.slots[h] {
                let s = segments.segmentIndex(of: Int(p))
                guard s != current, pools[s] != nil, !segments.isProtected(Int(p), protection) else { continue }
                pools[s]!.append(p)
            }
            var evicted: [Int32] = []
            for event in cuts {
                let s = event.segment
                let pool = pools[s]!
                let keep = event.size - decision.protected[s]
                guard keep < pool.count else { continue }
                let victims: [Int32]
                switch event.reason {
                case .transition:
                    let kept = representatives(
                        of: pool, keep: keep, kvHead: h, segment: segments.segments[s], cache: cache)
                    victims = Self.complement(of: kept, in: pool)
                case .pressure:
                    victims = pressureVictims(
                        segment: s, target: event.target - decision.protected[s], pool: pool,
                        count: pool.count - keep, kvHead: h, cache: cache)
                case .floorBreach, .split:
                    victims = Array(pool.prefix(pool.count - keep))
                }
                for p in victims { evictedMark[Int(p)] = true }
                pools[s] = pool.filter { !evictedMark[Int($0)] }
                evicted += victims
            }
            cache.removeAll(kvHead: h) { evictedMark[Int($0)] }
            for p in evicted { evictedMark[Int(p)] = false }
            quantizer?.didEvict(kvHead: h, positions: evicted, cache: cache)
        }
    }

    /// A segment on its way down to its next schedule size under budget pressure: the tokens
    /// that size will not keep, per kv head, in the order they leave (oldest first).
    private struct PressurePlan {
        /// Unprotected tokens the segment keeps at that size.
        var keep: Int
        var leaving: [[Int32]?]
    }
    private var pressurePlans: [Int: PressurePlan] = [:]

    /// `count` tokens of `pool` (segment `s`'s unprotected residents in head `h`) to evict on
    /// the way to keeping `target` of them: the k-means representatives for `target` are
    /// chosen once, when the segment starts towards that size, and the others leave oldest
    /// first as the budget requires. A plan is redone when the pool has grown past it (tokens
    /// that left the recent window) or the target changed.
    private func pressureVictims(
        segment s: Int, target: Int, pool: [Int32], count: Int, kvHead h: Int, cache: LayerCache
    ) -> [Int32] {
        if var plan = pressurePlans[s], plan.keep == target, let leaving = plan.leaving[h], leaving.count >= count,
            pool.count - leaving.count == target
        {
            plan.leaving[h] = Array(leaving.dropFirst(count))
            pressurePlans[s] = plan
            return Array(leaving.prefix(count))
        }
        let kept = representatives(of: pool, keep: target, kvHead: h, segment: segments!.segments[s], cache: cache)
        let leaving = Self.complement(of: kept, in: pool)
        var plan =
            pressurePlans[s].flatMap { $0.keep == target ? $0 : nil }
            ?? PressurePlan(keep: target, leaving: Array(repeating: nil, count: cache.numKVHeads))
        plan.leaving[h] = Array(leaving.dropFirst(count))
        pressurePlans[s] = plan
        return Array(leaving.prefix(count))
    }

    /// The positions of `pool` not at the indices `kept`, in pool order.
    private static func complement(of kept: [Int], in pool: [Int32]) -> [Int32] {
        var isKept = [Bool](repeating: false, count: pool.count)
        for i in kept { isKept[i] = true }
        return pool.indices.filter { !isKept[$0] }.map { pool[$0] }
    }

    /// Indices into `pool` of the `keep` tokens nearest the centroids of a k-means over their
    /// exact keys in head `h`.
    private func representatives(of pool: [Int32], keep: Int, kvHead h: Int, segment: ThoughtSegment, cache: LayerCache)
        -> [Int]
    {
        guard keep > 0 else { return [] }
        guard keep < pool.count else { return Array(pool.indices) }
        guard let exactKeys = data?.keys else { preconditionFailure("TBE needs keys (declared in its requirements)") }
        let D = setup.header.headDim, T = setup.header.numTokens
        var stream = SeededRandom(
            seed: seed, stream: [UInt64(setup.layer.index), UInt64(h), UInt64(segment.start), UInt64(segment.level)])
        let callSeed = stream.next()
        // The `keep` best of the pool by a score (higher first; ties: the earlier position).
        func best(by score: (Int32) -> Double) -> [Int] {
            let ranked = pool.indices.sorted { (score(pool[$0]), -$0) > (score(pool[$1]), -$1) }
            return Array(ranked.prefix(keep)).sorted()
        }
        switch selection {
        case .kmeans:
            break
        case .keyNorm:
            // KnormPress's observation: keys of small norm draw the most attention.
            return exactKeys.withUnsafeBufferPointer { K in
                best { p in -Double(Kernels.norm(K.baseAddress! + (h * T + Int(p)) * D, D)) }
            }
        case .attention:
            // Before any decode step (a prompt cut at prefill) nothing has been received yet.
            return best { p in accumulatedAttention.isEmpty ? 0 : Double(accumulatedAttention[h * T + Int(p)]) }
        case .random:
            var random = SeededRandom(seed: callSeed)
            var indices = Array(pool.indices)
            for i in 0..<keep { indices.swapAt(i, i + random.integer(below: indices.count - i)) }
            return Array(indices.prefix(keep)).sorted()
        }
        let needed = pool.count * D
        if gathered.count < needed { gathered = [Float](repeating: 0, count: needed) }
        gathered.withUnsafeMutableBufferPointer { out in
            exactKeys.withUnsafeBufferPointer { K in
                for (i, p) in pool.enumerated() {
                    let from = (h * T + Int(p)) * D
                    for d in 0..<D { out[i * D + d] = K[from + d] }
                }
            }
        }
        return gathered.withUnsafeBufferPointer {
            KMeans.representatives(
                points: $0.baseAddress!, count: pool.count, dimension: D, k: keep,
                iterations: kmeansIterations, seed: callSeed)
        }
    }

    /// Adds this step's attention over the cache (each kv head's query heads summed) to every
    /// held token's total, for `--representatives attention`. Computed here from the stored
    /// keys, as the deployed policy would, so the engine need not hand attention to ThinKV.
    private func accumulateAttention(_ context: StepContext, cache: LayerCache) {
        guard let queries = context.queries, let keys = cache.storedKeys else { return }
        let header = setup.header, D = header.headDim, T = header.numTokens, gs = header.groupSize
        if accumulatedAttention.isEmpty { accumulatedAttention = [Float](repeating: 0, count: header.numKVHeads * T) }
        for g in 0..<header.numKVHeads {
            let n = cache.slots[g].count
            if attentionScratch.count < gs * n { attentionScratch = [Float](repeating: 0, count: gs * n) }
            cache.slots[g].withUnsafeBufferPointer { slots in
                keys.withUnsafeBufferPointer { K in
                    attentionScratch.withUnsafeMutableBufferPointer { out in
                        Kernels.scores(
                            queries: queries.baseAddress! + g * gs * D, rows: gs, headDim: D,
                            keys: K.baseAddress! + g * T * D, indices: slots.baseAddress!, count: n,
                            scale: header.effectiveSoftmaxScale, out: out.baseAddress!, outStride: n)
                        for r in 0..<gs {
                            let row = out.baseAddress! + r * n
                            Kernels.softmaxFast(row, n)
                            for j in 0..<n { accumulatedAttention[g * T + Int(slots[j])] += row[j] }
                        }
                    }
                }
            }
        }
    }
}

/// How a shrinking segment picks the tokens it keeps.
public enum RepresentativeSelection: String, Sendable, CaseIterable {
    /// ThinKV: the tokens nearest the centroids of a k-means over the segment's keys.
    case kmeans
    /// The smallest key norms (KnormPress's signal of high attention).
    case keyNorm = "key-norm"
    /// The most attention received since the token was written (an H2O-like score, over the
    /// policy's own cache).
    case attention
    /// Uniformly random picks (a floor to measure the others against).
    case random
}

extension ThinKVPolicy {
    /// The parameters of a ThinKV policy as typed values, per component (nil: switched off).
    public struct Configuration: Sendable {
        public let thoughts: Thoughts
        public let quantization: Quantization?
        public let eviction: Eviction?

        /// How thought types are decided (every ThinKV policy declares these).
        public struct Thoughts: Sendable {
            public let source: ThoughtTimeline.Source
            public let calibration: String?
            public let theta1: Double?
            public let theta2: Double?
            public let thoughtLayers: String?
            public let tau: Int?
            public let sparsitySource: ThoughtTimeline.SparsitySource
            public let sparsityGQA: GQASparsity?
            public let calibrationDomain: CalibrationDomain
            public let sparsityWindow: Int
            public let typeLag: Int
            public let blockSharing: BlockSharing

            public init(_ values: PolicyParameters) throws {
                source = try values.choice("thoughts")
                calibration = try values.optionalText("calibration")
                theta1 = try values.optionalReal("theta1")
                theta2 = try values.optionalReal("theta2")
                thoughtLayers = try values.optionalText("thought-layers")
                tau = try values.optionalInteger("tau")
                sparsitySource = try values.choice("sparsity-source")
                sparsityGQA = try values.optionalChoice("sparsity-gqa")
                calibrationDomain = try values.choice("calibration-domain")
                sparsityWindow = try values.integer("sparsity-window")
                typeLag = try values.integer("type-lag")
                blockSharing = try values.choice("ct-blocks")
            }
        }

        /// TBQ: bits per thought type.
        public struct Quantization: Sendable {
            public let format: QuantFormat
            public let reasoningBits: Int, executionBits: Int, transitionBits: Int
            public let group: Int
            public let promptBits: Int
            public let quantizesPartialGroups: Bool

            public init(_ values: PolicyParameters) throws {
                format = try values.choice("format")
                reasoningBits = try values.integer("r-bits")
                executionBits = try values.integer("e-bits")
                transitionBits = try values.integer("t-bits")
                group = try values.integer("group")
                promptBits = try values.integer("prompt-bits")
                quantizesPartialGroups = try values.optionalText("partial-groups") == "quantize"
                // Refuse unsupported widths before any replay rather than at the first layer's prefill.
                for bits in [reasoningBits, executionBits, transitionBits] + (promptBits == 16 ? [] : [promptBits]) {
                    do { _ = try GroupQuantizer(format: format, bits: bits) } catch let error as PolicyError {
                        throw PolicyError("\(values.policy): \(error.description)")
                    }
                }
            }

            func quantizer(blockSharing: BlockSharing) -> ThoughtGroupQuantizer.Configuration {
                ThoughtGroupQuantizer.Configuration(
                    format: format, reasoningBits: reasoningBits, executionBits: executionBits,
                    transitionBits: transitionBits, groupSize: group,
                    promptBits: promptBits == 16 ? nil : promptBits,
                    promptPagingClass: blockSharing.promptClass(bits: promptBits),
                    pagingClassByType: [reasoningBits, executionBits, transitionBits].enumerated()
                        .map { blockSharing.thoughtClass(type: $0.offset, bits: $0.element) },
                    quantizesPartialGroups: quantizesPartialGroups)
            }
        }

        /// TBE: segments, schedule and budget.
        public struct Eviction: Sendable {
            public let budget: Int?
            public let schedule: RetentionSchedule
            public let sinks: Int
            public let recent: Int
            public let kmeansIterations: Int
            public let seed: UInt64
            public let selection: RepresentativeSelection
            public let trigger: TBETrigger
            public let segmentRule: SegmentRule
            public let pressureCut: PressureCut

            public init(_ values: PolicyParameters) throws {
                let name = values.policy
                budget = try values.optionalInteger("budget")
                let scheduleText = try values.optionalText("schedule") ?? ""
                do { schedule = try RetentionSchedule(parsing: scheduleText) } catch let error as PolicyError {
                    throw PolicyError("\(name): --schedule: \(error.description)")
                }
                sinks = try values.integer("sinks")
                recent = try values.integer("recent")
                kmeansIterations = try values.integer("kmeans-iters")
                seed = UInt64(try values.integer("seed"))
                selection = try values.choice("representatives")
                trigger = try values.choice("tbe-trigger")
                segmentRule = try values.choice("segments")
                pressureCut = try values.choice("pressure-cut")
                if let budget, budget < sinks + recent {
                    throw PolicyError(
                        "\(name): --budget (\(budget)) must be at least --sinks + --recent "
                            + "(\(sinks) + \(recent)): those positions are never evicted")
                }
            }
        }

        public init(_ values: PolicyParameters, components: ThinKVComponents) throws {
            thoughts = try Thoughts(values)
            quantization = components.contains(.quantization) ? try Quantization(values) : nil
            eviction = components.contains(.eviction) ? try Eviction(values) : nil
        }
    }
}

/// The parameters of the ThinKV policies, grouped by the component that reads them, and the
/// assembly of the thought timeline from them.
package enum ThinKVParameters {
    static let thoughts: [PolicyParameter] = [
        .choice(
            "thoughts", ThoughtTimeline.Source.allCases.map(\.rawValue),
            default: ThoughtTimeline.Source.classifier.rawValue,
            help:
                "thought types from the sparsity classifier, or from the trace's /tokens/thought labels (oracle "
                + "ablation)"
        ),
        .text(
            "calibration", "FILE",
            help:
                "classifier thresholds as JSON (theta1, theta2, layers, refresh_interval, sparsity_ratio), e.g. from "
                + "'thinkv-sim calibrate'; the options below override its fields"
        ),
        .real("theta1", min: 0, max: 1, help: "θ1: averaged sparsity below it is execution (E)"),
        .real(
            "theta2", min: 0, max: 1,
            help: "θ2: averaged sparsity above it is transition (T); between θ1 and θ2 reasoning (R)"),
        .text(
            "thought-layers", "LIST",
            help:
                "L*: layers whose sparsity is averaged, e.g. 0,5,9 (default: the calibration file's, else every "
                + "recorded layer)"
        ),
        .integer(
            "tau", min: 1,
            help: "τ: decode steps a type is held before it is re-evaluated (default: the calibration file's, else 128)"
        ),
        .choice(
            "sparsity-source", ThoughtTimeline.SparsitySource.allCases.map(\.rawValue),
            default: ThoughtTimeline.SparsitySource.cache.rawValue,
            help:
                "cache: the classifier reads the attention over the policy's own (compressed, quantized) cache, as "
                + "deployed; full: the full cache's (oracle ablation)"
        ),
        .choice(
            "sparsity-gqa", GQASparsity.allCases.map(\.rawValue), default: nil,
            help:
                "how a GQA group's query heads make one row: max-pool = max-pooled logits per group, softmaxed, "
                + "averaged over kv heads (ThinKV); mean-heads = every head's softmax averaged (default: the "
                + "calibration's, else max-pool)"
        ),
        .choice(
            "calibration-domain", CalibrationDomain.allCases.map(\.rawValue), default: CalibrationDomain.full.rawValue,
            help:
                "without --calibration, calibrate on this trace's full-cache sparsity, or on the sparsity over the "
                + "policy's own cache at --budget (what the classifier reads)"
        ),
        .integer(
            "sparsity-window", default: 1, min: 1, max: 1 << 20,
            help:
                "steps whose averaged sparsity (or, with --thoughts held-labels, whose majority label) decides the "
                + "type at a refresh: 1 = the refresh step alone"
        ),
        .integer(
            "type-lag", default: 0, min: 0, max: 1 << 20,
            help:
                "a refresh at step t reads the sparsity window ending at step t − lag: 0 = its own step's (a replay "
                + "knows every layer's attention at once); 1 = the previous step's, what a model generating "
                + "layer by layer knows before its first layer runs (serve-policy needs 1)"
        ),
        .choice(
            "ct-blocks", BlockSharing.allCases.map(\.rawValue), default: BlockSharing.type.rawValue,
            help:
                "what a Continuous-Thinking paging block may mix: tokens of one thought type (ThinKV: a freed slot "
                + "is refilled by the same type), or of one precision"
        )
    ]

    static let quantization: [PolicyParameter] = [
        .choice(
            "format", QuantFormat.allCases.map(\.rawValue), default: QuantFormat.paper.rawValue,
            help: "paper = FP8 E4M3 (8 bits), NVFP4 (4), ternary (2); int = asymmetric min-max integers"),
        .integer(
            "r-bits", default: 4, min: 1, max: 8, help: "bits per element of reasoning tokens (paper format: 2, 4 or 8)"
        ),
        .integer("e-bits", default: 4, min: 1, max: 8, help: "bits per element of execution tokens"),
        .integer("t-bits", default: 2, min: 1, max: 8, help: "bits per element of transition tokens"),
        .integer(
            "group", default: 16, min: 1, max: 1 << 16,
            help: "tokens per key group (per channel) and channels per value group; a group never mixes thought types"),
        .integer(
            "prompt-bits", default: 16, min: 1, max: 16,
            help: "bits of the prompt, in whole groups of prompt tokens; 16 keeps it unquantized"),
        .choice(
            "partial-groups", ["quantize", "keep16"], default: "quantize",
            help:
                "a thought that ends short of --group tokens: quantize its last group short (own scales, charged), "
                + "or keep it at 16 bits"
        )
    ]

    static let eviction: [PolicyParameter] = [
        .budget(
            required: false,
            help: "resident tokens per kv head; over it the least important old segment shrinks "
                + "(default: no budget, segments shrink at transitions only)"),
        .text(
            "schedule", "LIST", default: "64,32,16,8,4",
            help:
                "retention schedule: sizes an old segment shrinks to, one step per transition or per budget "
                + "overflow; the last is the floor"
        ),
        .integer("sinks", default: 4, min: 0, help: "first positions never evicted (attention sinks)"),
        .integer(
            "recent", default: 16, min: 1,
            help: "newest positions never evicted (covers TBQ's open 16-bit group at the default --group)"),
        .integer(
            "kmeans-iters", default: 10, min: 0,
            help: "Lloyd iterations of the k-means that picks a segment's representatives"),
        .integer("seed", default: 0, min: 0, help: "seed of the k-means++ initialisation"),
        .choice(
            "representatives", RepresentativeSelection.allCases.map(\.rawValue),
            default: RepresentativeSelection.kmeans.rawValue,
            help:
                "how a shrinking segment picks the tokens it keeps: k-means centroids' nearest (ThinKV), smallest "
                + "key norms, most attention received, or random"
        ),
        .choice(
            "tbe-trigger", TBETrigger.allCases.map(\.rawValue), default: TBETrigger.transitionStart.rawValue,
            help:
                "when older thoughts take a schedule step: when a transition thought begins (ThinKV), or when the "
                + "thought after it begins"
        ),
        .choice(
            "segments", SegmentRule.allCases.map(\.rawValue), default: SegmentRule.refresh.rawValue,
            help: "what one segment is: each refresh interval of τ steps (ThinKV), or a maximal run of one thought type"
        ),
        .choice(
            "pressure-cut", PressureCut.allCases.map(\.rawValue), default: PressureCut.step.rawValue,
            help:
                "over budget, the oldest least important segment drops whole schedule steps until the budget fits "
                + "(ThinKV), or gives up only the excess"
        )
    ]

    static func declared(for components: ThinKVComponents) -> [PolicyParameter] {
        thoughts + (components.contains(.quantization) ? quantization : [])
            + (components.contains(.eviction) ? eviction : [])
    }

    /// The thought timeline the parameters ask for.
    static func timeline(_ reader: TraceReader, parameters: PolicyParameters, policyType: ThinKVPolicy.Type) throws
        -> ThoughtTimeline
    {
        let policy = policyType.name
        let thoughts = try ThinKVPolicy.Configuration(parameters, components: policyType.components).thoughts
        let window = thoughts.sparsityWindow
        let lag = thoughts.typeLag
        switch thoughts.source {
        case .labels:
            return try ThoughtTimeline.fromLabels(reader, policy: policy)
        case .heldLabels:
            let tau = thoughts.tau ?? ThoughtThresholds.defaultRefreshInterval
            return try ThoughtTimeline.fromHeldLabels(reader, refreshInterval: tau, window: window, policy: policy)
        case .classifier:
            let (thresholds, notes) = try self.thresholds(reader, parameters: parameters, policyType: policyType)
            var timeline: ThoughtTimeline
            switch thoughts.sparsitySource {
            case .full:
                timeline = try ThoughtTimeline.fromClassifier(
                    reader, thresholds: thresholds, window: window, lag: lag, policy: policy)
            case .cache:
                timeline = try CacheSparsityClassifier.timeline(
                    reader, policyType: policyType, parameters: parameters,
                    thresholds: thresholds, window: window, lag: lag, policy: policy)
            }
            timeline.notes = notes
            let source = thoughts.sparsitySource.rawValue
            let domain =
                thresholds.domain.map { $0 == "full" ? "full-cache" : $0 }
                ?? (thoughts.calibration == nil
                    ? "given (--theta1/--theta2)"
                    : "full-cache (assumed: the file predates sparsity_domain)")
            timeline.notes.append(
                "thresholds calibrated on \(domain) sparsity (\(thresholds.gqa.rawValue)); the classifier reads the "
                    + "\(source == "cache" ? "policy's own cache" : "full cache")"
            )
            // On a labelled trace, how often the types the policy runs with are the true ones.
            if let labels = try reader.readThoughtLabels() {
                let (accuracy, _) = ThoughtClassifier.accuracy(
                    predicted: timeline.types, reference: Array(labels[reader.header.promptLength...]))
                if accuracy.isFinite {
                    timeline.notes.append(
                        String(
                            format:
                                "thought types agree with /tokens/thought on %.1f %% of labelled decode steps "
                                + "(sparsity source: %@, τ = %d, window %d)",
                            100 * accuracy, source, thresholds.refreshInterval, window))
                }
            }
            if thresholds.isSingleType {
                timeline.notes.append(
                    "thresholds θ1 = 0, θ2 = 1 are the single-type fallback (no tri-modal layer): every step is "
                        + "reasoning, so ThinKV runs with one thought type"
                )
            }
            return timeline
        }
    }

    /// Thresholds from `--calibration` and/or the explicit options (which win); without either,
    /// calibrated on the trace itself. Also returns what the report should say about them.
    static func thresholds(_ reader: TraceReader, parameters: PolicyParameters, policyType: ThinKVPolicy.Type) throws
        -> (ThoughtThresholds, [String])
    {
        let policy = policyType.name
        let configuration = try ThinKVPolicy.Configuration(parameters, components: policyType.components)
        let thoughts = configuration.thoughts
        let theta1 = thoughts.theta1.map(Float.init)
        let theta2 = thoughts.theta2.map(Float.init)
        let recorded = reader.recordedLayerIndices
        let layers = try thoughts.thoughtLayers.map { try parseLayers($0, recorded: recorded, policy: policy) }
        let gqa = thoughts.sparsityGQA
        var notes: [String] = []
        var thresholds: ThoughtThresholds
        if let path = thoughts.calibration {
            thresholds = try loadCalibration(path, policy: policy)
            if layers == nil, let (mapped, note) = nearestRecorded(thresholds.layers, recorded: recorded) {
                thresholds.layers = mapped
                notes.append("\(URL(fileURLWithPath: path).lastPathComponent): \(note)")
            }
            if thoughts.calibrationDomain == .cache {
                notes.append(
                    "--calibration-domain cache applies to calibrating on the trace itself; the thresholds are the "
                        + "file's (calibrate --budget B makes a cache-domain file)"
                )
            }
        } else if let theta1, let theta2 {
            thresholds = ThoughtThresholds(theta1: theta1, theta2: theta2, layers: recorded)
        } else {
            if theta1 != nil || theta2 != nil {
                throw PolicyError("\(policy): give both --theta1 and --theta2, or neither (to calibrate on the trace)")
            }
            let domain = thoughts.calibrationDomain
            let budget = domain == .cache ? configuration.eviction?.budget : nil
            if domain == .cache && budget == nil {
                throw PolicyError(
                    "\(policy): --calibration-domain cache calibrates on the cache at the run's budget: give "
                        + "--budget (or --kv-percent)"
                )
            }
            let calibration = try SelfCalibrationMemo.shared.calibration(
                of: reader, gqa: gqa ?? .maxPool, budget: budget
            ) { options in
                try CacheDomainCalibration.calibrate(
                    readers: [reader], policyType: policyType, parameters: parameters, options: options)
            }
            thresholds = calibration.thresholds
            let t = thresholds
            notes.append(
                "no --calibration: thresholds calibrated on this trace itself (θ1 = \(formatTheta(t.theta1)), θ2 = "
                    + "\(formatTheta(t.theta2)), L* = \(t.layers.map(String.init).joined(separator: ","))); for "
                    + "held-out results calibrate on other traces ('thinkv-sim calibrate')"
            )
            if calibration.fallback, let reason = calibration.fallbackReason {
                notes.append("calibration fell back to '\(calibration.fallbackRule ?? "?")': \(reason)")
            }
        }
        notes += applyOverrides(thoughts, layers: layers, to: &thresholds)
        return (thresholds, notes)
    }

    private static func loadCalibration(_ path: String, policy: String) throws -> ThoughtThresholds {
        do {
            return try ThoughtThresholds.load(path: path)
        } catch let error as CalibrationError {
            throw PolicyError("\(policy): --calibration \(error.description)")
        }
    }

    /// The options that override a calibration's fields (θ1, θ2, L*, τ, GQA reading); returns
    /// what the report should say about them.
    private static func applyOverrides(
        _ thoughts: ThinKVPolicy.Configuration.Thoughts, layers: [Int]?,
        to thresholds: inout ThoughtThresholds
    ) -> [String] {
        if let theta1 = thoughts.theta1 { thresholds.theta1 = Float(theta1) }
        if let theta2 = thoughts.theta2 { thresholds.theta2 = Float(theta2) }
        if let layers { thresholds.layers = layers }
        if let tau = thoughts.tau { thresholds.refreshInterval = tau }
        var notes: [String] = []
        if let gqa = thoughts.sparsityGQA, gqa != thresholds.gqa {
            if thoughts.calibration != nil {
                notes.append(
                    "--sparsity-gqa \(gqa.rawValue) reads sparsity unlike the calibration "
                        + "(\(thresholds.gqa.rawValue)) its thresholds came from"
                )
            }
            thresholds.gqa = gqa
        }
        return notes
    }

    /// The classifier of a generation served online (`OnlinePolicyDriver`): thresholds from
    /// `--calibration` or `--theta1`/`--theta2` (there is no trace to calibrate on), the
    /// sparsity over the policy's own cache, and a refresh that reads only finished steps.
    /// Throws a usage message when the parameters ask for what cannot run online.
    static func onlineClassifier(parameters: PolicyParameters, header: TraceHeader, policy: String) throws
        -> OnlineThoughtClassifier
    {
        let thoughts = try ThinKVPolicy.Configuration.Thoughts(parameters)
        guard thoughts.source == .classifier else {
            throw UsageError(
                "\(policy): --thoughts \(thoughts.source.rawValue) reads a trace's labels; "
                    + "online only the classifier (--thoughts classifier) can type thoughts")
        }
        guard thoughts.sparsitySource == .cache else {
            throw UsageError(
                "\(policy): --sparsity-source full needs the full cache's attention; online the classifier reads the "
                    + "policy's own cache (--sparsity-source cache)"
            )
        }
        let all = Array(0..<header.numLayers)
        let layers = try thoughts.thoughtLayers.map { try parseLayers($0, recorded: all, policy: policy) }
        var thresholds: ThoughtThresholds
        if let path = thoughts.calibration {
            thresholds = try loadCalibration(path, policy: policy)
        } else if let theta1 = thoughts.theta1, let theta2 = thoughts.theta2 {
            thresholds = ThoughtThresholds(theta1: Float(theta1), theta2: Float(theta2), layers: all)
        } else {
            throw UsageError(
                "\(policy): online there is no trace to calibrate on; give --calibration FILE ('thinkv-sim "
                    + "calibrate') or --theta1 and --theta2"
            )
        }
        let lag = thoughts.typeLag
        guard lag >= 1 else {
            throw UsageError(
                "\(policy): online, a step's type is needed before its L* layers attend; give --type-lag 1 (replay "
                    + "with the same --type-lag to compare)"
            )
        }
        _ = applyOverrides(thoughts, layers: layers, to: &thresholds)
        if let outside = thresholds.layers.first(where: { !all.indices.contains($0) }) {
            throw PolicyError("\(policy): L* layer \(outside) is not among the model's \(header.numLayers) layers")
        }
        guard thresholds.theta1 < thresholds.theta2, thresholds.refreshInterval >= 1, !thresholds.layers.isEmpty else {
            throw PolicyError("\(policy): thresholds need θ1 < θ2, τ ≥ 1 and a layer in L*")
        }
        return OnlineThoughtClassifier(
            thresholds: thresholds, window: thoughts.sparsityWindow, lag: lag,
            header: header)
    }

    private static func formatTheta(_ x: Float) -> String { String(format: "%.3f", x) }

    /// L* mapped onto the recorded layers: each layer the trace lacks becomes the nearest
    /// recorded one (the lower on a tie), repeats dropped. nil when every layer is recorded.
    package static func nearestRecorded(_ layers: [Int], recorded: [Int]) -> ([Int], String)? {
        guard !recorded.isEmpty, layers.contains(where: { !recorded.contains($0) }) else { return nil }
        var mapped: [Int] = [], moves: [String] = []
        for layer in layers {
            let nearest = recorded.min { (abs($0 - layer), $0) < (abs($1 - layer), $1) }!
            if nearest != layer { moves.append("\(layer)→\(nearest)") }
            if !mapped.contains(nearest) { mapped.append(nearest) }
        }
        return (
            mapped.sorted(),
            "L* layers not recorded in this trace mapped to the nearest recorded ones "
                + "(\(moves.joined(separator: ", "))); L* = \(mapped.sorted().map(String.init).joined(separator: ","))"
        )
    }

    /// A comma list of layer indices; negative ones count from the last recorded layer
    /// (−1: the last), as Python indexes lists.
    static func parseLayers(_ text: String, recorded: [Int], policy: String) throws -> [Int] {
        let parts = try CommaList.items(text, of: "\(policy): --thought-layers", error: PolicyError.init)
        var layers = parts.compactMap { Int($0) }
        guard layers.count == parts.count else {
            throw PolicyError(
                "\(policy): --thought-layers must be a comma list of layer indices such as 0,5,9, got '\(text)'")
        }
        for (i, layer) in layers.enumerated() where layer < 0 {
            guard -layer <= recorded.count else {
                throw PolicyError(
                    "\(policy): --thought-layers \(layer) reaches before the first recorded layer (recorded: "
                        + "\(recorded.map(String.init).joined(separator: ",")))"
                )
            }
            layers[i] = recorded[recorded.count + layer]
        }
        guard Set(layers).count == layers.count else {
            throw PolicyError("\(policy): --thought-layers lists a layer twice: '\(text)'")
        }
        return layers
    }
}

/// Whose attention self-calibration reads (see `CacheDomainCalibration`).
public enum CalibrationDomain: String, Sendable, CaseIterable {
    case full, cache
}

/// How much a budget-pressure step takes from a segment.
public enum PressureCut: String, Sendable, CaseIterable {
    /// Only the tokens over the budget leave; the segment reaches its next schedule size after
    /// as many steps as that takes, so the cache stays at the budget.
    case excess
    /// The segment drops to its next schedule size at once, repeated until the budget fits; the
    /// cache may fall below the budget.
    case step
}

/// When TBE shrinks the older thoughts.
public enum TBETrigger: String, Sendable, CaseIterable {
    /// When the first thought after a transition begins: the transition has settled where the
    /// reasoning goes next, and the transition itself is among the older thoughts that shrink.
    case afterTransition = "after-transition"
    /// When a transition thought begins (the older thoughts shrink while it is written).
    case transitionStart = "transition-start"
}

/// What a Continuous-Thinking paging block may mix.
public enum BlockSharing: String, Sendable, CaseIterable {
    /// Tokens of one precision share blocks (R and E at 4 bits together; the prompt with them
    /// when it has their precision).
    case precision
    /// Tokens of one thought type share blocks; the prompt has blocks of its own.
    case type

    /// Paging class of a thought type's tokens stored at `bits`.
    func thoughtClass(type: Int, bits: Int) -> UInt8 {
        switch self {
        case .precision: return UInt8(bits)
        case .type: return UInt8(type)
        }
    }

    /// Paging class of prompt tokens stored at `bits`.
    func promptClass(bits: Int) -> UInt8 {
        switch self {
        case .precision: return UInt8(bits)
        case .type: return 3
        }
    }
}

/// The last trace calibrated on itself, so that several ThinKV configurations (or the trial
/// replays of a memory-matching search) calibrate once. Keyed by the reader object (held weakly).
private final class SelfCalibrationMemo: @unchecked Sendable {
    static let shared = SelfCalibrationMemo()
    private let lock = NSLock()
    private weak var reader: TraceReader?
    private var full: ThoughtCalibration?
    private var fullGQA = GQASparsity.maxPool
    /// Cache-domain calibrations of `reader`, by budget and GQA rule.
    private var byBudget: [String: ThoughtCalibration] = [:]

    /// The full-cache calibration, or with a budget the cache-domain one that `cacheDomain` makes
    /// from options whose GQA rule is set.
    func calibration(
        of reader: TraceReader, gqa: GQASparsity, budget: Int?,
        cacheDomain: (CalibrationOptions) throws -> ThoughtCalibration
    ) throws -> ThoughtCalibration {
        lock.lock()
        defer { lock.unlock() }
        if self.reader !== reader {
            self.reader = reader
            full = nil
            byBudget = [:]
        }
        var options = CalibrationOptions()
        options.gqa = gqa
        if let budget {
            let key = "\(budget)/\(gqa.rawValue)"
            if let made = byBudget[key] { return made }
            let made = try cacheDomain(options)
            byBudget[key] = made
            return made
        }
        if fullGQA == gqa, let full { return full }
        let profile = try SparsityProfile.compute(reader, gqa: gqa)
        let made = try ThoughtCalibration.calibrate(
            [.init(path: reader.path, model: reader.header.model, profile: profile)], options: options)
        full = made
        fullGQA = gqa
        return made
    }
}

extension ThinKVPolicy {
    /// Says when ThinKV's own eviction (transition cuts) did less than half of the evicting,
    /// naming the rule that did most of it and how many transitions the classifier saw: a run
    /// that evicts mostly under budget pressure is not the method the paper describes.
    public static func runNotes(counters: [String: Int], parameters: PolicyParameters, layers: Int) -> [String] {
        guard components.contains(.eviction) else { return [] }
        let byRule = [
            ("transition cuts", counters["transition_evicted_tokens"] ?? 0),
            ("budget pressure", counters["pressure_evicted_tokens"] ?? 0),
            ("floor breaches", counters["floor_breach_evicted_tokens"] ?? 0)
        ]
        let total = byRule.reduce(0) { $0 + $1.1 }
        guard total > 0, 2 * byRule[0].1 < total else { return [] }
        let transitions = (counters["transitions"] ?? 0) / max(layers, 1)
        let main = byRule.dropFirst().max { $0.1 < $1.1 }!
        let shares = byRule.map { String(format: "%@ %.1f %%", $0.0, 100 * Double($0.1) / Double(total)) }.joined(
            separator: ", ")
        let classifier = (try? parameters.choice("thoughts", as: ThoughtTimeline.Source.self)) == .classifier
        let source = classifier ? "its classifier saw" : "its thought labels held"
        return [
            "ThinKV ran mostly as \(main.0) (evicted tokens: \(shares)); \(source) \(transitions) "
                + "transition\(transitions == 1 ? "" : "s")"
        ]
    }

    /// The thought types, and so the precisions, follow what the budget leaves in the cache.
    public static var memoryGrowsWithBudget: Bool { false }

    /// The classifier with `--sparsity-source full` types thoughts from the full cache's sparsity
    /// at every step (computed over the whole trace before the replay).
    public static func fullReferenceNeed(_ parameters: PolicyParameters) -> String? {
        guard let thoughts = try? Configuration.Thoughts(parameters),
            thoughts.source == .classifier, thoughts.sparsitySource == .full
        else { return nil }
        return "types thoughts from the full cache's attention sparsity at every step (--sparsity-source full), "
            + "which a sampled reference does not compute"
    }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        var parts: [String] = []
        if components.contains(.eviction) {
            let overBudget =
                (try? parameters.choice("pressure-cut", as: PressureCut.self)) == .excess
                ? "over B, by the excess; holds B"
                : "over B, the least important by whole schedule steps; holds at most B"
            parts.append(
                (try? parameters.optionalInteger("budget")).flatMap { $0 } == nil
                    ? "segments shrink after each transition; no budget"
                    : "segments shrink after each transition and, \(overBudget)")
        }
        if components.contains(.quantization) {
            let group = (try? parameters.integer("group")).map(String.init) ?? "?"
            parts.append("each group of \(group) same-type tokens quantized once full or when its thought ends")
        }
        return parts.joined(separator: "; ")
    }
}
