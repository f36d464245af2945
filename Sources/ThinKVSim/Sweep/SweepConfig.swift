import Foundation

/// A problem with a sweep config, reported as one line: `file: key.path: what is wrong`.
public struct SweepConfigError: Error, CustomStringConvertible, Equatable {
    public let file: String
    /// Where in the JSON, e.g. `policies[1].parameters.budget` (empty: the file as a whole).
    public let path: String
    public let problem: String

    public init(file: String, path: String = "", _ problem: String) {
        self.file = file
        self.path = path
        self.problem = problem
    }

    public var description: String { path.isEmpty ? "\(file): \(problem)" : "\(file): \(path): \(problem)" }
}

/// A sweep read from a JSON file (docs/configs.md describes every key).
///
/// Values are kept as the strings a policy parameter or command-line option would take, so a
/// sweep and `thinkv-sim replay` validate them with the same code.
public struct SweepConfig: Sendable, Equatable {
    /// One entry of `policies`: a policy and the values each of its parameters takes.
    public struct PolicyEntry: Sendable, Equatable {
        public var policy: String
        /// Parameter name (as `thinkv-sim policies` prints it) -> values swept, in the given order.
        public var parameters: [String: [String]]
    }

    /// One entry of `traces`: a path or glob pattern, and parameter values for the runs on
    /// the traces it names (e.g. a ThinKV calibration file made for that model).
    public struct TraceEntry: Sendable, Equatable {
        /// As written; relative paths are relative to the working directory.
        public var path: String
        public var parameters: [String: [String]]
    }

    /// The config file as given on the command line (for messages).
    public var file: String
    public var name: String?
    public var traces: [TraceEntry]
    public var policies: [PolicyEntry]
    /// `parameters` at the top level: given to every listed policy that declares them.
    public var sharedParameters: [String: [String]]
    public var output: String
    /// Directory for one per-step CSV per run (nil: none).
    public var stepCSVDirectory: String?
    /// Metric columns of the results, in output order.
    public var metrics: [String]
    public var layers: [Int]?
    public var steps: Int?
    public var topK: Int
    /// Swept memory layouts: every paging mode is combined with every block size.
    public var paging: [PagingMode]
    /// nil in the list: each policy's preferred block size.
    public var blockSizes: [Int?]
    public var threads: Int?
    /// At most this many runs of one trace share an engine run (nil: all of them).
    public var batch: Int?
    /// Memory targets in % of the full cache (`kv_percent`): every policy with a budget runs
    /// once per target at the budget meeting it (`MemoryMatcher`); empty: budgets as given.
    public var kvPercents: [Double] = []
    /// The KV figure the targets match (`kv_match`).
    public var kvMatch: MemoryStatistic = .mean
    /// Most runs a grid may expand to (`max_runs`): a typo of a few bytes can ask for millions.
    public var maxRuns = 10_000
    /// Skip grid points a policy refuses (`skip_invalid`) instead of refusing the sweep.
    public var skipInvalid = false
    /// The decode steps whose fidelity is measured (`metric_steps`, as `replay --metric-steps`).
    public var metricSteps: MetricStepSelection = .all

    public static let topLevelKeys = [
        "comment", "name", "traces", "policies", "parameters", "output", "step_csv_dir", "metrics",
        "layers", "steps", "topk", "paging", "block_size", "threads", "batch",
        "kv_percent", "kv_match", "max_runs", "skip_invalid", "metric_steps"
    ]
    public static let policyKeys = ["comment", "policy", "parameters"]
    public static let traceKeys = ["comment", "path", "parameters"]

