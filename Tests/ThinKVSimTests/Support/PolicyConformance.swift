import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Parameters for replaying any policy on a small test trace (about 100 tokens), derived from
/// what the policy declares, so that a new policy is tested without editing any test:
/// 1. the policy's own `conformanceSettings`;
/// 2. real parameters `theta1` and `theta2` without a default (thresholds the policy would
///    otherwise calibrate on the trace): the tertiles of the trace's full-cache sparsity, mean
///    over its layers, so that several thought types occur;
/// 3. the integer parameter its `cadenceParameter` names, when not given: `cadenceSteps`, so
///    that a small trace compresses several times (defaults are often 128 or more);
/// 4. the parameter with the budget role (`CachePolicy.budgetParameter`): the smallest the policy
///    accepts with the rest (its own checks on the trace's shape, as `PolicySpec.lowestBudget`
///    searches), a quarter of the trace more, the trace's length, or the smallest that covers the
///    trace (`Budget`).
/// A step that the policy refuses is left out (the cadence) or reported (the rest).
enum PolicyConformance {
    enum Budget: String, CaseIterable {
        case smallest, moderate
        /// The trace's token count (or the first accepted budget above it).
        case traceLength = "trace-length"
        /// At least the token count, and a resident cap that holds every position.
        case coveringTheTrace = "covering the trace"
    }

    static let cadenceSteps = 8

    /// True when the policy declares an integer budget (the role a memory match sets).
    static func declaresBudget(_ type: any CachePolicy.Type) -> Bool { MemoryMatcher.hasBudget(type) }

    /// The name of the policy's budget parameter ("budget" for every policy so far).
    static func budgetName(_ type: any CachePolicy.Type) -> String { type.budgetParameter?.name ?? "budget" }

    /// A spec of `type` with `values`: by name for a registered policy, else unregistered.
    static func spec(_ type: any CachePolicy.Type, _ values: [String: String]) throws -> PolicySpec {
        if let registered = PolicyRegistry.type(named: type.name),
            ObjectIdentifier(registered) == ObjectIdentifier(type)
        {
            return try PolicySpec(name: type.name, values: values)
        }
        return try PolicySpec(unregistered: type, values: values)
    }

    /// Whether the policy accepts `values` on every recorded layer of the trace (its
    /// `checkConfiguration`, as a replay checks a configuration before preparing it).
    static func accepts(
        _ type: any CachePolicy.Type, _ values: [String: String],
        reader: TraceReader
    ) -> Bool {
        guard let spec = try? spec(type, values) else { return false }
        return reader.recordedLayerIndices.allSatisfy { layer in
            guard let info = reader.layerInfo(layer) else { return false }
            return (try? spec.checkParameters(header: reader.header, layer: info)) != nil
        }
    }

