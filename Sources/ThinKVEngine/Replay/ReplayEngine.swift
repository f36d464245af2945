import Foundation

/// What to replay and how.
public struct ReplayConfiguration: Sendable {
    public var policies: [PolicySpec]
    /// Layers to replay (nil: every recorded layer).
    public var layers: [Int]?
    /// k of top-k recall.
    public var topK: Int = TraceLimits.defaultTopK
    /// Replay only the first N decode steps (nil: all).
    public var maxSteps: Int?
    /// Decode steps whose reference attention is computed together (nil: `automaticChunkSteps`).
    /// Results do not depend on it; speed and memory do.
    public var chunkSteps: Int?
    /// Worker threads (nil: every active core). Results do not depend on it.
    public var threads: Int?
    /// Memory layout model, and slots per block (nil: each policy's preferred size).
    public var paging: PagingMode = .ct
    public var blockSize: Int?
    /// Per-policy layouts (same order as `policies`) that replace `paging`/`blockSize`, so a
    /// sweep can compare layouts against one shared reference (paging is accounting only: it
    /// never changes what a policy keeps). nil: every policy uses `paging` and `blockSize`.
    public var layouts: [PagingLayout]?
    /// The decode steps whose fidelity is measured against the full-cache reference (`--metric-steps`);
    /// on the others the reference is not computed and policies attend over their own caches.
    public var metricSteps: MetricStepSelection = .all

    public init(
        policies: [PolicySpec], layers: [Int]? = nil, topK: Int = TraceLimits.defaultTopK,
        maxSteps: Int? = nil, threads: Int? = nil
    ) {
        self.policies = policies
        self.layers = layers
        self.topK = topK
        self.maxSteps = maxSteps
        self.threads = threads
    }

    /// The layout policy `i` is replayed with.
    public func layout(ofPolicy i: Int) -> PagingLayout {
        layouts?[i] ?? PagingLayout(mode: paging, blockSize: blockSize)
    }

    /// Slots per block of policy `i`: its layout's, else the policy's preferred size.
    public func effectiveBlockSize(ofPolicy i: Int) -> Int {
        layout(ofPolicy: i).blockSize ?? policies[i].type.preferredBlockSize
    }
}

/// How one policy configuration's cache is laid out in memory.
public struct PagingLayout: Hashable, Sendable {
    public var mode: PagingMode
    /// Slots per block; nil: the policy's preferred size.
    public var blockSize: Int?

    public init(mode: PagingMode = .ct, blockSize: Int? = nil) {
        self.mode = mode
        self.blockSize = blockSize
    }
}

/// The outcome of replaying one policy configuration over a trace.
public struct PolicyRun: Sendable {
    public let spec: PolicySpec
    /// One record per (layer, decode step), layer-major.
    public let steps: [StepRecord]
    public let summary: RunSummary
    /// The layout the paging figures were measured with, and its effective block size.
    public let paging: PagingMode
    public let blockSize: Int
    /// Set when the run's budget was chosen to meet a memory target (`MemoryMatcher`).
    public var memoryMatch: MemoryMatch? = nil
    /// Every metric sample and the policy's counters, in layer order (what `ReplayShard` stores).
    public var samples = MetricSamples()
    public var counters: [PolicyCounter] = []

    package init(
        spec: PolicySpec, steps: [StepRecord], summary: RunSummary, paging: PagingMode, blockSize: Int,
        memoryMatch: MemoryMatch? = nil, samples: MetricSamples = MetricSamples(),
        counters: [PolicyCounter] = []
    ) {
        self.spec = spec
        self.steps = steps
        self.summary = summary
        self.paging = paging
        self.blockSize = blockSize
        self.memoryMatch = memoryMatch
        self.samples = samples
        self.counters = counters
    }
}

public struct ReplayResult: Sendable {
    public let tracePath: String
    public let header: TraceHeader
    public let layers: [Int]
    public let decodeSteps: Int
    public let runs: [PolicyRun]
    /// Why a metric is missing (e.g. output error without values), for the report.
    public let notes: [String]
    public let paging: PagingMode
    /// Block size per policy label, e.g. "16" or "full 16, thinkv 8".
    public let blockSizes: String
    public let timing: ReplayTiming
    /// k of the top-k recall (a figure of the report; layer shards must agree on it).
    public var topK: Int = TraceLimits.defaultTopK
    /// Set when fidelity was measured on a sample of the decode steps (`--metric-steps`).
    public var metricSampling: MetricSampling? = nil

