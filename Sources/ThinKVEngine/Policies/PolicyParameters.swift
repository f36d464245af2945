import Foundation

/// One tunable parameter of a policy: a CLI option `--<name>`, a sweep-config key, a CSV column.
public struct PolicyParameter: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case integer(ClosedRange<Int>)
        case real(ClosedRange<Double>)
        case choice([String])
        case flag
        /// Free text checked by the policy itself (a list, a file path); the string names its
        /// form for the help, e.g. "LIST" or "FILE".
        case text(String)
    }

    /// What a parameter is to the tools around a policy, beyond its value: the memory matcher,
    /// sweeps and the conformance tests find a policy's budget by its role, not by its name.
    public enum Role: Sendable, Equatable {
        /// The integer that bounds the tokens (or the memory) a kv head holds; a memory target
        /// (`--kv-percent`) sets it. A policy declares at most one. (How far the cache grows
        /// between compressions depends on other values, so it is `cadenceParameter(_:)`.)
        case budget
    }

    public let name: String
    public let kind: Kind
    /// The default as it would be typed; nil when it is derived from other parameters (the
    /// help says how) or when the parameter is required.
    public let defaultValue: String?
    public let required: Bool
    public let help: String
    public let role: Role?

    public init(
        _ name: String, _ kind: Kind, default defaultValue: String? = nil, required: Bool = false, help: String,
        role: Role? = nil
    ) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.required = required
        self.help = help
        self.role = role
    }

    public static func integer(
        _ name: String, default value: Int? = nil, min: Int = 0, max: Int = Int(Int32.max),
        required: Bool = false, help: String, role: Role? = nil
    ) -> PolicyParameter {
        PolicyParameter(
            name, .integer(min...max), default: value.map(String.init), required: required, help: help,
            role: role)
    }

    /// The `--budget` of a policy, with the budget role.
    public static func budget(min: Int = 1, required: Bool = true, help: String) -> PolicyParameter {
        integer("budget", min: min, required: required, help: help, role: .budget)
    }

    public static func real(
        _ name: String, default value: Double? = nil, min: Double = -.greatestFiniteMagnitude,
        max: Double = .greatestFiniteMagnitude, help: String
    ) -> PolicyParameter {
        PolicyParameter(name, .real(min...max), default: value.map { String($0) }, help: help)
    }

    public static func choice(_ name: String, _ options: [String], default value: String?, help: String)
        -> PolicyParameter
    {
        PolicyParameter(name, .choice(options), default: value, help: help)
    }

    public static func flag(_ name: String, default value: Bool = false, help: String) -> PolicyParameter {
        PolicyParameter(name, .flag, default: value ? "true" : "false", help: help)
    }

    public static func text(_ name: String, _ form: String, default value: String? = nil, help: String)
        -> PolicyParameter
    {
        PolicyParameter(name, .text(form), default: value, help: help)
    }

    /// Checks one raw value; returns it normalised (e.g. `1e3` for an integer is refused).
    package func validate(_ raw: String, policy: String) throws -> String {
        func bad(_ why: String) -> PolicyError { PolicyError("\(policy): --\(name) \(why), got '\(raw)'") }
        switch kind {
        case .integer(let range):
            guard let value = Int(raw) else { throw bad("must be an integer") }
            guard range.contains(value) else { throw bad("must be in \(range.lowerBound)...\(range.upperBound)") }
            return String(value)
        case .real(let range):
            guard let value = Double(raw), value.isFinite else { throw bad("must be a number") }
            guard range.contains(value) else { throw bad("must be in \(range.lowerBound)...\(range.upperBound)") }
            return String(value)
        case .choice(let options):
            guard options.contains(raw) else { throw bad("must be one of \(options.joined(separator: "|"))") }
            return raw
        case .flag:
            switch raw.lowercased() {
            case "true", "1", "yes", "on": return "true"
            case "false", "0", "no", "off": return "false"
            default: throw bad("must be true or false")
            }
        case .text(let form):
            let trimmed = raw.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { throw bad("must not be empty") }
            // A list's items are the policy's to read, but an empty one is refused here, where a
            // sweep config names the key it came from.
            if form == "LIST" { _ = try CommaList.items(trimmed, of: "\(policy): --\(name)", error: PolicyError.init) }
            return trimmed
        }
    }
}

/// A policy configuration problem (bad parameter, trace lacking what the policy needs).
public struct PolicyError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Validated parameter values of one policy, with typed getters. Values the user did not give
/// fall back to the declared defaults.
public struct PolicyParameters: Sendable, Equatable, Hashable {
    public let policy: String
    /// Explicitly given values, normalised.
    public let given: [String: String]
    /// Required parameters another step sets later (the budget a memory target's search finds),
    /// absent until then: a typed read of one throws.
    public let awaited: Set<String>
    private let specs: [String: PolicyParameter]

    public static func == (a: PolicyParameters, b: PolicyParameters) -> Bool {
        a.policy == b.policy && a.given == b.given && a.awaited == b.awaited
    }
    public func hash(into hasher: inout Hasher) { hasher.combine(policy); hasher.combine(given) }

