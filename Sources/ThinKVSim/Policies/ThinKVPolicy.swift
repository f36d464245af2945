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
    /// Segments emptied below the floor as the last resort to meet the budget.
    public var floorBreaches = 0
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
    /// Segments shrink by k-means over keys; the step's attention is never read.
    public class var readsAttention: Bool { false }

    /// The thought timeline (`ThoughtTimeline`), computed once per replay.
    public class func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (any Sendable)? {
        try ThinKVParameters.timeline(reader, parameters: parameters, policy: name)
    }

    public let timeline: ThoughtTimeline
    public let components: ThinKVComponents
    public let quantizerConfiguration: ThoughtGroupQuantizer.Configuration?
    public let budget: Int?
    public let schedule: RetentionSchedule
    public let sinks: Int
    public let recent: Int
    public let kmeansIterations: Int
    public let seed: UInt64

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

    /// Paging class of prompt tokens: apart from the three thought types.
    static let promptPagingClass: UInt8 = 3

    public required init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let name = Self.name
        components = Self.components
        guard let timeline = setup.prepared as? ThoughtTimeline else {
            throw PolicyError("\(name): no thought timeline; the replay runs \(name).prepare before the layers")
        }
        guard timeline.types.count == setup.header.generatedLength else {
            throw PolicyError("\(name): the thought timeline has \(timeline.types.count) steps, the trace \(setup.header.generatedLength)")
        }
        self.timeline = timeline
        self.setup = setup

        if components.contains(.quantization) {
            let format = QuantFormat(rawValue: parameters.string("format")!)!
            let promptBits = parameters.int("prompt-bits")!
            let configuration = ThoughtGroupQuantizer.Configuration(
                format: format, reasoningBits: parameters.int("r-bits")!, executionBits: parameters.int("e-bits")!,
                transitionBits: parameters.int("t-bits")!, groupSize: parameters.int("group")!,
                promptBits: promptBits == 16 ? nil : promptBits, promptPagingClass: Self.promptPagingClass)
            // Refuse unsupported widths now rather than at the first layer's prefill.
            for bits in configuration.bitsByType + (configuration.promptBits.map { [$0] } ?? []) {
                do { _ = try GroupQuantizer(format: format, bits: bits) } catch let error as PolicyError {
                    throw PolicyError("\(name): \(error.description)")
                }
            }
            quantizerConfiguration = configuration
        } else {
            quantizerConfiguration = nil
        }

        if components.contains(.eviction) {
            budget = parameters.int("budget")
            do { schedule = try RetentionSchedule(parsing: parameters.string("schedule")!) } catch let error as PolicyError {
                throw PolicyError("\(name): --schedule: \(error.description)")
            }
            sinks = parameters.int("sinks")!
            recent = parameters.int("recent")!
            kmeansIterations = parameters.int("kmeans-iters")!
            seed = UInt64(parameters.int("seed")!)
            if let budget, budget < sinks + recent {
                throw PolicyError("\(name): --budget (\(budget)) must be at least --sinks + --recent (\(sinks) + \(recent)): those positions are never evicted")
            }
            segments = ThoughtSegments(numTokens: setup.header.numTokens)
        } else {
            budget = nil
            schedule = .paperDefault
            sinks = 0
            recent = 0
            kmeansIterations = 0
            seed = 0
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
            for p in 0..<P { cache.pagingClass[p] = Self.promptPagingClass }
        }
        if let segments {
            segments.beginPrompt(length: P)
            // A prompt longer than the budget shrinks before decoding starts.
            if let budget, P > budget { evict(newest: P - 1, transition: false, cache: cache) }
        }
    }

    public func beforeAttention(_ context: StepContext, cache: LayerCache) {
        let type = timeline.types[context.step]
        // The engine pages the new token right after this hook: its class must be set now.
        if let quantizer {
            quantizer.setThoughtType(Int(type.rawValue), position: context.position, cache: cache)
        } else {
            cache.pagingClass[context.position] = UInt8(type.rawValue)
        }
        if let segments { transitionPending = segments.append(position: context.position, type: type) }
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        quantizer?.append(position: context.position, thoughtType: Int(timeline.types[context.step].rawValue), cache: cache)
        if segments != nil {
            evict(newest: context.position, transition: transitionPending, cache: cache)
            transitionPending = false
        }
    }

    // MARK: Eviction

    /// Decides the segment sizes (the same in every head) and, per head, keeps each shrinking
    /// segment's protected tokens plus k-means representatives of the others.
    private func evict(newest: Int, transition: Bool, cache: LayerCache) {
        guard let segments else { return }
        if transition { counters.transitions += 1 }
        // Nothing to decide between transitions while under budget (every head holds as many).
        guard transition || budget.map({ cache.count(kvHead: 0) > $0 }) == true else { return }
        let protection = ThoughtSegments.Protection(sinks: sinks, recent: recent, newest: newest)
        let decision = segments.decide(resident: cache.slots[0], transition: transition, budget: budget,
                                       schedule: schedule, protection: protection)
        for event in decision.events {
            switch event.reason {
            case .transition: counters.transitionCuts += 1
            case .pressure: counters.pressureCuts += 1
            case .split: counters.splits += 1
            case .floorBreach: counters.floorBreaches += 1
            }
        }
        let cut = decision.cutSegments
        guard !cut.isEmpty else { return }
        var bucketOf = [Int: Int]()
        for (i, s) in cut.enumerated() { bucketOf[s] = i }

        for h in 0..<cache.numKVHeads {
            // Unprotected resident positions of each shrinking segment, in position order.
            var candidates = Array(repeating: [Int32](), count: cut.count)
            for p in cache.slots[h] {
                let position = Int(p)
                guard let bucket = bucketOf[segments.segmentIndex(of: position)],
                      !segments.isProtected(position, protection) else { continue }
                candidates[bucket].append(p)
            }
            var evicted: [Int32] = []
            for (bucket, s) in cut.enumerated() {
                let pool = candidates[bucket]
                assert(pool.count == decision.before[s] - decision.protected[s], "every head holds the same number per segment")
                let keep = decision.after[s] - decision.protected[s]
                let kept = representatives(of: pool, keep: keep, kvHead: h, segment: segments.segments[s], cache: cache)
                var isKept = Set<Int32>(minimumCapacity: kept.count)
                for i in kept { isKept.insert(pool[i]) }
                for p in pool where !isKept.contains(p) {
                    evicted.append(p)
                    evictedMark[Int(p)] = true
                }
            }
            cache.removeAll(kvHead: h) { evictedMark[Int($0)] }
            for p in evicted { evictedMark[Int(p)] = false }
            quantizer?.didEvict(kvHead: h, positions: evicted, cache: cache)
        }
    }

    /// Indices into `pool` of the `keep` tokens nearest the centroids of a k-means over their
    /// exact keys in head `h`.
    private func representatives(of pool: [Int32], keep: Int, kvHead h: Int, segment: ThoughtSegment, cache: LayerCache) -> [Int] {
        guard keep > 0 else { return [] }
        guard keep < pool.count else { return Array(pool.indices) }
        guard let exactKeys = data?.keys else { preconditionFailure("TBE needs keys (declared in its requirements)") }
        let D = setup.header.headDim, T = setup.header.numTokens
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
        var stream = SeededRandom(seed: seed, stream: [UInt64(setup.layer.index), UInt64(h), UInt64(segment.start), UInt64(segment.level)])
        let callSeed = stream.next()
        return gathered.withUnsafeBufferPointer {
            KMeans.representatives(points: $0.baseAddress!, count: pool.count, dimension: D, k: keep,
                                   iterations: kmeansIterations, seed: callSeed)
        }
    }
}

