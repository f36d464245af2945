import Foundation

/// The KV memory a comparison holds every policy to: a percentage of the full 16-bit cache,
/// or a number of bytes (both extrapolated to all layers, quantization metadata included, as
/// every report shows them).
public enum MemoryTarget: Equatable, Sendable {
    case percent(Double)
    case bytes(Double)
}

/// Finds, for every policy with a budget (`CachePolicy.budgetParameter`), the budget at which its mean (or
/// peak) KV memory is the target, within `tolerance` percentage points of the full cache.
///
/// The search does not assume memory grows with the budget. It brackets first: the smallest
/// budget the policy accepts must lie at or below the target and the trace's token count (which
/// evicts nothing) above it, else the target is unreachable. It then bisects, keeping
/// memory(lo) ≤ target < memory(hi), until the budgets are adjacent, and takes lo when it is
/// within the tolerance (the largest budget found not above the target), else hi when that one
/// is, else lo with a note. When memory is monotone in the budget this is the budget an
/// exhaustive search for the largest one not above the target finds.
///
/// Every trial is a complete replay with metrics, so the chosen trial's run is the result. All
/// policies' trials of one bisection round go into one engine run, and all runs share one
/// `ReferenceStore`: the full-cache reference is computed in the first run only. Policies
/// without a budget run once, in the first run.
public final class MemoryMatcher {
    public let reader: TraceReader
    /// What to replay; its policies are the ones to match (their budget, if given, is replaced).
    public let configuration: ReplayConfiguration
    /// The target of each policy of `configuration` (a sweep matches several targets at once).
    public let targets: [MemoryTarget]
    public let statistic: MemoryStatistic
    /// Percentage points of the full cache (for a byte target: that share of the full cache).
    public let tolerance: Double
    public var progress: ThinKVEngine.ProgressReporting?
    public let store: ReferenceStore
    /// When a target is out of reach at the policy's cadence (`--kv-adapt`): match again with
    /// the cadence parameter set to the largest halving that reaches it (`cadenceRemedy`).
    public var adaptsCadence = false

    public convenience init(reader: TraceReader, configuration: ReplayConfiguration, target: MemoryTarget,
                            statistic: MemoryStatistic = .mean, tolerance: Double = 1, store: ReferenceStore? = nil) {
        self.init(reader: reader, configuration: configuration, targets: configuration.policies.map { _ in target },
                  statistic: statistic, tolerance: tolerance, store: store)
    }

    /// One target per policy of `configuration`: all their trials share engine runs.
    public init(reader: TraceReader, configuration: ReplayConfiguration, targets: [MemoryTarget],
                statistic: MemoryStatistic = .mean, tolerance: Double = 1, store: ReferenceStore? = nil) {
        precondition(targets.count == configuration.policies.count, "one memory target per policy")
        self.reader = reader
        self.configuration = configuration
        self.targets = targets
        self.statistic = statistic
        self.tolerance = tolerance
        self.store = store ?? ReferenceStore(tracePath: reader.path)
    }

    /// True when the policy type declares an integer parameter with the budget role, which a match sets.
    public static func hasBudget(_ type: any CachePolicy.Type) -> Bool {
        guard case .integer? = type.budgetParameter?.kind else { return false }
        return true
    }

    /// Specs for `replay --kv-percent`: like `PolicySpec.specs`, but each budget awaits the search
    /// (`PolicySpec.awaitsBudget`) and may not be given, shared or in an item (`h2o:budget=64`).
    public static func specs(policies names: [String], options: [(name: String, value: String)],
                             commandOptions: [String] = []) throws -> [PolicySpec] {
        try specs(items: names.map { PolicyItem(name: $0) }, options: options, commandOptions: commandOptions)
    }

    public static func specs(items: [PolicyItem], options: [(name: String, value: String)],
                             commandOptions: [String] = []) throws -> [PolicySpec] {
        let types = items.map { PolicyRegistry.type(named: $0.name) }
        let budgetNames = Set(types.compactMap { $0?.budgetParameter?.name })
        if let shared = options.first(where: { budgetNames.contains($0.name) }) {
            throw UsageError("--\(shared.name) and a memory target (--kv-percent, --kv-bytes) exclude each other: "
                             + "the target sets each budget")
        }
        for (item, type) in zip(items, types) {
            guard let budget = type?.budgetParameter, item.values[budget.name] != nil else { continue }
            throw UsageError("--policy \(item.text): a budget of its own and a memory target "
                             + "(--kv-percent, --kv-bytes) exclude each other: the target sets each budget")
        }
        return try PolicySpec.specs(items: items, options: options, commandOptions: commandOptions,
                                    awaitingBudgets: true)
    }

