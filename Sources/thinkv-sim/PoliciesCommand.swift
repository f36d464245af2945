import Foundation
import ThinKVSim

enum PoliciesCommand: Subcommand {
    static let spec = CommandSpec(
        name: "policies",
        abstract: "list the cache policies and their parameters with defaults",
        options: [OptionDefinition("json", help: "print as JSON")])

    static func run(_ arguments: ParsedArguments) throws {
        if arguments.flag("json") {
            struct Entry: Encodable { let name, summary: String; let parameters: [JSONParameter] }
            let entries = PolicyRegistry.all.map { type in
                Entry(name: type.name, summary: type.summary, parameters: type.parameters.map(JSONParameter.init))
            }
            print(try ReplayReport.encodeJSON(entries))
            return
        }
        for type in PolicyRegistry.all {
            print("\(type.name): \(type.summary)")
            for p in type.parameters {
                let value = p.required ? "required" : "default \(p.defaultValue ?? "auto")"
                // The budget is the parameter a memory target (--kv-percent, --kv-bytes) sets.
                let role = p.role == .budget ? "; the budget --kv-percent sets" : ""
                print("    --\(p.name) \(describe(p.kind))  (\(value)\(role))")
                print("        \(p.help)")
            }
            print("")
        }
        for line in PolicyAlgebra.partsListing { print(line) }
    }

    /// One parameter in `policies --json`: the text listing's fields, plus what a program needs to
    /// check a value before a run (required, the accepted range or choices).
    struct JSONParameter: Encodable {
        let name, kind, help: String
        /// As typed; "auto" when derived from other parameters, or when required.
        let `default`: String
        let required: Bool
        /// "budget" for the parameter a memory target sets; absent otherwise.
        let role: String?
        /// The accepted range of an integer or a number (a bound left open is absent).
        let minimum, maximum: Double?
        let choices: [String]?

        init(_ p: PolicyParameter) {
            name = p.name
            kind = PoliciesCommand.describe(p.kind)
            help = p.help
            `default` = p.defaultValue ?? "auto"
            required = p.required
            role = p.role.map { role in
                switch role {
                case .budget: return "budget"
                }
            }
            var choices: [String]? = nil
            var minimum: Double? = nil, maximum: Double? = nil
            switch p.kind {
            case .integer(let range): (minimum, maximum) = (Double(range.lowerBound), Double(range.upperBound))
            case .real(let range):
                if range.lowerBound > -.greatestFiniteMagnitude { minimum = range.lowerBound }
                if range.upperBound < .greatestFiniteMagnitude { maximum = range.upperBound }
            case .choice(let options): choices = options
            case .flag: choices = ["true", "false"]
            case .text: break
            }
            self.minimum = minimum
            self.maximum = maximum
            self.choices = choices
        }
    }

    static func describe(_ kind: PolicyParameter.Kind) -> String {
        switch kind {
        case .integer: return "INT"
        case .real: return "NUMBER"
        case .choice(let options): return options.joined(separator: "|")
        case .flag: return "true|false"
        case .text(let form): return form
        }
    }
}
