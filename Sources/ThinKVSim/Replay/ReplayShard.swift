import Foundation

/// What one replay over some layers keeps so that replays of the same trace and policies over
/// disjoint layer sets (a large model sharded by layer across machines) merge into exactly the
/// report of one replay over all of them: every step record and metric sample, in layer order.
/// `replay --shard-state FILE` writes one; `thinkv-sim merge` of such files rebuilds the result.
public struct ReplayShard: Codable, Sendable {
    public static let kind = "thinkv-replay-shard"
    public static let version = 1

    public struct Counter: Codable, Equatable, Sendable {
        public var name: String
        public var value: Int
    }

    public struct Run: Codable, Sendable {
        public var policy: String
        /// The parameters as given (the spec is rebuilt from them).
        public var given: [String: String]
        public var paging: String
        public var blockSize: Int
        public var records: [StepRecord]
        public var samples: MetricSamples
        public var counters: [Counter]
    }

    public var kind = ReplayShard.kind
    public var version = ReplayShard.version
    public var trace: String
    public var header: TraceHeader
    public var layers: [Int]
    /// Layers that record values (output error is reported when any merged layer has them).
    public var layersWithValues: [Int]
    public var decodeSteps: Int
    public var notes: [String]
    public var paging: String
    public var blockSizes: String
    public var timing: ReplayTiming
    public var runs: [Run]

    public init(_ result: ReplayResult, layersWithValues: [Int]) {
        trace = result.tracePath
        header = result.header
        layers = result.layers
        self.layersWithValues = layersWithValues
        decodeSteps = result.decodeSteps
        notes = result.notes
        paging = result.paging.rawValue
        blockSizes = result.blockSizes
        timing = result.timing
        runs = result.runs.map { run in
            Run(policy: run.spec.name, given: run.spec.parameters.given, paging: run.paging.rawValue, blockSize: run.blockSize,
                records: run.steps, samples: run.samples, counters: run.counters)
        }
    }

    public func write(to path: String, protecting inputs: [String] = []) throws {
        let encoder = JSONEncoder()
        // Sorted keys put "kind" near the start, where 'merge' looks for it.
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try OutputFile.write(String(decoding: try encoder.encode(self), as: UTF8.self), to: path, protecting: inputs)
    }

    public static func read(_ path: String) throws -> ReplayShard {
        guard let data = FileManager.default.contents(atPath: path) else { throw CSVError("\(path): cannot be read") }
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let shard: ReplayShard
        do { shard = try decoder.decode(ReplayShard.self, from: data) } catch {
            throw CSVError("\(path): not a replay shard written by 'replay --shard-state' (\(error.localizedDescription))")
        }
        guard shard.kind == kind, shard.version == version else { throw CSVError("\(path): not a version \(version) replay shard") }
        return shard
    }

    /// The report of one replay over the shards' layers together. The shards must come from
    /// the same trace (same header and steps) and the same policies, over disjoint layers;
    /// they are combined in ascending layer order, as one replay steps through them.
    public static func merge(_ shards: [ReplayShard], paths: [String]) throws -> ReplayResult {
        guard let first = shards.first else { throw UsageError("merge needs at least one replay shard") }
        for (shard, path) in zip(shards, paths) {
            guard shard.header == first.header, shard.decodeSteps == first.decodeSteps else {
                throw CSVError("\(path): another trace or step count than \(paths[0]); shards of one replay cannot differ")
            }
            guard shard.runs.map(\.policy) == first.runs.map(\.policy), shard.runs.map(\.given) == first.runs.map(\.given) else {
                throw CSVError("\(path): other policies or parameters than \(paths[0])")
            }
        }
        let order = shards.indices.sorted { (shards[$0].layers.first ?? 0) < (shards[$1].layers.first ?? 0) }
        var layers: [Int] = []
        for i in order { layers += shards[i].layers }
        guard layers == layers.sorted(), Set(layers).count == layers.count else {
            throw CSVError("the shards' layers overlap or interleave (\(layers.map(String.init).joined(separator: ","))); give each shard a contiguous, disjoint set")
        }
        let anyValues = shards.contains { !$0.layersWithValues.isEmpty }
        var timing = ReplayTiming()
        for shard in shards {
            timing.wallSeconds += shard.timing.wallSeconds
            timing.referenceSeconds += shard.timing.referenceSeconds
            timing.policySeconds += shard.timing.policySeconds
            timing.readSeconds += shard.timing.readSeconds
            timing.referenceFLOPs += shard.timing.referenceFLOPs
            timing.policyFLOPs += shard.timing.policyFLOPs
            timing.threads = max(timing.threads, shard.timing.threads)
        }
        var notes: [String] = []
        for i in order { for note in shards[i].notes where !notes.contains(note) { notes.append(note) } }
        if anyValues { notes.removeAll { $0.hasPrefix("attention output error unavailable") } }
        let runs = try first.runs.indices.map { r -> PolicyRun in
            var records: [StepRecord] = [], samples = MetricSamples(), counters: [(name: String, value: Int)] = []
            for i in order {
                let run = shards[i].runs[r]
                records += run.records
                samples.append(run.samples)
                for (k, c) in run.counters.enumerated() {
                    if k < counters.count { counters[k].value += c.value } else { counters.append((c.name, c.value)) }
                }
            }
            let spec = try PolicySpec(name: first.runs[r].policy, values: first.runs[r].given)
            var run = PolicyRun(spec: spec, steps: records, summary: RunSummary.of(
                records: records, samples: samples, counters: counters, numLayers: first.header.numLayers,
                replayedLayers: layers.count, anyValues: anyValues),
                paging: PagingMode(rawValue: first.runs[r].paging) ?? .ct, blockSize: first.runs[r].blockSize)
            run.samples = samples
            run.counters = counters.map { Counter(name: $0.name, value: $0.value) }
            return run
        }
        return ReplayResult(tracePath: first.trace, header: first.header, layers: layers, decodeSteps: first.decodeSteps,
                            runs: runs, notes: notes, paging: PagingMode(rawValue: first.paging) ?? .ct,
                            blockSizes: first.blockSizes, timing: timing)
    }
}