    /// The memory figure a target is compared with, in the target's unit.
    func value(_ memory: MemorySummary, _ target: MemoryTarget) -> Double {
        switch (target, statistic) {
        case (.percent, .mean): return memory.meanPercentOfFull
        // The full cache only grows, so its peak is its size at the last step.
        case (.percent, .peak): return 100 * memory.peakBytes / max(memory.finalFullBytes, 1)
        case (.bytes, .mean): return memory.meanBytes
        case (.bytes, .peak): return memory.peakBytes
        }
    }

    func percent(_ memory: MemorySummary) -> Double {
        statistic == .mean ? memory.meanPercentOfFull : 100 * memory.peakBytes / max(memory.finalFullBytes, 1)
    }

    static func value(of target: MemoryTarget) -> Double {
        switch target {
        case .percent(let p): return p
        case .bytes(let b): return b
        }
    }

    /// Replays every policy at its matched budget. The runs come back in the order of
    /// `configuration.policies`, each with its `memoryMatch`.
    public func run() throws -> ReplayResult {
        defer { progress?.finish() }
        let policies = configuration.policies
        let layers = configuration.layers ?? reader.recordedLayerIndices
        for spec in policies { try spec.checkRequirements(reader, layers: layers) }
        // The smallest budget each policy accepts, and the combinations of the others, are
        // checked before any policy prepares (ThinKV calibrates on the trace first).
        var searches: [BudgetSearch?] = try policies.indices.map { i in
            guard Self.hasBudget(policies[i].type) else {
                try checkParameters(policies[i], layers: layers)
                return nil
            }
            let lowest = try lowestBudget(policies[i], layers: layers)
            return BudgetSearch(target: Self.value(of: targets[i]), lowest: lowest, highest: max(lowest, reader.header.numTokens))
        }
        var finished: [Int: PolicyRun] = [:]
        var timing = ReplayTiming.zero
        var first: ReplayResult?
        var generalNotes: [String] = [], notesByLabel: [String: [String]] = [:]
        var fullBytes: Double?  // the full cache's figure for the tolerance of a byte target
        var round = 0
        while true {
            // This round's trials: (policy index, budget or nil to run the spec as given).
            var trials: [(Int, Int?)] = []
            for i in policies.indices {
                if searches[i] != nil {
                    trials += searches[i]!.nextBudgets().map { (i, $0) }
                } else if finished[i] == nil {
                    trials.append((i, nil))
                }
            }
            if trials.isEmpty { break }
            round += 1
            var trialConfiguration = configuration
            trialConfiguration.policies = try trials.map { i, budget in
                try budget.map { try Self.spec(policies[i], budget: $0) } ?? policies[i]
            }
            trialConfiguration.layouts = configuration.layouts.map { layouts in trials.map { layouts[$0.0] } }
            let engine = ReplayEngine(reader: reader, configuration: trialConfiguration)
            engine.referenceStore = store
            // Each trial prepares for its own budget: what a policy prepares may depend on it
            // (ThinKV's classifier reads its own cache); the policies memoize what does not.
            engine.progress = progress.map { RoundProgress(inner: $0, round: round) }
            let result = try engine.run()
            if first == nil { first = result }
            // Notes by the run they name, so the report keeps those of the chosen budgets.
            let labels = result.runs.map { $0.spec.label + ": " }
            for note in result.notes {
                if let label = labels.first(where: { note.hasPrefix($0) }) {
                    if !(notesByLabel[label]?.contains(note) ?? false) { notesByLabel[label, default: []].append(note) }
                } else if !generalNotes.contains(note) {
                    generalNotes.append(note)
                }
            }
            timing.add(result.timing)
            for ((i, budget), run) in zip(trials, result.runs) {
                if fullBytes == nil {
                    fullBytes = statistic == .mean
                        ? run.summary.memory.meanBytes * 100 / max(run.summary.memory.meanPercentOfFull, 1e-9)
                        : run.summary.memory.finalFullBytes
                }
                if let budget {
                    searches[i]!.record(budget: budget, value: value(run.summary.memory, targets[i]), run: run)
                } else {
                    finished[i] = run
                }
            }
        }
        guard let first else { throw PolicyError("replay: no policies to match") }
        var runs: [PolicyRun] = []
        for i in policies.indices {
            let target = targets[i]
            let tolerance: Double
            switch target {
            case .percent: tolerance = self.tolerance
            case .bytes: tolerance = self.tolerance / 100 * (fullBytes ?? 0)
            }
            var remedy: CadenceRemedy?
            if let search = searches[i], !search.choice(tolerance: tolerance).withinTolerance,
               let least = search.lowestValue, least > Self.value(of: target) {
                remedy = try cadenceRemedy(policies[i], layout: configuration.layouts?[i], target: target, layers: layers)
            }
            if adaptsCadence, let remedy, let value = remedy.value {
                runs.append(try adapted(i, parameter: remedy.parameter, value: value, target: target))
                continue
            }
            let targetPercent: Double? = if case .percent(let p) = target { p } else { nil }
            let targetBytes: Double? = if case .bytes(let b) = target { b } else { nil }
            if let search = searches[i] {
                let choice = search.choice(tolerance: tolerance)
                var run = choice.run
                run.memoryMatch = MemoryMatch(
                    status: choice.withinTolerance ? .matched : .unreachable, statistic: statistic,
                    targetPercent: targetPercent, targetBytes: targetBytes, budget: choice.budget,
                    achievedPercent: percent(run.summary.memory),
                    achievedBytes: statistic == .mean ? run.summary.memory.meanBytes : run.summary.memory.peakBytes,
                    trials: search.trials,
                    note: choice.withinTolerance ? nil
                        : unreachableNote(policies[i], search: search, target: target)
                            + (remedy.map { "; \($0.text)" } ?? "") + (remedy?.value == nil || adaptsCadence ? "" : " (--kv-adapt runs it)"))
                runs.append(run)
            } else {
                var run = finished[i]!
                run.memoryMatch = MemoryMatch(
                    status: .notMatched, statistic: statistic, targetPercent: targetPercent, targetBytes: targetBytes,
                    budget: nil, achievedPercent: percent(run.summary.memory),
                    achievedBytes: statistic == .mean ? run.summary.memory.meanBytes : run.summary.memory.peakBytes,
                    trials: 1, note: nil)
                runs.append(run)
            }
        }
        let sizes = runs.map(\.blockSize)
        let blockSizes = Set(sizes).count <= 1 ? String(sizes.first ?? 16)
            : zip(runs, sizes).map { "\($0.spec.name) \($1)" }.joined(separator: ", ")
        return ReplayResult(tracePath: first.tracePath, header: first.header, layers: first.layers, decodeSteps: first.decodeSteps,
                            runs: runs, notes: generalNotes + runs.flatMap { notesByLabel[$0.spec.label + ": "] ?? [] },
                            paging: first.paging, blockSizes: blockSizes, timing: timing, topK: first.topK)
    }

