import Foundation

/// One policy instance stepping through one layer: the one place where a policy's hooks are
/// called. The replay (`ReplayEngine`), the closed loop (`OnlinePolicyDriver`) and ThinKV's
/// cache-sparsity classifier (`CacheSparsityClassifier`) all drive policies through it, so they
/// see the same hooks in the same order with the same contexts:
///
/// 1. `prefilled`: positions `0..<P` are appended to every kv head (in position order), then the
///    policy's `prefill` runs with the prompt's queries;
/// 2. for every decode step t at position p = P + t:
///    a. `beginStep`: p is appended to every kv head; `appendObserver` sees the cache here
///       (the online classifier measures the step's sparsity here);
///    b. `finishStep`: the policy's `beforeAttention`; the step's query attends the cache as the
///       policy left it (the *attended set*: `attendObserver` and `--cache-timeline` see it here),
///       and that attention is measured; then `afterAttention` with that attention, which
///       leaves the *resident set* the next step starts from.
///
/// `advance(through:)` runs both halves for every step of a reference chunk. The classifier runs
/// them apart, so that it measures every lane between the append and `beforeAttention` and types
/// the step before any lane's hooks run.
///
/// Two modes (`Mode`), which differ only in what is measured, never in what the policy sees:
/// - `measured` (replay, closed loop): attention and fidelity against a `ReferenceChunk`, paging,
///   one `StepRecord` per step, kept events.
/// - `unmeasured` (the classifier): no reference, no metrics, no records, no paging accounting
///   (paging never changes what a policy keeps). The attention a `readsAttention` policy reads is
///   computed over its cache as the measured mode computes it (same kernels, same bits); a policy
///   that does not read it gets the view unfilled, as in the measured mode when its attention
///   equals the reference. `StepContext.fullCacheSparsity` is NaN (there is no reference).
package final class PolicyLayerRun {
    package enum Mode { case measured, unmeasured }

    /// The policy's label (`PolicySpec.label`), as kept events and timelines name it.
    let label: String
    package let policy: any CachePolicy
    package let cache: LayerCache
    package let data: LayerData
    package let setup: PolicySetup
    let mode: Mode
    package var records: [StepRecord] = []
    package var samples = MetricSamples()
    /// Kept-set events are collected only for a sink (sorting every changed head's slots each
    /// step is not free).
    private let recordsEvents: Bool
    private var events: [KeptEvent] = []
    /// What the attended set and the quantizations were at each step (`--cache-timeline` only).
    private(set) var timeline: CacheTimelineRecorder?

    /// Called in every step right after the new position is appended, before the policy's
    /// pre-attention hook (the online thought classifier measures sparsity here).
    package var appendObserver: ((LayerCache, StepContext) -> Void)?
    /// Called in every step right after the policy's pre-attention hook, with the cache as this
    /// step's query sees it (the online driver answers with it).
    package var attendObserver: ((LayerCache) -> Void)?

    // Scratch reused every step.
    /// The policy's attention over the attended set: query head q's row at `offsets[q]`, of
    /// `counts[q]` entries in slot order (the rows of one kv head's group are contiguous).
    private var attention = FloatScratch()
    /// The exact logits over the attended set of one group, `[groupSize][n]`.
    private var exactLogits = FloatScratch()
    /// The policy's attention output of one group, `[groupSize][D]`.
    private var output = FloatScratch()
    /// Mass recall and attention KL (before clamping) of each query head of one group.
    private var groupRecall = FloatScratch(), groupKL = FloatScratch()
    private var headMetrics: [HeadMetrics] = []
    private var flops: Double = 0
    private var offsets: [Int]
    private var counts: [Int]
    /// The positions kv head g attends (loaded in `measureGroup`).
    private var attended: AttendedSet
    private var paging: [PagedCacheModel]

    private init(
        label: String, policy: any CachePolicy, data: LayerData, setup: PolicySetup, mode: Mode,
        steps: Int, paging pagingMode: PagingMode, blockSize: Int, recordsEvents: Bool,
        recordsTimeline: Bool
    ) {
        self.label = label
        self.policy = policy
        self.data = data
        self.setup = setup
        self.mode = mode
        self.recordsEvents = recordsEvents && mode == .measured
        cache = LayerCache(data: data)
        if recordsTimeline { timeline = CacheTimelineRecorder(cache: cache, promptLength: setup.header.promptLength) }
        let h = setup.header
        offsets = [Int](repeating: 0, count: h.numQHeads)
        counts = [Int](repeating: 0, count: h.numQHeads)
        switch mode {
        case .measured:
            attended = AttendedSet(numTokens: h.numTokens)
            paging = (0..<h.numKVHeads).map { _ in
                PagedCacheModel(mode: pagingMode, blockSize: blockSize, headDim: h.headDim, numTokens: h.numTokens)
            }
            output.reserve(h.groupSize * h.headDim)
            groupRecall.reserve(h.groupSize)
            groupKL.reserve(h.groupSize)
            records.reserveCapacity(steps)
            samples.reserve(steps * h.numQHeads, values: data.values != nil)
        case .unmeasured:
            attended = AttendedSet(numTokens: 0)
            paging = []
        }
    }

    deinit {
        attention.deallocate()
        exactLogits.deallocate()
        output.deallocate()
        groupRecall.deallocate()
        groupKL.deallocate()
    }

    /// A policy instance made for one layer, its cache holding the prompt (slots `0..<P`) after
    /// the policy's prefill hook (and, measured, the kept prompt placed in the block tables):
    /// where every layer run starts, in a replay, in the online driver and in the classifier.
    package static func prefilled(
        spec: PolicySpec, data: LayerData, setup: PolicySetup, promptQueries: [Float]?,
        mode: Mode = .measured, steps: Int, paging: PagingMode = .ct, blockSize: Int = 16,
        recordsEvents: Bool = false, recordsTimeline: Bool = false,
        logsQuantizations: Bool = false
    ) throws -> PolicyLayerRun {
        let policy = try spec.type.init(parameters: spec.parameters, setup: setup)
        return try prefilled(
            policy, label: spec.label, data: data, setup: setup, promptQueries: promptQueries,
            mode: mode, steps: steps, paging: paging, blockSize: blockSize, recordsEvents: recordsEvents,
            recordsTimeline: recordsTimeline, logsQuantizations: logsQuantizations)
    }

    /// `prefilled` with an instance made by the caller (`label` names it in kept events).
    package static func prefilled(
        _ policy: any CachePolicy, label: String, data: LayerData, setup: PolicySetup,
        promptQueries: [Float]?, mode: Mode = .measured, steps: Int, paging: PagingMode = .ct,
        blockSize: Int = 16, recordsEvents: Bool = false, recordsTimeline: Bool = false,
        logsQuantizations: Bool = false
    ) throws -> PolicyLayerRun {
        let type = type(of: policy)
        if mode == .unmeasured && type.readsAttention && !setup.layer.hasQueriesAndKeys {
            throw PolicyError(
                "\(type.name) reads the step's attention, which layer \(setup.layer.index) cannot give "
                    + "without a reference (it records no q and k)")
        }
        let run = PolicyLayerRun(
            label: label, policy: policy, data: data, setup: setup, mode: mode, steps: steps,
            paging: paging, blockSize: blockSize, recordsEvents: recordsEvents,
            recordsTimeline: recordsTimeline)
        if logsQuantizations && run.cache.quantizationLog == nil { run.cache.quantizationLog = [] }
        for p in 0..<setup.header.promptLength { run.cache.append(position: p) }
        policy.prefill(PrefillContext(setup: setup, data: data, promptQueries: promptQueries), cache: run.cache)
        run.pagePrompt()
        return run
    }

    package func takeFLOPs() -> Double {
        defer { flops = 0 }
        return flops
    }

    func takeEvents() -> [KeptEvent] {
        defer { events.removeAll(keepingCapacity: true) }
        return events
    }

    // MARK: Stepping

    /// Steps through every decode step of `chunk`, measuring each against it.
    package func advance(through chunk: ReferenceChunk) {
        let h = setup.header
        let stride = h.numQHeads * h.headDim
        chunk.queries.withUnsafeBufferPointer { allQueries in
            for s in 0..<chunk.stepCount {
                let step = chunk.firstStep + s
                let queries =
                    setup.layer.hasQueriesAndKeys
                    ? UnsafeBufferPointer(rebasing: allQueries[(s * stride)..<((s + 1) * stride)]) : nil
                let context = StepContext(
                    setup: setup, data: data, step: step, position: h.promptLength + step,
                    queries: queries, fullCacheSparsity: chunk.sparsity[s])
                beginStep(context)
                finishStep(context, measuredAgainst: chunk, s)
            }
        }
    }

    /// Steps through every decode step of `chunk` (whose queries are read; its reference is not
    /// computed), measuring only the steps of `sampled`, a chunk holding the reference of those
    /// of its steps that are sampled (`--metric-steps`). The others are stepped as in a deployed
    /// cache: the policy's attention over its own cache, memory and paging accounting, no
    /// fidelity (NaN in the record).
    func advance(through chunk: ReferenceChunk, sampled: ReferenceChunk) {
        let h = setup.header
        let stride = h.numQHeads * h.headDim
        var next = 0
        chunk.queries.withUnsafeBufferPointer { allQueries in
            for s in 0..<chunk.stepCount {
                let step = chunk.firstStep + s
                let isSampled = next < sampled.stepCount && sampled.decodeStep(next) == step
                let queries =
                    setup.layer.hasQueriesAndKeys
                    ? UnsafeBufferPointer(rebasing: allQueries[(s * stride)..<((s + 1) * stride)]) : nil
                let context = StepContext(
                    setup: setup, data: data, step: step, position: h.promptLength + step,
                    queries: queries,
                    fullCacheSparsity: isSampled ? sampled.sparsity[next] : .nan)
                beginStep(context)
                if isSampled {
                    finishStep(context, measuredAgainst: sampled, next)
                    next += 1
                } else {
                    finishUnsampledStep(context)
                }
            }
        }
    }

    /// The first half of a step: the new position joins every kv head's cache.
    package func beginStep(_ context: StepContext) {
        cache.beginStep()
        cache.append(position: context.position)
        appendObserver?(cache, context)
    }

    /// The second half of a step: `beforeAttention`, the step's attention (measured against step
    /// `s` of `chunk` in the measured mode; `chunk` is nil in the unmeasured mode), `afterAttention`.
    package func finishStep(_ context: StepContext, measuredAgainst chunk: ReferenceChunk? = nil, _ s: Int = 0) {
        policy.beforeAttention(context, cache: cache)
        timeline?.observe(cache, step: context.step)
        attendObserver?(cache)
        let total = layOutAttention()
        if let chunk {
            precondition(mode == .measured, "an unmeasured run has no reference to measure against")
            measureStep(context, chunk: chunk, s: s, total: total)
        } else {
            precondition(mode == .unmeasured, "a measured step needs its reference chunk")
            if type(of: policy).readsAttention { computeAttention(context) }
            callAfterAttention(context, total: total)
            // Paging is accounting only: what it would consume is dropped.
            for g in 0..<cache.numKVHeads {
                cache.removedPending[g].removeAll(keepingCapacity: true)
                cache.rechargedPending[g].removeAll(keepingCapacity: true)
            }
        }
    }

    /// The second half of a measured-mode step without a reference (`--metric-steps`).
    private func finishUnsampledStep(_ context: StepContext) {
        precondition(mode == .measured, "only a measured run samples its metric steps")
        policy.beforeAttention(context, cache: cache)
        timeline?.observe(cache, step: context.step)
        attendObserver?(cache)
        measureStep(context, chunk: nil, s: 0, total: layOutAttention())
    }

    /// Where each query head's row of the attention sits (`offsets`, `counts`); sizes the buffer.
    /// Returns the entries over all query heads.
    private func layOutAttention() -> Int {
        let h = setup.header
        var total = 0
        for q in 0..<h.numQHeads {
            offsets[q] = total
            counts[q] = cache.count(kvHead: h.kvHead(ofQueryHead: q))
            total += counts[q]
        }
        attention.reserve(total)
        return total
    }

    private func callAfterAttention(_ context: StepContext, total: Int) {
        let view = AttentionView(
            storage: UnsafeBufferPointer(start: attention.base, count: total), offsets: offsets,
            counts: counts)
        policy.afterAttention(context, attention: view, cache: cache)
    }

    /// The unmeasured mode's attention: each query head's softmax over its kv head's attended
    /// slots with the stored keys — what `measureGroup` leaves in `attention` (the exact keys'
    /// logits, gathered or computed, are the same bits as the stored keys' while they are unmodified).
    private func computeAttention(_ context: StepContext) {
        let h = setup.header
        let D = h.headDim, gs = h.groupSize
        guard let queries = context.queries?.baseAddress, let keys = cache.storedKeys else { return }
        keys.withUnsafeBufferPointer { K in
            for g in 0..<h.numKVHeads {
                let n = cache.count(kvHead: g)
                let rows = attention.base + offsets[g * gs]
                cache.slots[g].withUnsafeBufferPointer { slots in
                    Kernels.scores(
                        queries: queries + g * gs * D, rows: gs, headDim: D,
                        keys: K.baseAddress! + data.offset(kvHead: g, position: 0),
                        indices: slots.baseAddress!, count: n, scale: h.effectiveSoftmaxScale, out: rows, outStride: n)
                }
                for hh in 0..<gs { Kernels.softmaxFast(rows + hh * n, n) }
            }
        }
    }

    // MARK: Measured steps

    /// The measured mode's attention and afterAttention, with the step's record: tokens and bytes
    /// of the attended set, paging, fidelity per query head, then the resident set. Without a
    /// reference chunk (an unsampled step) the attention is the policy's own over its cache, when
    /// it reads it, and the record's fidelity and sparsity are NaN.
    private func measureStep(_ context: StepContext, chunk: ReferenceChunk?, s: Int, total: Int) {
        let h = setup.header
        let Hq = h.numQHeads, Hkv = h.numKVHeads
        var attendedTokens = 0
        for g in 0..<Hkv { attendedTokens += cache.count(kvHead: g) }
        let attendedBytes = cache.totalBytes()
        var compactionBytes = updatePaging(newPosition: Int32(context.position))
        let paged = pagingState()

        let unmeasured = Float.nan
        var fidelity = (
            recallSum: unmeasured, recallMin: unmeasured, topKSum: unmeasured, klSum: unmeasured,
            errorSum: unmeasured
        )
        if let chunk {
            headMetrics.removeAll(keepingCapacity: true)
            for g in 0..<Hkv { measureGroup(g, context: context, chunk: chunk, s: s, into: &headMetrics) }
            fidelity = collect(headMetrics)
        } else if type(of: policy).readsAttention {
            computeAttention(context)
            for g in 0..<Hkv { flops += Double(2 * h.headDim * h.groupSize * cache.count(kvHead: g)) }
        }

        let thought = policy.thoughtBreakdown(cache: cache)
        callAfterAttention(context, total: total)

        compactionBytes += updatePaging(newPosition: nil)
        var residentTokens = 0
        var evicted = false
        for g in 0..<Hkv {
            residentTokens += cache.count(kvHead: g)
            evicted = evicted || cache.droppedThisStep[g]
            if recordsEvents && cache.droppedThisStep[g] {
                events.append(
                    KeptEvent(
                        policy: label, step: context.step, position: context.position,
                        layer: setup.layer.index, kvHead: g, kept: cache.slots[g].sorted()))
            }
        }
        let n = Float(Hq)
        records.append(
            StepRecord(
                layer: setup.layer.index, step: context.step, position: context.position,
                attendedTokens: Double(attendedTokens) / Double(Hkv),
                residentTokens: Double(residentTokens) / Double(Hkv),
                attendedBytes: attendedBytes, residentBytes: cache.totalBytes(),
                fullBytes: (context.position + 1) * Hkv * h.headDim * 4,
                blocks: paged.blocks, slotOccupancy: paged.occupancy, pagedBytes: paged.bytes,
                compactionBytes: compactionBytes,
                massRecall: fidelity.recallSum / n, massRecallMin: fidelity.recallMin, topKRecall: fidelity.topKSum / n,
                attentionKL: fidelity.klSum / n, outputError: data.values == nil ? nil : fidelity.errorSum / n,
                sparsity: chunk?.sparsity[s] ?? unmeasured, evicted: evicted, thought: thought))
    }

    /// Appends every head's sample to `samples` and returns the sums over the step's heads.
    private func collect(_ heads: [HeadMetrics])
        -> (recallSum: Float, recallMin: Float, topKSum: Float, klSum: Float, errorSum: Float)
    {
        var recallSum: Float = 0, recallMin: Float = .infinity, topSum: Float = 0, klSum: Float = 0, errSum: Float = 0
        for m in heads {
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
        return (recallSum, recallMin, topSum, klSum, errSum)
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
    /// reference (`AttentionFidelity`), appending one `HeadMetrics` per query head to `out`.
    private func measureGroup(
        _ g: Int, context: StepContext, chunk: ReferenceChunk, s: Int,
        into out: inout [HeadMetrics]
    ) {
        let h = setup.header
        let gs = h.groupSize, D = h.headDim
        if !type(of: policy).readsAttention && attendsExactFullCache(g, position: context.position) {
            // Identical to the reference by construction; the policy does not read the attention.
            for _ in 0..<gs { out.append(HeadMetrics(recall: 1, topK: 1, kl: 0, error: data.values == nil ? nil : 0)) }
            return
        }
        let n = cache.count(kvHead: g)
        exactLogits.reserve(gs * n)
        let rows = GroupRows(
            policyBase: attention.base + offsets[g * gs], exactBase: exactLogits.base, count: n,
            firstHead: g * gs, headCount: gs, step: s)
        var gathered = false
        cache.slots[g].withUnsafeBufferPointer { slotBuffer in
            let slots = slotBuffer.baseAddress!
            attended.load(slots, n)
            if let queries = context.queries?.baseAddress, data.keys != nil {
                gathered = exactLogitsFromReference(rows, kvHead: g, chunk: chunk)
                if !gathered { computeExactLogits(rows, kvHead: g, queries: queries, slots: slots) }
                policyLogits(rows, kvHead: g, queries: queries, slots: slots)
                logitFidelity(rows, chunk: chunk)
            } else {
                recordedRowFidelity(rows, kvHead: g, chunk: chunk, slots: slots)
            }
            if cache.storedValues != nil { policyOutput(rows, kvHead: g, slots: slots) }
        }
        // Arithmetic actually done: q·k over the stored keys when they differ from the exact ones,
        // q·k over the exact keys unless gathered from the reference, and Σ a·v when there are values.
        let keyPasses = (cache.keysModified ? 1 : 0) + (!gathered && data.keys != nil ? 1 : 0)
        flops += Double(2 * D * gs * n * keyPasses) + (cache.storedValues != nil ? Double(2 * D * gs * n) : 0)
        appendHeadMetrics(rows, chunk: chunk, into: &out)
    }

    /// Where one group's rows sit for `measureGroup`: the policy's logits (then its attention),
    /// `[headCount][count]` in `attention`, and the exact logits, same shape, in `exactLogits`.
    private struct GroupRows {
        let policyBase: UnsafeMutablePointer<Float>
        let exactBase: UnsafeMutablePointer<Float>
        let count: Int
        let firstHead: Int
        let headCount: Int
        /// The step's index within its reference chunk.
        let step: Int
        @inline(__always) func policyRow(_ hh: Int) -> UnsafeMutablePointer<Float> { policyBase + hh * count }
        @inline(__always) func exactRow(_ hh: Int) -> UnsafeMutablePointer<Float> { exactBase + hh * count }
    }

    /// Gathers the group's exact logits from the reference's when it kept every attended
    /// position's (same dot products, same bits); false when it did not.
    @inline(__always)
    private func exactLogitsFromReference(_ rows: GroupRows, kvHead g: Int, chunk: ReferenceChunk) -> Bool {
        guard let full = chunk.logits else { return false }
        return chunk.logIndex[g].withUnsafeBufferPointer { index in
            guard attended.allIndexed(by: index.baseAddress!) else { return false }
            for hh in 0..<rows.headCount {
                let row = full + (rows.step * setup.header.numQHeads + rows.firstHead + hh) * chunk.logitStride
                attended.gather(row, index: index.baseAddress!, into: rows.exactRow(hh))
            }
            return true
        }
    }

    /// The group's exact logits s · q·k over the attended slots, from the layer's exact keys.
    @inline(__always)
    private func computeExactLogits(
        _ rows: GroupRows, kvHead g: Int, queries: UnsafePointer<Float>,
        slots: UnsafePointer<Int32>
    ) {
        scores(rows.exactBase, kvHead: g, queries: queries, keys: data.keys!, slots: slots, count: rows.count)
    }

    /// The group's logits as the policy's cache gives them: over the stored keys when a policy
    /// changed them, else the exact logits.
    @inline(__always)
    private func policyLogits(
        _ rows: GroupRows, kvHead g: Int, queries: UnsafePointer<Float>,
        slots: UnsafePointer<Int32>
    ) {
        if cache.keysModified {
            scores(
                rows.policyBase, kvHead: g, queries: queries, keys: cache.storedKeys!, slots: slots,
                count: rows.count)
        } else {
            rows.policyBase.update(from: rows.exactBase, count: rows.headCount * rows.count)
        }
    }

    @inline(__always)
    private func scores(
        _ out: UnsafeMutablePointer<Float>, kvHead g: Int, queries: UnsafePointer<Float>, keys: [Float],
        slots: UnsafePointer<Int32>, count n: Int
    ) {
        let h = setup.header
        keys.withUnsafeBufferPointer { K in
            Kernels.scores(
                queries: queries + g * h.groupSize * h.headDim, rows: h.groupSize, headDim: h.headDim,
                keys: K.baseAddress! + data.offset(kvHead: g, position: 0), indices: slots, count: n,
                scale: h.effectiveSoftmaxScale, out: out, outStride: n)
        }
    }

    /// Each query head's recall and KL from the exact and the policy's logits; leaves the policy's
    /// attention in its rows.
    @inline(__always)
    private func logitFidelity(_ rows: GroupRows, chunk: ReferenceChunk) {
        for hh in 0..<rows.headCount {
            let lse = chunk.logSumExp[rows.step * setup.header.numQHeads + rows.firstHead + hh]
            (groupRecall.base[hh], groupKL.base[hh]) =
                cache.keysModified
                ? AttentionFidelity.storedKeyFidelity(
                    exactLogits: rows.exactRow(hh), policyLogits: rows.policyRow(hh),
                    count: rows.count, fullLogSumExp: lse)
                : AttentionFidelity.exactKeyFidelity(logits: rows.policyRow(hh), count: rows.count, fullLogSumExp: lse)
        }
    }

    /// Attention-only layer: the recorded row restricted to the attended set.
    @inline(__always)
    private func recordedRowFidelity(
        _ rows: GroupRows, kvHead g: Int, chunk: ReferenceChunk,
        slots: UnsafePointer<Int32>
    ) {
        let h = setup.header
        let H = setup.layer.attentionHeads == .keyValue ? h.numKVHeads : h.numQHeads
        chunk.attentionRows.withUnsafeBufferPointer { A in
            for hh in 0..<rows.headCount {
                let rowHead = H == h.numQHeads ? rows.firstHead + hh : g
                (groupRecall.base[hh], groupKL.base[hh]) = AttentionFidelity.recordedRowFidelity(
                    row: A.baseAddress! + (rows.step * H + rowHead) * h.numTokens, slots: slots, count: rows.count,
                    probabilities: rows.policyRow(hh), logScratch: rows.exactRow(hh))
            }
        }
    }

    /// The group's attention output Σ Â·v̂ over the stored values into `output`, `[headCount][D]`.
    @inline(__always)
    private func policyOutput(_ rows: GroupRows, kvHead g: Int, slots: UnsafePointer<Int32>) {
        let D = setup.header.headDim
        cache.storedValues!.withUnsafeBufferPointer { V in
            Kernels.weightedSum(
                probs: rows.policyBase, probStride: rows.count, rows: rows.headCount,
                values: V.baseAddress! + data.offset(kvHead: g, position: 0),
                indices: slots, count: rows.count, headDim: D, out: output.base)
        }
    }

    /// One `HeadMetrics` per query head of the group: its recall and KL, its top-k recall and,
    /// with stored values, its output error.
    @inline(__always)
    private func appendHeadMetrics(_ rows: GroupRows, chunk: ReferenceChunk, into out: inout [HeadMetrics]) {
        let h = setup.header, D = h.headDim
        chunk.topKPositions.withUnsafeBufferPointer { top in
            for hh in 0..<rows.headCount {
                let idx = rows.step * h.numQHeads + rows.firstHead + hh
                let recall = groupRecall.base[hh], kl = groupKL.base[hh]
                // Nothing attended, or (attention-only layers) only positions the recorded row
                // gives no weight: the policy's attention has no support in A.
                let noSupport = rows.count == 0 || (data.keys == nil && recall == 0)
                let topK = AttentionFidelity.topKRecall(
                    top: top.baseAddress! + idx * chunk.topK,
                    count: Int(chunk.topKCount[idx]), attended: attended)
                var error: Float? = nil
                if cache.storedValues != nil {
                    error = chunk.outputs.withUnsafeBufferPointer { O in
                        AttentionFidelity.outputError(
                            output.base + hh * D, full: O.baseAddress! + idx * D,
                            fullNorm: chunk.outputNorms[idx], headDim: D)
                    }
                }
                out.append(
                    HeadMetrics(
                        recall: recall, topK: topK,
                        kl: AttentionFidelity.reportedKL(kl, hasNoSupport: noSupport), error: error))
            }
        }
    }

    // MARK: Paging

    /// Places the prompt tokens the policy kept after prefill into the block tables (measured
    /// mode; the unmeasured mode drops what paging would consume).
    private func pagePrompt() {
        for g in 0..<setup.header.numKVHeads {
            cache.removedPending[g].removeAll()
            cache.rechargedPending[g].removeAll()  // placed below with their current precision
            guard mode == .measured else { continue }
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
            moved += paging[g].remove(
                removed, classOf: { self.cache.pagingClass[Int($0)] },
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
}

/// A float buffer owned by one run, grown (never shrunk; contents not kept) as a step needs
/// more: raw, so that the measurement indexes it without closures or exclusivity checks.
struct FloatScratch {
    private(set) var base: UnsafeMutablePointer<Float>
    private(set) var capacity: Int

    init() {
        base = .allocate(capacity: 1)
        base.initialize(to: 0)
        capacity = 1
    }

    mutating func reserve(_ count: Int) {
        guard count > capacity else { return }
        base.deallocate()
        base = .allocate(capacity: count)
        base.initialize(repeating: 0, count: count)
        capacity = count
    }

    func deallocate() { base.deallocate() }
}
