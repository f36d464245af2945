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

    public init(policies: [PolicySpec], layers: [Int]? = nil, topK: Int = TraceLimits.defaultTopK,
                maxSteps: Int? = nil, threads: Int? = nil) {
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
    /// Every metric sample and the policy's counters, in layer order (`ReplayShard`).
    public var samples = MetricSamples()
    public var counters: [ReplayShard.Counter] = []
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
            throw TraceError(file: reader.path, object: "/layers/\(layer)",
                             "not recorded (recorded: \(reader.recordedLayerIndices.map(String.init).joined(separator: ", ")))")
        }
        for spec in configuration.policies { try spec.checkRequirements(reader, layers: layers) }
        if let layouts = configuration.layouts, layouts.count != configuration.policies.count {
            throw PolicyError("replay: \(layouts.count) layouts for \(configuration.policies.count) policies")
        }
        guard decodeSteps > 0 else {
            throw TraceError(file: reader.path, "has no decode positions to replay (prompt_len equals num_tokens)")
        }
        try TraceLimits.checkReplayMemory(header, file: reader.path, policies: configuration.policies.count, chunkSteps: chunkSteps)
        // Where a layer records attn beside q and k, the two must agree (sampled steps).
        try AttentionCrossCheck.check(reader, layers: layers, samples: 4)

        if let given = preparedValues, given.count != configuration.policies.count {
            throw PolicyError("replay: \(given.count) prepared values for \(configuration.policies.count) policies")
        }
        prepared = try preparedValues ?? configuration.policies.map { try $0.type.prepare(reader, parameters: $0.parameters, layers: layers) }
        var records = Array(repeating: [StepRecord](), count: configuration.policies.count)
        var samples = Array(repeating: MetricSamples(), count: configuration.policies.count)
        var counters = Array(repeating: [(name: String, value: Int)](), count: configuration.policies.count)
        for (ordinal, layer) in layers.enumerated() {
            let readStart = ReplayEngine.now()
            let data = try LayerData.load(from: reader, layer: layer)
            timing.readSeconds += ReplayEngine.now() - readStart
            let layerRuns = try replayLayer(data, ordinal: ordinal, count: layers.count)
            for (i, run) in layerRuns.enumerated() {
                records[i] += run.records
                samples[i].append(run.samples)
                for (k, counter) in run.policy.reportCounters.enumerated() {
                    if k < counters[i].count { counters[i][k].value += counter.value } else { counters[i].append(counter) }
                }
            }
        }

        let anyValues = layers.contains { reader.layerInfo($0)?.hasValues == true }
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
            var run = PolicyRun(spec: spec, steps: records[i], summary: RunSummary.of(
                records: records[i], samples: samples[i], counters: counters[i], numLayers: header.numLayers,
                replayedLayers: layers.count, anyValues: anyValues),
                paging: configuration.layout(ofPolicy: i).mode, blockSize: configuration.effectiveBlockSize(ofPolicy: i))
            run.samples = samples[i]
            run.counters = counters[i].map { ReplayShard.Counter(name: $0.name, value: $0.value) }
            return run
        }
        for run in runs {
            guard let parameter = run.spec.type.budgetParameter,
                  let budget = try? run.spec.parameters.optionalInteger(parameter.name),
                  budget >= header.numTokens else { continue }
            // A budget that covers the trace keeps everything only for a policy that evicts just over budget.
            let evicting = run.summary.memory.evictionStepPercent
            notes.append(evicting == 0
                ? "\(run.spec.label): the budget is at least the trace's \(header.numTokens) tokens, so it keeps everything"
                : "\(run.spec.label): the budget is at least the trace's \(header.numTokens) tokens, yet it evicted on "
                    + String(format: "%.1f", evicting) + " % of decode steps: "
                    + run.spec.type.compressionCadence(run.spec.parameters))
        }
        for run in runs {
            for note in run.spec.type.runNotes(counters: run.summary.policyCounters ?? [:], parameters: run.spec.parameters,
                                               layers: layers.count) {
                notes.append("\(run.spec.label): \(note)")
            }
        }
        timing.wallSeconds = ReplayEngine.now() - started
        let sizes = configuration.policies.indices.map { configuration.effectiveBlockSize(ofPolicy: $0) }
        let blockSizes = Set(sizes).count <= 1 ? String(sizes.first ?? 16)
            : zip(configuration.policies, sizes).map { "\($0.name) \($1)" }.joined(separator: ", ")
        return ReplayResult(tracePath: reader.path, header: header, layers: layers, decodeSteps: decodeSteps,
                            runs: runs, notes: notes, paging: configuration.paging, blockSizes: blockSizes, timing: timing,
                            topK: configuration.topK)
    }

    // MARK: One layer

    private var prepared: [(any Sendable)?] = []

    private var workerCount: Int { max(1, configuration.threads ?? ProcessInfo.processInfo.activeProcessorCount) }

    private func replayLayer(_ data: LayerData, ordinal: Int, count: Int) throws -> [PolicyLayerRun] {
        let header = reader.header
        let P = header.promptLength
        let info = data.info
        let promptQueries: [Float]? = info.hasQueriesAndKeys && P > 0
            ? try reader.readRows(.q, layer: info.index, rows: 0..<P) : nil
        var runs: [PolicyLayerRun] = []
        for (i, spec) in configuration.policies.enumerated() {
            let setup = PolicySetup(header: header, layer: info, layerOrdinal: ordinal, layerCount: count, prepared: prepared[i])
            let run = try PolicyLayerRun.prefilled(spec: spec, data: data, setup: setup, promptQueries: promptQueries,
                                                   topK: configuration.topK, steps: decodeSteps, paging: configuration.layout(ofPolicy: i).mode,
                                                   blockSize: configuration.effectiveBlockSize(ofPolicy: i), recordsEvents: keptSink != nil,
                                                   recordsTimeline: timelineSink != nil)
            runs.append(run)
        }

        let reference = ReferenceAttention(header: header, data: data, workers: workerCount)
        let store = referenceStore?.matches(reader: reader, configuration: configuration, chunkSteps: chunkSteps, decodeSteps: decodeSteps) == true
            ? referenceStore : nil
        let stored = store?.chunks(ofLayer: info.index)
        // The reference of chunk c+1 is computed while the policies step through chunk c, in one
        // pool of tasks: with a few policies of unequal cost on a few cores, neither phase alone
        // keeps every core busy. Two chunks alternate; the reference is split into more parts
        // than cores (up to 8 per worker, one step block each) so the tail balances.
        let chunkSteps = self.chunkSteps
        let stepBlocks = (chunkSteps + reference.stepBlock - 1) / reference.stepBlock
        let referenceParts = workerCount == 1 ? 1 : max(1, min(8 * workerCount, stepBlocks))
        let scratch = reference.makeScratch(k: configuration.topK, count: referenceParts)
        // Logits are kept only when some policy attends with the exact keys: chunkSteps × Hq × T
        // floats per chunk (117 MiB at 64 × 14 × 32768).
        // A stored reference has no logits: policies then compute their own (the same bits).
        let keepLogits = stored == nil && info.hasQueriesAndKeys && runs.contains { !($0.policy is FullCachePolicy) }
        let chunks = (0..<2).map { _ in
            ReferenceChunk(numQHeads: header.numQHeads, headDim: header.headDim, topK: configuration.topK, keepsLogits: keepLogits)
        }
        let total = decodeSteps
        let chunkCount = (total + chunkSteps - 1) / chunkSteps
        // q·k for every visible position (q+k layers), and Σ a·v when the layer has values.
        // Queries are read in aligned runs of 256 rows, a multiple of the synthetic traces' HDF5
        // chunk: reading 64 rows at a time decompressed each 256-row chunk four times.
        let queryRun = 256
        var queryRows = [Float](), queryRange = 0..<0
        let queryWidth = header.numQHeads * header.headDim
        func readQueries(_ rows: Range<Int>, into out: inout [Float]) throws {
            if !(queryRange.contains(rows.lowerBound) && rows.upperBound <= queryRange.upperBound) {
                let start = rows.lowerBound / queryRun * queryRun
                queryRange = start..<min(header.numTokens, max(rows.upperBound, start + queryRun))
                try reader.readRows(.q, layer: info.index, rows: queryRange, into: &queryRows)
            }
            let count = rows.count * queryWidth
            if out.count != count { out = [Float](repeating: 0, count: count) }
            let from = (rows.lowerBound - queryRange.lowerBound) * queryWidth
            queryRows.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: src.baseAddress! + from, count: count) }
            }
        }
        let perPair = Double(((info.hasQueriesAndKeys ? 2 : 0) + (info.hasValues ? 2 : 0)) * header.headDim * header.numQHeads)
        // The positions a policy can attend while it steps through chunk c, per kv head, loaded
        // while it has finished chunk c − 2 (or the prompt): caches only drop positions and append
        // new ones, so they are what it holds now plus the positions of chunks c − 1 and c.
        // (A policy that attends anything else recomputes those logits: the same bits, slower.)
        var attendable = [UInt64](repeating: 0, count: (header.numTokens + 63) / 64)
        func positionsAttendable(throughChunk c: Int) -> [[Int32]] {
            let newPositions = (P + max(c - 1, 0) * chunkSteps)..<decodeRows(ofChunk: c).upperBound
            return (0..<header.numKVHeads).map { g in
                for i in attendable.indices { attendable[i] = 0 }
                for run in runs where !(run.policy is FullCachePolicy) {
                    for p in run.cache.slots[g] { attendable[Int(p) >> 6] |= 1 << UInt64(p & 63) }
                }
                for p in newPositions { attendable[p >> 6] |= 1 << UInt64(p & 63) }
                var positions: [Int32] = []
                for (word, bits) in attendable.enumerated() {
                    var rest = bits
                    while rest != 0 {
                        positions.append(Int32(word * 64 + rest.trailingZeroBitCount))
                        rest &= rest - 1
                    }
                }
                return positions
            }
        }
        func decodeRows(ofChunk c: Int) -> Range<Int> {
            let first = c * chunkSteps
            return (P + first)..<(P + first + min(chunkSteps, total - first))
        }
        // The queries of chunk c + 2 are read by one more task while chunk c is replayed, so
        // the serial section between chunks does not wait for the file.
        var prefetched = [Float](), prefetchedChunk = -1
        func load(_ c: Int) throws -> ReferenceChunk? {
            guard c < chunkCount else { return nil }
            let chunk = chunks[c % 2]
            let first = c * chunkSteps, steps = min(chunkSteps, total - first)
            let readStart = ReplayEngine.now()
            if keepLogits { chunk.logPositions(positionsAttendable(throughChunk: c), tokens: header.numTokens) }
            chunk.prepare(firstStep: first, stepCount: steps, hasValues: info.hasValues)
            if info.hasQueriesAndKeys && prefetchedChunk == c {
                swap(&chunk.queries, &prefetched)
                prefetchedChunk = -1
            } else if info.hasQueriesAndKeys {
                try readQueries(decodeRows(ofChunk: c), into: &chunk.queries)
            } else {
                try reader.readRows(.attn, layer: info.index, rows: first..<(first + steps), into: &chunk.attentionRows)
            }
            timing.readSeconds += ReplayEngine.now() - readStart
            if let stored {
                stored[c].restore(into: chunk)
            } else {
                for s in 0..<steps { timing.referenceFLOPs += perPair * Double(P + first + s + 1) }
            }
            return chunk
        }
        // Busy seconds of each task, summed per phase and spread over the workers afterwards.
        var busy = [Double](repeating: 0, count: runs.count + referenceParts)
        var computed: [StoredReferenceChunk] = []
        if let chunk = try load(0), stored == nil {
            let start = ReplayEngine.now()
            reference.compute(chunk, scratch: scratch)
            timing.referenceSeconds += ReplayEngine.now() - start
            if store != nil { computed.append(StoredReferenceChunk(chunk)) }
        }
        for c in 0..<chunkCount {
            let chunk = chunks[c % 2]
            // Finite q and k can still overflow float32 in q·k: refuse rather than report NaN.
            if info.hasQueriesAndKeys, let bad = chunk.logSumExp.prefix(chunk.stepCount * header.numQHeads).firstIndex(where: { !$0.isFinite }) {
                throw TraceError(file: reader.path, object: "/layers/\(info.index)",
                                 "attention logits overflow float32 at decode step \(chunk.firstStep + bad / header.numQHeads), query head \(bad % header.numQHeads) (q·k too large)")
            }
            let next = try load(c + 1)
            let first = chunk.firstStep, steps = chunk.stepCount
            let prefetch = info.hasQueriesAndKeys && c + 2 < chunkCount ? c + 2 : nil
            var prefetchSeconds = 0.0
            var prefetchError: Error?
            let reads = prefetch == nil ? 0 : 1  // task 0, so the file is read early in the phase
            let tasks = reads + runs.count + (next == nil || stored != nil ? 0 : referenceParts)
            busy.withUnsafeMutableBufferPointer { buffer in
                let seconds = buffer.baseAddress!  // one slot per task: no two threads share one
                let task = { (t: Int) in
                    let start = ReplayEngine.now()
                    let i = t - reads
                    if let chunkToRead = prefetch, t == 0 {
                        // The only task touching the file and `prefetched` in this phase.
                        do {
                            try readQueries(decodeRows(ofChunk: chunkToRead), into: &prefetched)
                            prefetchedChunk = chunkToRead
                        } catch {
                            prefetchError = error
                        }
                        prefetchSeconds = ReplayEngine.now() - start
                        return
                    }
                    if i < runs.count {
                        runs[i].advance(through: chunk)
                    } else {
                        reference.computePart(next!, part: i - runs.count, of: referenceParts, scratch: scratch[i - runs.count])
                    }
                    seconds[i] += ReplayEngine.now() - start
                }
                if workerCount == 1 {
                    for i in 0..<tasks { task(i) }
                } else {
                    DispatchQueue.concurrentPerform(iterations: tasks, execute: task)
                }
            }
            if let prefetchError { throw prefetchError }
            if let next, store != nil, stored == nil { computed.append(StoredReferenceChunk(next)) }
            timing.readSeconds += prefetchSeconds
            for run in runs { timing.policyFLOPs += run.takeFLOPs() }
            if let sink = keptSink {
                for run in runs { sink.record(run.takeEvents()) }
            }
            progress?.update(fraction: (Double(ordinal) + Double(first + steps) / Double(total)) / Double(count),
                             detail: "layer \(info.index) (\(ordinal + 1)/\(count)), step \(first + steps)/\(total)")
        }
        if let sink = timelineSink {
            for run in runs { if let timeline = run.timeline { sink.record(timeline.timelines(policy: run.spec.label, layer: info.index)) } }
        }
        if let store, stored == nil { store.keep(computed, ofLayer: info.index) }
        let workers = Double(workerCount)
        timing.policySeconds += busy[..<runs.count].reduce(0, +) / workers
        timing.referenceSeconds += busy[runs.count...].reduce(0, +) / workers
        return runs
    }
}