    private func unreachableNote(_ spec: PolicySpec, search: BudgetSearch, target: MemoryTarget) -> String {
        let unit: (Double) -> String = { v in
            if case .percent = target { return String(format: "%.2f %%", v) }
            return Format.bytes(v)
        }
        let targetValue = Self.value(of: target)
        let low = search.lowestValue ?? .nan
        let range = "budgets \(search.lowest)...\(search.highest) give \(unit(low)) to \(unit(search.highestValue ?? .nan))"
        let ran = low > targetValue ? "ran the smallest budget" : "ran the largest budget found not above it"
        let tolerance = String(format: "%g", self.tolerance)
        return "\(noteName(spec)): \(statistic.rawValue) KV of \(unit(targetValue)) within \(tolerance) point(s) "
            + "is out of reach (\(range)); \(ran)"
    }

    /// The policy as a note names it: its name, or, when the comparison runs it more than once
    /// (`h2o:recent=8,h2o:recent=32`), its label without the budget the search sets.
    private func noteName(_ spec: PolicySpec) -> String {
        guard configuration.policies.filter({ $0.name == spec.name }).count > 1 else { return spec.name }
        let budget = spec.type.budgetParameter?.name
        let given = spec.parameters.given.filter { $0.key != budget }.sorted { $0.key < $1.key }
        let shown = given.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return given.isEmpty ? spec.name : "\(spec.name)(\(shown))"
    }

