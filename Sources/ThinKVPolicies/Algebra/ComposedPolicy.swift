import Foundation

/// Which part of a composition a parameter belongs to.
public enum CompositionPart: String, Sendable {
    case base, trigger, quantizer, allocation
}

/// One parameter of a composition: as declared (renamed on a clash) and as its part knows it.
public struct ComposedParameter: Sendable {
    public let declared: PolicyParameter
    public let part: CompositionPart
    public let original: String
}

/// What the composition's `prepare` returns: each part's own result.
struct ComposedPrepared: Sendable, ReplayNotes {
    let base: (any Sendable)?
    let trigger: (any Sendable)?
    let quantizer: (any Sendable)?

    var replayNotes: [String] {
        [base, trigger, quantizer].flatMap { ($0 as? ReplayNotes)?.replayNotes ?? [] }
    }
}

/// The composition's view of itself, whatever its generic arguments.
public protocol ComposedPolicyType: CachePolicy {
    static var layout: [ComposedParameter] { get }
    static var baseType: any CachePolicy.Type { get }
}

/// A policy made of parts (see `PolicyAlgebra` for the spelling): a base policy (what to
/// keep), optionally a trigger that replaces the base's own (when to compress), a quantizer (how
/// many bits for whom) and Ada-KV's head-wise allocation.
///
/// Hook order, per layer: the base's hook first, then the quantizer's on what the base left.
/// After a step's attention, with a trigger or Ada-KV the base only keeps its books
/// (`CompressibleNow.triggeredStep`) and the composition decides whether it compresses; without,
/// the base's own `afterAttention` runs unchanged.
///
/// Parameters: the base's (minus those of its own trigger when a trigger replaces it), then the
/// trigger's, the quantizer's and the wrapper's; a part's parameter whose name is taken already
/// is renamed `PART-NAME` (`kivi-group`), so the base's names never change.
public final class ComposedPolicy<
    Base: CachePolicy, Trigger: CompressionTrigger, Quantizer: CacheQuantizer,
    Allocation: HeadAllocation