    package init(
        tracePath: String, header: TraceHeader, layers: [Int], decodeSteps: Int, runs: [PolicyRun],
        notes: [String], paging: PagingMode, blockSizes: String, timing: ReplayTiming,
        topK: Int = TraceLimits.defaultTopK, metricSampling: MetricSampling? = nil
    ) {
        self.tracePath = tracePath
        self.header = header
        self.layers = layers
        self.decodeSteps = decodeSteps
        self.runs = runs
        self.notes = notes
        self.paging = paging
        self.blockSizes = blockSizes
        self.timing = timing
        self.topK = topK
        self.metricSampling = metricSampling
    }
}

/// Where a replay's time went, and the attention arithmetic it did (for `bench`).
public struct ReplayTiming: Codable, Equatable, Sendable {
    public var wallSeconds: Double = 0
    /// Full-cache reference attention (shared by all policies). The reference of the next chunk
    /// runs alongside the policies' steps, so both are busy core-seconds divided by the workers.
    public var referenceSeconds: Double = 0
    /// Policies' own steps: their hooks, their attention over the attended set, metrics.
    public var policySeconds: Double = 0
    /// Reading and converting the trace (keys and values, then each chunk's queries).
    public var readSeconds: Double = 0
    /// Floating-point operations of attention proper: 2·D per query-key score and 2·D per
    /// weighted value, summed over query heads and attended positions.
    public var referenceFLOPs: Double = 0
    public var policyFLOPs: Double = 0
    public var threads: Int = 1

    // Explicit snake_case names: the automatic conversion would split "FLOPs" oddly.
    enum CodingKeys: String, CodingKey {
        case wallSeconds = "wall_seconds", referenceSeconds = "reference_seconds", policySeconds = "policy_seconds"
        case readSeconds = "read_seconds", referenceFLOPs = "reference_flops", policyFLOPs = "policy_flops", threads
    }
}

/// Reports progress of long work; called from the replay's serial sections only.
public protocol ProgressReporting: AnyObject {
    func update(fraction: Double, detail: String)
    func finish()
}

/// Steps a trace's decode positions through policies, layer by layer, and measures each
/// policy against the full-cache attention computed once per layer and chunk.
public final class ReplayEngine {
    public let reader: TraceReader
    public let configuration: ReplayConfiguration
    public weak var keptSink: KeptEventSink?
    /// Receives every policy's cache timeline of each replayed layer (`--cache-timeline`).
    public weak var timelineSink: CacheTimelineSink?
    public var progress: ProgressReporting?
    /// Full-cache references kept across engine runs of the same trace (see `ReferenceStore`):
    /// a run finds a layer's reference there instead of computing it, or leaves it there.
    public var referenceStore: ReferenceStore?
    /// What each policy type's `prepare` returned, in the order of `configuration.policies`,
    /// when the caller has it already (e.g. one policy replayed at several budgets, whose
    /// preparation does not depend on the budget); nil: the engine calls `prepare`.
    public var preparedValues: [(any Sendable)?]?

    public init(reader: TraceReader, configuration: ReplayConfiguration) {
        self.reader = reader
        self.configuration = configuration
    }

    public var layersToReplay: [Int] { configuration.layers ?? reader.recordedLayerIndices }

    public var decodeSteps: Int {
        let g = reader.header.generatedLength
        return configuration.maxSteps.map { min($0, g) } ?? g
    }

    /// Decode steps per reference chunk: the configuration's, else `automaticChunkSteps`.
    public var chunkSteps: Int {
        configuration.chunkSteps ?? ReplayEngine.automaticChunkSteps(header: reader.header)
    }

    /// 128 steps while a chunk's logits (steps × Hq × T floats) stay within 64 MiB, else 64. A
    /// chunk ends at a barrier where the workers wait for the slowest reference part (one step
    /// block each); more, shorter parts shorten that wait: at 8192 tokens on 2 cores, 128-step
    /// chunks of 16 parts replay about a tenth faster than 64-step chunks of 8. At 32768 tokens a part
    /// is long enough that the wait matters little, and 128 steps of logits would cost 117 MiB
    /// more. The size depends on the trace alone, not on the thread count, so the order of the
    /// lines `--kept` and `--cache-timeline` write (chunk by chunk) does not either.
    public static func automaticChunkSteps(header: TraceHeader) -> Int {
        let logitBytesPerStep = max(1, header.numQHeads * header.numTokens * 4)
        return 128 * logitBytesPerStep <= 64 << 20 ? 128 : 64
    }