/// The parameters of the ThinKV policies, grouped by the component that reads them, and the
/// assembly of the thought timeline from them.
enum ThinKVParameters {
    static let thoughts: [PolicyParameter] = [
        .choice("thoughts", ThoughtTimeline.Source.allCases.map(\.rawValue), default: ThoughtTimeline.Source.classifier.rawValue,
                help: "thought types from the sparsity classifier, or from the trace's /tokens/thought labels (oracle ablation)"),
        .text("calibration", "FILE",
              help: "classifier thresholds as JSON (theta1, theta2, layers, refresh_interval, sparsity_ratio), e.g. from 'thinkv-sim calibrate'; the options below override its fields"),
        .real("theta1", min: 0, max: 1, help: "θ1: averaged sparsity below it is execution (E)"),
        .real("theta2", min: 0, max: 1, help: "θ2: averaged sparsity above it is transition (T); between θ1 and θ2 reasoning (R)"),
        .text("thought-layers", "LIST",
              help: "L*: layers whose sparsity is averaged, e.g. 0,5,9 (default: the calibration file's, else every recorded layer)"),
        .integer("tau", min: 1, help: "τ: decode steps a type is held before it is re-evaluated (default: the calibration file's, else 128)"),
    ]

    static let quantization: [PolicyParameter] = [
        .choice("format", QuantFormat.allCases.map(\.rawValue), default: QuantFormat.paper.rawValue,
                help: "paper = FP8 E4M3 (8 bits), NVFP4 (4), ternary (2); int = asymmetric min-max integers"),
        .integer("r-bits", default: 4, min: 1, max: 8, help: "bits per element of reasoning tokens (paper format: 2, 4 or 8)"),
        .integer("e-bits", default: 4, min: 1, max: 8, help: "bits per element of execution tokens"),
        .integer("t-bits", default: 2, min: 1, max: 8, help: "bits per element of transition tokens"),
        .integer("group", default: 16, min: 1, max: 1 << 16,
                 help: "tokens per key group (per channel) and channels per value group; a group never mixes thought types"),
        .integer("prompt-bits", default: 16, min: 1, max: 16,
                 help: "bits of the prompt, in whole groups of prompt tokens; 16 keeps it unquantized"),
    ]

