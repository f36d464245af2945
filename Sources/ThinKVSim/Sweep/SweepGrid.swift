import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One point of a sweep: a trace, a policy configuration and a memory layout.
public struct SweepRun: Sendable, Equatable {
    /// Index in the full grid (`run_id`): the row order of the results.
    public let id: Int
    public let trace: String
    /// Index of the `policies` entry it comes from.
    public let entry: Int
    public let spec: PolicySpec
    /// Paging mode and effective block size (never nil here).
    public let layout: PagingLayout
    /// Identity of the run across resumes, shards and config edits (see `SweepGrid.runKey`).
    public let key: String
    /// The memory target (% of the full cache) whose budget the run replays; nil: the spec as is.
    public var kvPercent: Double? = nil
}

/// The cartesian product a config describes, in a fixed order: traces (as listed, globs
/// expanded in sorted order; a trace named twice is kept at its first place, with that entry's
/// parameters), then policy entries (as listed), then parameter values
/// (parameters by name, the last name varying fastest; values as listed), then paging modes,
/// then block sizes.
public struct SweepGrid: Sendable {
    public let config: SweepConfig
    public let traces: [String]
    public let runs: [SweepRun]
    /// Declared parameter names of every listed policy, in the order of first appearance.
    public let parameterNames: [String]

    public init(config: SweepConfig) throws {
        self.config = config
        var traces: [String] = []
        var entryOf: [String: Int] = [:]  // trace -> the trace entry that named it first
        for (i, entry) in config.traces.enumerated() {
            for path in try Self.expand(entry.path, file: config.file, key: "traces[\(i)]") {
                guard let first = entryOf[path] else {
                    traces.append(path)
                    entryOf[path] = i
                    continue
                }
                // A glob may match a trace named before it (specific entries first, then "the
                // rest"); a path written out again with other parameters would lose them silently.
                if !Self.isPattern(entry.path), config.traces[first].parameters != entry.parameters {
                    throw SweepConfigError(
                        file: config.file, path: "traces[\(i)]",
                        "\(path) is already named by traces[\(first)] with other parameters (name it once, before "
                            + "any glob that matches it)"
                    )
                }
            }
        }
        guard !traces.isEmpty else {
            throw SweepConfigError(
                file: config.file, path: "traces",
                "no trace file matches \(config.traces.map(\.path).joined(separator: ", "))")
        }
        self.traces = traces

        var names: [String] = []
        for entry in config.policies {
            for p in PolicyRegistry.type(named: entry.policy)!.parameters where !names.contains(p.name) {
                names.append(p.name)
            }
        }
        parameterNames = names

        // Specs of a (trace entry, policy entry) pair, built once and shared by the traces a glob matches.
        var specCache: [[Int]: [PolicySpec]] = [:]
        func specs(traceEntry t: Int, policyEntry i: Int) throws -> [PolicySpec] {
            if let cached = specCache[[t, i]] { return cached }
            let values = config.resolvedParameters(of: i, trace: t)
            // With kv_percent the search sets each budget; the run key names the target instead.
            let awaitingBudget = !config.kvPercents.isEmpty
            let keys = values.keys.sorted()
            var out: [PolicySpec] = []
            for combination in Self.cartesian(keys.map { values[$0]! }) {
                do {
                    let values = Dictionary(uniqueKeysWithValues: zip(keys, combination))
                    out.append(
                        try PolicySpec(
                            name: config.policies[i].policy, values: values,
                            awaitingBudget: awaitingBudget))
                } catch let error as PolicyError {
                    let scope = config.traces[t].parameters.isEmpty ? "" : " (with the parameters of traces[\(t)])"
                    throw SweepConfigError(file: config.file, path: "policies[\(i)]", error.description + scope)
                }
            }
            specCache[[t, i]] = out
            return out
        }

        // Count the grid before building it: a few bytes of config can ask for millions of runs.
        var planned = 0.0
        for trace in traces {
            for i in config.policies.indices {
                let values = config.resolvedParameters(of: i, trace: entryOf[trace]!)
                let combinations = values.values.reduce(1.0) { $0 * Double(max($1.count, 1)) }
                let targets = config.kvPercents.isEmpty ? 1 : Double(config.kvPercents.count)
                planned += combinations * targets * Double(config.paging.count) * Double(config.blockSizes.count)
            }
        }
        if planned > Double(config.maxRuns) {
            throw SweepConfigError(
                file: config.file, path: "max_runs",
                String(
                    format:
                        "the grid expands to %.0f runs, more than max_runs (%d); raise max_runs in the config to run "
                        + "it",
                    planned, config.maxRuns))
        }
        var runs: [SweepRun] = []
        var seen: [String: Int] = [:]  // key -> policy entry
        for trace in traces {
            for entry in config.policies.indices {
                for spec in try specs(traceEntry: entryOf[trace]!, policyEntry: entry) {
                    let targets: [Double?] =
                        !config.kvPercents.isEmpty && MemoryMatcher.hasBudget(spec.type) ? config.kvPercents : [nil]
                    for target in targets {
                        for mode in config.paging {
                            for size in config.blockSizes {
                                let layout = PagingLayout(mode: mode, blockSize: size ?? spec.type.preferredBlockSize)
                                let key = Self.runKey(
                                    trace: trace, spec: spec, layout: layout, config: config, kvPercent: target)
                                if let first = seen[key] {
                                    throw SweepConfigError(
                                        file: config.file, path: "policies[\(entry)]",
                                        "repeats a run of policies[\(first)] (\(spec.label) on \(trace))")
                                }
                                seen[key] = entry
                                var run = SweepRun(
                                    id: runs.count, trace: trace, entry: entry, spec: spec, layout: layout, key: key)
                                run.kvPercent = target
                                runs.append(run)
                            }
                        }
                    }
                }
            }
        }
        self.runs = runs
    }

