import Foundation

/// One decode step of one layer under one policy (docs/metrics.md defines every field).
public struct StepRecord: Codable, Equatable, Sendable {
    public var layer: Int
    public var step: Int
    public var position: Int
    /// Tokens the step's query attended to / left resident for the next step, mean over kv heads.
    public var attendedTokens: Double
    public var residentTokens: Double
    /// Bytes of K+V (with quantization metadata) of this layer, all kv heads.
    public var attendedBytes: Int
    public var residentBytes: Int
    /// Bytes the full 16-bit cache holds at this step (p+1 tokens).
    public var fullBytes: Int
    /// Paging (0 with `--paging none`): blocks held by the attended set over all kv heads, the
    /// fraction of their slots holding live tokens, the bytes those blocks occupy (plus
    /// quantization metadata), and the bytes a gather-compaction would copy at this step.
    public var blocks: Int
    public var slotOccupancy: Double
    public var pagedBytes: Int
    public var compactionBytes: Int
    /// Means over query heads (and the minimum recall over heads).
    public var massRecall: Float
    public var massRecallMin: Float
    public var topKRecall: Float
    public var attentionKL: Float
    /// nil when the trace has no values for this layer.
    public var outputError: Float?
    /// Attention sparsity of the full cache at this step (context for ThinKV).
    public var sparsity: Float
    /// The policy removed a position from some kv head during this step (an eviction ran).
    public var evicted: Bool = false
    /// The attended set by thought type and precision (policies with thought types only).
    public var thought: ThoughtStepBreakdown? = nil
}

/// A compression event for `--kept`: the positions a kv head holds after the policy dropped some.
public struct KeptEvent: Codable, Equatable, Sendable {
    public var policy: String
    public var step: Int
    public var position: Int
    public var layer: Int
    public var kvHead: Int
    public var kept: [Int32]

    enum CodingKeys: String, CodingKey {
        case policy, step, position, layer, kept
        case kvHead = "kv_head"
    }

    /// One JSON line, fields in a fixed order.
    public var jsonLine: String {
        var s = "{\"policy\":\(Format.jsonString(policy)),\"step\":\(step),\"position\":\(position),"
        s += "\"layer\":\(layer),\"kv_head\":\(kvHead),\"kept\":"
        s.reserveCapacity(s.utf8.count + kept.count * 6)
        Format.appendJSONArray(kept, to: &s)
        return s + "}"
    }
}

/// Receives kept events as they happen (thread-safe sinks only).
public protocol KeptEventSink: AnyObject, Sendable {
    func record(_ events: [KeptEvent])
}

/// Keeps kept events in memory (tests, and callers that post-process them).
public final class KeptEventCollector: KeptEventSink, @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [KeptEvent] = []

    public init() {}

    public func record(_ events: [KeptEvent]) {
        lock.lock()
        stored += events
        lock.unlock()
    }

    /// Events ordered by (policy, layer, step, kv head), independent of thread timing.
    public var events: [KeptEvent] {
        lock.lock()
        defer { lock.unlock() }
        return stored.sorted { ($0.policy, $0.layer, $0.step, $0.kvHead) < ($1.policy, $1.layer, $1.step, $1.kvHead) }
    }
}