    /// The values to replay `type` with on `reader`; `budget` matters only to a policy that
    /// declares one. Throws when the policy accepts no budget up to the trace length.
    static func settings(
        for type: any CachePolicy.Type, reader: TraceReader,
        budget: Budget = .smallest
    ) throws -> [String: String] {
        var values = type.conformanceSettings
        let declared = Dictionary(type.parameters.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        if let theta1 = declared["theta1"], let theta2 = declared["theta2"],
            theta1.defaultValue == nil, theta2.defaultValue == nil, case .real = theta1.kind, case .real = theta2.kind,
            values["theta1"] == nil, values["theta2"] == nil
        {
            // Midway between neighbours at each tertile; when a third of the steps share the least
            // sparsity (uniform attention gives 0), θ1 goes just above it, so some steps fall below.
            let sparsity = try SparsityProfile.compute(reader, threads: 1).averaged().sorted()
            let n = sparsity.count
            var theta1 = (sparsity[n / 3 - 1] + sparsity[n / 3]) / 2
            if theta1 <= sparsity[0], let above = sparsity.first(where: { $0 > sparsity[0] }) {
                theta1 = (sparsity[0] + above) / 2
            }
            var theta2 = (sparsity[2 * n / 3 - 1] + sparsity[2 * n / 3]) / 2
            if theta2 <= theta1 { theta2 = (theta1 + sparsity[n - 1]) / 2 }
            // Equal sparsity everywhere: no thresholds split it; the policy calibrates its own.
            if theta1 < theta2 {
                values["theta1"] = String(theta1)
                values["theta2"] = String(theta2)
            }
        }
        let hasBudget = declaresBudget(type)
        let budgetName = budgetName(type)
        func acceptsSome(_ candidate: [String: String]) -> Bool {
            guard hasBudget, candidate[budgetName] == nil else { return accepts(type, candidate, reader: reader) }
            return smallestBudget(type, candidate, reader: reader) != nil
        }
        // A required budget is given for the look-up only (which parameter it is may depend on others).
        let placeholder = hasBudget && values[budgetName] == nil ? [budgetName: String(reader.header.numTokens)] : [:]
        if let parameters = try? spec(type, values.merging(placeholder) { a, _ in a }).parameters,
            let cadence = type.cadenceParameter(parameters),
            values[cadence] == nil, case .integer(let range)? = declared[cadence]?.kind
        {
            var shorter = values
            shorter[cadence] = String(min(max(cadenceSteps, range.lowerBound), range.upperBound))
            if acceptsSome(shorter) { values = shorter }
        }
        guard hasBudget, values[budgetName] == nil else {
            guard accepts(type, values, reader: reader) else {
                throw PolicyError("\(type.name): its conformance settings \(values) are refused on \(reader.path)")
            }
            return values
        }
        guard let lowest = smallestBudget(type, values, reader: reader) else {
            throw PolicyError("\(type.name): no budget up to \(reader.header.numTokens) is accepted with \(values)")
        }
        let T = reader.header.numTokens
        let wanted: Int
        switch budget {
        case .smallest: wanted = lowest
        case .moderate: wanted = lowest + T / 4
        case .traceLength, .coveringTheTrace: wanted = max(lowest, T)
        }
        // The first budget from `wanted` up that the policy accepts; covering the trace, also one
        // whose resident cap (where it declares one) holds every position (a paged cache holds
        // whole pages only).
        for b in wanted...max(wanted, 2 * T) {
            let candidate = values.merging([budgetName: String(b)]) { $1 }
            guard accepts(type, candidate, reader: reader) else { continue }
            if budget == .coveringTheTrace,
                try residentCaps(type, candidate, reader: reader).contains(where: { ($0 ?? T) < T })
            {
                continue
            }
            return candidate
        }
        throw PolicyError("\(type.name): no budget from \(wanted) up is accepted with \(values)")
    }

    /// The resident cap of an instance on each recorded layer (made on `validationPrepared`).
    static func residentCaps(
        _ type: any CachePolicy.Type, _ values: [String: String],
        reader: TraceReader
    ) throws -> [Int?] {
        let parameters = try spec(type, values).parameters
        return try reader.recordedLayerIndices.enumerated().map { ordinal, layer in
            let setup = PolicySetup(
                header: reader.header, layer: reader.layerInfo(layer)!, layerOrdinal: ordinal,
                layerCount: reader.recordedLayerIndices.count,
                prepared: type.validationPrepared(header: reader.header))
            return try type.init(parameters: parameters, setup: setup).residentCap
        }
    }

    private static func smallestBudget(
        _ type: any CachePolicy.Type, _ values: [String: String],
        reader: TraceReader
    ) -> Int? {
        guard let parameter = type.budgetParameter, case .integer(let range) = parameter.kind else { return nil }
        let upper = max(range.lowerBound, min(range.upperBound, reader.header.numTokens))
        return (range.lowerBound...upper).first { b in
            accepts(type, values.merging([parameter.name: String(b)]) { $1 }, reader: reader)
        }
    }
}

extension PolicyConformance {
    /// Every layer of `reader` stepped by `PolicyLayerRun` in its unmeasured mode (as ThinKV's
    /// cache-sparsity classifier steps its lanes: `beginStep`, then `finishStep` without a
    /// reference), recording the cache timelines a replay's `--cache-timeline` would write; in
    /// (layer, kv head) order.
    static func unmeasuredTimelines(_ spec: PolicySpec, reader: TraceReader) throws -> [CacheTimeline] {
        let header = reader.header
        let layers = reader.recordedLayerIndices
        let prepared = try spec.type.prepare(reader, parameters: spec.parameters, layers: layers)
        var timelines: [CacheTimeline] = []
        for (ordinal, layer) in layers.enumerated() {
            let info = reader.layerInfo(layer)!
            let data = try LayerData.load(from: reader, layer: layer)
            let setup = PolicySetup(
                header: header, layer: info, layerOrdinal: ordinal, layerCount: layers.count,
                prepared: prepared)
            let P = header.promptLength
            let hasQueries = info.hasQueriesAndKeys
            let promptQueries = hasQueries && P > 0 ? try reader.readRows(.q, layer: layer, rows: 0..<P) : nil
            let run = try PolicyLayerRun.prefilled(
                spec: spec, data: data, setup: setup, promptQueries: promptQueries,
                mode: .unmeasured, steps: header.generatedLength,
                recordsTimeline: true)
            let queries = hasQueries ? try reader.readRows(.q, layer: layer, rows: P..<header.numTokens) : []
            let width = header.numQHeads * header.headDim
            for t in 0..<header.generatedLength {
                queries.withUnsafeBufferPointer { all in
                    let row = hasQueries ? UnsafeBufferPointer(rebasing: all[(t * width)..<((t + 1) * width)]) : nil
                    let context = StepContext(
                        setup: setup, data: data, step: t, position: P + t, queries: row,
                        fullCacheSparsity: .nan)
                    run.beginStep(context)
                    run.finishStep(context)
                }
            }
            timelines += run.timeline!.timelines(policy: spec.label, layer: layer)
        }
        return timelines
    }
}

/// What the conformance tests record of a policy instance after prefill and after each step.
struct ConformanceSnapshot {
    let layer: Int
    /// nil after prefill.
    let step: Int?
    let residentCap: Int?
    /// Each kv head's slots during the step's attention (nil after prefill), and after the
    /// policy acted.
    let attended: [[Int32]]?
    let resident: [[Int32]]
}

let conformanceObservations = ObservationLog<ConformanceSnapshot>()

/// Records any policy's resident cap, attended and resident slots (see `ProbedPolicy`).
enum ConformanceProbe<Inner: CachePolicy>: PolicyProbe {
    static var log: ObservationLog<ConformanceSnapshot> { conformanceObservations }
    static func snapshot(
        of inner: Inner, layer: Int, step: Int?, position: Int, attended: [[Int32]]?,
        cache: LayerCache
    ) -> ConformanceSnapshot {
        ConformanceSnapshot(
            layer: layer, step: step, residentCap: inner.residentCap, attended: attended,
            resident: cache.slots)
    }
}

extension TestTraces {
    /// Replays `type` (opened from an existential metatype) wrapped in `ProbedPolicy`, with the
    /// conformance probe, and returns its snapshots: prefill first, then the steps, per layer.
    static func conformanceSnapshots<P: CachePolicy>(
        _ path: String, _ type: P.Type,
        _ values: [String: String]
    ) throws -> [ConformanceSnapshot] {
        try observe(path, probe: ConformanceProbe<P>.self, values).2
    }
}

extension CacheTimeline {
    /// A timeline read back from the JSON line `replay --cache-timeline` writes (`jsonLine`), so
    /// that a test recomputes from what the file says, not from the records the replay kept.
    init(readingJSONLine line: String) throws {
        func bad(_ what: String) -> PolicyError { PolicyError("cache timeline line: \(what): \(line.prefix(200))") }
        guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
            let policy = object["policy"] as? String, let layer = object["layer"] as? Int,
            let kvHead = object["kv_head"] as? Int, let droppedAt = object["dropped_at"] as? [Int],
            let groups = object["groups"] as? [[String: Any]]
        else { throw bad("missing fields") }
        let parsed = try groups.map { group -> QuantizedGroup in
            guard let tensor = (group["tensor"] as? String).flatMap(QuantizedGroup.Tensor.init(rawValue:)),
                let step = group["step"] as? Int, let positions = group["positions"] as? [Int],
                let quantizer = (group["quantizer"] as? String).flatMap(GroupQuantizer.init(name:))
            else {
                throw bad("a group lacks tensor, step, positions or a known quantizer")
            }
            // Key groups are per channel over their positions: no channel group is written.
            let channelGroup = group["channel_group"] as? Int ?? positions.count
            let scale = (group["channel_scale"] as? [Double])?.map(Float.init)
            return QuantizedGroup(
                tensor: tensor, positions: positions.map(Int32.init), quantizer: quantizer,
                channelGroup: channelGroup, step: step, channelScale: scale)
        }
        self.init(policy: policy, layer: layer, kvHead: kvHead, droppedAt: droppedAt.map(Int32.init), groups: parsed)
    }

