import Foundation

/// What a sweep did.
public struct SweepOutcome: Equatable, Sendable {
    /// Runs replayed now, runs taken from an existing output, runs left for a later call.
    public var computed = 0
    public var reused = 0
    public var pending = 0
    public var engineRuns = 0
    /// Rows of the existing output that are not runs of this grid (or shard) and were dropped.
    public var dropped = 0
    public var outputPath = ""
}

/// Runs the grid (or one shard of it) and keeps the results CSV current.
///
/// All pending runs of a trace go into one engine run (with memory targets: one matcher, whose
/// passes share a stored reference), so the full-cache reference of each layer is computed once
/// and shared by every policy configuration and layout. The engine
/// spreads the runs of an engine run, and the reference, over the cores; engine runs follow
/// one another, which keeps every core busy without holding several traces in memory at once.
/// The `batch` key caps the runs per engine run: each run holds its own cache (a quantizing
/// policy copies the layer's keys and values), so a very wide sweep may need it to fit in
/// memory, at the cost of recomputing the reference once per batch.
///
/// As soon as a run is known (matched and replayed) the CSV is rewritten atomically with every
/// row known so far in grid order; a later call with the same output skips rows already there
/// (matched by run key).
public final class SweepRunner {
    public let grid: SweepGrid
    /// The runs this runner is responsible for (the whole grid or one shard), in grid order.
    public let runs: [SweepRun]
    public let outputPath: String
    /// Stop after this many engine runs (nil: run everything). Rows written so far stay; the
    /// next call resumes.
    public var stopAfterEngineRuns: Int?
    public var progress: ThinKVEngine.ProgressReporting?
    /// Receives one-line notes (dropped rows, an interrupted file) for stderr.
    public var note: (String) -> Void = { _ in }

    public init(grid: SweepGrid, shard: (index: Int, count: Int)? = nil, output: String? = nil) {
        self.grid = grid
        if let shard {
            runs = Array(grid.shard(shard.index, of: shard.count))
            outputPath = output ?? Self.shardOutputPath(grid.config.output, index: shard.index, count: shard.count)
        } else {
            runs = grid.runs
            outputPath = output ?? grid.config.output
        }
    }

    /// `out/sweep.csv` -> `out/sweep.shard-2-of-8.csv`.
    public static func shardOutputPath(_ output: String, index: Int, count: Int) -> String {
        let url = URL(fileURLWithPath: output)
        let stem = url.pathExtension.isEmpty ? output : String(output.dropLast(url.pathExtension.count + 1))
        return "\(stem).shard-\(index)-of-\(count).\(url.pathExtension.isEmpty ? "csv" : url.pathExtension)"
    }

