import Foundation

/// One item of a policy list as written: a policy name and the parameters given to it alone,
/// `rkv:budget=128:divide=8`.
public struct PolicyItem: Equatable, Sendable {
    public struct Setting: Equatable, Sendable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    public var name: String
    /// In the order written; a name appears at most once.
    public var settings: [Setting]
    /// The item as written (trimmed), for messages.
    public var text: String

    public init(name: String, settings: [Setting] = [], text: String? = nil) {
        self.name = name
        self.settings = settings
        self.text = text ?? ([name] + settings.map { "\($0.name)=\($0.value)" }).joined(separator: ":")
    }

    public var values: [String: String] {
        Dictionary(settings.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
    }
}

/// Policy lists as `replay --policy`, `serve-policy --policy`, a sweep config's policy entry and
/// the Python wrapper write them:
///
///     list    := item ("," item)*
///     item    := NAME (":" PARAM "=" VALUE)*
///
/// Parameters after a name are that policy's alone and win over the shared `--PARAM` options.
/// A value may not contain ":". A list value keeps its commas: a piece after a comma that starts
/// with a digit, "-", "+" or "." continues the value before it (`thinkv:schedule=64,32,16,rkv`),
/// so such a value must be the last parameter of its item. Spaces around pieces are ignored.
public enum PolicyList {
    /// The items of every value of a repeatable option (`--policy a,b --policy c`), in order.
    public static func items(_ raw: [String], of option: String = "--policy") throws -> [PolicyItem] {
        try raw.flatMap { try items($0, of: option) }
    }

    /// The items of one list. Syntax mistakes are usage errors naming `option` and the item.
    public static func items(_ text: String, of option: String = "--policy") throws -> [PolicyItem] {
        let pieces = try CommaList.items(text, of: option, error: UsageError.init)
        var groups: [String] = []
        for piece in pieces {
            // A piece continues a list value when the item before it ends in a parameter.
            if let last = groups.last, last.contains("="), continuesList(piece) {
                guard !piece.contains(":") else {
                    throw UsageError(
                        "\(option) item '\(last),\(piece)': "
                            + "a list value must be the last parameter of its item")
                }
                groups[groups.count - 1] = last + "," + piece
            } else {
                groups.append(piece)
            }
        }
        return try groups.map { try item($0, of: "\(option) item") }
    }

