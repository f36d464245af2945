import Foundation

/// Every policy the simulator knows. Adding a policy: one file, one line here.
public enum PolicyRegistry {
    public static let all: [any CachePolicy.Type] = [
        FullCachePolicy.self,
        KIVIPolicy.self,
        PMKVQPolicy.self,
        H2OPolicy.self,
        StreamingLLMPolicy.self,
        RKVPolicy.self,
        SnapKVPolicy.self,
        TOVAPolicy.self,
        KnormPolicy.self,
        KeyDiffPolicy.self,
        DecodingPress<ValueNormScorer>.self,
        PyramidKVPolicy.self,
        RaaSPolicy.self,
        LazyEvictionPolicy.self,
        ThinKVPolicy.self,
        ThinKVQuantizationOnlyPolicy.self,
        ThinKVEvictionOnlyPolicy.self,
    ]

    /// A registered policy, or the type of a composition of registered policies and parts
    /// (`rkv+tbq`, see `PolicyAlgebra`).
    public static func type(named name: String) -> (any CachePolicy.Type)? {
        if let registered = all.first(where: { $0.name == name }) { return registered }
        return PolicyAlgebra.isComposition(name) ? try? PolicyAlgebra.resolve(name).type : nil
    }

    public static var names: [String] { all.map { $0.name } }
}

/// A policy with its parameter values: one column of a comparison, one row group of a sweep.
public struct PolicySpec: Hashable, Sendable {
    public let name: String
    public let parameters: PolicyParameters
    /// Set only for a policy outside the registry (see `init(unregistered:values:)`).
    private let unregistered: UnregisteredPolicyType?

    /// Builds a spec from raw `name -> value` strings, validating them against the policy's declared parameters.
    /// With `awaitingBudget`, a policy with a budget (`CachePolicy.budgetParameter`) is left
    /// without one: a memory target's search sets it (`withBudget`); it may not be given.
    public init(name: String, values: [String: String] = [:], awaitingBudget: Bool = false) throws {
        if PolicyAlgebra.isComposition(name) {
            // A composition's name may set parameters (`@every-64`): they join the given values.
            let (type, implied) = try PolicyAlgebra.resolve(name)
            var merged = values
            for (key, value) in implied {
                if let given = values[key], given != value {
                    throw PolicyError("\(name): --\(key) is set by the name (\(value)), got \(given)")
                }
                merged[key] = value
            }
            self.name = name
            let awaited = awaitingBudget ? Set(type.budgetParameter.map { [$0.name] } ?? []) : []
            self.parameters = try PolicyParameters(policy: name, specs: type.parameters, values: merged, awaiting: awaited)
            self.unregistered = nil
            return
        }
        guard let type = PolicyRegistry.type(named: name) else {
            let hint = Suggestions.closest(to: name, among: PolicyRegistry.names).map { "did you mean \($0)? " } ?? ""
            throw PolicyError("unknown policy '\(name)' (\(hint)known: \(PolicyRegistry.names.joined(separator: ", ")))")
        }
        self.name = name
        let awaited = awaitingBudget ? Set(type.budgetParameter.map { [$0.name] } ?? []) : []
        self.parameters = try PolicyParameters(policy: name, specs: type.parameters, values: values, awaiting: awaited)
        self.unregistered = nil
    }

    /// A spec for a policy type the registry does not list: tests replay small policies
    /// declared next to them (e.g. one that evicts fixed positions) without registering them.
    init(unregistered type: any CachePolicy.Type, values: [String: String] = [:], awaitingBudget: Bool = false) throws {
        self.name = type.name
        let awaited = awaitingBudget ? Set(type.budgetParameter.map { [$0.name] } ?? []) : []
        self.parameters = try PolicyParameters(policy: type.name, specs: type.parameters, values: values,
                                               awaiting: awaited)
        self.unregistered = UnregisteredPolicyType(type: type)
    }

    /// True while a memory target's search has not set the budget.
    public var awaitsBudget: Bool { !parameters.awaited.isEmpty }

    /// This spec with its budget set to `budget` (given values kept), e.g. one trial of a
    /// memory target's search. Throws when the policy has no budget or refuses the value.
    public func withBudget(_ budget: Int) throws -> PolicySpec {
        guard let parameter = type.budgetParameter else { throw PolicyError("\(name): has no budget to set") }
        var values = parameters.given
        values[parameter.name] = String(budget)
        if let unregistered { return try PolicySpec(unregistered: unregistered.type, values: values) }
        return try PolicySpec(name: name, values: values)
    }

