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
        ThinKVEvictionOnlyPolicy.self
    ]

    /// A registered policy, or the type of a composition of registered policies and parts
    /// (`rkv+tbq`, see `PolicyAlgebra`).
    public static func type(named name: String) -> (any CachePolicy.Type)? {
        if let registered = all.first(where: { $0.name == name }) { return registered }
        return PolicyAlgebra.isComposition(name) ? try? PolicyAlgebra.resolve(name).type : nil
    }

    public static var names: [String] { all.map { $0.name } }
}

extension PolicySpec {
    /// The spec of a registered policy or of a composition (`rkv+tbq`, see `PolicyAlgebra`), by
    /// name, validating `values` against its declared parameters (`awaitingBudget`: see
    /// `init(name:type:values:implied:awaitingBudget:)`).
    public init(name: String, values: [String: String] = [:], awaitingBudget: Bool = false) throws {
        if PolicyAlgebra.isComposition(name) {
            // A composition's name may set parameters (`@every-64`): they join the given values.
            let (type, implied) = try PolicyAlgebra.resolve(name)
            try self.init(name: name, type: type, values: values, implied: implied, awaitingBudget: awaitingBudget)
            return
        }
        guard let type = PolicyRegistry.type(named: name) else {
            let hint = Suggestions.closest(to: name, among: PolicyRegistry.names).map { "did you mean \($0)? " } ?? ""
            throw PolicyError(
                "unknown policy '\(name)' (\(hint)known: \(PolicyRegistry.names.joined(separator: ", ")))")
        }
        try self.init(name: name, type: type, values: values, awaitingBudget: awaitingBudget)
    }

    /// Specs for several policies sharing one set of `--name value` options: each option goes
    /// to every chosen policy that declares it; an option no chosen policy declares is an error.
    /// `commandOptions` are the command's own option names, for suggestions (`--layer` → `--layers`).
    /// A policy named twice is refused: both runs would be the same. `specs(items:...)` (in
    /// PolicyList.swift) takes items with parameters of their own.
    public static func specs(
        policies names: [String], options: [(name: String, value: String)],
        commandOptions: [String] = []
    ) throws -> [PolicySpec] {
        try specs(items: names.map { PolicyItem(name: $0) }, options: options, commandOptions: commandOptions)
    }
}