    /// One item, `NAME[:PARAM=VALUE...]` (a sweep config's policy entry is one item); `what`
    /// starts each message.
    public static func item(_ text: String, of what: String = "--policy item") throws -> PolicyItem {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        func bad(_ problem: String) -> UsageError { UsageError("\(what) '\(trimmed)': \(problem)") }
        let parts = trimmed.split(separator: ":", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        let name = parts[0]
        guard !name.isEmpty else { throw bad("no policy name before ':'") }
        guard !name.contains("=") else {
            throw bad("'\(name)' is a parameter; write it after a policy name (h2o:budget=64)")
        }
        var settings: [PolicyItem.Setting] = []
        for part in parts.dropFirst() {
            guard !part.isEmpty else {
                throw bad(
                    parts.count == 2
                        ? "no parameter after ':' (write \(name):PARAM=VALUE, or \(name) alone)"
                        : "an empty parameter between ':' (a stray ':'?)")
            }
            guard let equals = part.firstIndex(of: "=") else {
                throw bad("parameter '\(part)' has no value (write \(part)=VALUE)")
            }
            let parameter = part[..<equals].trimmingCharacters(in: .whitespaces)
            let value = part[part.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !parameter.isEmpty else { throw bad("'\(part)' has no parameter name before '='") }
            guard !value.isEmpty else { throw bad("parameter '\(parameter)' has an empty value") }
            guard !settings.contains(where: { $0.name == parameter }) else {
                throw bad("parameter '\(parameter)' is given twice")
            }
            settings.append(.init(parameter, value))
        }
        return PolicyItem(name: name, settings: settings, text: trimmed)
    }

    /// True for a piece that can only be the next element of a list value (policy names start
    /// with a letter).
    static func continuesList(_ piece: String) -> Bool {
        guard let first = piece.first else { return false }
        return first.isNumber || first == "-" || first == "+" || first == "."
    }
}

extension PolicySpec {
    /// Specs for a policy list whose items may carry their own parameters, sharing one set of
    /// `--name value` options: each shared option goes to every chosen policy that declares it
    /// and does not set it itself. An option no chosen policy would take is an error, and so
    /// are two items that make the same run or the same label (every output tells runs apart
    /// by label). `commandOptions` are the command's own option names, for suggestions. With
    /// `awaitingBudgets`, each policy with a budget is left without one for a memory target's
    /// search to set (`PolicySpec.init(name:values:awaitingBudget:)`).
    public static func specs(
        items: [PolicyItem], options: [(name: String, value: String)],
        commandOptions: [String] = [], awaitingBudgets: Bool = false
    ) throws -> [PolicySpec] {
        var seen = Set<String>()
        for option in options where !seen.insert(option.name).inserted {
            let perPolicy =
                items.count > 1
                ? "; to give policies different values, write them after each name "
                    + "(--policy \(items[0].name):\(option.name)=A,\(items[1].name):\(option.name)=B)" : ""
            throw UsageError("--\(option.name) given more than once\(perPolicy)")
        }
        let types = try items.map { item -> any CachePolicy.Type in
            if PolicyAlgebra.isComposition(item.name) {
                do { return try PolicyAlgebra.resolve(item.name).type } catch let error as PolicyError {
                    throw UsageError(error.description)
                }
            }
            guard let type = PolicyRegistry.type(named: item.name) else {
                let known = PolicyRegistry.names
                let hint = Suggestions.closest(to: item.name, among: known).map { "did you mean \($0)? " } ?? ""
                throw UsageError("unknown policy '\(item.name)' (\(hint)known: \(known.joined(separator: ", ")))")
            }
            return type
        }
        for (item, type) in zip(items, types) {
            let declared = type.parameters.map(\.name)
            for setting in item.settings {
                guard let parameter = type.parameters.first(where: { $0.name == setting.name }) else {
                    let hint = Suggestions.hint(for: setting.name, among: declared)
                    let known =
                        declared.isEmpty
                        ? "it has no parameters"
                        : "its parameters: \(declared.joined(separator: ", "))"
                    throw UsageError(
                        "--policy \(item.text): \(item.name) has no parameter '\(setting.name)'\(hint); "
                            + known)
                }
                do { _ = try parameter.validate(setting.value, policy: item.name) } catch let error as PolicyError {
                    // "h2o: --budget must be ..." names the option; here the value came from the item.
                    let problem = error.description
                        .replacingOccurrences(of: "\(item.name): --\(setting.name) ", with: "\(setting.name) ")
                    throw UsageError("--policy \(item.text): \(problem)")
                }
            }
        }
        let names = items.map(\.name)
        for option in options where !types.contains(where: { $0.parameters.contains { $0.name == option.name } }) {
            var chosenParameters: [String] = []
            for type in types { chosenParameters += type.parameters.map { $0.name } }
            var owners: [String] = []
            for type in PolicyRegistry.all where type.parameters.contains(where: { $0.name == option.name }) {
                owners.append(type.name)
            }
            let hint = Suggestions.hint(for: option.name, among: commandOptions + chosenParameters, prefix: "--")
            let elsewhere = owners.isEmpty ? "" : " (a parameter of \(owners.joined(separator: ", ")))"
            throw UsageError(
                "unknown option --\(option.name)\(hint.isEmpty ? elsewhere : hint): "
                    + "not a parameter of \(names.joined(separator: ", ")); see 'thinkv-sim policies'")
        }
        // A shared option every policy with the parameter overrides would change nothing: the
        // command line does not say what was meant.
        for option in options {
            let takers = zip(items, types).filter { $0.1.parameters.contains { $0.name == option.name } }
            if takers.allSatisfy({ $0.0.values[option.name] != nil }) {
                let setters = takers.map(\.0.text)
                let who =
                    setters.count == 1
                    ? "\(setters[0]) sets its own"
                    : "\(setters.dropLast().joined(separator: ", ")) and \(setters.last!) set their own"
                throw UsageError("--\(option.name) \(option.value) applies to no policy: \(who)")
            }
        }
        let specs = try zip(items, types).map { item, type in
            var values: [String: String] = [:]
            for option in options where type.parameters.contains(where: { $0.name == option.name }) {
                values[option.name] = option.value
            }
            for setting in item.settings { values[setting.name] = setting.value }
            // The values are what the user typed: a refused one is a usage error.
            do {
                return try PolicySpec(name: item.name, values: values, awaitingBudget: awaitingBudgets)
            } catch let error as PolicyError {
                throw UsageError(error.description)
            }
        }
        for (i, spec) in specs.enumerated() {
            guard let j = specs[..<i].firstIndex(where: { $0 == spec || $0.label == spec.label }) else { continue }
            if specs[j] == spec {
                throw UsageError(
                    "--policy names the same run twice (\(items[j].text) and \(items[i].text)); "
                        + "give each its own parameters, e.g. \(spec.name):PARAM=A,\(spec.name):PARAM=B")
            }
            throw UsageError(
                "--policy items \(items[j].text) and \(items[i].text) would both be labelled "
                    + "\(spec.label) (labels show file names only); give the files different names")
        }
        return specs
    }
}