/// One policy instance replaying one layer: its cache, scratch buffers, and what it measured.
final class PolicyLayerRun {
    let spec: PolicySpec
    let policy: any CachePolicy
    let cache: LayerCache
    let data: LayerData
    let setup: PolicySetup
    var records: [StepRecord] = []
    var samples = MetricSamples()
    /// Kept-set events are collected only for a sink (sorting every changed head's slots each
    /// step is not free).
    private let recordsEvents: Bool
    private var events: [KeptEvent] = []
    /// What the attended set and the quantizations were at each step (`--cache-timeline` only).
    private(set) var timeline: CacheTimelineRecorder?

    // Scratch reused every step.
    private var attention: [Float] = []
    private var exactLogits: [Float] = []
    private var groupRecall: [Float] = [], groupKL: [Float] = []  // per query head of one group
    private var headMetrics: [HeadMetrics] = []
    private var flops: Double = 0

    func takeFLOPs() -> Double {
        defer { flops = 0 }
        return flops
    }
    private var offsets: [Int]
    private var counts: [Int]
    private var output: [Float]
    /// The positions kv head g attends (loaded in `measureGroup`).
    private var attended: AttendedSet
    private var paging: [PagedCacheModel]

    init(spec: PolicySpec, policy: any CachePolicy, data: LayerData, setup: PolicySetup, topK: Int, steps: Int,
         paging mode: PagingMode = .ct, blockSize: Int = 16, recordsEvents: Bool = false, recordsTimeline: Bool = false) {
        self.spec = spec
        self.recordsEvents = recordsEvents
        self.policy = policy
        self.data = data
        self.setup = setup
        cache = LayerCache(data: data)
        if recordsTimeline { timeline = CacheTimelineRecorder(cache: cache, promptLength: setup.header.promptLength) }
        let h = setup.header
        offsets = [Int](repeating: 0, count: h.numQHeads)
        counts = [Int](repeating: 0, count: h.numQHeads)
        output = [Float](repeating: 0, count: h.headDim)
        attended = AttendedSet(numTokens: h.numTokens)
        paging = (0..<h.numKVHeads).map { _ in
            PagedCacheModel(mode: mode, blockSize: blockSize, headDim: h.headDim, numTokens: h.numTokens)
        }
        records.reserveCapacity(steps)
        samples.reserve(steps * h.numQHeads, values: data.values != nil)
    }