    /// Reads and checks `path`; every problem names the file and the key.
    /// `output` (the command line's `--output`) stands in for the config's `output` key, which
    /// may then be left out.
    public static func load(path: String, output: String? = nil) throws -> SweepConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            var isDirectory: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
            throw SweepConfigError(
                file: path, exists ? (isDirectory.boolValue ? "is a directory" : "cannot be read") : "does not exist")
        }
        return try decode(data, file: path, output: output)
    }

    public static func decode(_ data: Data, file: String, output: String? = nil) throws -> SweepConfig {
        let raw: RawConfig
        do {
            raw = try JSONDecoder().decode(RawConfig.self, from: data)
        } catch let error as ConfigKeyError {
            throw SweepConfigError(file: file, path: codingPathString(error.path), error.problem)
        } catch let error as DecodingError {
            if case .dataCorrupted(let context) = error, context.codingPath.isEmpty {
                throw SweepConfigError(file: file, "not valid JSON (\(syntaxProblem(data)))")
            }
            throw describe(error, file: file)
        }
        if let duplicate = JSONDuplicateKeys.first(in: data) {
            throw SweepConfigError(
                file: file,
                "key '\(duplicate.key)' appears twice in one object (line \(duplicate.line)); JSON keeps only one of "
                    + "them"
            )
        }
        guard let resultsPath = output ?? raw.output else {
            throw SweepConfigError(file: file, path: "output", "missing: name the results CSV here or with --output")
        }
        var config = SweepConfig(
            file: file, name: raw.name, traces: raw.traces, policies: raw.policies, sharedParameters: raw.parameters,
            output: resultsPath, stepCSVDirectory: raw.stepCSVDirectory,
            metrics: raw.metrics ?? SweepColumns.metricNames,
            layers: raw.layers, steps: raw.steps, topK: raw.topK ?? TraceLimits.defaultTopK,
            paging: raw.paging ?? [.ct],
            blockSizes: raw.blockSizes ?? [nil], threads: raw.threads, batch: raw.batch)
        config.kvPercents = raw.kvPercents ?? []
        config.skipInvalid = raw.skipInvalid ?? false
        config.metricSteps = raw.metricSteps ?? .all
        if let maxRuns = raw.maxRuns {
            guard maxRuns >= 1 else {
                throw SweepConfigError(file: file, path: "max_runs", "must be at least 1, got \(maxRuns)")
            }
            config.maxRuns = maxRuns
        }
        config.kvMatch = raw.kvMatch ?? .mean
        try config.check()
        config.metrics = SweepColumns.metricNames.filter { config.metrics.contains($0) }  // canonical order
        return config
    }

    /// Checks what JSON types cannot: names of policies, parameters and metrics, and parameter values.
    func check() throws {
        func fail(_ path: String, _ problem: String) -> SweepConfigError {
            SweepConfigError(file: file, path: path, problem)
        }
        for (i, m) in metrics.enumerated() where !SweepColumns.metricNames.contains(m) {
            throw fail(
                "metrics[\(i)]", "unknown metric '\(m)' (known: \(SweepColumns.metricNames.joined(separator: ", ")))")
        }
        if metrics.isEmpty { throw fail("metrics", "lists no metric") }
        var types: [any CachePolicy.Type] = []
        for (i, entry) in policies.enumerated() {
            if PolicyAlgebra.isComposition(entry.policy) {
                do { _ = try PolicyAlgebra.resolve(entry.policy) } catch let error as PolicyError {
                    throw fail("policies[\(i)].policy", error.description)
                }
            }
            guard let type = PolicyRegistry.type(named: entry.policy) else {
                throw fail(
                    "policies[\(i)].policy",
                    "unknown policy '\(entry.policy)' (known: \(PolicyRegistry.names.joined(separator: ", ")))")
            }
            types.append(type)
            let declared = type.parameters.map(\.name)
            for name in entry.parameters.keys.sorted() where !declared.contains(name) {
                throw fail(
                    "policies[\(i)].parameters.\(name)",
                    "unknown parameter of \(entry.policy) (known: "
                        + "\(declared.isEmpty ? "none" : declared.joined(separator: ", ")))"
                )
            }
        }
        let declaredBySome = { (name: String) in types.contains { $0.parameters.contains { $0.name == name } } }
        for name in sharedParameters.keys.sorted() where !declaredBySome(name) {
            throw fail("parameters.\(name)", "no listed policy has this parameter (see 'thinkv-sim policies')")
        }
        for (t, trace) in traces.enumerated() {
            for name in trace.parameters.keys.sorted() where !declaredBySome(name) {
                throw fail(
                    "traces[\(t)].parameters.\(name)", "no listed policy has this parameter (see 'thinkv-sim policies')"
                )
            }
        }
        // Each value is checked on its own so the message names the bad one; combinations
        // (e.g. sinks below budget) are the policy's to check when it starts.
        for (i, entry) in policies.enumerated() {
            for t in traces.indices {
                let resolved = resolvedParameters(of: i, trace: t)
                for name in resolved.keys.sorted() {
                    let path =
                        entry.parameters[name] != nil
                        ? "policies[\(i)].parameters.\(name)"
                        : traces[t].parameters[name] != nil ? "traces[\(t)].parameters.\(name)" : "parameters.\(name)"
                    let parameter = types[i].parameters.first { $0.name == name }!
                    for value in resolved[name]! {
                        do {
                            _ = try parameter.validate(value, policy: entry.policy)
                        } catch let error as PolicyError {
                            throw fail(path, error.description)
                        }
                    }
                }
                // With kv_percent the memory search sets the budget.
                let matchedBudget =
                    kvPercents.isEmpty || !MemoryMatcher.hasBudget(types[i])
                    ? nil
                    : types[i].budgetParameter?.name
                if let budget = matchedBudget, resolved[budget] != nil {
                    let where_ =
                        entry.parameters[budget] != nil
                        ? "policies[\(i)].parameters.\(budget)"
                        : traces[t].parameters[budget] != nil
                            ? "traces[\(t)].parameters.\(budget)"
                            : "parameters.\(budget)"
                    throw fail(
                        where_,
                        "\(budget) and kv_percent exclude each other: "
                            + "kv_percent sets the budget of \(entry.policy)")
                }
                for p in types[i].parameters where p.required && resolved[p.name] == nil && p.name != matchedBudget {
                    let scope = traces.count > 1 ? " on traces[\(t)]" : ""
                    throw fail("policies[\(i)]", "\(entry.policy) needs parameter '\(p.name)'\(scope) (\(p.help))")
                }
            }
        }
        if let layers, layers.isEmpty { throw fail("layers", "lists no layer") }
        if let steps, steps < 1 { throw fail("steps", "must be at least 1, got \(steps)") }
        if topK < 1 || topK > TraceLimits.maxTopK {
            throw fail("topk", "must be in 1...\(TraceLimits.maxTopK), got \(topK)")
        }
        if let threads, threads < 1 || threads > TraceLimits.maxThreads {
            throw fail("threads", "must be in 1...\(TraceLimits.maxThreads), got \(threads)")
        }
        if let batch, batch < 1 { throw fail("batch", "must be at least 1, got \(batch)") }
        for case let size? in blockSizes where size < 1 || size > TraceLimits.maxBlockSize {
            throw fail("block_size", "must be in 1...\(TraceLimits.maxBlockSize), got \(size)")
        }
        if output.isEmpty { throw fail("output", "is empty") }
        for (i, p) in kvPercents.enumerated() where !(p > 0 && p <= 100) {
            throw fail("kv_percent[\(i)]", "must be in (0, 100], got \(p)")
        }
        if Set(kvPercents).count != kvPercents.count { throw fail("kv_percent", "lists a value twice") }
    }

    /// The parameter values policy entry `i` is swept over on the traces of trace entry `t`:
    /// the shared ones it declares, overridden by the trace entry's it declares, overridden by
    /// its own.
    public func resolvedParameters(of i: Int, trace t: Int) -> [String: [String]] {
        let entry = policies[i]
        guard let type = PolicyRegistry.type(named: entry.policy) else { return entry.parameters }
        var out: [String: [String]] = [:]
        for layer in [sharedParameters, traces[t].parameters] {
            for (name, values) in layer where type.parameters.contains(where: { $0.name == name }) {
                out[name] = values
            }
        }
        for (name, values) in entry.parameters { out[name] = values }
        return out
    }

    // MARK: Messages

    static func codingPathString(_ path: [CodingKey]) -> String {
        var out = ""
        for key in path {
            if let i = key.intValue {
                out += "[\(i)]"
            } else {
                out += out.isEmpty ? key.stringValue : ".\(key.stringValue)"
            }
        }
        return out
    }

    static func describe(_ error: DecodingError, file: String) -> SweepConfigError {
        switch error {
        case .typeMismatch(let type, let context):
            return SweepConfigError(
                file: file, path: codingPathString(context.codingPath), "expected \(typeName(type))")
        case .valueNotFound(let type, let context):
            return SweepConfigError(
                file: file, path: codingPathString(context.codingPath), "expected \(typeName(type)), got null")
        case .keyNotFound(let key, let context):
            return SweepConfigError(
                file: file, path: codingPathString(context.codingPath), "missing required key '\(key.stringValue)'")
        case .dataCorrupted(let context):
            return SweepConfigError(file: file, path: codingPathString(context.codingPath), context.debugDescription)
        @unknown default:
            return SweepConfigError(file: file, "\(error)")
        }
    }

    /// Where JSON text goes wrong, as `line L, column C`: JSONDecoder does not say, and
    /// JSONSerialization gives a character offset.
    static func syntaxProblem(_ data: Data) -> String {
        do {
            _ = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
            return "unreadable"
        } catch {
            let message = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
            guard let range = message.range(of: "character "),
                let offset = Int(message[range.upperBound...].prefix { $0.isNumber })
            else { return message }
            var line = 1, column = 1
            for byte in data.prefix(offset) {
                if byte == UInt8(ascii: "\n") { line += 1; column = 1 } else { column += 1 }
            }
            let what = message[..<range.lowerBound].trimmingCharacters(in: .whitespaces)
            return
                "\(what.hasSuffix("around") ? String(what.dropLast(6)).trimmingCharacters(in: .whitespaces) : what) "
                + "at line \(line), column \(column)"
        }
    }

    static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: return "a string"
        case is Int.Type: return "an integer"
        case is Double.Type: return "a number"
        case is Bool.Type: return "true or false"
        default:
            let name = String(describing: type)
            if name.hasPrefix("Array") { return "an array" }
            if name.hasPrefix("Dictionary") || name.hasPrefix("Raw") || name.hasPrefix("Keyed") { return "an object" }
            return name
        }
    }
}