    /// Validates `values` against `specs`: unknown names and bad values are errors. A parameter
    /// in `awaiting` may be missing even when required (and may not be given).
    public init(policy: String, specs: [PolicyParameter], values: [String: String], awaiting: Set<String> = []) throws {
        self.policy = policy
        var table: [String: PolicyParameter] = [:]
        for spec in specs { table[spec.name] = spec }
        self.specs = table
        var given: [String: String] = [:]
        for (name, raw) in values {
            guard let spec = table[name] else {
                let known = specs.map { "--\($0.name)" }.joined(separator: ", ")
                throw PolicyError("\(policy): unknown parameter --\(name) (known: \(known.isEmpty ? "none" : known))")
            }
            given[name] = try spec.validate(raw, policy: policy)
        }
        for name in awaiting where table[name] == nil || given[name] != nil {
            throw PolicyError(
                table[name] == nil
                    ? "\(policy): awaits --\(name), which it does not declare"
                    : "\(policy): --\(name) is set later and may not be given now")
        }
        for spec in specs where spec.required && given[spec.name] == nil && !awaiting.contains(spec.name) {
            throw PolicyError("\(policy): --\(spec.name) is required (\(spec.help))")
        }
        self.given = given
        self.awaited = awaiting
    }

    /// The value in effect: given, else the default, else nil (derived or absent).
    public func raw(_ name: String) -> String? {
        precondition(specs[name] != nil, "\(policy) reads undeclared parameter \(name)")
        return given[name] ?? specs[name]?.defaultValue
    }

    public func int(_ name: String) -> Int? { raw(name).flatMap { Int($0) } }
    public func double(_ name: String) -> Double? { raw(name).flatMap { Double($0) } }
    public func string(_ name: String) -> String? { raw(name) }
    public func bool(_ name: String) -> Bool { raw(name) == "true" }

    /// The declaration of `name`, or a PolicyError naming the undeclared read.
    public func declaration(_ name: String) throws -> PolicyParameter {
        guard let spec = specs[name] else {
            throw PolicyError("\(policy): reads --\(name), which it does not declare")
        }
        return spec
    }

    /// The value in effect of a declared parameter of `kind`'s form, nil when it has none.
    private func typedRaw(_ name: String, _ form: String, _ fits: (PolicyParameter.Kind) -> Bool) throws -> String? {
        let spec = try declaration(name)
        guard fits(spec.kind) else {
            throw PolicyError("\(policy): reads --\(name) as \(form), which it is not declared as")
        }
        if awaited.contains(name) && given[name] == nil {
            throw PolicyError("\(policy): --\(name) is read before it is set")
        }
        return raw(name)
    }

    /// The value of a declared parameter that has one (given, a default, or required).
    private func present<T>(_ name: String, _ value: T?) throws -> T {
        guard let value else { throw PolicyError("\(policy): --\(name) has no value (no default; give it)") }
        return value
    }

    /// Typed reads of declared parameters, for a policy's `Configuration`: a parameter that is not
    /// declared, declared as another kind, or without a value throws a PolicyError (never a trap).
    public func integer(_ name: String) throws -> Int { try present(name, optionalInteger(name)) }
    public func optionalInteger(_ name: String) throws -> Int? {
        try typedRaw(name, "an integer") { if case .integer = $0 { true } else { false } }.flatMap { Int($0) }
    }
    public func real(_ name: String) throws -> Double { try present(name, optionalReal(name)) }
    public func optionalReal(_ name: String) throws -> Double? {
        try typedRaw(name, "a number") { if case .real = $0 { true } else { false } }.flatMap { Double($0) }
    }
    public func flag(_ name: String) throws -> Bool {
        try typedRaw(name, "a flag") { $0 == .flag } == "true"
    }
    /// Free text or a choice as written, nil when absent.
    public func optionalText(_ name: String) throws -> String? {
        try typedRaw(name, "text") { if case .integer = $0 { false } else if case .real = $0 { false } else { true } }
    }
    public func choice<T: RawRepresentable>(_ name: String, as type: T.Type = T.self) throws -> T
    where T.RawValue == String {
        try present(name, optionalChoice(name, as: type))
    }
    /// A choice decoded as `T`; an option `T` does not have is a PolicyError (the declaration and
    /// the type disagree).
    public func optionalChoice<T: RawRepresentable>(_ name: String, as type: T.Type = T.self) throws -> T?
    where T.RawValue == String {
        let isChoice = { (kind: PolicyParameter.Kind) in if case .choice = kind { true } else { false } }
        guard let raw = try typedRaw(name, "a choice", isChoice) else { return nil }
        guard let value = T(rawValue: raw) else {
            throw PolicyError("\(policy): --\(name) '\(raw)' is not a \(T.self)")
        }
        return value
    }

    /// Files the policy reads (given values of FILE parameters, e.g. ThinKV's calibration):
    /// inputs a command's outputs must not overwrite.
    public var inputFiles: [String] {
        specs.values.filter { $0.kind == .text("FILE") }.compactMap { given[$0.name] }.sorted()
    }

    /// Every parameter in effect, for reports and CSV columns; derived ones read "auto".
    public var effective: [(name: String, value: String)] {
        specs.keys.sorted().map { ($0, raw($0) ?? "auto") }
    }

    /// `effective` with numbers as numbers and flags as booleans, for JSON.
    public var typedEffective: [String: ParameterValue] {
        var out: [String: ParameterValue] = [:]
        for (name, value) in effective {
            switch specs[name]?.kind {
            case .integer?: out[name] = Int(value).map(ParameterValue.integer) ?? .text(value)
            case .real?: out[name] = Double(value).map(ParameterValue.real) ?? .text(value)
            case .flag?: out[name] = .flag(value == "true")
            default: out[name] = .text(value)
            }
        }
        return out
    }
}

/// A parameter value as JSON shows it.
public enum ParameterValue: Encodable, Equatable, Sendable {
    case integer(Int), real(Double), flag(Bool), text(String)

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .integer(let v): try container.encode(v)
        case .real(let v): try container.encode(v)
        case .flag(let v): try container.encode(v)
        case .text(let v): try container.encode(v)
        }
    }
}
