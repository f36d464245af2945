import Foundation
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

/// Collects snapshots from `ObservedPolicy` instances. Tests reset it, replay, then read it;
/// XCTest runs test methods one at a time, and the lock covers concurrent policy runs.
final class CacheObservations: @unchecked Sendable {
    static let shared = CacheObservations()
    private let lock = NSLock()
    private var stored: [CacheSnapshot] = []

    func reset() {
        lock.lock()
        stored.removeAll()
        lock.unlock()
    }

    func append(_ snapshot: CacheSnapshot) {
        lock.lock()
        stored.append(snapshot)
        lock.unlock()
    }

    var snapshots: [CacheSnapshot] {
        lock.lock()
        defer { lock.unlock() }
        return stored
    }
}

/// Wraps a policy and records its cache after prefill and, for every decode step, the attended
/// set (when `afterAttention` is called) and the resident set (after it returns), so tests can
/// check every step and every kv head, not only the steps that produced kept events.
/// Replayed through `PolicySpec(unregistered:)`; never registered.
final class ObservedPolicy<Inner: CachePolicy>: CachePolicy {
    static var name: String { Inner.name }
    static var summary: String { Inner.summary }
    static var parameters: [PolicyParameter] { Inner.parameters }
    static var requirements: PolicyRequirements { Inner.requirements }

    let inner: Inner
    let layer: Int

    init(parameters: PolicyParameters, setup: PolicySetup) throws {
        inner = try Inner(parameters: parameters, setup: setup)
        layer = setup.layer.index
    }

    var residentCap: Int? { inner.residentCap }

    func prefill(_ context: PrefillContext, cache: LayerCache) {
        inner.prefill(context, cache: cache)
        CacheObservations.shared.append(CacheSnapshot(layer: layer, step: nil, attended: nil, resident: cache.slots))
    }

    func beforeAttention(_ context: StepContext, cache: LayerCache) {
        inner.beforeAttention(context, cache: cache)
    }

    func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        let attended = cache.slots
        inner.afterAttention(context, attention: attention, cache: cache)
        CacheObservations.shared.append(CacheSnapshot(layer: layer, step: context.step, attended: attended, resident: cache.slots))
    }
}

extension TestTraces {
    /// Replays one policy wrapped in `ObservedPolicy` and returns the result, the kept events and
    /// the snapshots (prefill first, then decode steps in order, per layer).
    static func observe<P: CachePolicy>(_ path: String, _ type: P.Type, _ values: [String: String],
                                        threads: Int? = 1) throws -> (ReplayResult, [KeptEvent], [CacheSnapshot]) {
        CacheObservations.shared.reset()
        let spec = try PolicySpec(unregistered: ObservedPolicy<P>.self, values: values)
        let (result, events) = try replay(path, [spec], threads: threads)
        return (result, events, CacheObservations.shared.snapshots)
    }
}