    private var timing = ReplayTiming()

    private static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    public func run() throws -> ReplayResult {
        let started = ReplayEngine.now()
        timing = ReplayTiming(threads: workerCount)
        // Clear the progress line on failure too, so an error message starts on a clean line.
        defer { progress?.finish() }
        let header = reader.header
        let layers = layersToReplay
        for layer in layers where reader.layerInfo(layer) == nil {
            throw TraceError(
                file: reader.path, object: "/layers/\(layer)",
                "not recorded (recorded: \(reader.recordedLayerIndices.map(String.init).joined(separator: ", ")))")
        }
        for spec in configuration.policies { try spec.checkRequirements(reader, layers: layers) }
        if let layouts = configuration.layouts, layouts.count != configuration.policies.count {
            throw PolicyError("replay: \(layouts.count) layouts for \(configuration.policies.count) policies")
        }
        guard decodeSteps > 0 else {
            throw TraceError(file: reader.path, "has no decode positions to replay (prompt_len equals num_tokens)")
        }
        let sampledSteps = try metricStepsToMeasure(layers: layers)
        try TraceLimits.checkReplayMemory(
            header, file: reader.path, policies: configuration.policies.count, chunkSteps: chunkSteps)
        // Where a layer records attn beside q and k, the two must agree (sampled steps).
        try AttentionCrossCheck.check(reader, layers: layers, samples: 4)

        if let given = preparedValues, given.count != configuration.policies.count {
            throw PolicyError("replay: \(given.count) prepared values for \(configuration.policies.count) policies")
        }
        prepared =
            try preparedValues
            ?? configuration.policies.map { try $0.type.prepare(reader, parameters: $0.parameters, layers: layers) }
        var records = Array(repeating: [StepRecord](), count: configuration.policies.count)
        var samples = Array(repeating: MetricSamples(), count: configuration.policies.count)
        var counters = Array(repeating: [(name: String, value: Int)](), count: configuration.policies.count)
        for (ordinal, layer) in layers.enumerated() {
            let readStart = ReplayEngine.now()
            let data = try LayerData.load(from: reader, layer: layer)
            timing.readSeconds += ReplayEngine.now() - readStart
            let layerRuns = try replayLayer(data, ordinal: ordinal, count: layers.count, sampledSteps: sampledSteps)
            for (i, run) in layerRuns.enumerated() {
                records[i] += run.records
                samples[i].append(run.samples)
                for (k, counter) in run.policy.reportCounters.enumerated() {
                    if k < counters[i].count {
                        counters[i][k].value += counter.value
                    } else {
                        counters[i].append(counter)
                    }
                }
            }
        }

        let anyValues = layers.contains { reader.layerInfo($0)?.hasValues == true }
        let sampling = sampledSteps.map {
            MetricSampling(selection: configuration.metricSteps, sampledSteps: $0.count, decodeSteps: decodeSteps)
        }
        var notes: [String] = []
        for (spec, value) in zip(configuration.policies, prepared) {
            for note in (value as? ReplayNotes)?.replayNotes ?? [] where !notes.contains("\(spec.label): \(note)") {
                notes.append("\(spec.label): \(note)")
            }
        }
        if !anyValues {
            notes.append("attention output error unavailable: the trace records no values (v)")
        }
        let runs = configuration.policies.enumerated().map { i, spec in
            var run = PolicyRun(
                spec: spec, steps: records[i],
                summary: RunSummary.of(
                    records: records[i], samples: samples[i], counters: counters[i], numLayers: header.numLayers,
                    replayedLayers: layers.count, anyValues: anyValues, sampling: sampling,
                    headsPerStep: header.numQHeads),
                paging: configuration.layout(ofPolicy: i).mode, blockSize: configuration.effectiveBlockSize(ofPolicy: i)
            )
            run.samples = samples[i]
            run.counters = counters[i].map { PolicyCounter(name: $0.name, value: $0.value) }
            return run
        }
        for run in runs {
            guard let parameter = run.spec.type.budgetParameter,
                let budget = try? run.spec.parameters.optionalInteger(parameter.name),
                budget >= header.numTokens
            else { continue }
            // A budget that covers the trace keeps everything only for a policy that evicts just over budget.
            let evicting = run.summary.memory.evictionStepPercent
            notes.append(
                evicting == 0
                    ? "\(run.spec.label): the budget is at least the trace's \(header.numTokens) tokens, so it keeps "
                        + "everything"
                    : "\(run.spec.label): the budget is at least the trace's \(header.numTokens) tokens, yet it "
                        + "evicted on "
                        + String(format: "%.1f", evicting) + " % of decode steps: "
                        + run.spec.type.compressionCadence(run.spec.parameters))
        }
        for run in runs {
            for note in run.spec.type.runNotes(
                counters: run.summary.policyCounters ?? [:], parameters: run.spec.parameters,
                layers: layers.count)
            {
                notes.append("\(run.spec.label): \(note)")
            }
        }
        timing.wallSeconds = ReplayEngine.now() - started
        let sizes = configuration.policies.indices.map { configuration.effectiveBlockSize(ofPolicy: $0) }
        let blockSizes =
            Set(sizes).count <= 1
            ? String(sizes.first ?? 16)
            : zip(configuration.policies, sizes).map { "\($0.name) \($1)" }.joined(separator: ", ")
        var result = ReplayResult(
            tracePath: reader.path, header: header, layers: layers, decodeSteps: decodeSteps,
            runs: runs, notes: notes, paging: configuration.paging, blockSizes: blockSizes,
            timing: timing, topK: configuration.topK)
        result.metricSampling = sampling
        return result
    }

