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
/// The budget it reports is defined by a bisection (`runBisection`, kept as the definition and
/// the tests' oracle): the smallest budget the policy accepts must lie at or below the target
/// and the trace's token count (which evicts nothing) above it, else the target is unreachable;
/// bisecting keeps memory(lo) ≤ target < memory(hi) until the budgets are adjacent, and takes lo
/// when it is within the tolerance (the largest budget found not above the target), else hi
/// when that one is, else lo with a note.
///
/// `run` finds the same budget without replaying the bisection's path. When memory grows with
/// the budget the bisection ends at the one pair of adjacent budgets that straddles the target,
/// so it is enough to replay that pair: a model of the cache (`BudgetModel`: tokens held at
/// each step, from bytes per token and the policy's cadence; after a replay, learned from it)
/// predicts the pair, and every candidate of every policy and target runs side by side in one
/// engine pass over the shared reference. A pass whose candidates miss the pair teaches the
/// model and the next pass replays the predicted pair inside the bracket the replays so far
/// left. Replays whose order contradicts growing memory hand that policy to the bisection
/// itself, over the replays already made. Policies without a budget run once, in the first pass.
///
/// Every candidate is a complete replay with metrics, so the chosen candidate's run is the
/// result, and all passes share one `ReferenceStore`: the full-cache reference is computed in
/// the first pass only.
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
    /// Policies (by index) run as given, without a memory match: a sweep's runs without a target.
    public var asGiven: Set<Int> = []
    /// Called with a policy's index and its final run as soon as that run is known (a sweep
    /// writes its row then), before `run` returns them all.
    public var onResolved: ((Int, PolicyRun) -> Void)?

    public convenience init(
        reader: TraceReader, configuration: ReplayConfiguration, target: MemoryTarget,
        statistic: MemoryStatistic = .mean, tolerance: Double = 1, store: ReferenceStore? = nil
    ) {
        self.init(
            reader: reader, configuration: configuration, targets: configuration.policies.map { _ in target },
            statistic: statistic, tolerance: tolerance, store: store)
    }

    /// One target per policy of `configuration`: all their trials share engine runs.
    public init(
        reader: TraceReader, configuration: ReplayConfiguration, targets: [MemoryTarget],
        statistic: MemoryStatistic = .mean, tolerance: Double = 1, store: ReferenceStore? = nil
    ) {
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
    public static func specs(
        policies names: [String], options: [(name: String, value: String)],
        commandOptions: [String] = []
    ) throws -> [PolicySpec] {
        try specs(items: names.map { PolicyItem(name: $0) }, options: options, commandOptions: commandOptions)
    }

    public static func specs(
        items: [PolicyItem], options: [(name: String, value: String)],
        commandOptions: [String] = []
    ) throws -> [PolicySpec] {
        let types = items.map { PolicyRegistry.type(named: $0.name) }
        let budgetNames = Set(types.compactMap { $0?.budgetParameter?.name })
        if let shared = options.first(where: { budgetNames.contains($0.name) }) {
            throw UsageError(
                "--\(shared.name) and a memory target (--kv-percent, --kv-bytes) exclude each other: "
                    + "the target sets each budget")
        }
        for (item, type) in zip(items, types) {
            guard let budget = type?.budgetParameter, item.values[budget.name] != nil else { continue }
            throw UsageError(
                "--policy \(item.text): a budget of its own and a memory target "
                    + "(--kv-percent, --kv-bytes) exclude each other: the target sets each budget")
        }
        return try PolicySpec.specs(
            items: items, options: options, commandOptions: commandOptions,
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

    /// At most this many policy runs share one engine run (each holds its own cache); more run
    /// in several engine runs of the same pass, over the stored reference.
    static let policiesPerEngineRun = 48

    /// One policy's search for its budget in `run`.
    private struct Search {
        let policy: Int
        /// Policies alike but for the budget share their replays (a sweep's targets of one policy).
        let key: String
        let target: MemoryTarget
        let goal: Double
        let lowest: Int
        let highest: Int
        /// Passes whose candidates missed the straddling pair.
        var misses = 0
        /// Set when replays contradict memory growing with the budget: the bisection decides.
        var bisection: BudgetSearch?
        var done = false

        /// The bisection over this search's range, from its start.
        var newBisection: BudgetSearch { BudgetSearch(target: goal, lowest: lowest, highest: highest) }
    }

    /// What a search settled on.
    private struct Outcome {
        let budget: Int
        let withinTolerance: Bool
    }

    /// Replays every policy at its matched budget (the budget `runBisection` finds), in one
    /// engine pass when the candidates hit and one more when they miss. The runs come back in the
    /// order of `configuration.policies`, each with its `memoryMatch`.
    public func run() throws -> ReplayResult {
        defer { progress?.finish() }
        let policies = configuration.policies
        let layers = configuration.layers ?? reader.recordedLayerIndices
        for spec in policies { try spec.checkRequirements(reader, layers: layers) }
        // The smallest budget each policy accepts, and the combinations of the others, are
        // checked before any policy prepares (ThinKV calibrates on the trace first).
        var searches: [Int: Search] = [:]
        for i in policies.indices {
            guard Self.hasBudget(policies[i].type), !asGiven.contains(i) else {
                try checkParameters(policies[i], layers: layers)
                continue
            }
            let lowest = try lowestBudget(policies[i], layers: layers)
            var search = Search(
                policy: i, key: replayKey(i), target: targets[i], goal: Self.value(of: targets[i]),
                lowest: lowest, highest: max(lowest, reader.header.numTokens))
            if !policies[i].type.memoryGrowsWithBudget {
                // No model predicts such a policy's memory: the bisection's own path gives its answer
                // (its rounds still share the passes and the stored reference with the others).
                search.bisection = search.newBisection
            }
            searches[i] = search
        }
        let decodeSteps = ReplayEngine(reader: reader, configuration: configuration).decodeSteps
        var replays: [String: [Int: PolicyRun]] = [:]  // key -> budget -> run
        var finished: [Int: PolicyRun] = [:]
        var timing = ReplayTiming.zero
        var first: ReplayResult?
        var notes = MatchNotes()
        var fullBytes: Double?  // the full cache's figure for the tolerance of a byte target
        let overall = MonotoneProgress(inner: progress)
        var pass = 0
        func tolerance(_ target: MemoryTarget) -> Double {
            switch target {
            case .percent: return self.tolerance
            case .bytes: return self.tolerance / 100 * (fullBytes ?? 0)
            }
        }
        func finish(_ i: Int, _ run: PolicyRun) {
            finished[i] = run
            onResolved?(i, run)
        }

        while true {
            // This pass's candidates: (policy index, budget or nil to run the spec as given).
            var trials: [(policy: Int, budget: Int?)] = []
            if pass == 0 {
                trials = policies.indices.filter { searches[$0] == nil }.map { ($0, nil) }
            }
            var planned: [String: Set<Int>] = [:]
            for i in searches.keys.sorted() where !searches[i]!.done {
                let key = searches[i]!.key
                let known = replays[key] ?? [:]
                for budget in candidates(&searches[i]!, known, decodeSteps: decodeSteps, layers: layers.count)
                where known[budget] == nil && !(planned[key]?.contains(budget) ?? false) {
                    planned[key, default: []].insert(budget)
                    trials.append((i, budget))
                }
            }
            if trials.isEmpty { break }
            // Each pass takes most of what is left of the bar: the first one (the reference and
            // nearly all the work) runs to 80 %, a second to 96 %, and so on.
            let passStart = overall.reported, passEnd = passStart + (1 - passStart) * 0.8
            let groups = stride(from: 0, to: trials.count, by: Self.policiesPerEngineRun).map {
                Array(trials[$0..<min($0 + Self.policiesPerEngineRun, trials.count)])
            }
            var done = 0
            for group in groups {
                var trialConfiguration = configuration
                trialConfiguration.policies = try group.map { i, budget in
                    try budget.map { try Self.spec(policies[i], budget: $0) } ?? policies[i]
                }
                trialConfiguration.layouts = configuration.layouts.map { layouts in group.map { layouts[$0.policy] } }
                let engine = ReplayEngine(reader: reader, configuration: trialConfiguration)
                engine.referenceStore = store
                // Each candidate prepares for its own budget: what a policy prepares may depend on
                // it (ThinKV's classifier reads its own cache); the policies memoize what does not.
                let from = passStart + (passEnd - passStart) * Double(done) / Double(trials.count)
                let to = passStart + (passEnd - passStart) * Double(done + group.count) / Double(trials.count)
                engine.progress = overall.span(from, to, detail: pass == 0 ? "" : "matching pass \(pass + 1): ")
                let result = try engine.run()
                done += group.count
                if first == nil { first = result }
                notes.add(result)
                timing.add(result.timing)
                for ((i, budget), run) in zip(group, result.runs) {
                    if fullBytes == nil { fullBytes = fullFigure(run) }
                    if let budget {
                        replays[searches[i]!.key, default: [:]][budget] = run
                    } else if asGiven.contains(i) {
                        finish(i, run)
                    } else {
                        var run = run
                        let targetPercent: Double? = if case .percent(let p) = targets[i] { p } else { nil }
                        let targetBytes: Double? = if case .bytes(let b) = targets[i] { b } else { nil }
                        let memory = run.summary.memory
                        run.memoryMatch = MemoryMatch(
                            status: .notMatched, statistic: statistic, targetPercent: targetPercent,
                            targetBytes: targetBytes, budget: nil, achievedPercent: percent(memory),
                            achievedBytes: statistic == .mean ? memory.meanBytes : memory.peakBytes, trials: 1,
                            note: nil)
                        finish(i, run)
                    }
                }
            }
            pass += 1
            for i in searches.keys.sorted() where !searches[i]!.done {
                let known = replays[searches[i]!.key] ?? [:]
                guard let outcome = settle(&searches[i]!, known, tolerance: tolerance(searches[i]!.target)) else {
                    searches[i]!.misses += 1
                    continue
                }
                searches[i]!.done = true
                finish(i, try matchedRun(searches[i]!, outcome, known, layers: layers))
            }
        }
        overall.update(fraction: 1, detail: "done")
        guard let first else { throw PolicyError("replay: no policies to match") }
        let runs = policies.indices.map { finished[$0]! }
        return Self.result(of: runs, like: first, timing: timing, notes: notes)
    }

    /// Policies alike but for their budget: the same name, other parameters and layout.
    private func replayKey(_ i: Int) -> String {
        let spec = configuration.policies[i]
        let budget = spec.type.budgetParameter?.name
        let given = spec.parameters.given.filter { $0.key != budget }.sorted { $0.key < $1.key }
        let layout = configuration.layout(ofPolicy: i)
        return
            ([spec.name] + given.map { "\($0.key)=\($0.value)" }
            + ["paging=\(layout.mode.rawValue)", "block=\(configuration.effectiveBlockSize(ofPolicy: i))"])
            .joined(separator: ";")
    }

    /// The full cache's mean (or peak) bytes, all layers: what a byte target's tolerance is a share of.
    func fullFigure(_ run: PolicyRun) -> Double {
        guard statistic == .mean else { return run.summary.memory.finalFullBytes }
        var full: [Int: Double] = [:]
        for record in run.steps { full[record.step, default: 0] += Double(record.fullBytes) }
        let replayed = Set(run.steps.map(\.layer)).count
        let scale = Double(reader.header.numLayers) / Double(max(replayed, 1))
        return full.values.reduce(0, +) / Double(max(full.count, 1)) * scale
    }

    /// The budgets bracketing the target among `known` replays: the largest not above it and
    /// the smallest above it.
    private func bracket(_ search: Search, _ known: [Int: PolicyRun]) -> (below: Int?, above: Int?) {
        var below: Int?, above: Int?
        for (budget, run) in known {
            if value(run.summary.memory, search.target) <= search.goal {
                if budget > (below ?? Int.min) { below = budget }
            } else if budget < (above ?? Int.max) {
                above = budget
            }
        }
        return (below, above)
    }

    /// The budgets to replay next for an unsettled search.
    private func candidates(_ search: inout Search, _ known: [Int: PolicyRun], decodeSteps: Int, layers: Int) -> [Int] {
        if var bisection = search.bisection {
            defer { search.bisection = bisection }
            return Self.advance(&bisection, known) { self.value($0.summary.memory, search.target) }
        }
        let (below, above) = bracket(search, known)
        if let below, let above, below > above {
            // Memory fell as the budget grew: only the bisection's own path gives its answer.
            var bisection = search.newBisection
            let missing = Self.advance(&bisection, known) { self.value($0.summary.memory, search.target) }
            search.bisection = bisection
            return missing
        }
        if settledBudget(search, below: below, above: above) != nil {
            // Settled but out of tolerance: the note names what both ends of the range give.
            return [search.lowest, search.highest].filter { known[$0] == nil }
        }
        let first = below.map { $0 + 1 } ?? search.lowest, last = above.map { $0 - 1 } ?? search.highest
        var window: [Int]
        if let below, let above {
            // Replays either side: the straight line between them (memory is close to linear in
            // the budget over a short range, whatever the policy's bytes per token).
            let low = value(known[below]!.summary.memory, search.target)
            let high = value(known[above]!.summary.memory, search.target)
            let crossing = below + Int((search.goal - low) / max(high - low, 1e-12) * Double(above - below))
            window = [crossing, crossing + 1]
            // A search that missed twice also halves what is left, so none takes more than
            // about log2(tokens) passes; a narrow bracket is cheaper replayed whole.
            if search.misses > 1 && last - first > 4 { window.append(first + (last - first) / 2) }
            if last - first < 4 { window = Array(first...last) }
        } else {
            let spec = configuration.policies[search.policy]
            let model: BudgetModel
            if let nearest = known.keys.min(by: { distance($0, first, last) < distance($1, first, last) }) {
                model = .learned(
                    from: known[nearest]!, budget: nearest, numLayers: reader.header.numLayers,
                    replayedLayers: layers)
            } else {
                let cadence =
                    spec.type.cadenceParameter(spec.parameters)
                    .flatMap { try? spec.parameters.optionalInteger($0) }.flatMap { $0 } ?? 1
                model = .generic(
                    header: reader.header, layers: layers, steps: decodeSteps, cadence: cadence,
                    statistic: statistic)
            }
            let predicted = model.largestBudget(
                notAbove: search.goal, in: search.lowest...search.highest,
                statistic: statistic, target: search.target)
            // The pair (predicted, predicted + 1) straddles the target when the model is right;
            // the first guess, not learned from this policy, gets a budget either side.
            window = known.isEmpty ? Array((predicted - 1)...(predicted + 2)) : [predicted, predicted + 1]
            if search.misses > 0 {
                // Still on one side after a learned guess: the end of the range settles an
                // unreachable target at once (with the other end, which its note names).
                window += [search.lowest, search.highest].filter { known[$0] == nil }
            }
        }
        var out: [Int] = []
        for budget in window.map({ min(max($0, first), last) }) where !out.contains(budget) { out.append(budget) }
        return out
    }

    private func distance(_ budget: Int, _ first: Int, _ last: Int) -> Int {
        budget < first ? first - budget : budget > last ? budget - last : 0
    }

    /// The budget the bisection ends at when memory grows with the budget, once the replays
    /// show it: the lower of the adjacent pair straddling the target, or an end of the range
    /// the target lies beyond (nil: not yet known).
    private func settledBudget(_ search: Search, below: Int?, above: Int?) -> (lo: Int?, hi: Int?)? {
        if let below, let above, above == below + 1 { return (below, above) }
        if above == search.lowest { return (nil, search.lowest) }
        if below == search.highest { return (search.highest, nil) }
        return nil
    }

    /// Runs the bisection as far as `known` replays answer it; returns the budgets it needs next.
    private static func advance(
        _ bisection: inout BudgetSearch, _ known: [Int: PolicyRun],
        value: (PolicyRun) -> Double
    ) -> [Int] {
        while true {
            let next = bisection.nextBudgets()
            if next.isEmpty { return [] }
            let missing = next.filter { known[$0] == nil }
            if !missing.isEmpty { return missing }
            for budget in next { bisection.record(budget: budget, value: value(known[budget]!), run: known[budget]!) }
        }
    }

    /// The search's outcome once its replays settle it, the bisection's rule applied: lo within
    /// the tolerance, else hi within it, else lo (or the one end there is). Nil: replay more.
    private func settle(_ search: inout Search, _ known: [Int: PolicyRun], tolerance: Double) -> Outcome? {
        if var bisection = search.bisection {
            let missing = Self.advance(&bisection, known) { self.value($0.summary.memory, search.target) }
            guard missing.isEmpty else {
                search.bisection = bisection
                return nil
            }
            search.bisection = bisection
            let choice = bisection.choice(tolerance: tolerance)
            return Outcome(budget: choice.budget, withinTolerance: choice.withinTolerance)
        }
        let (below, above) = bracket(search, known)
        if let below, let above, below > above { return nil }  // `candidates` hands it to the bisection
        guard let settled = settledBudget(search, below: below, above: above) else { return nil }
        let (lo, hi) = settled
        func within(_ budget: Int?) -> Bool {
            guard let run = budget.flatMap({ known[$0] }) else { return false }
            return abs(value(run.summary.memory, search.target) - search.goal) <= tolerance
        }
        if within(lo) { return Outcome(budget: lo!, withinTolerance: true) }
        if within(hi) { return Outcome(budget: hi!, withinTolerance: true) }
        // Out of reach: the note needs both ends of the range.
        guard known[search.lowest] != nil, known[search.highest] != nil else { return nil }
        return Outcome(budget: lo ?? hi!, withinTolerance: false)
    }

    /// The chosen replay with its match (and, out of reach, its note, cadence remedy or
    /// `--kv-adapt` rerun).
    private func matchedRun(
        _ search: Search, _ outcome: Outcome, _ known: [Int: PolicyRun],
        layers: [Int]
    ) throws -> PolicyRun {
        let i = search.policy, target = search.target
        let lowestValue = known[search.lowest].map { value($0.summary.memory, target) }
        let highestValue = known[search.highest].map { value($0.summary.memory, target) }
        var remedy: CadenceRemedy?
        if !outcome.withinTolerance, let least = lowestValue, least > search.goal {
            remedy = try cadenceRemedy(
                configuration.policies[i], layout: configuration.layouts?[i], target: target,
                layers: layers)
        }
        if adaptsCadence, let remedy, let value = remedy.value {
            return try adapted(i, parameter: remedy.parameter, value: value, target: target)
        }
        var run = known[outcome.budget]!
        run.memoryMatch = MemoryMatch(
            status: outcome.withinTolerance ? .matched : .unreachable, statistic: statistic,
            targetPercent: { if case .percent(let p) = target { return p } else { return nil } }(),
            targetBytes: { if case .bytes(let b) = target { return b } else { return nil } }(),
            budget: outcome.budget, achievedPercent: percent(run.summary.memory),
            achievedBytes: statistic == .mean ? run.summary.memory.meanBytes : run.summary.memory.peakBytes,
            trials: search.bisection?.trials ?? known.count,
            note: outcome.withinTolerance
                ? nil
                : unreachableNote(
                    configuration.policies[i], lowest: search.lowest, highest: search.highest,
                    lowestValue: lowestValue, highestValue: highestValue, target: target)
                    + (remedy.map { "; \($0.text)" } ?? "")
                    + (remedy?.value == nil || adaptsCadence ? "" : " (--kv-adapt runs it)"))
        return run
    }

    /// Replays every policy at the budget the bisection finds, by repeated bisection rounds (each
    /// round one engine run): the definition `run` reproduces in a pass or two, kept for tests.
    package func runBisection() throws -> ReplayResult {
        defer { progress?.finish() }
        let policies = configuration.policies
        let layers = configuration.layers ?? reader.recordedLayerIndices
        for spec in policies { try spec.checkRequirements(reader, layers: layers) }
        // The smallest budget each policy accepts, and the combinations of the others, are
        // checked before any policy prepares (ThinKV calibrates on the trace first).
        var searches: [BudgetSearch?] = try policies.indices.map { i in
            guard Self.hasBudget(policies[i].type), !asGiven.contains(i) else {
                try checkParameters(policies[i], layers: layers)
                return nil
            }
            let lowest = try lowestBudget(policies[i], layers: layers)
            return BudgetSearch(
                target: Self.value(of: targets[i]), lowest: lowest, highest: max(lowest, reader.header.numTokens))
        }
        var finished: [Int: PolicyRun] = [:]
        var timing = ReplayTiming.zero
        var first: ReplayResult?
        var notes = MatchNotes()
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
            notes.add(result)
            timing.add(result.timing)
            for ((i, budget), run) in zip(trials, result.runs) {
                if fullBytes == nil { fullBytes = fullFigure(run) }
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
                let least = search.lowestValue, least > Self.value(of: target)
            {
                remedy = try cadenceRemedy(
                    policies[i], layout: configuration.layouts?[i], target: target, layers: layers)
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
                    note: choice.withinTolerance
                        ? nil
                        : unreachableNote(
                            policies[i], lowest: search.lowest, highest: search.highest,
                            lowestValue: search.lowestValue, highestValue: search.highestValue, target: target)
                            + (remedy.map { "; \($0.text)" } ?? "")
                            + (remedy?.value == nil || adaptsCadence ? "" : " (--kv-adapt runs it)"))
                runs.append(run)
            } else if asGiven.contains(i) {
                runs.append(finished[i]!)
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
        return Self.result(of: runs, like: first, timing: timing, notes: notes)
    }

    private func unreachableNote(
        _ spec: PolicySpec, lowest: Int, highest: Int, lowestValue: Double?, highestValue: Double?,
        target: MemoryTarget
    ) -> String {
        let unit: (Double) -> String = { v in
            if case .percent = target { return String(format: "%.2f %%", v) }
            return Format.bytes(v)
        }
        let targetValue = Self.value(of: target)
        let low = lowestValue ?? .nan
        let range = "budgets \(lowest)...\(highest) give \(unit(low)) to \(unit(highestValue ?? .nan))"
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
        let matcher = MemoryMatcher(
            reader: reader, configuration: sub, targets: [target], statistic: statistic,
            tolerance: tolerance, store: store)
        var run = try matcher.run().runs[0]
        let adaptedNote =
            "\(noteName(base)): --kv-adapt set --\(parameter) \(value) (was \(was)): at --\(parameter) \(was) "
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
    func cadenceRemedy(_ base: PolicySpec, layout: PagingLayout?, target: MemoryTarget, layers: [Int]) throws
        -> CadenceRemedy?
    {
        guard let name = base.type.cadenceParameter(base.parameters),
            let current = (try? base.parameters.optionalInteger(name)).flatMap({ $0 })
        else { return nil }
        var candidates: [(value: Int, spec: PolicySpec)] = []
        var value = current / 2
        while value >= 1 {
            var values = base.parameters.given
            values[name] = String(value)
            // A value the policy refuses (e.g. a buffer below the window) is skipped.
            if let spec = try? PolicySpec(name: base.name, values: values, awaitingBudget: base.awaitsBudget),
                let lowest = try? lowestBudget(spec, layers: layers),
                let trial = try? Self.spec(spec, budget: lowest)
            {
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
            let budget =
                candidate.spec.type.budgetParameter
                .flatMap { try? candidate.spec.parameters.optionalInteger($0.name) }.flatMap { $0 } ?? 0
            let reached = self.value(run.summary.memory, target)
            let shown = if case .percent = target { String(format: "%.2f %%", reached) } else { Format.bytes(reached) }
            return CadenceRemedy(
                parameter: name, value: candidate.value,
                text:
                    "--\(name) \(candidate.value) reaches it (\(shown) at budget \(budget)): at --\(name) \(current) "
                    + "the cache grows by up to \(current - 1) tokens between compressions"
            )
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
        func within(_ b: Int?) -> Bool {
            b.flatMap { results[$0] }.map { abs($0.value - target) <= tolerance } ?? false
        }
        if let lo, within(lo) { return (lo, results[lo]!.run, true) }
        if let hi, within(hi) { return (hi, results[hi]!.run, true) }
        let fallback = lo ?? hi!
        return (fallback, results[fallback]!.run, false)
    }
}

/// The notes of a match's engine runs: a note naming a run is kept under its label, so the report
/// keeps those of the chosen budgets only; the others once each.
private struct MatchNotes {
    var general: [String] = []
    var byLabel: [String: [String]] = [:]

    mutating func add(_ result: ReplayResult) {
        let labels = result.runs.map { $0.spec.label + ": " }
        for note in result.notes {
            if let label = labels.first(where: { note.hasPrefix($0) }) {
                if !(byLabel[label]?.contains(note) ?? false) { byLabel[label, default: []].append(note) }
            } else if !general.contains(note) {
                general.append(note)
            }
        }
    }
}

extension MemoryMatcher {
    /// The matched runs as one replay's result: the first engine run's trace facts, the runs'
    /// block sizes, every engine run's timing, and the notes (general ones, then each run's).
    fileprivate static func result(
        of runs: [PolicyRun], like first: ReplayResult, timing: ReplayTiming, notes: MatchNotes
    ) -> ReplayResult {
        let sizes = runs.map(\.blockSize)
        let blockSizes =
            Set(sizes).count <= 1
            ? String(sizes.first ?? 16)
            : zip(runs, sizes).map { "\($0.spec.name) \($1)" }.joined(separator: ", ")
        return ReplayResult(
            tracePath: first.tracePath, header: first.header, layers: first.layers, decodeSteps: first.decodeSteps,
            runs: runs, notes: notes.general + runs.flatMap { notes.byLabel[$0.spec.label + ": "] ?? [] },
            paging: first.paging, blockSizes: blockSizes, timing: timing, topK: first.topK)
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
    func update(fraction: Double, detail: String) {
        inner.update(fraction: fraction, detail: "matching round \(round): \(detail)")
    }
    func finish() {}
}
