import Foundation
import ThinKVSim

enum PoliciesCommand: Subcommand {
    static let spec = CommandSpec(
        name: "policies",
        abstract: "list the cache policies and their parameters with defaults",
        options: [OptionDefinition("json", help: "print as JSON")])

    static func run(_ arguments: ParsedArguments) throws {
        if arguments.flag("json") {
            struct Entry: Encodable { let name, summary: String; let parameters: [[String: String]] }
            let entries = PolicyRegistry.all.map { type in
                Entry(name: type.name, summary: type.summary, parameters: type.parameters.map {
                    ["name": $0.name, "default": $0.defaultValue ?? "auto", "help": $0.help, "kind": describe($0.kind)]
                })
            }
            print(try ReplayReport.encodeJSON(entries))
            return
        }
        for type in PolicyRegistry.all {
            print("\(type.name): \(type.summary)")
            for p in type.parameters {
                let value = p.required ? "required" : "default \(p.defaultValue ?? "auto")"
                print("    --\(p.name) \(describe(p.kind))  (\(value))")
                print("        \(p.help)")
            }
            print("")
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
