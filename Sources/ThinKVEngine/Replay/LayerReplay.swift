import Foundation

/// One layer of a replay: every policy's `PolicyLayerRun` stepped through the layer's decode
/// steps chunk by chunk, measured against the full-cache reference of each chunk.
///
/// The reference of chunk c+1 is computed while the policies step through chunk c, in one pool
/// of tasks: with a few policies of unequal cost on a few cores, neither phase alone keeps every
/// core busy. Two chunks alternate; the reference is split into more parts than cores (up to 8
/// per worker, one step block each) so the tail balances. The queries of chunk c+2 are read by
/// one more task of the same pool, so the serial section between chunks does not wait for the file.
final class LayerReplay {
    private let reader: TraceReader
    private let header: TraceHeader
    private let info: LayerInfo
    private let workerCount: Int
    private let chunkSteps: Int
    private let decodeSteps: Int
    let runs: [PolicyLayerRun]
    /// Where the time of this layer went (added to the engine's totals; no wall time).
    private(set) var timing: ReplayTiming

    private let reference: ReferenceAttention
    private let referenceParts: Int
    private let scratch: [ReferenceAttention.Scratch]
    /// A store to leave the computed reference in, or the stored reference to read instead.
    private let store: ReferenceStore?
    private let stored: [StoredReferenceChunk]?
    private var computed: [StoredReferenceChunk] = []
    private let keepsLogits: Bool
    private let chunks: [ReferenceChunk]
    /// The decode steps whose fidelity is measured (`--metric-steps`; nil: every step), and the
    /// chunk holding the reference of those of the current chunk.
    private let sampledSteps: [Int]?
    private let sampledChunk: ReferenceChunk
    private var chunkCount: Int { (decodeSteps + chunkSteps - 1) / chunkSteps }

    private var queryRows: QueryRows
    private var prefetched = [Float](), prefetchedChunk = -1
    /// Scratch of `positionsAttendable`: one bit per position.
    private var attendable: [UInt64]
    /// Busy seconds of each task (policies, then reference parts), summed per phase.
    private var busy: [Double]

    init(
        reader: TraceReader, data: LayerData, runs: [PolicyLayerRun], configuration: ReplayConfiguration,
        referenceStore: ReferenceStore?, workerCount: Int, chunkSteps: Int, decodeSteps: Int,
        sampledSteps: [Int]? = nil
    ) {
        let header = reader.header, info = data.info
        self.reader = reader
        self.header = header
        self.info = info
        self.runs = runs
        self.workerCount = workerCount
        // Sampled, a chunk holds no logits and few reference steps: longer chunks give the
        // reference's parts more steps to share out (the queries of 512 steps are a few MiB).
        self.chunkSteps = sampledSteps == nil ? chunkSteps : max(chunkSteps, 512)
        self.sampledSteps = sampledSteps
        self.decodeSteps = decodeSteps
        timing = ReplayTiming(threads: workerCount)
        let reference = ReferenceAttention(header: header, data: data, workers: workerCount)
        self.reference = reference
        // A sampled replay computes only part of the reference: it neither reads nor fills a store.
        let matches =
            referenceStore?.matches(
                reader: reader, configuration: configuration, chunkSteps: chunkSteps,
                decodeSteps: decodeSteps) == true
        let store = sampledSteps == nil && matches ? referenceStore : nil
        self.store = store
        let stored = store?.chunks(ofLayer: info.index)
        self.stored = stored
        let stepBlocks = (chunkSteps + reference.stepBlock - 1) / reference.stepBlock
        let referenceParts = workerCount == 1 ? 1 : max(1, min(8 * workerCount, stepBlocks))
        self.referenceParts = referenceParts
        scratch = reference.makeScratch(k: configuration.topK, count: referenceParts)
        // Logits are kept only when some policy attends with the exact keys a set other than every
        // position: chunkSteps × Hq × T floats per chunk at most (117 MiB at 64 × 14 × 32768).
        // A stored reference has no logits: policies then compute their own (the same bits).
        let keepsLogits =
            stored == nil && info.hasQueriesAndKeys && sampledSteps == nil
            && runs.contains { !type(of: $0.policy).evictsNothing }
        self.keepsLogits = keepsLogits
        chunks = (0..<2).map { _ in
            ReferenceChunk(
                numQHeads: header.numQHeads, headDim: header.headDim, topK: configuration.topK,
                keepsLogits: keepsLogits)
        }
        sampledChunk = ReferenceChunk(numQHeads: header.numQHeads, headDim: header.headDim, topK: configuration.topK)
        queryRows = QueryRows(reader: reader, layer: info.index)
        attendable = [UInt64](repeating: 0, count: (header.numTokens + 63) / 64)
        busy = [Double](repeating: 0, count: runs.count + referenceParts)
    }