// MARK: - Decoding

/// Thrown from `init(from:)` for problems JSONDecoder has no case for (unknown keys, bad values).
struct ConfigKeyError: Error {
    let path: [CodingKey]
    let problem: String
}

/// Any JSON object key.
struct AnyKey: CodingKey {
    let stringValue: String
    let intValue: Int?
    init(_ s: String) { stringValue = s; intValue = nil }
    init?(stringValue: String) { self.init(stringValue) }
    init?(intValue: Int) { stringValue = String(intValue); self.intValue = intValue }
}

extension KeyedDecodingContainer where K == AnyKey {
    /// An unknown key is an error that names it: a typo must not silently fall back to a default.
    func rejectUnknownKeys(allowed: [String]) throws {
        for key in allKeys.sorted(by: { $0.stringValue < $1.stringValue }) where !allowed.contains(key.stringValue) {
            throw ConfigKeyError(
                path: codingPath + [key], problem: "unknown key (allowed here: \(allowed.joined(separator: ", ")))")
        }
    }

    func optional<T: Decodable>(_ type: T.Type, _ key: String) throws -> T? {
        try decodeIfPresent(type, forKey: AnyKey(key))
    }

    func required<T: Decodable>(_ type: T.Type, _ key: String) throws -> T {
        try decode(type, forKey: AnyKey(key))
    }
}