>: ComposedPolicyType {
    static var overridesTrigger: Bool { Trigger.self != BaseTrigger.self }
    static var pools: Bool { Allocation.self == AdaKV.self }

    public static var name: String {
        Base.name + (overridesTrigger ? "@" + Trigger.spelling : "")
            + (Quantizer.name.isEmpty ? "" : "+" + Quantizer.name)
            + (Allocation.name.isEmpty ? "" : "+" + Allocation.name)
    }

    public static var summary: String {
        var parts = [Base.summary]
        if overridesTrigger { parts.append("triggered: \(Trigger.summary)") }
        if !Quantizer.name.isEmpty { parts.append("quantized: \(Quantizer.summary)") }
        if !Allocation.name.isEmpty { parts.append("allocated: \(Allocation.summary)") }
        return parts.joined(separator: "; ")
    }

    public static var baseType: any CachePolicy.Type { Base.self }

    public static var layout: [ComposedParameter] {
        let hidden = overridesTrigger ? ((Base.self as? any CompressibleNow.Type)?.ownTriggerParameters ?? []) : []
        var out: [ComposedParameter] = []
        var taken = Set<String>()
        for p in Base.parameters where !hidden.contains(p.name) {
            out.append(ComposedParameter(declared: p, part: .base, original: p.name))
            taken.insert(p.name)
        }
        let parts: [(CompositionPart, [PolicyParameter], String)] = [
            (.trigger, Trigger.parameters, "trigger"), (.quantizer, Quantizer.parameters, Quantizer.name),
            (.allocation, Allocation.parameters, Allocation.name)
        ]
        for (part, parameters, prefix) in parts {
            for p in parameters {
                let name = taken.contains(p.name) ? "\(prefix)-\(p.name)" : p.name
                taken.insert(name)
                let declared = PolicyParameter(
                    name, p.kind, default: p.defaultValue, required: p.required,
                    help: p.help)
                out.append(ComposedParameter(declared: declared, part: part, original: p.name))
            }
        }
        return out
    }

    public static var parameters: [PolicyParameter] { layout.map(\.declared) }

    /// The values the composition was given for one part, under the part's own names.
    static func parameters(of part: CompositionPart, _ given: PolicyParameters) throws -> PolicyParameters {
        var values: [String: String] = [:]
        for entry in layout where entry.part == part {
            if let value = given.given[entry.declared.name] { values[entry.original] = value }
        }
        let specs: [PolicyParameter]
        let owner: String
        switch part {
        case .base: (specs, owner) = (Base.parameters, Base.name)
        case .trigger: (specs, owner) = (Trigger.parameters, name)
        case .quantizer: (specs, owner) = (Quantizer.parameters, name)
        case .allocation: (specs, owner) = (Allocation.parameters, name)
        }
        return try PolicyParameters(policy: owner, specs: specs, values: values)
    }

    public static var requirements: PolicyRequirements { Base.requirements.union(Quantizer.requirements) }
    /// A quantizer's precisions may depend on what the base kept (TBQ's thought types): only a
    /// composition without one keeps the base's declaration.
    public static var memoryGrowsWithBudget: Bool { Base.memoryGrowsWithBudget && Quantizer.name.isEmpty }
    public static func fullReferenceNeed(_ parameters: PolicyParameters) -> String? {
        if let base = try? self.parameters(of: .base, parameters), let reason = Base.fullReferenceNeed(base) {
            return reason
        }
        guard let quantizer = try? self.parameters(of: .quantizer, parameters) else { return nil }
        return Quantizer.fullReferenceNeed(quantizer)
    }
    public static var preferredBlockSize: Int { Quantizer.preferredBlockSize ?? Base.preferredBlockSize }
    public static var readsAttention: Bool { Base.readsAttention }

    public static var conformanceSettings: [String: String] {
        var settings: [String: String] = [:]
        let visible = Set(layout.map(\.declared.name))
        for (key, value) in Base.conformanceSettings where visible.contains(key) { settings[key] = value }
        for (part, values) in [
            (CompositionPart.trigger, Trigger.conformanceSettings),
            (.quantizer, Quantizer.conformanceSettings)
        ] {
            for (key, value) in values {
                if let entry = layout.first(where: { $0.part == part && $0.original == key }) {
                    settings[entry.declared.name] = value
                }
            }
        }
        return settings
    }

    public static func prepare(
        _ reader: TraceReader, parameters: PolicyParameters,
        layers: [Int]
    ) throws -> (any Sendable)? {
        ComposedPrepared(
            base: try Base.prepare(reader, parameters: try self.parameters(of: .base, parameters), layers: layers),
            trigger: try Trigger.prepare(
                reader, parameters: try self.parameters(of: .trigger, parameters), layers: layers),
            quantizer: try Quantizer.prepare(
                reader, parameters: try self.parameters(of: .quantizer, parameters),
                layers: layers))
    }

    public static func validationPrepared(header: TraceHeader) -> (any Sendable)? {
        ComposedPrepared(
            base: Base.validationPrepared(header: header),
            trigger: Trigger.validationPrepared(header: header),
            quantizer: Quantizer.validationPrepared(header: header))
    }

    public static func compressionCadence(_ parameters: PolicyParameters) -> String {
        var lines: [String] = []
        if overridesTrigger, let trigger = try? self.parameters(of: .trigger, parameters) {
            lines.append(Trigger.cadence(trigger) + "; keeps B per head")
        } else if let base = try? self.parameters(of: .base, parameters) {
            lines.append(Base.compressionCadence(base))
        }
        if pools { lines.append("Ada-KV: heads × B per layer, pooled") }
        if !Quantizer.name.isEmpty, let quantizer = try? self.parameters(of: .quantizer, parameters) {
            lines.append(Quantizer.cadence(quantizer))
        }
        return lines.joined(separator: "; ")
    }

    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? {
        guard !overridesTrigger, let base = try? self.parameters(of: .base, parameters) else { return nil }
        return Base.cadenceParameter(base)
    }

    public static func runNotes(counters: [String: Int], parameters: PolicyParameters, layers: Int) -> [String] {
        guard let base = try? self.parameters(of: .base, parameters) else { return [] }
        return Base.runNotes(counters: counters, parameters: base, layers: layers)
    }

    public let base: Base
    let trigger: Trigger
    let quantizer: Quantizer
    /// The base as a trigger or Ada-KV drives it (nil when neither is written).
    private let driven: (any CompressibleNow)?
    private let scorer: (any PerHeadScoring)?
    private let alpha: Double
    private let promptLength: Int
    private let numKVHeads: Int

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        let prepared = setup.prepared as? ComposedPrepared
        func partSetup(_ value: (any Sendable)?) -> PolicySetup {
            PolicySetup(
                header: setup.header, layer: setup.layer, layerOrdinal: setup.layerOrdinal,
                layerCount: setup.layerCount, prepared: value)
        }
        base = try Base(parameters: try Self.parameters(of: .base, parameters), setup: partSetup(prepared?.base))
        trigger = try Trigger(parameters: try Self.parameters(of: .trigger, parameters), prepared: prepared?.trigger)
        quantizer = try Quantizer(
            parameters: try Self.parameters(of: .quantizer, parameters),
            setup: partSetup(prepared?.quantizer))
        alpha = Self.pools ? try Self.parameters(of: .allocation, parameters).real("alpha") : 0
        promptLength = setup.header.promptLength
        numKVHeads = setup.header.numKVHeads
        if Self.overridesTrigger || Self.pools {
            guard let driven = base as? any CompressibleNow else {
                throw PolicyError("\(Self.name): \(Base.name) cannot hand its compression to a trigger")
            }
            self.driven = driven
        } else {
            driven = nil
        }
        scorer = base as? any PerHeadScoring
        if Self.pools && scorer == nil {
            throw PolicyError("\(Self.name): \(Base.name) has no per-head scores for Ada-KV to pool")
        }
    }

    public var residentCap: Int? {
        guard let driven else { return base.residentCap }
        guard let target = driven.fixedTarget else { return nil }
        guard let steps = Self.overridesTrigger ? trigger.stepsBetween : scorer!.ownCadenceSteps else { return nil }
        let kept = Self.pools ? target * numKVHeads : target
        return max(promptLength, kept) + steps - 1
    }

    public func prefill(_ context: PrefillContext, cache: LayerCache) {
        let before = counts(cache)
        base.prefill(context, cache: cache)
        quantizer.prefill(context, cache: cache, evicted: shrank(cache, from: before))
    }

    public func beforeAttention(_ context: StepContext, cache: LayerCache) {
        base.beforeAttention(context, cache: cache)
        quantizer.beforeAttention(context, cache: cache)
    }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        let before = counts(cache)
        if let driven {
            let target = driven.compressionTarget(position: context.position)
            let fires: Bool
            if Self.overridesTrigger {
                let overflow =
                    Self.pools
                    ? before.reduce(0, +) > target * before.count
                    : before.contains { $0 > target }
                fires = trigger.fires(step: context.step, overflow: overflow)
            } else {
                fires = scorer!.ownCadenceFires(context)
            }
            if Self.pools {
                driven.triggeredStep(context, attention: attention, compress: false, cache: cache)
                if fires { allocate(context, target: target, cache: cache) }
            } else {
                driven.triggeredStep(context, attention: attention, compress: fires, cache: cache)
            }
        } else {
            base.afterAttention(context, attention: attention, cache: cache)
        }
        quantizer.afterAttention(context, attention: attention, cache: cache, evicted: shrank(cache, from: before))
    }

    /// Ada-KV: the layer keeps heads × target tokens by the pooled scores.
    private func allocate(_ context: StepContext, target: Int, cache: LayerCache) {
        guard let scorer else { return }
        var scores: [[Double]] = []
        for g in 0..<cache.numKVHeads {
            guard let headScores = scorer.headScores(context, kvHead: g, slots: cache.slots[g]) else { return }
            scores.append(headScores)
        }
        guard let kept = AdaKV.keep(scores: scores, target: target, alpha: alpha) else { return }
        for g in 0..<cache.numKVHeads where kept[g].count < cache.count(kvHead: g) {
            cache.keep(kvHead: g, slotIndices: kept[g])
        }
    }

    private func counts(_ cache: LayerCache) -> [Int] { (0..<cache.numKVHeads).map { cache.count(kvHead: $0) } }

    private func shrank(_ cache: LayerCache, from before: [Int]) -> Bool {
        before.indices.contains { cache.count(kvHead: $0) < before[$0] }
    }

    public func thoughtBreakdown(cache: LayerCache) -> ThoughtStepBreakdown? {
        quantizer.thoughtBreakdown(cache: cache) ?? base.thoughtBreakdown(cache: cache)
    }

    public var reportCounters: [(name: String, value: Int)] { base.reportCounters + quantizer.reportCounters }
}