    /// The attended bytes of this kv head at decode step `t`, recomputed from the timeline alone
    /// (docs/end-to-end.md, "The cache timeline"): each attended position's K and V elements at
    /// 16 bits until a quantization of it takes effect, then at the latest one's element width;
    /// the scales of every per-channel key group with an attended member (D of them per group);
    /// for every attended position, the per-token scales of its latest value quantization and
    /// of its latest per-token key quantization (its D channels in runs of `channelGroup`, whole
    /// bytes per token). A position rounded again (PM-KVQ's halvings) is charged its scales once.
    func recomputedAttendedBytes(step t: Int, promptLength P: Int, headDim D: Int) -> Int {
        let visible = P + t + 1
        func attended(_ j: Int) -> Bool {
            let d = Int(droppedAt[j])
            return d < 0 || d > t
        }
        var keyBits = [Int](repeating: 16, count: visible), valueBits = [Int](repeating: 16, count: visible)
        var keyScaleBytes = [Int](repeating: 0, count: visible), valueScaleBytes = [Int](repeating: 0, count: visible)
        var keyGroupBytes = 0
        for group in groups where group.step <= t {
            let members = group.positions.map(Int.init)
            switch group.tensor {
            case .key:
                for p in members { keyBits[p] = group.quantizer.elementBits }
                if members.contains(where: attended) {
                    keyGroupBytes += (D * group.quantizer.metadataBits(count: members.count) + 7) / 8
                }
            case .value, .keyPerToken:
                var perTokenBits = 0
                for start in stride(from: 0, to: D, by: group.channelGroup) {
                    perTokenBits += group.quantizer.metadataBits(count: min(group.channelGroup, D - start))
                }
                for p in members {
                    if group.tensor == .value {
                        valueBits[p] = group.quantizer.elementBits
                        valueScaleBytes[p] = (perTokenBits + 7) / 8
                    } else {
                        keyBits[p] = group.quantizer.elementBits
                        keyScaleBytes[p] = (perTokenBits + 7) / 8
                    }
                }
            }
        }
        var elementBits = 0, tokenScaleBytes = 0
        for j in 0..<visible where attended(j) {
            elementBits += keyBits[j] + valueBits[j]
            tokenScaleBytes += keyScaleBytes[j] + valueScaleBytes[j]
        }
        return (elementBits * D + 7) / 8 + keyGroupBytes + tokenScaleBytes
    }
}