/// One parameter's values: a scalar (one value), or an array of scalars (a sweep). An array
/// inside the array is one list value, joined with commas (`[[64, 32, 16]]` is `"64,32,16"`).
struct ParameterValues: Decodable {
    let values: [String]

    init(from decoder: Decoder) throws {
        if let scalar = try? Self.scalar(decoder.singleValueContainer()) {
            values = [scalar]
            return
        }
        var array: UnkeyedDecodingContainer
        do {
            array = try decoder.unkeyedContainer()
        } catch {
            throw ConfigKeyError(
                path: decoder.codingPath, problem: "expected a number, string, boolean, or an array of them")
        }
        var out: [String] = []
        while !array.isAtEnd {
            let index = array.currentIndex
            let element = try array.superDecoder()
            if let scalar = try? Self.scalar(element.singleValueContainer()) {
                out.append(scalar)
                continue
            }
            let problem = "expected a number, string, boolean, or an array of them"
            guard var inner = try? element.unkeyedContainer() else {
                throw ConfigKeyError(path: decoder.codingPath + [AnyKey(intValue: index)!], problem: problem)
            }
            var items: [String] = []
            while !inner.isAtEnd {
                guard let item = try? Self.scalar(inner.superDecoder().singleValueContainer()) else {
                    throw ConfigKeyError(
                        path: decoder.codingPath + [AnyKey(intValue: index)!],
                        problem: "a list value holds numbers, strings or booleans only")
                }
                items.append(item)
            }
            guard !items.isEmpty else {
                throw ConfigKeyError(path: decoder.codingPath + [AnyKey(intValue: index)!], problem: "empty list value")
            }
            out.append(items.joined(separator: ","))
        }
        guard !out.isEmpty else { throw ConfigKeyError(path: decoder.codingPath, problem: "lists no value") }
        values = out
    }

