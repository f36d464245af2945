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

    public let name: String
    public let kind: Kind
    /// The default as it would be typed; nil when it is derived from other parameters (the
    /// help says how) or when the parameter is required.
    public let defaultValue: String?
    public let required: Bool
    public let help: String

    public init(_ name: String, _ kind: Kind, default defaultValue: String? = nil, required: Bool = false, help: String) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.required = required
        self.help = help
    }

    public static func integer(_ name: String, default value: Int? = nil, min: Int = 0, max: Int = Int(Int32.max),
                               required: Bool = false, help: String) -> PolicyParameter {
        PolicyParameter(name, .integer(min...max), default: value.map(String.init), required: required, help: help)
    }

    public static func real(_ name: String, default value: Double? = nil, min: Double = -.greatestFiniteMagnitude,
                            max: Double = .greatestFiniteMagnitude, help: String) -> PolicyParameter {
        PolicyParameter(name, .real(min...max), default: value.map { String($0) }, help: help)
    }

    public static func choice(_ name: String, _ options: [String], default value: String?, help: String) -> PolicyParameter {
        PolicyParameter(name, .choice(options), default: value, help: help)
    }

    public static func flag(_ name: String, default value: Bool = false, help: String) -> PolicyParameter {
        PolicyParameter(name, .flag, default: value ? "true" : "false", help: help)
    }

    public static func text(_ name: String, _ form: String, default value: String? = nil, help: String) -> PolicyParameter {
        PolicyParameter(name, .text(form), default: value, help: help)
    }

    /// Checks one raw value; returns it normalised (e.g. `1e3` for an integer is refused).
    func validate(_ raw: String, policy: String) throws -> String {
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
    private let specs: [String: PolicyParameter]

    public static func == (a: PolicyParameters, b: PolicyParameters) -> Bool { a.policy == b.policy && a.given == b.given }
    public func hash(into hasher: inout Hasher) { hasher.combine(policy); hasher.combine(given) }

    /// Validates `values` against `specs`: unknown names and bad values are errors.
    public init(policy: String, specs: [PolicyParameter], values: [String: String]) throws {
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
        for spec in specs where spec.required && given[spec.name] == nil {
            throw PolicyError("\(policy): --\(spec.name) is required (\(spec.help))")
        }
        self.given = given
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