    /// The decode steps to measure, or nil for every step (`metricSteps` is `all`). Sampling
    /// refuses what needs the full-cache attention on every step, and layers without q and k
    /// (their policies could not attend over their own caches without the recorded rows).
    private func metricStepsToMeasure(layers: [Int]) throws -> [Int]? {
        let selection = configuration.metricSteps
        guard selection != .all else { return nil }
        for spec in configuration.policies {
            if let reason = spec.type.fullReferenceNeed(spec.parameters) {
                throw UsageError(
                    "--metric-steps \(selection.description): \(spec.label) \(reason); "
                        + "use --metric-steps all")
            }
        }
        if let layer = layers.first(where: { reader.layerInfo($0)?.hasQueriesAndKeys != true }) {
            throw UsageError(
                "--metric-steps \(selection.description): layer \(layer) of \(reader.path) records "
                    + "no q and k, so its policies cannot attend over their own caches; "
                    + "use --metric-steps all")
        }
        return selection.steps(of: decodeSteps)
    }

    // MARK: One layer

    private var prepared: [(any Sendable)?] = []

    private var workerCount: Int { max(1, configuration.threads ?? ProcessInfo.processInfo.activeProcessorCount) }

    /// Every policy's run over one layer (`LayerReplay`), started from the prompt.
    private func replayLayer(
        _ data: LayerData, ordinal: Int, count: Int,
        sampledSteps: [Int]?
    ) throws -> [PolicyLayerRun] {
        let header = reader.header
        let info = data.info
        let P = header.promptLength
        let promptQueries: [Float]? =
            info.hasQueriesAndKeys && P > 0
            ? try reader.readRows(.q, layer: info.index, rows: 0..<P) : nil
        let runs = try configuration.policies.enumerated().map { i, spec in
            let setup = PolicySetup(
                header: header, layer: info, layerOrdinal: ordinal, layerCount: count, prepared: prepared[i])
            return try PolicyLayerRun.prefilled(
                spec: spec, data: data, setup: setup, promptQueries: promptQueries,
                steps: decodeSteps, paging: configuration.layout(ofPolicy: i).mode,
                blockSize: configuration.effectiveBlockSize(ofPolicy: i),
                recordsEvents: keptSink != nil, recordsTimeline: timelineSink != nil)
        }
        let layer = LayerReplay(
            reader: reader, data: data, runs: runs, configuration: configuration,
            referenceStore: referenceStore, workerCount: workerCount, chunkSteps: chunkSteps,
            decodeSteps: decodeSteps, sampledSteps: sampledSteps)
        let total = decodeSteps
        try layer.run { done in
            if let sink = keptSink {
                for run in runs { sink.record(run.takeEvents()) }
            }
            progress?.update(
                fraction: (Double(ordinal) + Double(done) / Double(total)) / Double(count),
                detail: "layer \(info.index) (\(ordinal + 1)/\(count)), step \(done)/\(total)")
        }
        timing.add(layer.timing)
        if let sink = timelineSink {
            for run in runs {
                if let timeline = run.timeline { sink.record(timeline.timelines(policy: run.label, layer: info.index)) }
            }
        }
        return runs
    }
}

extension ReplayTiming {
    /// No time yet: what several runs' timings are added to.
    package static var zero: ReplayTiming { ReplayTiming() }
}