    /// The smallest budget the policy accepts with its other parameters on a trace of this shape
    /// (e.g. StreamingLLM's must exceed its sinks): from the declared minimum up to the trace's
    /// token count, each checked by `checkConfiguration`. Throws the refusal of the last budget
    /// tried when none is accepted (the other parameters are at fault), and a PolicyError for a
    /// policy without a budget.
    public func lowestBudget(header: TraceHeader, layer: LayerInfo) throws -> Int {
        guard let parameter = type.budgetParameter, case .integer(let range) = parameter.kind else {
            throw PolicyError("\(name): has no budget to set")
        }
        var lastError: Error?
        for budget in range.lowerBound...max(range.lowerBound, min(range.upperBound, header.numTokens)) {
            do {
                let spec = try withBudget(budget)
                try spec.type.checkConfiguration(spec.parameters, header: header, layer: layer)
                return budget
            } catch {
                lastError = error
            }
        }
        throw lastError ?? PolicyError("\(name): no budget is accepted")
    }

    public var type: any CachePolicy.Type { unregistered?.type ?? PolicyRegistry.type(named: name)! }

    // Metatypes are not Hashable; a spec is identified by its policy type and parameter values.
    public static func == (a: PolicySpec, b: PolicySpec) -> Bool {
        a.name == b.name && a.parameters == b.parameters && ObjectIdentifier(a.type) == ObjectIdentifier(b.type)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        hasher.combine(parameters)
    }

    /// `h2o(budget=256,recent=64)`: the policy and the parameters given explicitly; a path
    /// (a calibration file) is shortened to its file name, so tables stay readable.
    public var label: String {
        let implied = PolicyAlgebra.impliedValues(name)
        let shown = parameters.given.filter { implied[$0.key] != $0.value }
        let given = shown.sorted { $0.key < $1.key }.map { entry -> String in
            let value = entry.value.contains("/") ? URL(fileURLWithPath: entry.value).lastPathComponent : entry.value
            return "\(entry.key)=\(value)"
        }
        return given.isEmpty ? name : "\(name)(\(given.joined(separator: ",")))"
    }

    /// Checks the trace holds what the policy needs, for every layer that will be replayed.
    public func checkRequirements(_ reader: TraceReader, layers: [Int]) throws {
        let needs = type.requirements
        for layer in layers {
            guard let info = reader.layerInfo(layer) else { continue }
            if needs.contains(.queriesAndKeys) && !info.hasQueriesAndKeys {
                throw PolicyError("\(reader.path): policy \(name) needs queries and keys (/layers/\(layer)/q and k); this layer records attention only")
            }
            if needs.contains(.values) && !info.hasValues {
                throw PolicyError("\(reader.path): policy \(name) needs values (/layers/\(layer)/v), which this trace does not record")
            }
        }
    }
}

/// A policy metatype carried by a spec. Metatypes are immutable, so sharing one across threads
/// is safe even though `CachePolicy` itself does not require `Sendable`.
private struct UnregisteredPolicyType: @unchecked Sendable {
    let type: any CachePolicy.Type
}

extension PolicySpec {
    /// Specs for several policies sharing one set of `--name value` options: each option goes
    /// to every chosen policy that declares it; an option no chosen policy declares is an error.
    /// `commandOptions` are the command's own option names, for suggestions (`--layer` → `--layers`).
    /// A policy named twice is refused: both runs would be the same. `specs(items:...)` (in
    /// PolicyList.swift) takes items with parameters of their own.
    public static func specs(policies names: [String], options: [(name: String, value: String)],
                             commandOptions: [String] = []) throws -> [PolicySpec] {
        try specs(items: names.map { PolicyItem(name: $0) }, options: options, commandOptions: commandOptions)
    }

    /// Checks the combinations of parameters (a budget not above the window, ThinKV's budget
    /// below sinks + recent) against the trace's shape before any `prepare` (ThinKV calibrates its
    /// thresholds on the trace), by the policy's `checkConfiguration`. A spec awaiting its budget
    /// (a memory target's) is checked at the smallest budget it accepts, which must exist.
    /// Refusals are usage errors: the parameters are what the user typed.
    public func checkParameters(header: TraceHeader, layer: LayerInfo) throws {
        do {
            if awaitsBudget {
                _ = try lowestBudget(header: header, layer: layer)
            } else {
                try type.checkConfiguration(parameters, header: header, layer: layer)
            }
        } catch let error as PolicyError {
            throw UsageError(error.description)
        }
    }
}