    /// Per-step CSV of a run: `<dir>/<trace stem>-<policy>-<16 hex digits of the run key's FNV-1a hash>.csv`.
    public func stepsFilePath(_ run: SweepRun) -> String? {
        guard let directory = grid.config.stepCSVDirectory else { return nil }
        let stem = URL(fileURLWithPath: run.trace).deletingPathExtension().lastPathComponent
        let name = "\(stem)-\(run.spec.name)-\(String(format: "%016llx", Self.fnv1a(run.key))).csv"
        return directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01B3
        }
        return h
    }

    // MARK: Planning

    /// Shape facts of a trace that go into every row.
    struct TraceFacts {
        let model: String
        let numLayers: Int
        let decodeSteps: Int
        /// `TraceFingerprint` of the file.
        let fingerprint: String

        init(_ reader: TraceReader, steps: Int?) throws {
            model = reader.header.model
            numLayers = reader.header.numLayers
            decodeSteps = min(steps ?? reader.header.generatedLength, reader.header.generatedLength)
            fingerprint = try TraceFingerprint.of(path: reader.path, header: reader.header)
        }
    }

    /// Which runs an existing output already holds.
    public struct Plan {
        /// Run id -> finished row, in this grid's columns.
        public var reusable: [Int: [String]] = [:]
        /// Runs to replay, in grid order.
        public var pending: [SweepRun] = []
        public var dropped = 0
        public var droppedPartial = false
        /// Rows of this grid's runs that are recomputed because they are not what this sweep
        /// writes (a cell edited or damaged, the trace changed since): how many, and why (the
        /// first few).
        public var stale = 0
        public var staleReasons: [String] = []
    }

    /// Reads the existing output (if any) and decides what is left to do.
    public func plan() throws -> Plan {
        var plan = Plan()
        let columns = grid.columns
        var old: [String: [String: String]] = [:]  // run key -> column -> cell
        if FileManager.default.fileExists(atPath: outputPath) {
            let (table, partial) = try CSVTable.read(path: outputPath, dropPartialLast: true)
            plan.droppedPartial = partial
            guard let keyColumn = table.index(of: "run_key") else {
                throw CSVError(
                    "\(outputPath): exists but has no run_key column (not sweep results); move it or choose another "
                        + "output"
                )
            }
            for row in table.rows {
                old[row[keyColumn]] = Dictionary(uniqueKeysWithValues: zip(table.header, row))
            }
            let keys = Set(runs.map(\.key))
            plan.dropped = old.keys.filter { !keys.contains($0) }.count
        }
        let parameterColumns = Set(grid.parameterNames.map(SweepColumns.parameterColumn))
        // Facts of each trace with rows to check, read once (nil: the trace cannot be opened now,
        // so its rows cannot be checked and are recomputed, which reports the problem).
        var facts: [String: TraceFacts?] = [:]
        for run in runs {
            guard let cells = old[run.key], reusable(run, cells) else {
                plan.pending.append(run)
                continue
            }
            if facts[run.trace] == nil {
                facts[run.trace] = .some(try? TraceFacts(TraceReader(path: run.trace), steps: grid.config.steps))
            }
            if let problem = staleness(run, cells, facts[run.trace]!) {
                plan.stale += 1
                if plan.staleReasons.count < 3 { plan.staleReasons.append("run \(run.id): \(problem)") }
                plan.pending.append(run)
                continue
            }
            // A column the old file lacks is only acceptable for a parameter this run's policy
            // does not have (its key would hold it otherwise): that cell is empty anyway.
            var row: [String] = []
            var complete = true
            for column in columns {
                if column == "run_id" {
                    row.append(String(run.id))
                } else if let cell = cells[column] {
                    row.append(cell)
                } else if parameterColumns.contains(column) {
                    row.append("")
                } else {
                    complete = false
                    break
                }
            }
            if complete { plan.reusable[run.id] = row } else { plan.pending.append(run) }
        }
        return plan
    }

    /// Why a row of the existing output is not the row this sweep would write for `run`, or
    /// nil: every cell is checked (identity, the trace's fingerprint and shape, parameters and
    /// options, each metric finite and in range), so an edited or damaged row, or a row of a
    /// trace since replaced, is recomputed rather than carried into the results.
    func staleness(_ run: SweepRun, _ cells: [String: String], _ facts: TraceFacts?) -> String? {
        guard let facts else { return "\(run.trace) cannot be read now" }
        func expect(_ column: String, _ value: String) -> String? {
            let cell = cells[column] ?? ""
            return cell == value
                ? nil : "\(column) is '\(Format.printable(cell))', expected '\(Format.printable(value))'"
        }
        guard cells[SweepColumns.traceFingerprint] == facts.fingerprint else {
            return cells[SweepColumns.traceFingerprint] == nil
                ? "no \(SweepColumns.traceFingerprint) (written by an older thinkv-sim)"
                : "\(run.trace) changed since the row was written (size, time or header)"
        }
        var expected: [(String, String)] = [
            ("trace", run.trace), ("model", facts.model), ("num_layers", String(facts.numLayers)),
            ("decode_steps", String(facts.decodeSteps)), ("policy", run.spec.name), ("label", run.spec.label)
        ]
        let effective = Dictionary(uniqueKeysWithValues: run.spec.parameters.effective.map { ($0.name, $0.value) })
        for name in grid.parameterNames {
            let column = SweepColumns.parameterColumn(name)
            if run.kvPercent != nil && name == run.spec.type.budgetParameter?.name {
                // The budget the memory search found: any budget the policy accepts.
                guard let budget = Int(cells[column] ?? ""), budget >= 1, String(budget) == cells[column] else {
                    return "budget '\(Format.printable(cells[column] ?? ""))' is not a budget"
                }
                continue
            }
            // A column the old file lacks is acceptable for a parameter this policy does not have.
            if cells[column] == nil && effective[name] == nil { continue }
            expected.append((column, effective[name] ?? ""))
        }
        expected += SweepGrid.replayOptionValues(config: grid.config, layout: run.layout)
        if grid.config.metricSteps != .all { expected.append(("metric_steps", grid.config.metricSteps.description)) }
        if !grid.config.kvPercents.isEmpty {
            expected.append(("kv_percent", run.kvPercent.map { SweepColumns.number($0) } ?? ""))
            let match = cells["kv_match"] ?? "", status = cells["kv_match_status"] ?? "",
                achieved = cells["achieved_percent"] ?? ""
            guard match.isEmpty || match == grid.config.kvMatch.rawValue else {
                return "kv_match '\(Format.printable(match))' is not this sweep's"
            }
            guard MemoryMatch.Status(rawValue: status) != nil else {
                return "kv_match_status '\(Format.printable(status))' is not a status"
            }
            if !achieved.isEmpty, let problem = SweepColumns.metricProblem("achieved_percent", achieved) {
                return "achieved_percent: \(problem)"
            }
        }
        for (column, value) in expected { if let problem = expect(column, value) { return problem } }
        for name in grid.config.metrics {
            if let problem = SweepColumns.metricProblem(name, cells[name] ?? "") { return "\(name): \(problem)" }
        }
        return nil
    }

    private func reusable(_ run: SweepRun, _ cells: [String: String]) -> Bool {
        // A row whose per-step file went missing is recomputed, so the two never disagree.
        guard let path = stepsFilePath(run) else { return true }
        return cells[SweepColumns.stepsFile] == path && FileManager.default.fileExists(atPath: path)
    }

    // MARK: Running

    /// Pending runs whose parameters their policy refuses on their trace (e.g. a budget not above
    /// SnapKV's window), each with the policy's message, found without replaying or preparing
    /// anything (`PolicySpec.checkParameters`); a run with a memory target must accept some budget.
    public func invalidRuns(_ pending: [SweepRun]) throws -> [(run: SweepRun, problem: String)] {
        var invalid: [(run: SweepRun, problem: String)] = []
        var shapes: [String: (header: TraceHeader, layer: LayerInfo)] = [:]
        for run in pending {
            let shape: (header: TraceHeader, layer: LayerInfo)
            if let known = shapes[run.trace] {
                shape = known
            } else {
                let reader = try TraceReader(path: run.trace)
                let layer =
                    (grid.config.layers?.first).flatMap(reader.layerInfo) ?? reader.layerInfo(
                        reader.recordedLayerIndices[0])!
                shape = (reader.header, layer)
                shapes[run.trace] = shape
            }
            do {
                try run.spec.checkParameters(header: shape.header, layer: shape.layer)
            } catch let error as UsageError {
                invalid.append((run, error.description))
            }
        }
        return invalid
    }

    /// Files the sweep reads, which no output may overwrite: the config, the traces and files
    /// the policies read (ThinKV's calibration).
    public var inputFiles: [String] {
        [grid.config.file] + grid.traces + runs.flatMap(\.spec.parameters.inputFiles)
    }

    public func run() throws -> SweepOutcome {
        let config = grid.config
        // The output is locked for the whole sweep: a second sweep (or replay) writing it fails
        // at once instead of both rewriting it and one losing the other's rows.
        try makeDirectory(URL(fileURLWithPath: outputPath).deletingLastPathComponent().path)
        let inputs = inputFiles
        let claim = try OutputClaim([outputPath], protecting: inputs)
        defer { claim.release() }
        removeOrphanedStepTemporaries()
        var plan = try plan()
        // Every grid point is checked before any work: all mistakes at once, not one per hour.
        let invalid = try invalidRuns(plan.pending)
        if !invalid.isEmpty {
            let lines = invalid.prefix(20).map {
                "run \($0.run.id) (\($0.run.spec.label) on \(URL(fileURLWithPath: $0.run.trace).lastPathComponent)): "
                    + "\($0.problem)"
            }
            let more = invalid.count > 20 ? "; and \(invalid.count - 20) more" : ""
            if config.skipInvalid {
                let skipped = Set(invalid.map { $0.run.id })
                plan.pending.removeAll { skipped.contains($0.id) }
                note("skipping \(invalid.count) invalid run(s) (skip_invalid): " + lines.joined(separator: "; ") + more)
            } else {
                // Values the policies refuse together are a usage error (exit 2), as in replay.
                let problem = SweepConfigError(
                    file: config.file,
                    "\(invalid.count) of the grid's runs are invalid: "
                        + lines.joined(separator: "; ") + more
                        + " (fix the values, or set \"skip_invalid\": true to run the rest)")
                throw UsageError(problem.description)
            }
        }
        if plan.droppedPartial { note("\(outputPath): last row was cut short (interrupted write); it is recomputed") }
        if plan.stale > 0 {
            let reasons =
                plan.staleReasons.joined(separator: "; ") + (plan.stale > plan.staleReasons.count ? "; ..." : "")
            note("\(outputPath): recomputing \(plan.stale) row(s) that are not what this sweep writes (\(reasons))")
        }
        if plan.dropped > 0 {
            note(
                "\(outputPath): dropping \(plan.dropped) row(s) that are not runs of this "
                    + "\(runs.count == grid.runs.count ? "sweep" : "shard")"
            )
        }

        // Open every trace and check every run against it before replaying anything, so a bad
        // layer list or a policy the trace cannot feed fails at once, not hours in.
        var readers: [String: TraceReader] = [:]
        var facts: [String: TraceFacts] = [:]
        for trace in grid.traces where plan.pending.contains(where: { $0.trace == trace }) {
            let reader = try TraceReader(path: trace)
            let layers = config.layers ?? reader.recordedLayerIndices
            for layer in layers where reader.layerInfo(layer) == nil {
                throw TraceError(
                    file: trace, object: "/layers/\(layer)",
                    "not recorded (recorded: "
                        + "\(reader.recordedLayerIndices.map(String.init).joined(separator: ", "))); see the "
                        + "config's 'layers'"
                )
            }
            let traceFacts = try TraceFacts(reader, steps: config.steps)
            guard traceFacts.decodeSteps > 0 else {
                throw TraceError(file: trace, "has no decode positions to replay (prompt_len equals num_tokens)")
            }
            for run in plan.pending where run.trace == trace { try run.spec.checkRequirements(reader, layers: layers) }
            readers[trace] = reader
            facts[trace] = traceFacts
        }

        if let directory = config.stepCSVDirectory, !plan.pending.isEmpty {
            try makeDirectory(directory)
            // A per-step file that is an input under another name fails now, not after its replay.
            for run in plan.pending {
                if let path = stepsFilePath(run) { try OutputFile.checkWritable(path, protecting: inputs) }
            }
        }

        var rows = plan.reusable
        var outcome = SweepOutcome(reused: plan.reusable.count, dropped: plan.dropped, outputPath: outputPath)
        let batches = Self.batches(plan.pending, limit: config.batch)
        let total = plan.pending.count
        var done = 0
        var notesSaid = Set<String>()
        defer { progress?.finish() }
        // Memory-matched runs replay many budgets; one stored reference per trace serves them all.
        var store: ReferenceStore?
        var rowError: Error?
        let sweepProgress = MonotoneProgress(inner: progress)
        for batch in batches {
            if let limit = stopAfterEngineRuns, outcome.engineRuns >= limit { break }
            let trace = batch[0].trace
            if store?.tracePath != trace { store = ReferenceStore(tracePath: trace) }
            let adapter = BatchProgress(
                inner: sweepProgress, done: done, size: batch.count, total: total,
                detail: "\(URL(fileURLWithPath: trace).lastPathComponent), \(batch.count) run(s)")
            // Each run's row (and per-step file) is written as soon as its run is known, so an
            // interrupted sweep keeps every run finished so far.
            let finished: (SweepRun, PolicyRun) -> Void = { run, policyRun in
                guard rowError == nil else { return }
                do {
                    let stepsPath = self.stepsFilePath(run)
                    if let stepsPath {
                        try OutputFile.write(Self.stepsCSV(policyRun), to: stepsPath, protecting: inputs)
                    }
                    rows[run.id] = self.row(run, policyRun, facts[trace]!, stepsPath: stepsPath)
                    outcome.computed += 1
                    adapter.finishedRuns += 1
                    try self.write(rows)
                } catch {
                    rowError = error
                }
            }
            let notes: [String]
            do {
                notes = try replay(batch, reader: readers[trace]!, store: store!, progress: adapter, finished: finished)
            } catch let error as PolicyError {
                // A combination of values the policy refuses (e.g. sinks not below budget): the config's doing.
                throw SweepConfigError(file: config.file, error.description)
            }
            if let rowError { throw rowError }
            // Once per distinct note: e.g. ThinKV thresholds calibrated on the trace itself, or a
            // single-type fallback, change what the rows mean.
            for text in notes where !notesSaid.contains(text) {
                notesSaid.insert(text)
                note("\(URL(fileURLWithPath: trace).lastPathComponent): \(text)")
            }
            done += batch.count
            outcome.engineRuns += 1
        }
        outcome.pending = total - outcome.computed
        // Also when nothing was computed: dropped rows and a changed column set take effect.
        try write(rows)
        return outcome
    }

    /// Replays one batch (runs of one trace) through one `MemoryMatcher` sharing `store`: the runs
    /// without a memory target run as given in its first engine pass, beside the first candidates
    /// of those with one. `finished` gets each run as soon as it is known. Returns the notes.
    func replay(
        _ batch: [SweepRun], reader: TraceReader, store: ReferenceStore, progress: ThinKVEngine.ProgressReporting,
        finished: @escaping (SweepRun, PolicyRun) -> Void
    ) throws -> [String] {
        let config = grid.config
        var configuration = ReplayConfiguration(
            policies: batch.map(\.spec), layers: config.layers, topK: config.topK,
            maxSteps: config.steps, threads: config.threads)
        configuration.layouts = batch.map(\.layout)
        configuration.metricSteps = config.metricSteps
        if batch.allSatisfy({ $0.kvPercent == nil }) {
            let engine = ReplayEngine(reader: reader, configuration: configuration)
            engine.progress = progress
            let result = try engine.run()
            for (run, outcome) in zip(batch, result.runs) { finished(run, outcome) }
            return result.notes
        }
        // Every target's search in one matcher: their candidates share engine passes.
        let matcher = MemoryMatcher(
            reader: reader, configuration: configuration,
            targets: batch.map { .percent($0.kvPercent ?? 100) }, statistic: config.kvMatch,
            store: store)
        matcher.asGiven = Set(batch.indices.filter { batch[$0].kvPercent == nil })
        matcher.progress = progress
        matcher.onResolved = { i, run in finished(batch[i], run) }
        return try matcher.run().notes
    }

    /// Pending runs grouped by trace (grid order), each group cut into pieces of at most `limit`.
    static func batches(_ pending: [SweepRun], limit: Int?) -> [[SweepRun]] {
        var groups: [[SweepRun]] = []
        for run in pending {
            if let last = groups.last?.last, last.trace == run.trace,
                groups[groups.count - 1].count < (limit ?? Int.max)
            {
                groups[groups.count - 1].append(run)
            } else {
                groups.append([run])
            }
        }
        return groups
    }

    private func write(_ rows: [Int: [String]]) throws {
        var table = CSVTable(header: grid.columns)
        for run in runs { if let row = rows[run.id] { table.rows.append(row) } }
        try OutputFile.write(table.render(), to: outputPath, protecting: inputFiles)
    }

    /// Removes the temporaries of this sweep's per-step files that a sweep killed while writing
    /// left, when older than ten minutes: such a file is written and renamed in moments, and a
    /// young one may be another sweep's sharing the directory. (Those of the output go when it
    /// is claimed.)
    func removeOrphanedStepTemporaries() {
        OutputFile.removeTemporaries(of: runs.compactMap(stepsFilePath).map(OutputFile.resolvedPath), olderThan: 600)
    }

    private func makeDirectory(_ path: String) throws {
        guard !path.isEmpty else { return }
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw CSVError("\(path): cannot create directory (\(error.localizedDescription))")
        }
    }

    // MARK: Rows

    func row(_ run: SweepRun, _ result: PolicyRun, _ facts: TraceFacts, stepsPath: String?) -> [String] {
        // The result's spec: a memory-matched run's holds the budget found.
        let effective = Dictionary(uniqueKeysWithValues: result.spec.parameters.effective.map { ($0.name, $0.value) })
        var row = [
            String(run.id), run.key, run.trace, facts.fingerprint, facts.model, String(facts.numLayers),
            String(facts.decodeSteps),
            run.spec.name, run.spec.label
        ]
        row += grid.parameterNames.map { effective[$0] ?? "" }
        row += SweepGrid.replayOptionValues(config: grid.config, layout: run.layout).map(\.1)
        if !grid.config.kvPercents.isEmpty {
            let match = result.memoryMatch
            row += [
                run.kvPercent.map { SweepColumns.number($0) } ?? "", match == nil ? "" : grid.config.kvMatch.rawValue,
                match?.status.rawValue ?? MemoryMatch.Status.notMatched.rawValue,
                SweepColumns.number(match?.achievedPercent)
            ]
        }
        if grid.config.metricSteps != .all {
            let s = result.summary
            row.append(grid.config.metricSteps.description)
            row += [s.massRecall, s.topKRecall, s.attentionKL, s.outputError].map {
                SweepColumns.number($0?.ci95HalfWidth)
            }
        }
        let byName = Dictionary(uniqueKeysWithValues: SweepColumns.metrics.map { ($0.name, $0) })
        row += grid.config.metrics.map { SweepColumns.number(byName[$0]!.value(result.summary)) }
        if let stepsPath { row.append(stepsPath) }
        return row
    }

    /// The per-step CSV of one run: the columns of `replay --csv`.
    static func stepsCSV(_ run: PolicyRun) -> String {
        var out = ReplayReport.stepColumns.joined(separator: ",") + "\n"
        let label = ReplayReport.csvField(run.spec.label)
        for r in run.steps { out += ReplayReport.stepRow(label, r, match: run.memoryMatch) }
        return out
    }
}

/// Maps one engine run's progress onto the whole sweep; the runner ends the line itself.
private final class BatchProgress: ThinKVEngine.ProgressReporting {
    let inner: ThinKVEngine.ProgressReporting?
    let done: Int, size: Int, total: Int
    let detail: String
    /// Runs of this batch whose rows are written.
    var finishedRuns = 0

    init(inner: ThinKVEngine.ProgressReporting?, done: Int, size: Int, total: Int, detail: String) {
        self.inner = inner
        self.done = done
        self.size = size
        self.total = total
        self.detail = detail
    }

    func update(fraction: Double, detail engineDetail: String) {
        let overall = (Double(done) + fraction * Double(size)) / Double(max(total, 1))
        inner?.update(fraction: overall, detail: "runs \(done + finishedRuns)/\(total): \(detail), \(engineDetail)")
    }

    func finish() {}
}