    /// A JSON scalar as the string a command-line option would take: `256`, `0.5`, `true`, `sum`.
    static func scalar(_ c: SingleValueDecodingContainer) throws -> String {
        if let b = try? c.decode(Bool.self) { return b ? "true" : "false" }
        if let i = try? c.decode(Int.self) { return String(i) }
        if let d = try? c.decode(Double.self) { return String(d) }
        return try c.decode(String.self)
    }
}

/// A value that may be given once or as an array of alternatives (`"paging": ["ct", "none"]`).
struct OneOrMany<T: Decodable>: Decodable {
    let values: [T]
    init(from decoder: Decoder) throws {
        if var array = try? decoder.unkeyedContainer() {
            var out: [T] = []
            while !array.isAtEnd { out.append(try array.decode(T.self)) }
            values = out
        } else {
            values = [try decoder.singleValueContainer().decode(T.self)]
        }
    }
}

struct RawTraceEntry: Decodable {
    let entry: SweepConfig.TraceEntry

    init(from decoder: Decoder) throws {
        if let path = try? decoder.singleValueContainer().decode(String.self) {
            entry = SweepConfig.TraceEntry(path: path, parameters: [:])
            return
        }
        guard let c = try? decoder.container(keyedBy: AnyKey.self) else {
            throw ConfigKeyError(
                path: decoder.codingPath,
                problem: "expected a path or an object (keys: \(SweepConfig.traceKeys.joined(separator: ", ")))")
        }
        try c.rejectUnknownKeys(allowed: SweepConfig.traceKeys)
        _ = try c.optional(String.self, "comment")
        entry = SweepConfig.TraceEntry(
            path: try c.required(String.self, "path"),
            parameters: try c.optional(RawParameters.self, "parameters")?.values ?? [:])
    }
}

struct RawPolicyEntry: Decodable {
    let entry: SweepConfig.PolicyEntry

    init(from decoder: Decoder) throws {
        // A bare name is a policy with its defaults (plus shared parameters); a string may also
        // carry one value per parameter as `replay --policy` spells an item: "rkv:divide=8".
        if let text = try? decoder.singleValueContainer().decode(String.self) {
            let item: PolicyItem
            do { item = try PolicyList.item(text, of: "entry") } catch let error as UsageError {
                throw ConfigKeyError(path: decoder.codingPath, problem: error.description)
            }
            entry = SweepConfig.PolicyEntry(policy: item.name, parameters: item.values.mapValues { [$0] })
            return
        }
        let c = try decoder.container(keyedBy: AnyKey.self)
        try c.rejectUnknownKeys(allowed: SweepConfig.policyKeys)
        _ = try c.optional(String.self, "comment")
        let name = try c.required(String.self, "policy")
        if name.contains(":") {
            throw ConfigKeyError(
                path: c.codingPath + [AnyKey("policy")],
                problem: "'\(name)': in an object entry, 'policy' is a name and its values go in "
                    + "'parameters' (the NAME:PARAM=VALUE spelling is for a string entry)")
        }
        let parameters = try c.optional(RawParameters.self, "parameters")?.values ?? [:]
        entry = SweepConfig.PolicyEntry(policy: name, parameters: parameters)
    }
}

struct RawParameters: Decodable {
    let values: [String: [String]]
    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        var out: [String: [String]] = [:]
        for key in c.allKeys { out[key.stringValue] = try c.decode(ParameterValues.self, forKey: key).values }
        values = out
    }
}