    /// Steps every run through the layer. `afterChunk` is called in the serial section after
    /// each chunk with the decode steps done so far.
    func run(afterChunk: (_ stepsDone: Int) -> Void) throws {
        if let sampledSteps { return try runSampled(sampledSteps, afterChunk: afterChunk) }
        if let chunk = try load(0), stored == nil {
            let start = Self.now()
            reference.compute(chunk, scratch: scratch)
            timing.referenceSeconds += Self.now() - start
            if store != nil { computed.append(StoredReferenceChunk(chunk)) }
        }
        for c in 0..<chunkCount {
            let chunk = chunks[c % 2]
            try checkLogSumExp(chunk)
            let next = try load(c + 1)
            try stepPolicies(through: chunk, referenceOf: next, prefetching: c + 2 < chunkCount ? c + 2 : nil)
            if let next, store != nil, stored == nil { computed.append(StoredReferenceChunk(next)) }
            for run in runs { timing.policyFLOPs += run.takeFLOPs() }
            afterChunk(chunk.firstStep + chunk.stepCount)
        }
        if let store, stored == nil { store.keep(computed, ofLayer: info.index) }
        let workers = Double(workerCount)
        timing.policySeconds += busy[..<runs.count].reduce(0, +) / workers
        timing.referenceSeconds += busy[runs.count...].reduce(0, +) / workers
    }

    private static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Finite q and k can still overflow float32 in q·k: refuse rather than report NaN.
    private func checkLogSumExp(_ chunk: ReferenceChunk) throws {
        guard info.hasQueriesAndKeys,
            let bad = chunk.logSumExp.prefix(chunk.stepCount * header.numQHeads).firstIndex(where: { !$0.isFinite })
        else { return }
        throw TraceError(
            file: reader.path, object: "/layers/\(info.index)",
            "attention logits overflow float32 at decode step "
                + "\(chunk.decodeStep(bad / header.numQHeads)), "
                + "query head \(bad % header.numQHeads) (q·k too large)")
    }

    /// `run` when only `sampled` steps are measured: per chunk, the queries are read, the
    /// reference of the chunk's sampled steps is computed (its parts across the workers), then
    /// every policy steps through the chunk (one task each). The reference is a small share of
    /// the work here, so it is not overlapped with the policies' steps.
    private func runSampled(_ sampled: [Int], afterChunk: (_ stepsDone: Int) -> Void) throws {
        let chunk = chunks[0]
        let width = header.numQHeads * header.headDim
        let perPair = Double(((info.hasValues ? 2 : 0) + 2) * header.headDim * header.numQHeads)
        var next = 0
        for c in 0..<chunkCount {
            let rows = decodeRows(ofChunk: c)
            let first = c * chunkSteps
            let readStart = Self.now()
            chunk.prepare(firstStep: first, stepCount: rows.count, hasValues: info.hasValues)
            try queryRows.read(rows, into: &chunk.queries)
            var steps: [Int] = []
            while next < sampled.count && sampled[next] < first + rows.count {
                steps.append(sampled[next])
                next += 1
            }
            sampledChunk.prepare(sampled: steps, hasValues: info.hasValues)
            if sampledChunk.queries.count != steps.count * width {
                sampledChunk.queries = [Float](repeating: 0, count: steps.count * width)
            }
            chunk.queries.withUnsafeBufferPointer { all in
                sampledChunk.queries.withUnsafeMutableBufferPointer { out in
                    for (i, step) in steps.enumerated() {
                        let from = all.baseAddress! + (step - first) * width
                        (out.baseAddress! + i * width).update(from: from, count: width)
                    }
                }
            }
            timing.readSeconds += Self.now() - readStart
            if !steps.isEmpty {
                let start = Self.now()
                reference.compute(sampledChunk, scratch: scratch)
                timing.referenceSeconds += Self.now() - start
                for step in steps { timing.referenceFLOPs += perPair * Double(header.promptLength + step + 1) }
                try checkLogSumExp(sampledChunk)
            }
            busy.withUnsafeMutableBufferPointer { buffer in
                let seconds = buffer.baseAddress!
                let task = { (i: Int) in
                    let start = Self.now()
                    self.runs[i].advance(through: chunk, sampled: self.sampledChunk)
                    seconds[i] += Self.now() - start
                }
                if workerCount == 1 || runs.count == 1 {
                    for i in runs.indices { task(i) }
                } else {
                    DispatchQueue.concurrentPerform(iterations: runs.count, execute: task)
                }
            }
            for run in runs { timing.policyFLOPs += run.takeFLOPs() }
            afterChunk(rows.upperBound - header.promptLength)
        }
        timing.policySeconds += busy[..<runs.count].reduce(0, +) / Double(workerCount)
    }

    /// The trace rows of chunk c's decode positions.
    private func decodeRows(ofChunk c: Int) -> Range<Int> {
        let first = c * chunkSteps
        let P = header.promptLength
        return (P + first)..<(P + first + min(chunkSteps, decodeSteps - first))
    }