    /// A policy instance made for one layer, its cache holding the prompt (slots `0..<P`) after
    /// the policy's prefill hook, the kept prompt placed in the block tables: where every layer
    /// run starts, in a replay and in the online driver (`OnlinePolicyDriver`).
    static func prefilled(spec: PolicySpec, data: LayerData, setup: PolicySetup, promptQueries: [Float]?, topK: Int, steps: Int,
                          paging: PagingMode = .ct, blockSize: Int = 16, recordsEvents: Bool = false,
                          recordsTimeline: Bool = false, logsQuantizations: Bool = false) throws -> PolicyLayerRun {
        let policy = try spec.type.init(parameters: spec.parameters, setup: setup)
        let run = PolicyLayerRun(spec: spec, policy: policy, data: data, setup: setup, topK: topK, steps: steps, paging: paging,
                                 blockSize: blockSize, recordsEvents: recordsEvents, recordsTimeline: recordsTimeline)
        if logsQuantizations && run.cache.quantizationLog == nil { run.cache.quantizationLog = [] }
        for p in 0..<setup.header.promptLength { run.cache.append(position: p) }
        policy.prefill(PrefillContext(setup: setup, data: data, promptQueries: promptQueries), cache: run.cache)
        run.pagePrompt()
        return run
    }

    /// Called in every step right after the policy's pre-attention hook, with the cache as this
    /// step's query sees it (the online driver answers with it).
    var attendObserver: ((LayerCache) -> Void)?
    /// Called in every step right after the new position is appended, before the policy's
    /// pre-attention hook (the online thought classifier measures sparsity here).
    var appendObserver: ((LayerCache, StepContext) -> Void)?