struct RawConfig: Decodable {
    let name: String?
    let traces: [SweepConfig.TraceEntry]
    let policies: [SweepConfig.PolicyEntry]
    let parameters: [String: [String]]
    let output: String?
    let stepCSVDirectory: String?
    let metrics: [String]?
    let layers: [Int]?
    let steps: Int?
    let topK: Int?
    let paging: [PagingMode]?
    let blockSizes: [Int?]?
    let threads: Int?
    let batch: Int?
    let kvPercents: [Double]?
    let kvMatch: MemoryStatistic?
    let maxRuns: Int?
    let skipInvalid: Bool?
    let metricSteps: MetricStepSelection?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        try c.rejectUnknownKeys(allowed: SweepConfig.topLevelKeys)
        func fail(_ key: String, _ problem: String) -> ConfigKeyError {
            ConfigKeyError(path: [AnyKey(key)], problem: problem)
        }
        _ = try c.optional(String.self, "comment")
        name = try c.optional(String.self, "name")
        traces = try c.required([RawTraceEntry].self, "traces").map(\.entry)
        if traces.isEmpty { throw fail("traces", "lists no trace") }
        policies = try c.required([RawPolicyEntry].self, "policies").map(\.entry)
        if policies.isEmpty { throw fail("policies", "lists no policy") }
        parameters = try c.optional(RawParameters.self, "parameters")?.values ?? [:]
        output = try c.optional(String.self, "output")
        stepCSVDirectory = try c.optional(String.self, "step_csv_dir")
        metrics = try c.optional([String].self, "metrics")
        // "all" or a list of recorded layer indices.
        if (try? c.optional(String.self, "layers")) == "all" {
            layers = nil
        } else {
            layers = try c.optional([Int].self, "layers")
        }
        steps = try c.optional(Int.self, "steps")
        topK = try c.optional(Int.self, "topk")
        if let modes = try c.optional(OneOrMany<String>.self, "paging")?.values {
            paging = try modes.map { raw in
                guard let mode = PagingMode(rawValue: raw) else {
                    throw fail("paging", "must be ct, compact or none, got '\(raw)'")
                }
                return mode
            }
            if paging?.isEmpty == true { throw fail("paging", "lists no mode") }
        } else {
            paging = nil
        }
        // Integers, or "auto" for each policy's preferred size.
        if let sizes = try c.optional(OneOrMany<IntOrAuto>.self, "block_size")?.values.map(\.value) {
            if sizes.isEmpty { throw fail("block_size", "lists no size") }
            blockSizes = sizes
        } else {
            blockSizes = nil
        }
        threads = try c.optional(Int.self, "threads")
        batch = try c.optional(Int.self, "batch")
        maxRuns = try c.optional(Int.self, "max_runs")
        skipInvalid = try c.optional(Bool.self, "skip_invalid")
        if let raw = try c.optional(String.self, "metric_steps") {
            do { metricSteps = try MetricStepSelection.parse(raw, option: "metric_steps") } catch let error
                as UsageError
            {
                // The key is named once, by the error's path.
                var problem = Substring(error.description).dropFirst("metric_steps".count)
                if problem.hasPrefix(":") { problem = problem.dropFirst() }
                throw fail("metric_steps", problem.trimmingCharacters(in: .whitespaces))
            }
        } else {
            metricSteps = nil
        }
        kvPercents = try c.optional(OneOrMany<Double>.self, "kv_percent")?.values
        if kvPercents?.isEmpty == true { throw fail("kv_percent", "lists no value") }
        if let raw = try c.optional(String.self, "kv_match") {
            guard kvPercents != nil else { throw fail("kv_match", "needs kv_percent") }
            guard let statistic = MemoryStatistic(rawValue: raw) else {
                throw fail("kv_match", "must be mean or peak, got '\(raw)'")
            }
            kvMatch = statistic
        } else {
            kvMatch = nil
        }
        if let metricSteps, metricSteps != .all, kvPercents != nil {
            throw fail(
                "metric_steps", "cannot be combined with kv_percent yet; match budgets with metric_steps \"all\"")
        }
    }
}

/// An integer or the string "auto" (nil).
struct IntOrAuto: Decodable {
    let value: Int?
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let i = try? c.decode(Int.self) { value = i; return }
        if let s = try? c.decode(String.self), s == "auto" { value = nil; return }
        throw ConfigKeyError(path: decoder.codingPath, problem: "expected an integer or \"auto\"")
    }
}