    static let eviction: [PolicyParameter] = [
        .integer("budget", min: 1,
                 help: "resident tokens per kv head; over it the least important old segment shrinks (default: no budget, segments shrink at transitions only)"),
        .text("schedule", "LIST", default: "64,32,16,8,4",
              help: "retention schedule: sizes an old segment shrinks to, one step per transition or per budget overflow; the last is the floor"),
        .integer("sinks", default: 4, min: 0, help: "first positions never evicted (attention sinks)"),
        .integer("recent", default: 16, min: 1, help: "newest positions never evicted (covers TBQ's open 16-bit group at the default --group)"),
        .integer("kmeans-iters", default: 10, min: 0, help: "Lloyd iterations of the k-means that picks a segment's representatives"),
        .integer("seed", default: 0, min: 0, help: "seed of the k-means++ initialisation"),
    ]

    static func declared(for components: ThinKVComponents) -> [PolicyParameter] {
        thoughts + (components.contains(.quantization) ? quantization : []) + (components.contains(.eviction) ? eviction : [])
    }

    /// The thought timeline the parameters ask for.
    static func timeline(_ reader: TraceReader, parameters: PolicyParameters, policy: String) throws -> ThoughtTimeline {
        switch ThoughtTimeline.Source(rawValue: parameters.string("thoughts")!)! {
        case .labels:
            return try ThoughtTimeline.fromLabels(reader, policy: policy)
        case .classifier:
            return try ThoughtTimeline.fromClassifier(reader, thresholds: thresholds(reader, parameters: parameters, policy: policy),
                                                      policy: policy)
        }
    }

    /// Thresholds from `--calibration` and/or the explicit options (which win).
    static func thresholds(_ reader: TraceReader, parameters: PolicyParameters, policy: String) throws -> ThoughtThresholds {
        let theta1 = parameters.double("theta1").map(Float.init)
        let theta2 = parameters.double("theta2").map(Float.init)
        let layers = try parameters.string("thought-layers").map { try parseLayers($0, policy: policy) }
        let tau = parameters.int("tau")
        var thresholds: ThoughtThresholds
        if let path = parameters.string("calibration") {
            do {
                thresholds = try ThoughtThresholds.load(path: path)
            } catch let error as CalibrationError {
                throw PolicyError("\(policy): --calibration \(error.description)")
            }
        } else {
            guard let theta1, let theta2 else {
                throw PolicyError("\(policy): the thought classifier needs thresholds: --calibration FILE (from 'thinkv-sim calibrate') or --theta1 and --theta2; or use --thoughts labels on a labelled trace")
            }
            thresholds = ThoughtThresholds(theta1: theta1, theta2: theta2, layers: reader.recordedLayerIndices)
        }
        if let theta1 { thresholds.theta1 = theta1 }
        if let theta2 { thresholds.theta2 = theta2 }
        if let layers { thresholds.layers = layers }
        if let tau { thresholds.refreshInterval = tau }
        return thresholds
    }

    static func parseLayers(_ text: String, policy: String) throws -> [Int] {
        let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let layers = parts.compactMap { Int($0) }
        guard !parts.isEmpty, layers.count == parts.count, layers.allSatisfy({ $0 >= 0 }) else {
            throw PolicyError("\(policy): --thought-layers must be a comma list of layer indices such as 0,5,9, got '\(text)'")
        }
        guard Set(layers).count == layers.count else {
            throw PolicyError("\(policy): --thought-layers lists a layer twice: '\(text)'")
        }
        return layers
    }
}

extension ThinKVPolicy {
    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        var parts: [String] = []
        if components.contains(.eviction) {
            parts.append(parameters.int("budget") == nil
                ? "segments shrink at each transition; no budget"
                : "segments shrink at each transition and while over B; holds B")
        }
        if components.contains(.quantization) {
            parts.append("each group of \(parameters.int("group")!) same-type tokens quantized once full")
        }
        return parts.joined(separator: "; ")
    }
}
