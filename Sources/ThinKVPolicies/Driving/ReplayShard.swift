import Foundation

/// What one replay over some layers keeps so that replays of the same trace and policies over
/// disjoint layer sets (a large model sharded by layer across machines) merge into exactly the
/// report of one replay over all of them: every step record and metric sample, in layer order.
/// `replay --shard-state FILE` writes one; `thinkv-sim merge` of such files rebuilds the result.
public struct ReplayShard: Codable, Sendable {
    public static let kind = "thinkv-replay-shard"
    /// 2: records `topK` and the trace's token text (version 1 shards cannot be checked for
    /// the top-k they were made with, and are refused).
    public static let version = 2

    public typealias Counter = PolicyCounter

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
    /// k of the top-k recall.
    public var topK: Int
    public var notes: [String]
    public var paging: String
    public var blockSizes: String
    public var timing: ReplayTiming
    public var runs: [Run]
    /// The trace's /tokens/text (nil when it has none), so that the merged per-step CSV has the
    /// `token_text` column of one replay's without the trace at hand.
    public var tokenText: [String]?
    /// Set when the replay measured fidelity on a sample of steps (`--metric-steps`); absent
    /// otherwise, so a shard of a full replay is what it always was. Shards merge only with
    /// shards of the same sample.
    public var metricSampling: MetricSampling?

    public init(_ result: ReplayResult, layersWithValues: [Int], tokenText: [String]? = nil) {
        trace = result.tracePath
        header = result.header
        layers = result.layers
        self.layersWithValues = layersWithValues
        decodeSteps = result.decodeSteps
        topK = result.topK
        notes = result.notes
        paging = result.paging.rawValue
        blockSizes = result.blockSizes
        timing = result.timing
        runs = result.runs.map { run in
            Run(
                policy: run.spec.name, given: run.spec.parameters.given, paging: run.paging.rawValue,
                blockSize: run.blockSize,
                records: run.steps, samples: run.samples, counters: run.counters)
        }
        self.tokenText = tokenText
        metricSampling = result.metricSampling
    }

    /// The steps whose fidelity the records hold (nil: every step).
    func measuredSteps(file path: String) throws -> Set<Int>? {
        guard let sampling = metricSampling else { return nil }
        let selection: MetricStepSelection
        do {
            selection = try MetricStepSelection.parse(sampling.selection, option: "metric_sampling.selection")
        } catch {
            throw CSVError("\(path): \(error); not a shard 'replay --shard-state' writes")
        }
        let steps = selection.steps(of: decodeSteps)
        guard selection != .all, steps.count == sampling.sampledSteps, sampling.decodeSteps == decodeSteps else {
            throw CSVError(
                "\(path): its metric sample (\(Format.printable(sampling.selection)), \(sampling.sampledSteps) of "
                    + "\(sampling.decodeSteps) steps) does not fit its \(decodeSteps) decode steps; "
                    + "not a shard 'replay --shard-state' writes")
        }
        return Set(steps)
    }

    public func write(to path: String, protecting inputs: [String] = []) throws {
        let encoder = JSONEncoder()
        // Sorted keys put "kind" near the start, where 'merge' looks for it.
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try OutputFile.write(String(decoding: try encoder.encode(self), as: UTF8.self), to: path, protecting: inputs)
    }

    public static func read(_ path: String) throws -> ReplayShard {
        guard let data = FileManager.default.contents(atPath: path) else { throw CSVError("\(path): cannot be read") }
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        struct Stamp: Decodable { var kind: String?; var version: Int? }
        if let stamp = try? decoder.decode(Stamp.self, from: data), stamp.kind == kind, let found = stamp.version,
            found != version
        {
            throw CSVError(
                "\(path): a version \(found) replay shard; this thinkv-sim merges version \(version) (replay again "
                    + "with --shard-state)"
            )
        }
        let shard: ReplayShard
        do { shard = try decoder.decode(ReplayShard.self, from: data) } catch {
            throw CSVError(
                "\(path): not a replay shard written by 'replay --shard-state' (\(error.localizedDescription))")
        }
        guard shard.kind == kind, shard.version == version else {
            throw CSVError("\(path): not a version \(version) replay shard")
        }
        try shard.check(file: path)
        return shard
    }