    /// Every column of the results CSV, in order.
    public var columns: [String] {
        SweepColumns.leading + parameterNames.map(SweepColumns.parameterColumn) + SweepColumns.replayOptions
            + (config.kvPercents.isEmpty ? [] : SweepColumns.memoryMatch)
            + (config.metricSteps == .all ? [] : SweepColumns.metricSampling) + config.metrics
            + (config.stepCSVDirectory != nil ? [SweepColumns.stepsFile] : [])
    }

    /// The runs of shard `index` (0-based) of `count`: a contiguous slice of the grid, so a shard
    /// holds few traces and shares each one's reference among many runs.
    public func shard(_ index: Int, of count: Int) -> ArraySlice<SweepRun> {
        precondition(count >= 1 && index >= 0 && index < count)
        let n = runs.count
        return runs[(index * n / count)..<((index + 1) * n / count)]
    }

    /// The run key: `trace=<path>;policy=<name>;<parameter>=<value>;...;layers=<all|i,j>;
    /// steps=<all|N>;topk=<K>;paging=<mode>;block_size=<B>`, with every parameter the policy
    /// declares in name order at its effective value (the default when not given; `auto` when
    /// derived), and the effective block size. The trace path is as the config lists it (or as
    /// its glob expands), with `.` components removed. Threads and batching are left out: they
    /// do not change results.
    /// A run matched to a memory target has `kv_percent=<P>;kv_match=<mean|peak>` in place of its budget.
    public static func runKey(
        trace: String, spec: PolicySpec, layout: PagingLayout, config: SweepConfig, kvPercent: Double? = nil
    ) -> String {
        var parts = ["trace=\(trace)", "policy=\(spec.name)"]
        for (name, value) in spec.parameters.effective {
            if let kvPercent, name == spec.type.budgetParameter?.name {
                parts.append("kv_percent=\(SweepColumns.number(kvPercent))")
                parts.append("kv_match=\(config.kvMatch.rawValue)")
            } else {
                parts.append("\(name)=\(value)")
            }
        }
        parts += replayOptionValues(config: config, layout: layout).map { "\($0)=\($1)" }
        // Only when sampled, so that the keys of every sweep written before the option stand.
        if config.metricSteps != .all { parts.append("metric_steps=\(config.metricSteps.description)") }
        return parts.joined(separator: ";")
    }

    /// The replay-option columns of a run: layers, steps, topk, paging, block_size.
    public static func replayOptionValues(config: SweepConfig, layout: PagingLayout) -> [(String, String)] {
        [
            ("layers", config.layers.map { $0.map(String.init).joined(separator: ",") } ?? "all"),
            ("steps", config.steps.map(String.init) ?? "all"),
            ("topk", String(config.topK)),
            ("paging", layout.mode.rawValue),
            ("block_size", layout.blockSize.map(String.init) ?? "auto")
        ]
    }

    // MARK: Helpers

    /// Every combination of one value per list, the last list varying fastest.
    static func cartesian(_ lists: [[String]]) -> [[String]] {
        var out: [[String]] = [[]]
        for list in lists { out = out.flatMap { prefix in list.map { prefix + [$0] } } }
        return out
    }

    /// A literal path (which must exist) or a glob pattern (which may match nothing: a trace
    /// that is not there yet), normalised.
    static func expand(_ pattern: String, file: String, key: String) throws -> [String] {
        guard isPattern(pattern) else {
            guard FileManager.default.fileExists(atPath: pattern) else {
                throw SweepConfigError(file: file, path: key, "trace \(pattern) does not exist")
            }
            return [normalise(pattern)]
        }
        var matches = glob_t()
        defer { globfree(&matches) }
        let status = glob(pattern, 0, nil, &matches)
        guard status == 0 else { return [] }  // GLOB_NOMATCH, or an unreadable directory
        var out: [String] = []
        for i in 0..<Int(matches.gl_pathc) {
            if let p = matches.gl_pathv[i] { out.append(normalise(String(cString: p))) }
        }
        return out.sorted()
    }

    /// Whether a `traces` entry is a glob pattern rather than a path.
    static func isPattern(_ entry: String) -> Bool { entry.contains { "*?[".contains($0) } }

    /// Drops `.` and empty components: `./traces//a.h5` -> `traces/a.h5`.
    static func normalise(_ path: String) -> String {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        let joined = parts.joined(separator: "/")
        return path.hasPrefix("/") ? "/" + joined : (joined.isEmpty ? "." : joined)
    }
}