    /// Policy `i` matched again with its cadence parameter at `value`; its note says so.
    private func adapted(_ i: Int, parameter: String, value: Int, target: MemoryTarget) throws -> PolicyRun {
        let base = configuration.policies[i]
        var values = base.parameters.given
        let was = (try? base.parameters.optionalInteger(parameter)).flatMap { $0 }.map(String.init) ?? "?"
        values[parameter] = String(value)
        var sub = configuration
        sub.policies = [try PolicySpec(name: base.name, values: values, awaitingBudget: base.awaitsBudget)]
        sub.layouts = configuration.layouts.map { [$0[i]] }
        let matcher = MemoryMatcher(reader: reader, configuration: sub, targets: [target], statistic: statistic,
                                    tolerance: tolerance, store: store)
        var run = try matcher.run().runs[0]
        let adaptedNote = "\(noteName(base)): --kv-adapt set --\(parameter) \(value) (was \(was)): at --\(parameter) \(was) "
            + "no budget reaches the target"
        let earlier = run.memoryMatch?.note
        run.memoryMatch?.note = [adaptedNote, earlier].compactMap { $0 }.joined(separator: "; ")
        return run
    }

    /// What reaches an out-of-reach target: the cadence parameter, the largest halving of its
    /// value that reaches it (nil when none does), and the sentence the note gives.
    struct CadenceRemedy {
        let parameter: String
        let value: Int?
        let text: String
    }

    /// Why a target below a policy's smallest budget is out of reach, and what reaches it: the
    /// cache grows by up to its cadence parameter between compressions (R-KV's --divide, a
    /// press's --interval), so no budget brings the mean below that growth. Replays, at the
    /// smallest budget each accepts, the halvings of the parameter's value (in one engine run,
    /// sharing the reference) and names the largest that meets the target; nil when the policy
    /// has no such parameter or no halving meets it.
    func cadenceRemedy(_ base: PolicySpec, layout: PagingLayout?, target: MemoryTarget, layers: [Int]) throws -> CadenceRemedy? {
        guard let name = base.type.cadenceParameter(base.parameters),
              let current = (try? base.parameters.optionalInteger(name)).flatMap({ $0 }) else { return nil }
        var candidates: [(value: Int, spec: PolicySpec)] = []
        var value = current / 2
        while value >= 1 {
            var values = base.parameters.given
            values[name] = String(value)
            // A value the policy refuses (e.g. a buffer below the window) is skipped.
            if let spec = try? PolicySpec(name: base.name, values: values, awaitingBudget: base.awaitsBudget),
               let lowest = try? lowestBudget(spec, layers: layers),
               let trial = try? Self.spec(spec, budget: lowest) {
                candidates.append((value, trial))
            }
            value /= 2
        }
        guard !candidates.isEmpty else { return nil }
        var trialConfiguration = configuration
        trialConfiguration.policies = candidates.map(\.spec)
        trialConfiguration.layouts = layout.map { layout in candidates.map { _ in layout } }
        let engine = ReplayEngine(reader: reader, configuration: trialConfiguration)
        engine.referenceStore = store
        let result = try engine.run()
        let goal = Self.value(of: target)
        for (candidate, run) in zip(candidates, result.runs) where self.value(run.summary.memory, target) <= goal {
            let budget = candidate.spec.type.budgetParameter
                .flatMap { try? candidate.spec.parameters.optionalInteger($0.name) }.flatMap { $0 } ?? 0
            let reached = self.value(run.summary.memory, target)
            let shown = if case .percent = target { String(format: "%.2f %%", reached) } else { Format.bytes(reached) }
            return CadenceRemedy(parameter: name, value: candidate.value,
                                 text: "--\(name) \(candidate.value) reaches it (\(shown) at budget \(budget)): at --\(name) \(current) the cache grows by up to \(current - 1) tokens between compressions")
        }
        return CadenceRemedy(parameter: name, value: nil, text: "no --\(name) down to 1 reaches it either")
    }

