import Foundation
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// What one policy instance's cache held, per kv head, at one point of a replay.
struct CacheSnapshot: Equatable {
    let layer: Int
    /// nil after prefill; the decode step otherwise.
    let step: Int?
    /// Positions each kv head attended to at this step (nil after prefill).
    let attended: [[Int32]]?
    /// Positions each kv head holds after the policy acted.
    let resident: [[Int32]]
}

/// Snapshots recorded during a replay. Tests reset it, replay, then read it; XCTest runs test
/// methods one at a time, and the lock covers concurrent policy runs.
final class ObservationLog<Snapshot>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [Snapshot] = []

    func reset() {
        lock.lock()
        stored.removeAll()
        lock.unlock()
    }

    func append(_ snapshot: Snapshot) {
        lock.lock()
        stored.append(snapshot)
        lock.unlock()
    }

    var snapshots: [Snapshot] {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }
}

/// What a test records of the policy `ProbedPolicy` wraps, after prefill and after each step.
protocol PolicyProbe {
    associatedtype Inner: CachePolicy
    associatedtype Snapshot
    static var log: ObservationLog<Snapshot> { get }
    /// `step` and `attended` (each kv head's slots during the step's attention) are nil after
    /// prefill; `cache` is as the policy left it.
    static func snapshot(
        of inner: Inner, layer: Int, step: Int?, position: Int, attended: [[Int32]]?,
        cache: LayerCache
    ) -> Snapshot
}

/// Wraps a policy, forwarding everything (its class-level settings and `prepare` included), and
/// appends `Probe`'s snapshot to its log after prefill and after every decode step, so tests
/// can check every step and every kv head, not only the steps that produced kept events.
/// Replayed through `PolicySpec(unregistered:)`; never registered.
final class ProbedPolicy<Probe: PolicyProbe>: CachePolicy {
    typealias Inner = Probe.Inner
    static var name: String { Inner.name }
    static var summary: String { Inner.summary }
    static var parameters: [PolicyParameter] { Inner.parameters }
    static var requirements: PolicyRequirements { Inner.requirements }
    static var preferredBlockSize: Int { Inner.preferredBlockSize }
    static var readsAttention: Bool { Inner.readsAttention }
    static var evictsNothing: Bool { Inner.evictsNothing }
    static func compressionCadence(_ parameters: PolicyParameters) -> String { Inner.compressionCadence(parameters) }
    static func cadenceParameter(_ parameters: PolicyParameters) -> String? { Inner.cadenceParameter(parameters) }
    static func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (any Sendable)? {
        try Inner.prepare(reader, parameters: parameters, layers: layers)
    }

    let inner: Inner
    let layer: Int

    init(parameters: PolicyParameters, setup: PolicySetup) throws {
        inner = try Inner(parameters: parameters, setup: setup)
        layer = setup.layer.index
    }

    var residentCap: Int? { inner.residentCap }

    func prefill(_ context: PrefillContext, cache: LayerCache) {
        inner.prefill(context, cache: cache)
        Probe.log.append(
            Probe.snapshot(
                of: inner, layer: layer, step: nil, position: context.setup.header.promptLength - 1,
                attended: nil, cache: cache))
    }

    func beforeAttention(_ context: StepContext, cache: LayerCache) {
        inner.beforeAttention(context, cache: cache)
    }

    func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        let attended = cache.slots
        inner.afterAttention(context, attention: attention, cache: cache)
        Probe.log.append(
            Probe.snapshot(
                of: inner, layer: layer, step: context.step, position: context.position,
                attended: attended, cache: cache))
    }
}

let cacheObservations = ObservationLog<CacheSnapshot>()

/// Records the attended and resident positions of any policy.
enum CacheProbe<Inner: CachePolicy>: PolicyProbe {
    static var log: ObservationLog<CacheSnapshot> { cacheObservations }
    static func snapshot(
        of inner: Inner, layer: Int, step: Int?, position: Int, attended: [[Int32]]?,
        cache: LayerCache
    ) -> CacheSnapshot {
        CacheSnapshot(layer: layer, step: step, attended: attended, resident: cache.slots)
    }
}

extension TestTraces {
    /// Replays one policy wrapped in `ProbedPolicy<Probe>` and returns the result, the kept events
    /// and the snapshots (prefill first, then decode steps in order, per layer).
    static func observe<Probe: PolicyProbe>(
        _ path: String, probe: Probe.Type, _ values: [String: String],
        threads: Int? = 1
    ) throws -> (ReplayResult, [KeptEvent], [Probe.Snapshot]) {
        Probe.log.reset()
        let spec = try PolicySpec(unregistered: ProbedPolicy<Probe>.self, values: values)
        let (result, events) = try replay(path, [spec], threads: threads)
        return (result, events, Probe.log.snapshots)
    }

    /// `observe` with the attended and resident positions of policy `P`.
    static func observe<P: CachePolicy>(
        _ path: String, _ type: P.Type, _ values: [String: String],
        threads: Int? = 1
    ) throws -> (ReplayResult, [KeptEvent], [CacheSnapshot]) {
        try observe(path, probe: CacheProbe<P>.self, values, threads: threads)
    }
}