    /// Checks that the contents are what a replay writes: layers of the model, one record per
    /// replayed layer and step in order, one sample per query head of each, every figure finite
    /// and in its range. A shard edited by hand or damaged is refused, naming what is wrong,
    /// rather than merged into a report with NaN or nonsense in it.
    public func check(file path: String) throws {
        func bad(_ what: String) -> CSVError { CSVError("\(path): \(what); not a shard 'replay --shard-state' writes") }
        let h = header
        guard h.numLayers >= 1, h.numLayers <= Int(Int32.max), h.numQHeads >= 1, h.numQHeads <= Int(Int32.max),
            h.promptLength >= 0, h.numTokens > h.promptLength, h.numTokens <= Int(Int32.max)
        else {
            throw bad(
                "its trace header is impossible (layers \(h.numLayers), query heads \(h.numQHeads), prompt "
                    + "\(h.promptLength), tokens \(h.numTokens))"
            )
        }
        guard !layers.isEmpty else { throw bad("it replays no layer") }
        for layer in layers where layer < 0 || layer >= h.numLayers {
            throw bad("layer \(layer) is not a layer of the model (0 ... \(h.numLayers - 1))")
        }
        guard layers == layers.sorted(), Set(layers).count == layers.count else {
            throw bad("its layers \(layers.map(String.init).joined(separator: ",")) are not ascending and distinct")
        }
        for layer in layersWithValues where !layers.contains(layer) {
            throw bad("layer \(layer) has values but is not replayed")
        }
        guard decodeSteps >= 1, decodeSteps <= h.generatedLength else {
            throw bad("\(decodeSteps) decode steps, the trace has \(h.generatedLength)")
        }
        guard (1...TraceLimits.maxTopK).contains(topK) else {
            throw bad("top-k \(topK) is outside 1 ... \(TraceLimits.maxTopK)")
        }
        guard PagingMode(rawValue: paging) != nil else {
            throw bad("paging '\(Format.printable(paging))' is not ct, compact or none")
        }
        if let tokenText, tokenText.count != h.numTokens {
            throw bad("\(tokenText.count) token texts for \(h.numTokens) tokens")
        }
        let seconds = [
            timing.wallSeconds, timing.referenceSeconds, timing.policySeconds, timing.readSeconds,
            timing.referenceFLOPs, timing.policyFLOPs
        ]
        guard seconds.allSatisfy({ $0.isFinite && $0 >= 0 }), timing.threads >= 0 else {
            throw bad("its timings are not finite non-negative numbers")
        }
        guard !runs.isEmpty else { throw bad("it holds no policy run") }
        let expected = layers.count * decodeSteps
        let measured = try measuredSteps(file: path)
        for run in runs {
            let name = "run \(Format.printable(run.policy))"
            do { _ = try PolicySpec(name: run.policy, values: run.given) } catch {
                throw bad("\(name): \(error)")
            }
            guard PagingMode(rawValue: run.paging) != nil else {
                throw bad("\(name): paging '\(Format.printable(run.paging))' is not ct, compact or none")
            }
            guard (1...TraceLimits.maxBlockSize).contains(run.blockSize) else {
                throw bad("\(name): block size \(run.blockSize) is outside 1 ... \(TraceLimits.maxBlockSize)")
            }
            guard run.records.count == expected else {
                throw bad(
                    "\(name): \(run.records.count) step records, \(layers.count) layer(s) × \(decodeSteps) step(s) "
                        + "make \(expected)"
                )
            }
            var withError = 0, measuredRecords = 0
            for (i, r) in run.records.enumerated() {
                let layer = layers[i / decodeSteps], step = i % decodeSteps
                guard r.layer == layer, r.step == step, r.position == h.promptLength + step else {
                    throw bad(
                        "\(name): record \(i) is layer \(r.layer) step \(r.step) position \(r.position), expected "
                            + "layer \(layer) step \(step) position \(h.promptLength + step)"
                    )
                }
                // An unmeasured step's fidelity is NaN; it is checked as a measured one's would be.
                var checked = r
                if let measured, !measured.contains(step) {
                    let fidelity = [
                        r.massRecall, r.massRecallMin, r.topKRecall, r.attentionKL, r.sparsity,
                        r.outputError ?? .nan
                    ]
                    guard fidelity.allSatisfy(\.isNaN) else {
                        throw bad("\(name): layer \(r.layer) step \(r.step) is not a sampled step but has fidelity")
                    }
                    (checked.massRecall, checked.massRecallMin, checked.topKRecall, checked.attentionKL) = (1, 1, 1, 0)
                    checked.sparsity = 0
                    checked.outputError = r.outputError.map { _ in 0 }
                } else {
                    measuredRecords += 1
                    if r.outputError != nil { withError += 1 }
                }
                if let problem = Self.problem(checked) {
                    throw bad("\(name): layer \(r.layer) step \(r.step): \(problem)")
                }
            }
            let perHead = measuredRecords * h.numQHeads
            let s = run.samples
            guard s.massRecall.count == perHead, s.topKRecall.count == perHead, s.attentionKL.count == perHead,
                s.outputError.count == withError * h.numQHeads
            else {
                throw bad(
                    "\(name): metric samples (\(s.massRecall.count), \(s.topKRecall.count), \(s.attentionKL.count), "
                        + "\(s.outputError.count)) do not match \(measuredRecords) measured records × \(h.numQHeads) "
                        + "query heads"
                )
            }
            guard s.massRecall.allSatisfy(Self.isRecall), s.topKRecall.allSatisfy(Self.isRecall) else {
                throw bad("\(name): a recall sample is not in [0, 1]")
            }
            guard s.attentionKL.allSatisfy({ !$0.isNaN && $0 >= 0 }) else {
                throw bad("\(name): a KL sample is NaN or negative")
            }
            guard s.outputError.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw bad("\(name): an output-error sample is not a finite non-negative number")
            }
            for counter in run.counters where counter.value < 0 || counter.name.isEmpty {
                throw bad("\(name): counter '\(Format.printable(counter.name))' is \(counter.value)")
            }
        }
    }

    /// Recall samples are fractions; float sums may exceed 1 by rounding.
    static func isRecall(_ x: Float) -> Bool { x >= 0 && x <= 1.001 }

    /// What is impossible about one step record, or nil.
    static func problem(_ r: StepRecord) -> String? {
        let counts = [r.attendedBytes, r.residentBytes, r.fullBytes, r.blocks, r.pagedBytes, r.compactionBytes]
        if counts.contains(where: { $0 < 0 }) { return "a byte or block count is negative" }
        if !(r.attendedTokens.isFinite && r.attendedTokens >= 0 && r.residentTokens.isFinite && r.residentTokens >= 0) {
            return "a token count is not a finite non-negative number"
        }
        if !(r.slotOccupancy >= 0 && r.slotOccupancy <= 1.001) {
            return "slot occupancy \(r.slotOccupancy) is not in [0, 1]"
        }
        if !isRecall(r.massRecall) || !isRecall(r.massRecallMin) || !isRecall(r.topKRecall) {
            return "a recall is not in [0, 1]"
        }
        if r.attentionKL.isNaN || r.attentionKL < 0 { return "KL \(r.attentionKL) is NaN or negative" }
        if let e = r.outputError, !(e.isFinite && e >= 0) {
            return "output error \(e) is not a finite non-negative number"
        }
        if !(r.sparsity >= 0 && r.sparsity <= 1.001) { return "sparsity \(r.sparsity) is not in [0, 1]" }
        if let t = r.thought {
            if t.tokens.contains(where: { !($0.isFinite && $0 >= 0) })
                || t.tokensByBits.contains(where: { !($0.isFinite && $0 >= 0) })
                || t.bytes.contains(where: { $0 < 0 })
            {
                return "a thought breakdown figure is negative or not finite"
            }
        }
        return nil
    }

    /// The report of one replay over the shards' layers together. The shards must come from
    /// the same trace (same header and steps), the same policies, parameters and every setting
    /// that changes a figure (top-k, paging, block sizes), over disjoint layers; they are
    /// combined in ascending layer order, as one replay steps through them.
    public static func merge(_ shards: [ReplayShard], paths: [String]) throws -> ReplayResult {
        guard let first = shards.first else { throw UsageError("merge needs at least one replay shard") }
        for (shard, path) in zip(shards, paths) {
            func differs(_ what: String) -> CSVError {
                CSVError("\(path): \(what) differs from \(paths[0]); shards of one replay cannot differ")
            }
            guard shard.header == first.header else { throw differs("the trace (header)") }
            guard shard.decodeSteps == first.decodeSteps else {
                throw differs("the step count (\(shard.decodeSteps) vs \(first.decodeSteps))")
            }
            guard shard.topK == first.topK else { throw differs("--topk (\(shard.topK) vs \(first.topK))") }
            guard shard.paging == first.paging else { throw differs("--paging (\(shard.paging) vs \(first.paging))") }
            guard shard.blockSizes == first.blockSizes else {
                throw differs("--block-size (\(shard.blockSizes) vs \(first.blockSizes))")
            }
            guard shard.runs.map(\.policy) == first.runs.map(\.policy),
                shard.runs.map(\.given) == first.runs.map(\.given)
            else {
                throw differs("the policies or parameters")
            }
            for (run, other) in zip(shard.runs, first.runs) {
                guard run.paging == other.paging, run.blockSize == other.blockSize else {
                    throw differs(
                        "\(run.policy)'s paging or block size (\(run.paging) \(run.blockSize) vs \(other.paging) "
                            + "\(other.blockSize))"
                    )
                }
                guard run.counters.map(\.name) == other.counters.map(\.name) else {
                    throw differs("\(run.policy)'s counters")
                }
            }
            if let text = shard.tokenText, let firstText = first.tokenText, text != firstText {
                throw differs("the token text")
            }
            guard shard.metricSampling == first.metricSampling else {
                let (mine, theirs) = (
                    shard.metricSampling?.selection ?? "all", first.metricSampling?.selection ?? "all"
                )
                throw differs("--metric-steps (\(mine) vs \(theirs))")
            }
        }
        let order = shards.indices.sorted { (shards[$0].layers.first ?? 0) < (shards[$1].layers.first ?? 0) }
        var layers: [Int] = []
        for i in order { layers += shards[i].layers }
        guard layers == layers.sorted(), Set(layers).count == layers.count else {
            throw CSVError(
                "the shards' layers overlap or interleave (\(layers.map(String.init).joined(separator: ","))); give "
                    + "each shard a contiguous, disjoint set"
            )
        }
        let anyValues = shards.contains { !$0.layersWithValues.isEmpty }
        var timing = ReplayTiming.zero
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
        // Notes are shown as they are: escaped, in case a shard was written by something else.
        for i in order {
            for note in shards[i].notes.map(Format.printable) where !notes.contains(note) { notes.append(note) }
        }
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
            var run = PolicyRun(
                spec: spec, steps: records,
                summary: RunSummary.of(
                    records: records, samples: samples, counters: counters, numLayers: first.header.numLayers,
                    replayedLayers: layers.count, anyValues: anyValues, sampling: first.metricSampling,
                    headsPerStep: first.header.numQHeads),
                paging: PagingMode(rawValue: first.runs[r].paging) ?? .ct, blockSize: first.runs[r].blockSize)
            run.samples = samples
            run.counters = counters.map { Counter(name: $0.name, value: $0.value) }
            return run
        }
        var result = ReplayResult(
            tracePath: first.trace, header: first.header, layers: layers,
            decodeSteps: first.decodeSteps, runs: runs, notes: notes,
            paging: PagingMode(rawValue: first.paging) ?? .ct, blockSizes: first.blockSizes,
            timing: timing, topK: first.topK)
        result.metricSampling = first.metricSampling
        return result
    }
}
