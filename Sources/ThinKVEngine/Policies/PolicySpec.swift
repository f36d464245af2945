import Foundation

/// A policy with its parameter values: one column of a comparison, one row group of a sweep.
/// It carries its policy type, so the engine needs no registry: `PolicySpec(name:values:)`
/// (ThinKVPolicies) finds the type of a registered policy or of a composition by name.
public struct PolicySpec: Hashable, Sendable {
    public let name: String
    public let parameters: PolicyParameters
    /// Values the name itself sets (a composition's `@every-64` sets `every`): labels leave them out.
    public let impliedValues: [String: String]
    private let carried: CarriedPolicyType

    public var type: any CachePolicy.Type { carried.type }

    /// A spec of `type` under `name`, validating `values` (with `implied` merged in) against the
    /// type's declared parameters. With `awaitingBudget`, a policy with a budget
    /// (`CachePolicy.budgetParameter`) is left without one: a memory target's search sets it
    /// (`withBudget`); it may not be given.
    public init(
        name: String, type: any CachePolicy.Type, values: [String: String] = [:],
        implied: [String: String] = [:], awaitingBudget: Bool = false
    ) throws {
        var merged = values
        for (key, value) in implied {
            if let given = values[key], given != value {
                throw PolicyError("\(name): --\(key) is set by the name (\(value)), got \(given)")
            }
            merged[key] = value
        }
        let awaited = awaitingBudget ? Set(type.budgetParameter.map { [$0.name] } ?? []) : []
        self.name = name
        self.parameters = try PolicyParameters(policy: name, specs: type.parameters, values: merged, awaiting: awaited)
        self.impliedValues = implied
        self.carried = CarriedPolicyType(type: type)
    }

    /// A spec for a policy type the registry does not list: tests replay small policies
    /// declared next to them (e.g. one that evicts fixed positions) without registering them.
    init(unregistered type: any CachePolicy.Type, values: [String: String] = [:], awaitingBudget: Bool = false) throws {
        try self.init(name: type.name, type: type, values: values, awaitingBudget: awaitingBudget)
    }

    /// True while a memory target's search has not set the budget.
    public var awaitsBudget: Bool { !parameters.awaited.isEmpty }

    /// This spec with its budget set to `budget` (given values kept), e.g. one trial of a
    /// memory target's search. Throws when the policy has no budget or refuses the value.
    public func withBudget(_ budget: Int) throws -> PolicySpec {
        guard let parameter = type.budgetParameter else { throw PolicyError("\(name): has no budget to set") }
        var values = parameters.given
        values[parameter.name] = String(budget)
        return try PolicySpec(name: name, type: type, values: values, implied: impliedValues)
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
        let shown = parameters.given.filter { impliedValues[$0.key] != $0.value }
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
                throw PolicyError(
                    "\(reader.path): policy \(name) needs queries and keys (/layers/\(layer)/q and k); this layer "
                        + "records attention only"
                )
            }
            if needs.contains(.values) && !info.hasValues {
                throw PolicyError(
                    "\(reader.path): policy \(name) needs values (/layers/\(layer)/v), which this trace does not record"
                )
            }
        }
    }
}

/// A policy metatype carried by a spec. Metatypes are immutable, so sharing one across threads
/// is safe even though `CachePolicy` itself does not require `Sendable`.
private struct CarriedPolicyType: @unchecked Sendable {
    let type: any CachePolicy.Type
}

extension PolicySpec {
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