    static func spec(_ base: PolicySpec, budget: Int) throws -> PolicySpec {
        try base.withBudget(budget)
    }

    /// The first layer replayed, whose shape the checks of a configuration read.
    private func firstLayer(_ layers: [Int]) throws -> LayerInfo {
        guard let layer = layers.first.flatMap(reader.layerInfo) else {
            throw TraceError(file: reader.path, "has no recorded layer to replay")
        }
        return layer
    }

    /// The smallest budget the policy accepts with its other parameters (`PolicySpec.lowestBudget`).
    /// A refusal is a usage error: the parameters are what the user typed.
    func lowestBudget(_ base: PolicySpec, layers: [Int]) throws -> Int {
        let layer = try firstLayer(layers)
        do { return try base.lowestBudget(header: reader.header, layer: layer) } catch let error as PolicyError {
            throw UsageError(error.description)
        }
    }

    /// A policy without a budget checked as given (`PolicySpec.checkParameters`).
    private func checkParameters(_ spec: PolicySpec, layers: [Int]) throws {
        try spec.checkParameters(header: reader.header, layer: try firstLayer(layers))
    }
}

/// Bisection over one policy's integer budget, keeping value(lo) ≤ target < value(hi).
struct BudgetSearch {
    let target: Double
    let lowest: Int
    let highest: Int
    private(set) var trials = 0
    private var results: [Int: (value: Double, run: PolicyRun)] = [:]
    /// Bracket: largest known budget with value ≤ target, smallest known above it with value > target.
    private var lo: Int?
    private var hi: Int?
    private var pending: Set<Int> = []

    init(target: Double, lowest: Int, highest: Int) {
        self.target = target
        self.lowest = lowest
        self.highest = highest
    }

    var lowestValue: Double? { results[lowest]?.value }
    var highestValue: Double? { results[highest]?.value }

    /// The budgets to replay next (empty: done).
    mutating func nextBudgets() -> [Int] {
        let next: [Int]
        if results.isEmpty {
            next = lowest == highest ? [lowest] : [lowest, highest]
        } else if let lo, let hi, hi - lo > 1 {
            next = [lo + (hi - lo) / 2]
        } else {
            next = []
        }
        pending = Set(next)
        return next
    }

    mutating func record(budget: Int, value: Double, run: PolicyRun) {
        trials += 1
        pending.remove(budget)
        results[budget] = (value, run)
        guard pending.isEmpty else { return }
        if lo == nil && hi == nil {
            // Bracketing: the ends must straddle the target, else the search stops at an end.
            let low = results[lowest]!.value, high = results[highest]!.value
            if low <= target && high > target {
                lo = lowest
                hi = highest
            } else {
                lo = low > target ? nil : highest
                hi = low > target ? lowest : nil
            }
            return
        }
        if value <= target { lo = budget } else { hi = budget }
        results = results.filter { $0.key == lo || $0.key == hi || $0.key == lowest || $0.key == highest }
    }

    /// The budget to report: lo within the tolerance, else hi within it, else the closest
    /// budget not above the target (or, when every budget is above, the smallest).
    func choice(tolerance: Double) -> (budget: Int, run: PolicyRun, withinTolerance: Bool) {
        func within(_ b: Int?) -> Bool { b.flatMap { results[$0] }.map { abs($0.value - target) <= tolerance } ?? false }
        if let lo, within(lo) { return (lo, results[lo]!.run, true) }
        if let hi, within(hi) { return (hi, results[hi]!.run, true) }
        let fallback = lo ?? hi!
        return (fallback, results[fallback]!.run, false)
    }
}

/// A matching round's progress, labelled with the round.
private final class RoundProgress: ThinKVEngine.ProgressReporting {
    let inner: ThinKVEngine.ProgressReporting
    let round: Int
    init(inner: ThinKVEngine.ProgressReporting, round: Int) {
        self.inner = inner
        self.round = round
    }
    func update(fraction: Double, detail: String) { inner.update(fraction: fraction, detail: "matching round \(round): \(detail)") }
    func finish() {}
}