    /// Places the prompt tokens the policy kept after prefill into the block tables.
    func pagePrompt() {
        for g in 0..<setup.header.numKVHeads {
            cache.removedPending[g].removeAll()
            cache.rechargedPending[g].removeAll()  // placed below with their current precision
            for p in cache.slots[g].sorted() { paging[g].insert(position: p, tokenClass: cache.pagingClass[Int(p)]) }
        }
    }

    /// Applies the drops the policy made since the last call, then (once per step) places the
    /// new token, so CT can reuse a slot freed in the same step. Returns compaction bytes.
    private func updatePaging(newPosition: Int32?) -> Int {
        var moved = 0
        for g in 0..<cache.numKVHeads {
            for p in cache.rechargedPending[g] { paging[g].recharged(position: p) }
            cache.rechargedPending[g].removeAll(keepingCapacity: true)
            var removed = cache.removedPending[g]
            cache.removedPending[g].removeAll(keepingCapacity: true)
            var placeNew = newPosition != nil
            if let p = newPosition, let i = removed.firstIndex(of: p) {
                removed.remove(at: i)  // evicted before it was ever placed
                placeNew = false
            }
            moved += paging[g].remove(removed, classOf: { self.cache.pagingClass[Int($0)] },
                                      bits: { self.cache.bitsPerElement(kvHead: g, position: $0) })
            if placeNew, let p = newPosition { paging[g].insert(position: p, tokenClass: cache.pagingClass[Int(p)]) }
        }
        return moved
    }

