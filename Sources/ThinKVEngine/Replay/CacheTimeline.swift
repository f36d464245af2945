import Foundation

/// One quantization a policy applied to a kv head's cache: which positions, which tensor, with
/// which quantizer and grouping. Enough to apply the same rounding to other tensors (the keys
/// and values a model computes when it runs with this policy's cache; tools/end_to_end).
public struct QuantizedGroup: Equatable, Sendable {
    public enum Tensor: String, Sendable {
        case key, value
        /// Keys grouped like values (PM-KVQ): every position's channels in runs of `channelGroup`.
        case keyPerToken = "key_per_token"
    }
    public var tensor: Tensor
    /// Keys: one group per channel over these positions (a run of at most the group size).
    /// Values and keys per token: every position's channels in runs of `channelGroup`.
    public var positions: [Int32]
    public var quantizer: GroupQuantizer
    public var channelGroup: Int
    /// The first decode step whose attention sees the rounded vectors.
    public var step: Int = 0
    /// Keys per token only: per channel, what the keys were divided by before rounding and
    /// multiplied by after (PM-KVQ's SmoothAttention factors); nil when none.
    public var channelScale: [Float]? = nil
}

/// What one policy's cache did to one kv head of one layer over the whole replay, in the form
/// `replay --cache-timeline` writes: for every position, the first decode step whose attention no
/// longer sees it (-1: seen to the end), and every quantization with the step it took effect.
///
/// Attention at decode step t (position P + t) sees position j when j <= P + t and
/// `droppedAt[j]` is -1 or greater than t: caches only drop positions and append new ones, so one
/// step per position describes the whole attended-set history.
public struct CacheTimeline: Equatable, Sendable {
    public var policy: String
    public var layer: Int
    public var kvHead: Int
    public var droppedAt: [Int32]
    public var groups: [QuantizedGroup]

    /// One JSON line, fields in a fixed order (docs/end-to-end.md describes it).
    public var jsonLine: String {
        var s = "{\"policy\":\(Format.jsonString(policy)),\"layer\":\(layer),\"kv_head\":\(kvHead),\"dropped_at\":"
        s.reserveCapacity(droppedAt.count * 4 + groups.reduce(0) { $0 + $1.positions.count * 5 } + 128)
        Format.appendJSONArray(droppedAt, to: &s)
        s += ",\"groups\":["
        for (i, g) in groups.enumerated() {
            if i > 0 { s += "," }
            s += "{\"tensor\":\"\(g.tensor.rawValue)\",\"step\":\(g.step),\"quantizer\":\"\(g.quantizer.name)\""
            if g.tensor != .key { s += ",\"channel_group\":\(g.channelGroup)" }
            if let scale = g.channelScale {
                s += ",\"channel_scale\":["
                s += scale.map { "\($0)" }.joined(separator: ",")  // shortest text that reads back exactly
                s += "]"
            }
            s += ",\"positions\":"
            Format.appendJSONArray(g.positions, to: &s)
            s += "}"
        }
        return s + "]}"
    }
}

/// Receives each policy's timelines as a layer finishes (thread-safe sinks only).
public protocol CacheTimelineSink: AnyObject, Sendable {
    func record(_ timelines: [CacheTimeline])
}

/// Follows one policy's cache on one layer at the moment each step's query attends: which
/// positions left the attended set, and the quantizations logged since the previous step.
final class CacheTimelineRecorder {
    private var droppedAt: [[Int32]]
    private var previous: [[Int32]]
    private var groups: [[QuantizedGroup]]
    private var seen: [UInt32]
    private var stamp: UInt32 = 0

    /// `promptLength`: the positions every head holds before the policy's prefill hook (which
    /// may drop some of them before the first decode step).
    init(cache: LayerCache, promptLength: Int) {
        droppedAt = Array(repeating: [Int32](repeating: -1, count: cache.numTokens), count: cache.numKVHeads)
        previous = Array(repeating: (0..<Int32(promptLength)).map { $0 }, count: cache.numKVHeads)
        groups = Array(repeating: [], count: cache.numKVHeads)
        seen = [UInt32](repeating: 0, count: cache.numTokens)
        cache.quantizationLog = []
    }

    /// Called after the policy's pre-attention hook of decode step `step` (the new position is
    /// already appended): what this step's attention sees.
    func observe(_ cache: LayerCache, step: Int) {
        for g in 0..<cache.numKVHeads {
            let now = cache.slots[g]
            // Appending adds one position: fewer than previous + 1 means some were dropped.
            if now.count < previous[g].count + 1 {
                stamp &+= 1
                if stamp == 0 { for i in seen.indices { seen[i] = 0 }; stamp = 1 }
                for p in now { seen[Int(p)] = stamp }
                for p in previous[g] where seen[Int(p)] != stamp && droppedAt[g][Int(p)] < 0 {
                    droppedAt[g][Int(p)] = Int32(step)
                }
            }
            previous[g] = now
        }
        if let log = cache.quantizationLog, !log.isEmpty {
            for (head, group) in log {
                var stamped = group
                stamped.step = step
                groups[head].append(stamped)
            }
            cache.quantizationLog = []
        }
    }

    func timelines(policy: String, layer: Int) -> [CacheTimeline] {
        droppedAt.indices.map { g in
            CacheTimeline(policy: policy, layer: layer, kvHead: g, droppedAt: droppedAt[g], groups: groups[g])
        }
    }
}
