import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Properties every policy in `PolicyRegistry.all` must have, on small random traces, with
/// settings derived from what each policy declares (`PolicyConformance`): a new policy is tested
/// by these without an edit here. Each failure names the policy, its settings, the trace, and
/// the first layer, step and kv head where the property breaks.
final class PolicyConformanceTests: XCTestCase {

    private struct SmallTrace {
        let path: String
        let reader: TraceReader
        var name: String { "T \(reader.header.numTokens) P \(reader.header.promptLength) D \(reader.header.headDim)" }
    }

    private struct Replayed {
        let result: ReplayResult
        let run: PolicyRun
        let kept: [KeptEvent]
        let timelines: [CacheTimeline]
    }

    /// The traces, and each configuration's replay with 1 thread, shared by the tests of this
    /// class (replays dominate its time); the directory goes in the class's `tearDown`.
    private final class Shared: @unchecked Sendable {
        let lock = NSLock()
        var directory: URL?
        var traces: [SmallTrace]?
        var replays: [String: Replayed] = [:]
    }
    private static let shared = Shared()

    override class func tearDown() {
        if let directory = shared.directory { try? FileManager.default.removeItem(at: directory) }
        super.tearDown()
    }

    /// Two layers of Gaussian q/k/v (GQA: 4 query heads on 2 kv heads); the queries of each run
    /// of 8 positions are scaled by 0.3, 1.6 or 8 in turn, so the attention's sparsity changes
    /// along the trace (thought types for the policies that have them). The second trace's
    /// prompt is longer than most small budgets (compression at prefill).
    private func smallTraces() throws -> [SmallTrace] {
        let shared = Self.shared
        shared.lock.lock()
        defer { shared.lock.unlock() }
        if let traces = shared.traces { return traces }
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("thinkv-conformance-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        shared.directory = dir
        let shapes = [(T: 72, P: 16, D: 8, seed: UInt64(301)), (T: 88, P: 40, D: 16, seed: UInt64(302))]
        let traces = try shapes.map { shape in
            let (Hq, Hkv) = (4, 2)
            var layers = (0..<2).map { l in
                TestTraces.randomLayer(
                    T: shape.T, Hq: Hq, Hkv: Hkv, D: shape.D, seed: shape.seed + UInt64(10 * l),
                    index: l)
            }
            let factors: [Float] = [0.3, 1.6, 8]
            for l in layers.indices {
                for p in 0..<shape.T {
                    for i in 0..<(Hq * shape.D) { layers[l].q![p * Hq * shape.D + i] *= factors[(p / 8) % 3] }
                }
            }
            let path = try TestTraces.write(
                to: dir.appendingPathComponent("conformance-\(shape.seed).h5"), T: shape.T,
                P: shape.P, Hq: Hq, Hkv: Hkv, D: shape.D, numLayers: 2, layers: layers)
            return SmallTrace(path: path, reader: try TraceReader(path: path))
        }
        shared.traces = traces
        return traces
    }

    private func replay(
        _ trace: SmallTrace, _ spec: PolicySpec, threads: Int,
        chunkSteps: Int? = nil, metricSteps: MetricStepSelection = .all
    ) throws -> Replayed {
        var configuration = ReplayConfiguration(policies: [spec], threads: threads)
        configuration.chunkSteps = chunkSteps
        configuration.metricSteps = metricSteps
        let engine = ReplayEngine(reader: try TraceReader(path: trace.path), configuration: configuration)
        let kept = KeptEventCollector(), timelines = CacheTimelineCollector()
        engine.keptSink = kept
        engine.timelineSink = timelines
        let result = try engine.run()
        let ordered = timelines.timelines.sorted { ($0.layer, $0.kvHead) < ($1.layer, $1.kvHead) }
        return Replayed(result: result, run: result.runs[0], kept: kept.events, timelines: ordered)
    }

    /// The replay of `type` with `values` on `trace` with 1 thread, made once per class run.
    private func replay(
        _ trace: SmallTrace, _ type: any CachePolicy.Type,
        _ values: [String: String]
    ) throws -> Replayed {
        let key = "\(trace.path) \(type.name) \(values.sorted { $0.key < $1.key })"
        let shared = Self.shared
        shared.lock.lock()
        let stored = shared.replays[key]
        shared.lock.unlock()
        if let stored { return stored }
        let replayed = try replay(trace, try PolicyConformance.spec(type, values), threads: 1)
        shared.lock.lock()
        shared.replays[key] = replayed
        shared.lock.unlock()
        return replayed
    }

    /// The budgets a policy is replayed at: two for a policy with a budget, else its settings alone.
    private func budgets(_ type: any CachePolicy.Type) -> [PolicyConformance.Budget] {
        PolicyConformance.declaresBudget(type) ? [.smallest, .moderate] : [.smallest]
    }

    /// Failures per policy and property, reported once each with the first few cases.
    /// `expected`: documented behaviours that break a property, by key, with the reason; they
    /// must show (as XCTExpectFailure would demand, which this platform's XCTest lacks).
    private final class Findings {
        private var cases: [String: [String]] = [:]
        private let expected: [String: String]
        init(expected: [String: String] = [:]) { self.expected = expected }
        func add(_ key: String, _ message: String) { cases[key, default: []].append(message) }
        func report(file: StaticString = #filePath, line: UInt = #line) {
            for key in cases.keys.sorted() where expected[key] == nil {
                let all = cases[key]!
                XCTFail(
                    "\(key): \(all.count) case(s), first: \(all.prefix(3).joined(separator: " | "))",
                    file: file, line: line)
            }
            for (key, reason) in expected.sorted(by: { $0.key < $1.key }) where cases[key] == nil {
                XCTFail("\(key): expected to fail (\(reason)) but holds; drop the expectation", file: file, line: line)
            }
        }
    }

    /// Calls `body` for every registered policy, trace and budget with the derived settings;
    /// a policy whose settings cannot be derived is itself a failure.
    private func forEveryPolicy(
        budgets chosen: ((any CachePolicy.Type) -> [PolicyConformance.Budget])? = nil,
        _ body: (any CachePolicy.Type, SmallTrace, PolicyConformance.Budget, [String: String]) throws -> Void
    ) throws {
        let traces = try smallTraces()
        for type in Self.policiesAndCompositions {
            for trace in traces {
                for budget in (chosen ?? budgets)(type) {
                    let values: [String: String]
                    do {
                        values = try PolicyConformance.settings(for: type, reader: trace.reader, budget: budget)
                    } catch {
                        XCTFail("\(type.name) on \(trace.name): no settings for a \(budget.rawValue) budget: \(error)")
                        continue
                    }
                    try body(type, trace, budget, values)
                }
            }
        }
    }

    /// Every registered policy, then one type of each composition `PolicyAlgebra` derives from
    /// its parts (`keydiff@every-4` and `keydiff@every-8` are one type: the number is a parameter).
    static let policiesAndCompositions: [any CachePolicy.Type] = {
        var types = PolicyRegistry.all
        for name in PolicyAlgebra.exampleCompositions {
            let type = PolicyRegistry.type(named: name)!
            if !types.contains(where: { ObjectIdentifier($0) == ObjectIdentifier(type) }) { types.append(type) }
        }
        return types
    }()

    /// The list covers every trigger, quantizer and wrapper, and every base a trigger can drive.
    func testTheCompositionsCoverEveryPart() {
        let names = Self.policiesAndCompositions.map { $0.name }
        for trigger in PolicyAlgebra.triggers {
            XCTAssertTrue(names.contains { $0.contains("@" + trigger.spelling) }, trigger.spelling)
        }
        for part in PolicyAlgebra.quantizers.map({ $0.name }) + PolicyAlgebra.wrappers.map({ $0.name }) {
            XCTAssertTrue(names.contains { $0.hasSuffix("+" + part) || $0.contains("+" + part + "+") }, part)
        }
        for base in PolicyAlgebra.triggerableBases {
            XCTAssertTrue(names.contains("\(base)@every-step"), base)
        }
        XCTAssertGreaterThan(names.count, PolicyRegistry.all.count + 20)
    }

    private func describe(_ type: any CachePolicy.Type, _ values: [String: String], _ trace: SmallTrace) -> String {
        let given = values.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return "\(type.name)(\(given)) on \(trace.name)"
    }

    // MARK: Resident cap and slots

    /// After prefill and after every step, no kv head holds more than the instance's
    /// `residentCap`, and no kv head's slots (attended or resident) repeat a position or hold
    /// one not yet seen. Not vacuous: at the smallest budget every budgeted policy's cache
    /// departs from the full cache (fewer bytes) at some step.
    func testResidentTokensStayWithinTheCapWithoutDuplicateSlots() throws {
        let findings = Findings()
        var capped = 0
        try forEveryPolicy { type, trace, budget, values in
            let label = describe(type, values, trace)
            let snapshots = try TestTraces.conformanceSnapshots(trace.path, type, values)
            let (P, steps) = (trace.reader.header.promptLength, trace.reader.header.generatedLength)
            XCTAssertEqual(snapshots.count, trace.reader.recordedLayerIndices.count * (1 + steps), label)
            for snapshot in snapshots {
                let position = snapshot.step.map { P + $0 } ?? P - 1
                let when = "layer \(snapshot.layer) \(snapshot.step.map { "step \($0)" } ?? "prefill")"
                for (g, slots) in snapshot.resident.enumerated() {
                    if let cap = snapshot.residentCap {
                        capped += 1
                        if slots.count > cap {
                            findings.add(
                                "\(type.name): resident cap",
                                "\(label) \(when) head \(g): \(slots.count) > cap \(cap)")
                        }
                    }
                    for (kind, held) in [("resident", slots), ("attended", snapshot.attended?[g] ?? [])] {
                        if Set(held).count != held.count {
                            findings.add("\(type.name): duplicate slots", "\(label) \(when) head \(g): \(kind) \(held)")
                        }
                        if let bad = held.first(where: { $0 < 0 || Int($0) > position }) {
                            findings.add(
                                "\(type.name): slot out of range",
                                "\(label) \(when) head \(g): \(kind) holds \(bad)")
                        }
                    }
                    if let attended = snapshot.attended?[g], !attended.contains(Int32(position)) {
                        findings.add(
                            "\(type.name): new position attended",
                            "\(label) \(when) head \(g) does not attend \(position)")
                    }
                }
            }
            if PolicyConformance.declaresBudget(type) && budget == .smallest {
                let records = try replay(trace, type, values).run.steps
                if !records.contains(where: { $0.attendedBytes < $0.fullBytes }) {
                    findings.add(
                        "\(type.name): compresses at its smallest budget",
                        "\(label): the cache is the full cache at every step (see conformanceSettings)")
                }
            }
        }
        findings.report()
        XCTAssertGreaterThan(capped, 1000)
    }

    // MARK: Threads and determinism

    /// The whole result (each step record, the summary, every metric sample, the counters, the
    /// notes, the layers, steps, layout and top-k), the `--kept` events and the `--cache-timeline`
    /// records are the same, bit for bit, with 1, 2 and 3 threads, with reference chunks of 5 and
    /// 7 steps (several chunks: the logits kept across chunks, the queries read ahead) as with one
    /// chunk of the whole trace, and for a second run with 1 thread.
    func testResultsAreIdenticalForAnyThreadCountOrChunkSizeAndRepeatable() throws {
        let findings = Findings()
        try forEveryPolicy(budgets: { _ in [.smallest] }) { type, trace, _, values in
            let label = describe(type, values, trace)
            let spec = try PolicyConformance.spec(type, values)
            let first = try fingerprint(try replay(trace, type, values))
            let variants: [(threads: Int, chunkSteps: Int?, run: String)] = [
                (1, nil, "a second run"), (2, nil, "2 threads"), (3, 7, "3 threads, chunks of 7 steps"),
                (1, 5, "chunks of 5 steps")
            ]
            for (threads, chunkSteps, run) in variants {
                let other = try fingerprint(try replay(trace, spec, threads: threads, chunkSteps: chunkSteps))
                let differing =
                    (0..<min(first.count, other.count)).first { first[$0].text != other[$0].text }
                    ?? (first.count == other.count ? nil : min(first.count, other.count))
                if let i = differing {
                    let what = i < first.count ? first[i].what : other[i].what
                    findings.add("\(type.name): \(run) differs", "\(label): \(what)")
                }
            }
        }
        findings.report()
    }

    /// The replay's outputs as (what, exact text) pairs, one per step record: JSON with sorted
    /// keys (dictionary order is not fixed), every Float and Double as the shortest text that
    /// reads back to the same bits, so equal text is equal bits.
    private func fingerprint(_ replayed: Replayed) throws -> [(what: String, text: String)] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf",
            nan: "nan")
        func text<T: Encodable>(_ value: T) throws -> String {
            String(decoding: try encoder.encode(value), as: UTF8.self)
        }
        let run = replayed.run, result = replayed.result
        var parts = try run.steps.map { (what: "step record of layer \($0.layer) step \($0.step)", text: try text($0)) }
        parts.append(
            (
                "what was replayed",
                "layers \(result.layers), \(result.decodeSteps) steps, top-\(result.topK), "
                    + "paging \(result.paging.rawValue)/\(run.paging.rawValue), "
                    + "blocks \(result.blockSizes)/\(run.blockSize)"
            ))
        parts.append(("summary", try text(run.summary)))
        parts.append(("metric samples", try text(run.samples)))
        parts.append(("counters", try text(run.counters)))
        parts.append(("notes", try text(replayed.result.notes)))
        parts += try replayed.kept.map { event in
            (what: "kept event of layer \(event.layer) step \(event.step) head \(event.kvHead)", text: try text(event))
        }
        parts += replayed.timelines.map { timeline in
            (what: "cache timeline of layer \(timeline.layer) head \(timeline.kvHead)", text: timeline.jsonLine)
        }
        return parts
    }

    // MARK: A budget covering the trace

    /// With a budget that covers the trace (at least its length, and a resident cap, where the
    /// policy declares one, that holds every position), a policy that only evicts keeps every
    /// position and gives the full cache's numbers, exactly: at every step and query head mass
    /// and top-k recall 1, attention KL 0, output error 0, and the full cache's tokens and bytes.
    /// Policies that quantize (their timeline logs a quantization) are exempt: rounding changes
    /// attention and output even when nothing is evicted, and their budget may be a memory budget
    /// that quantization, not eviction, meets (PM-KVQ).
    /// A policy that declares `evictsNothing` and has no budget is held to the same at its settings.
    /// Also, at a budget of exactly the trace's length, where the replay notes that the budget
    /// "keeps everything", no position is dropped.
    func testABudgetCoveringTheTraceGivesTheFullCachesNumbers() throws {
        let findings = Findings(expected: [
            "thinkv-tbe: full cache's numbers at a budget covering the trace":
                "TBE shrinks older thought segments at every transition whatever the budget (ThinKVPolicy; --budget: "
                + "'default: no budget, segments shrink at transitions only')"
        ])
        var checked = 0
        let budgets: (any CachePolicy.Type) -> [PolicyConformance.Budget] = {
            PolicyConformance.declaresBudget($0)
                ? [.traceLength, .coveringTheTrace]
                : $0.evictsNothing ? [.smallest] : []
        }
        try forEveryPolicy(budgets: budgets) { type, trace, budget, values in
            let label = describe(type, values, trace)
            let replayed = try replay(trace, type, values)
            if budget == .traceLength {
                guard replayed.result.notes.contains(where: { $0.contains("so it keeps everything") }) else { return }
                for timeline in replayed.timelines {
                    if let j = timeline.droppedAt.firstIndex(where: { $0 >= 0 }) {
                        findings.add(
                            "\(type.name): the note 'keeps everything' holds",
                            "\(label) layer \(timeline.layer) head \(timeline.kvHead): position \(j) "
                                + "dropped at step \(timeline.droppedAt[j])")
                        break
                    }
                }
                return
            }
            guard !replayed.timelines.contains(where: { !$0.groups.isEmpty }) else { return }
            checked += 1
            let key = "\(type.name): full cache's numbers at a budget covering the trace"
            for r in replayed.run.steps {
                let at = "\(label) layer \(r.layer) step \(r.step)"
                if r.attendedTokens != Double(r.position + 1) || r.residentTokens != Double(r.position + 1) {
                    findings.add(
                        key,
                        "\(at): attends \(r.attendedTokens), holds \(r.residentTokens) of "
                            + "\(r.position + 1)")
                }
                if r.attendedBytes != r.fullBytes {
                    findings.add(key, "\(at): \(r.attendedBytes) bytes, the full cache \(r.fullBytes)")
                }
                if r.massRecall != 1 || r.massRecallMin != 1 || r.topKRecall != 1 || r.attentionKL != 0
                    || r.outputError != 0
                {
                    findings.add(
                        key,
                        "\(at): recall \(r.massRecall) (min \(r.massRecallMin)), top-k \(r.topKRecall), "
                            + "KL \(r.attentionKL), output error \(String(describing: r.outputError))")
                }
            }
            let samples = replayed.run.samples
            if samples.massRecall.contains(where: { $0 != 1 }) || samples.topKRecall.contains(where: { $0 != 1 })
                || samples.attentionKL.contains(where: { $0 != 0 })
                || samples.outputError.contains(where: { $0 != 0 })
            {
                findings.add(key, "\(label): some query head's sample is not the full cache's")
            }
        }
        findings.report()
        XCTAssertGreaterThan(checked, 10, "most budgeted policies only evict")
    }

    // MARK: Bytes from the cache timeline

    /// At every step and layer, the attended bytes the replay measured equal a recomputation from
    /// the `--cache-timeline` lines alone, as written and read back (`CacheTimeline.jsonLine`,
    /// `recomputedAttendedBytes`): each step's kept sets and precisions. The attended tokens equal
    /// the positions the timeline says are seen.
    func testAttendedBytesEqualARecomputationFromTheCacheTimeline() throws {
        let findings = Findings()
        var quantizedSteps = 0, evictedSteps = 0
        try forEveryPolicy { type, trace, _, values in
            let label = describe(type, values, trace)
            let replayed = try replay(trace, type, values)
            let written = try replayed.timelines.map { try CacheTimeline(readingJSONLine: $0.jsonLine) }
            let header = trace.reader.header
            let (P, D) = (header.promptLength, header.headDim)
            for r in replayed.run.steps {
                let mine = written.filter { $0.layer == r.layer }
                guard mine.count == header.numKVHeads else {
                    findings.add("\(type.name): cache timeline", "\(label) layer \(r.layer): \(mine.count) timelines")
                    continue
                }
                let t = r.step
                let bytes = mine.reduce(0) { $0 + $1.recomputedAttendedBytes(step: t, promptLength: P, headDim: D) }
                if bytes != r.attendedBytes {
                    let perHead = mine.map { String($0.recomputedAttendedBytes(step: t, promptLength: P, headDim: D)) }
                    findings.add(
                        "\(type.name): attended bytes from the timeline",
                        "\(label) layer \(r.layer) step \(t): replay \(r.attendedBytes), timeline \(bytes) "
                            + "(per head \(perHead.joined(separator: "+")))")
                }
                let seen = mine.reduce(0) { total, timeline in
                    total + (0...(P + t)).filter { timeline.droppedAt[$0] < 0 || Int(timeline.droppedAt[$0]) > t }.count
                }
                if Double(seen) / Double(header.numKVHeads) != r.attendedTokens {
                    findings.add(
                        "\(type.name): attended tokens from the timeline",
                        "\(label) layer \(r.layer) step \(t): replay \(r.attendedTokens), "
                            + "timeline \(Double(seen) / Double(header.numKVHeads))")
                }
                if mine.contains(where: { $0.groups.contains { $0.step <= t } }) { quantizedSteps += 1 }
                if mine.contains(where: { $0.droppedAt.contains { $0 >= 0 && Int($0) <= t } }) { evictedSteps += 1 }
            }
        }
        findings.report()
        // Not vacuous: many steps attend quantized tokens, many follow evictions.
        XCTAssertGreaterThan(quantizedSteps, 500)
        XCTAssertGreaterThan(evictedSteps, 2000)
    }

    // MARK: Declared capabilities

    /// A policy that declares `evictsNothing` never drops a position: no position leaves its
    /// attended set (cache timeline) and every step attends and keeps all p + 1 positions.
    func testAPolicyThatDeclaresItEvictsNothingKeepsEveryPosition() throws {
        let findings = Findings()
        var declaring = 0
        try forEveryPolicy(budgets: { _ in [.smallest] }) { type, trace, _, values in
            guard type.evictsNothing else { return }
            declaring += 1
            let label = describe(type, values, trace)
            let replayed = try replay(trace, type, values)
            for timeline in replayed.timelines {
                if let j = timeline.droppedAt.firstIndex(where: { $0 >= 0 }) {
                    findings.add(
                        "\(type.name): evicts nothing",
                        "\(label) layer \(timeline.layer) head "
                            + "\(timeline.kvHead): position \(j) dropped at step \(timeline.droppedAt[j])")
                }
            }
            for r in replayed.run.steps
            where r.attendedTokens != Double(r.position + 1)
                || r.residentTokens != Double(r.position + 1)
            {
                findings.add(
                    "\(type.name): evicts nothing",
                    "\(label) layer \(r.layer) step \(r.step): attends "
                        + "\(r.attendedTokens), holds \(r.residentTokens) of \(r.position + 1)")
            }
        }
        findings.report()
        XCTAssertGreaterThan(declaring, 0, "the full cache declares it")
    }

    // MARK: One engine

    /// Stepped unmeasured, as ThinKV's cache-sparsity classifier steps its lanes (no reference, no
    /// metrics, no paging), every policy makes the decisions it makes in a replay: the same
    /// attended set at every step and the same quantizations (the `--cache-timeline` records).
    func testUnmeasuredSteppingDecidesAsTheReplay() throws {
        let findings = Findings()
        var compared = 0
        try forEveryPolicy { type, trace, _, values in
            let label = describe(type, values, trace)
            let spec = try PolicyConformance.spec(type, values)
            let unmeasured = try PolicyConformance.unmeasuredTimelines(spec, reader: trace.reader)
            let replayed = try replay(trace, type, values).timelines
            guard unmeasured.count == replayed.count else {
                findings.add("\(type.name): unmeasured timelines", "\(label): \(unmeasured.count) vs \(replayed.count)")
                return
            }
            for (a, b) in zip(unmeasured, replayed) where a != b {
                let step = a.droppedAt.indices.first { a.droppedAt[$0] != b.droppedAt[$0] }
                findings.add(
                    "\(type.name): unmeasured stepping decides as the replay",
                    "\(label) layer \(b.layer) head \(b.kvHead): "
                        + (step.map {
                            "position \($0) dropped at \(a.droppedAt[$0]), replay "
                                + "\(b.droppedAt[$0])"
                        } ?? "quantizations differ"))
            }
            compared += 1
        }
        findings.report()
        XCTAssertGreaterThan(compared, PolicyRegistry.all.count)
    }

    // MARK: Sampled metric steps

    /// With `--metric-steps` a policy attends over its own cache on the unsampled steps, which is
    /// what it sees in a full replay: its kept sets (kept events, cache timelines), its tokens,
    /// bytes and paging at every step, and its counters are those of the full replay, for every
    /// registered policy (ThinKV's `--sparsity-source full` alone refuses sampling). On a sampled
    /// step its fidelity is the full replay's; on the others the record has none (NaN). With a
    /// stride of 1 every output is the full replay's, the intervals aside (a census: 0).
    func testSampledMetricStepsLeaveWhatEveryPolicyKeepsUnchanged() throws {
        let findings = Findings()
        var compared = 0
        try forEveryPolicy { type, trace, _, values in
            let label = describe(type, values, trace)
            let spec = try PolicyConformance.spec(type, values)
            guard spec.type.fullReferenceNeed(spec.parameters) == nil else { return }
            let full = try replay(trace, type, values)
            for selection in [MetricStepSelection.stride(1), .stride(5), .random(count: 7, seed: 3)] {
                let sampled = try replay(trace, spec, threads: 2, metricSteps: selection)
                let what = "\(label), \(selection.description)"
                let measured = Set(selection.steps(of: full.result.decodeSteps))
                XCTAssertEqual(sampled.result.metricSampling?.sampledSteps, measured.count, what)
                if sampled.kept != full.kept { findings.add("\(type.name): kept events differ when sampled", what) }
                if sampled.timelines != full.timelines {
                    findings.add("\(type.name): cache timelines differ when sampled", what)
                }
                if sampled.run.counters != full.run.counters { findings.add("\(type.name): counters differ", what) }
                for (a, b) in zip(sampled.run.steps, full.run.steps) {
                    var memoryOnly = a, expected = b
                    if measured.contains(a.step) {
                        guard a != b else { continue }
                        findings.add(
                            "\(type.name): a sampled step's record differs",
                            "\(what) layer \(a.layer) step \(a.step)")
                        break
                    }
                    guard a.massRecall.isNaN, a.attentionKL.isNaN, a.topKRecall.isNaN, a.sparsity.isNaN,
                        a.outputError.map(\.isNaN) ?? true
                    else {
                        findings.add("\(type.name): an unsampled step has fidelity", "\(what) step \(a.step)")
                        break
                    }
                    (memoryOnly.massRecall, memoryOnly.massRecallMin, memoryOnly.topKRecall) = (0, 0, 0)
                    (memoryOnly.attentionKL, memoryOnly.sparsity) = (0, 0)
                    (expected.massRecall, expected.massRecallMin, expected.topKRecall) = (0, 0, 0)
                    (expected.attentionKL, expected.sparsity) = (0, 0)
                    memoryOnly.outputError = memoryOnly.outputError.map { _ in 0 }
                    expected.outputError = expected.outputError.map { _ in 0 }
                    if memoryOnly != expected {
                        findings.add(
                            "\(type.name): an unsampled step's memory differs",
                            "\(what) layer \(a.layer) step \(a.step)")
                        break
                    }
                }
                if sampled.run.steps.count != full.run.steps.count { findings.add("\(type.name): record count", what) }
                if case .stride(1) = selection {
                    let (a, b) = (sampled.run.summary, full.run.summary)
                    if a.massRecall.mean != b.massRecall.mean || a.attentionKL.mean != b.attentionKL.mean
                        || a.topKRecall.mean != b.topKRecall.mean || a.outputError?.mean != b.outputError?.mean
                        || a.memory != b.memory || sampled.run.samples != full.run.samples
                    {
                        findings.add("\(type.name): stride:1 differs from all", what)
                    }
                    if a.massRecall.ci95HalfWidth != 0 { findings.add("\(type.name): a census has an interval", what) }
                }
            }
            compared += 1
        }
        findings.report()
        XCTAssertGreaterThan(compared, PolicyRegistry.all.count)
    }
}