    /// Chunk c with its queries (or attention rows) read and, from the store, its reference;
    /// nil past the last chunk. A computed reference is filled later (`reference.compute*`).
    private func load(_ c: Int) throws -> ReferenceChunk? {
        guard c < chunkCount else { return nil }
        let chunk = chunks[c % 2]
        let first = c * chunkSteps, steps = min(chunkSteps, decodeSteps - first)
        let readStart = Self.now()
        if keepsLogits { chunk.logPositions(positionsAttendable(throughChunk: c), tokens: header.numTokens) }
        chunk.prepare(firstStep: first, stepCount: steps, hasValues: info.hasValues)
        if info.hasQueriesAndKeys && prefetchedChunk == c {
            swap(&chunk.queries, &prefetched)
            prefetchedChunk = -1
        } else if info.hasQueriesAndKeys {
            try queryRows.read(decodeRows(ofChunk: c), into: &chunk.queries)
        } else {
            try reader.readRows(.attn, layer: info.index, rows: first..<(first + steps), into: &chunk.attentionRows)
        }
        timing.readSeconds += Self.now() - readStart
        if let stored {
            stored[c].restore(into: chunk)
        } else {
            // q·k for every visible position (q+k layers), and Σ a·v when the layer has values.
            let perPair = Double(
                ((info.hasQueriesAndKeys ? 2 : 0) + (info.hasValues ? 2 : 0)) * header.headDim
                    * header.numQHeads)
            for s in 0..<steps { timing.referenceFLOPs += perPair * Double(header.promptLength + first + s + 1) }
        }
        return chunk
    }

    /// The positions a policy can attend while it steps through chunk c, per kv head, loaded
    /// while it has finished chunk c − 2 (or the prompt): caches only drop positions and append
    /// new ones, so they are what it holds now plus the positions of chunks c − 1 and c. A policy
    /// that evicts nothing attends every position and is left out (it would make the set every
    /// position); like any policy attending a position outside the set, it recomputes those logits
    /// when it needs them (the same bits, slower).
    private func positionsAttendable(throughChunk c: Int) -> [[Int32]] {
        let newPositions = (header.promptLength + max(c - 1, 0) * chunkSteps)..<decodeRows(ofChunk: c).upperBound
        return (0..<header.numKVHeads).map { g in
            for i in attendable.indices { attendable[i] = 0 }
            for run in runs where !type(of: run.policy).evictsNothing {
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

    /// One phase of the pool: task 0 reads the queries of chunk `prefetch` (so the file is read
    /// early in the phase), then one task per policy steps it through `chunk`, then the parts of
    /// `next`'s reference (none when it is stored or there is no next chunk).
    private func stepPolicies(
        through chunk: ReferenceChunk, referenceOf next: ReferenceChunk?,
        prefetching: Int?
    ) throws {
        let prefetch = info.hasQueriesAndKeys ? prefetching : nil
        var prefetchSeconds = 0.0
        var prefetchError: Error?
        let reads = prefetch == nil ? 0 : 1
        let tasks = reads + runs.count + (next == nil || stored != nil ? 0 : referenceParts)
        busy.withUnsafeMutableBufferPointer { buffer in
            let seconds = buffer.baseAddress!  // one slot per task: no two threads share one
            let task = { (t: Int) in
                let start = Self.now()
                let i = t - reads
                if let chunkToRead = prefetch, t == 0 {
                    // The only task touching the file and `prefetched` in this phase.
                    do {
                        try self.queryRows.read(self.decodeRows(ofChunk: chunkToRead), into: &self.prefetched)
                        self.prefetchedChunk = chunkToRead
                    } catch {
                        prefetchError = error
                    }
                    prefetchSeconds = Self.now() - start
                    return
                }
                if i < self.runs.count {
                    self.runs[i].advance(through: chunk)
                } else {
                    let part = i - self.runs.count
                    self.reference.computePart(next!, part: part, of: self.referenceParts, scratch: self.scratch[part])
                }
                seconds[i] += Self.now() - start
            }
            if workerCount == 1 {
                for i in 0..<tasks { task(i) }
            } else {
                DispatchQueue.concurrentPerform(iterations: tasks, execute: task)
            }
        }
        if let prefetchError { throw prefetchError }
        timing.readSeconds += prefetchSeconds
    }
}

/// A layer's decode queries, read in aligned runs of 256 rows, a multiple of the synthetic
/// traces' HDF5 chunk: reading 64 rows at a time decompressed each 256-row chunk four times.
private struct QueryRows {
    let reader: TraceReader
    let layer: Int
    private let run = 256
    private var rows = [Float](), range = 0..<0

    init(reader: TraceReader, layer: Int) {
        self.reader = reader
        self.layer = layer
    }

    /// Copies the queries of `wanted` into `out`, `[row][Hq][D]`.
    mutating func read(_ wanted: Range<Int>, into out: inout [Float]) throws {
        let header = reader.header
        if !(range.contains(wanted.lowerBound) && wanted.upperBound <= range.upperBound) {
            let start = wanted.lowerBound / run * run
            range = start..<min(header.numTokens, max(wanted.upperBound, start + run))
            try reader.readRows(.q, layer: layer, rows: range, into: &rows)
        }
        let width = header.numQHeads * header.headDim
        let count = wanted.count * width
        if out.count != count { out = [Float](repeating: 0, count: count) }
        let from = (wanted.lowerBound - range.lowerBound) * width
        rows.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { $0.baseAddress!.update(from: src.baseAddress! + from, count: count) }
        }
    }
}