    private func pagingState() -> (blocks: Int, occupancy: Double, bytes: Int) {
        var blocks = 0, live = 0, bytes = 0
        for g in 0..<cache.numKVHeads {
            blocks += paging[g].blocks()
            live += paging[g].liveTokens
            bytes += paging[g].pagedBytes { self.cache.bitsPerElement(kvHead: g, position: $0) }
            // Metadata sits beside the blocks; with no pages (--paging none) nothing is paged.
            if paging[g].mode != .none { bytes += cache.metadataBytes[g] }
        }
        let capacity = blocks * (paging.first?.blockSize ?? 1)
        return (blocks, capacity > 0 ? Double(live) / Double(capacity) : 0, bytes)
    }

    func takeEvents() -> [KeptEvent] {
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    func advance(through chunk: ReferenceChunk) {
        let h = setup.header
        let stride = h.numQHeads * h.headDim
        chunk.queries.withUnsafeBufferPointer { allQueries in
            for s in 0..<chunk.stepCount {
                let step = chunk.firstStep + s
                let queries = setup.layer.hasQueriesAndKeys
                    ? UnsafeBufferPointer(rebasing: allQueries[(s * stride)..<((s + 1) * stride)]) : nil
                let context = StepContext(setup: setup, data: data, step: step, position: h.promptLength + step,
                                          queries: queries, fullCacheSparsity: chunk.sparsity[s])
                stepOnce(context, chunk: chunk, s: s)
            }
        }
    }

    private func stepOnce(_ context: StepContext, chunk: ReferenceChunk, s: Int) {
        let h = setup.header
        let Hq = h.numQHeads, Hkv = h.numKVHeads
        cache.beginStep()
        cache.append(position: context.position)
        appendObserver?(cache, context)
        policy.beforeAttention(context, cache: cache)
        timeline?.observe(cache, step: context.step)
        attendObserver?(cache)

        // The attended set: what this step's query sees.
        var total = 0
        var attendedTokens = 0
        for g in 0..<Hkv { attendedTokens += cache.count(kvHead: g) }
        for q in 0..<Hq {
            offsets[q] = total
            counts[q] = cache.count(kvHead: h.kvHead(ofQueryHead: q))
            total += counts[q]
        }
        if attention.count < total { attention = [Float](repeating: 0, count: total) }
        let attendedBytes = cache.totalBytes()
        var compactionBytes = updatePaging(newPosition: Int32(context.position))
        let paged = pagingState()

        var recallSum: Float = 0, recallMin: Float = .infinity, topSum: Float = 0, klSum: Float = 0, errSum: Float = 0
        headMetrics.removeAll(keepingCapacity: true)
        for g in 0..<Hkv { measureGroup(g, context: context, chunk: chunk, s: s, into: &headMetrics) }
        for m in headMetrics {
            recallSum += m.recall
            recallMin = min(recallMin, m.recall)
            topSum += m.topK
            klSum += m.kl
            samples.massRecall.append(m.recall)
            samples.topKRecall.append(m.topK)
            samples.attentionKL.append(m.kl)
            if let e = m.error {
                errSum += e
                samples.outputError.append(e)
            }
        }

        let thought = policy.thoughtBreakdown(cache: cache)
        attention.withUnsafeBufferPointer { storage in
            let view = AttentionView(storage: storage, offsets: offsets, counts: counts)
            policy.afterAttention(context, attention: view, cache: cache)
        }

        compactionBytes += updatePaging(newPosition: nil)
        var residentTokens = 0
        var evicted = false
        for g in 0..<Hkv {
            residentTokens += cache.count(kvHead: g)
            evicted = evicted || cache.droppedThisStep[g]
            if recordsEvents && cache.droppedThisStep[g] {
                events.append(KeptEvent(policy: spec.label, step: context.step, position: context.position,
                                        layer: setup.layer.index, kvHead: g, kept: cache.slots[g].sorted()))
            }
        }
        let n = Float(Hq)
        records.append(StepRecord(
            layer: setup.layer.index, step: context.step, position: context.position,
            attendedTokens: Double(attendedTokens) / Double(Hkv),
            residentTokens: Double(residentTokens) / Double(Hkv),
            attendedBytes: attendedBytes, residentBytes: cache.totalBytes(),
            fullBytes: (context.position + 1) * Hkv * h.headDim * 4,
            blocks: paged.blocks, slotOccupancy: paged.occupancy, pagedBytes: paged.bytes, compactionBytes: compactionBytes,
            massRecall: recallSum / n, massRecallMin: recallMin, topKRecall: topSum / n, attentionKL: klSum / n,
            outputError: data.values == nil ? nil : errSum / n,
            sparsity: chunk.sparsity[s], evicted: evicted, thought: thought))
    }

    private struct HeadMetrics {
        var recall: Float, topK: Float, kl: Float, error: Float?
    }

    /// True when kv head g attends to every visible position with the exact keys and values:
    /// its attention is then the reference itself, and measuring it would recompute the
    /// reference (the full cache in every replay, and every policy before its budget fills).
    private func attendsExactFullCache(_ g: Int, position p: Int) -> Bool {
        !cache.keysModified && !cache.valuesModified && cache.count(kvHead: g) == p + 1
    }

    /// Computes the attention of kv head g's query heads over its attended slots into
    /// `attention` (rows of the group are contiguous there) and their fidelity against the
    /// reference, appending one `HeadMetrics` per query head to `out`.
    private func measureGroup(_ g: Int, context: StepContext, chunk: ReferenceChunk, s: Int, into out: inout [HeadMetrics]) {
        let h = setup.header
        let D = h.headDim, T = h.numTokens, gs = h.groupSize
        let firstHead = g * gs
        let n = cache.slots[g].count
        let skipAttention = !type(of: policy).readsAttention && attendsExactFullCache(g, position: context.position)
        if skipAttention {
            // Identical to the reference by construction; the policy does not read the attention.
            for _ in 0..<gs { out.append(HeadMetrics(recall: 1, topK: 1, kl: 0, error: data.values == nil ? nil : 0)) }
            return
        }
        // Arithmetic actually done: q·k over quantized keys (exact logits come from the
        // reference, or are recomputed without it), and Σ a·v when there are values.
        cache.slots[g].withUnsafeBufferPointer { attended.load($0.baseAddress!, n) }
        let gathersLogits = chunk.logits != nil && chunk.logIndex[g].withUnsafeBufferPointer { attended.allIndexed(by: $0.baseAddress!) }
        let keyPasses = (cache.keysModified ? 1 : 0) + (!gathersLogits && data.keys != nil ? 1 : 0)
        flops += Double(2 * D * gs * n * keyPasses) + (cache.storedValues != nil ? Double(2 * D * gs * n) : 0)
        if exactLogits.count < gs * n { exactLogits = [Float](repeating: 0, count: gs * n) }
        if output.count < gs * D { output = [Float](repeating: 0, count: gs * D) }
        if groupRecall.count < gs {
            groupRecall = [Float](repeating: 0, count: gs)
            groupKL = [Float](repeating: 0, count: gs)
        }
        // Borrowed (swapped out and back) so that writing them neither copies nor allocates.
        var recall: [Float] = [], kl: [Float] = []
        swap(&recall, &groupRecall)
        swap(&kl, &groupKL)
        defer {
            swap(&recall, &groupRecall)
            swap(&kl, &groupKL)
        }
        cache.slots[g].withUnsafeBufferPointer { slotBuffer in
            let slots = slotBuffer.baseAddress!
            attention.withUnsafeMutableBufferPointer { att in
                exactLogits.withUnsafeMutableBufferPointer { exact in
                    let a = att.baseAddress! + offsets[firstHead]  // [gs][n]
                    let e = exact.baseAddress!                     // [gs][n]
                    if let exactKeys = data.keys, let queries = context.queries {
                        let scale = h.effectiveSoftmaxScale
                        let q = queries.baseAddress! + firstHead * D
                        // Exact logits: gathered from the reference's (same dot products, same bits).
                        if let full = chunk.logits, gathersLogits {
                            chunk.logIndex[g].withUnsafeBufferPointer { index in
                                for hh in 0..<gs {
                                    let row = full + (s * h.numQHeads + firstHead + hh) * chunk.logitStride
                                    attended.gather(row, index: index.baseAddress!, into: e + hh * n)
                                }
                            }
                        } else {
                            exactKeys.withUnsafeBufferPointer { K in
                                Kernels.scores(queries: q, rows: gs, headDim: D, keys: K.baseAddress! + data.offset(kvHead: g, position: 0),
                                               indices: slots, count: n, scale: scale, out: e, outStride: n)
                            }
                        }
                        if cache.keysModified {
                            cache.storedKeys!.withUnsafeBufferPointer { K in
                                Kernels.scores(queries: q, rows: gs, headDim: D, keys: K.baseAddress! + data.offset(kvHead: g, position: 0),
                                               indices: slots, count: n, scale: scale, out: a, outStride: n)
                            }
                        } else {
                            a.update(from: e, count: gs * n)
                        }
                        for hh in 0..<gs {
                            // With x the exact logits, y the policy's, and a = softmax(y) over the kept set:
                            // recall m = Σ exp(x − lse), KL(a‖A) = Σ a·(y − lse_kept − x + lse).
                            let lse = chunk.logSumExp[s * h.numQHeads + firstHead + hh]
                            let x = e + hh * n, y = a + hh * n
                            if cache.keysModified {
                                // As on the exact path: m = exp(lse_S − lse) from the log-sum-exp of
                                // the exact logits over S, capped at 1. The exact logits here and the
                                // reference's lse can differ by rounding, which with large q·k is
                                // more than exp's argument can absorb (a raw Σ exp(x − lse) gave 65).
                                let exactKeptLSE = Kernels.logSumExp(x, n)
                                recall[hh] = Swift.min(expf(exactKeptLSE - lse), 1)
                                for i in 0..<n { x[i] = y[i] - x[i] }
                                let keptLSE = Kernels.softmaxFast(y, n)
                                kl[hh] = Kernels.dot(y, x, n) + (lse - keptLSE) * Kernels.sum(y, n)
                            } else {
                                // y = x: the softmax's own log-sum-exp gives the recall,
                                // m = exp(lse_kept − lse), without a second pass of exponentials.
                                let keptLSE = Kernels.softmaxFast(y, n)
                                recall[hh] = Swift.min(expf(keptLSE - lse), 1)
                                kl[hh] = (lse - keptLSE) * Kernels.sum(y, n)
                            }
                        }
                    } else {
                        // Attention-only layer: the recorded row restricted to the kept set.
                        let H = setup.layer.attentionHeads == .keyValue ? h.numKVHeads : h.numQHeads
                        chunk.attentionRows.withUnsafeBufferPointer { A in
                            for hh in 0..<gs {
                                let rowHead = H == h.numQHeads ? firstHead + hh : g
                                let row = A.baseAddress! + (s * H + rowHead) * T
                                let ah = a + hh * n, eh = e + hh * n
                                var m: Float = 0
                                for i in 0..<n {
                                    let v = row[Int(slots[i])]
                                    m += v
                                    eh[i] = v > 0 ? logf(v) : -.infinity
                                    ah[i] = v
                                }
                                let inv: Float = m > 0 ? 1 / m : 0
                                for i in 0..<n { ah[i] *= inv }
                                recall[hh] = m
                                var divergence: Float = 0
                                for i in 0..<n where ah[i] > 0 { divergence += ah[i] * (logf(ah[i]) - eh[i]) }
                                kl[hh] = divergence
                            }
                        }
                    }
                    if let storedValues = cache.storedValues {
                        output.withUnsafeMutableBufferPointer { o in
                            storedValues.withUnsafeBufferPointer { V in
                                Kernels.weightedSum(probs: a, probStride: n, rows: gs,
                                                    values: V.baseAddress! + data.offset(kvHead: g, position: 0),
                                                    indices: slots, count: n, headDim: D, out: o.baseAddress!)
                            }
                        }
                    }
                }
            }
        }
        for hh in 0..<gs {
            let idx = s * h.numQHeads + firstHead + hh
            // Nothing attended, or (attention-only layers) only positions the recorded row gives no
            // weight: the policy's attention has no support in A. KL = -ln m with m = 0 is infinite;
            // the sum above would have left it at 0, a perfect score.
            let noSupport = n == 0 || (data.keys == nil && recall[hh] == 0)

            // Top-k recall: how many of the full cache's k most attended positions were attended.
            let k = Int(chunk.topKCount[idx])
            var hits = 0
            if k > 0 {
                let base = idx * chunk.topK
                for j in 0..<k where attended.contains(Int(chunk.topKPositions[base + j])) { hits += 1 }
            }

            var error: Float? = nil
            if cache.storedValues != nil {
                var diff: Float = 0
                output.withUnsafeBufferPointer { o in
                    chunk.outputs.withUnsafeBufferPointer { O in
                        let mine = o.baseAddress! + hh * D, full = O.baseAddress! + idx * D
                        for d in 0..<D {
                            let x = mine[d] - full[d]
                            diff += x * x
                        }
                    }
                }
                let norm = chunk.outputNorms[idx]
                error = norm > 0 ? diff.squareRoot() / norm : diff.squareRoot()
            }
            out.append(HeadMetrics(recall: recall[hh], topK: k > 0 ? Float(hits) / Float(k) : 1,
                                   kl: noSupport ? .infinity : max(kl[hh], 0), error: error))
        }
    }
}
