import Foundation

/// A command-line usage mistake; the CLI prints it with a pointer to `--help` and exits 2.
public struct UsageError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One `--option` of a command.
public struct OptionDefinition: Sendable {
    /// Long name without dashes (`policy` for `--policy`).
    public let name: String
    public let short: Character?
    /// Placeholder for the value (`FILE`); nil for a flag that takes no value.
    public let valueName: String?
    public let help: String
    /// Shown as `(default: …)` in help.
    public let defaultDescription: String?
    /// May be given more than once (values accumulate).
    public let repeatable: Bool

    public init(
        _ name: String, short: Character? = nil, value valueName: String? = nil, help: String,
        default defaultDescription: String? = nil, repeatable: Bool = false
    ) {
        self.name = name
        self.short = short
        self.valueName = valueName
        self.help = help
        self.defaultDescription = defaultDescription
        self.repeatable = repeatable
    }

    public var isFlag: Bool { valueName == nil }
}

/// A subcommand's interface: what `--help` prints and what the parser accepts.
public struct CommandSpec: Sendable {
    public let name: String
    public let abstract: String
    /// `(name, help)`; a trailing `...` in the name takes one or more values.
    public let positionals: [(name: String, help: String)]
    public let options: [OptionDefinition]
    /// Options not declared here are collected as `extra` (policy parameters) instead of refused.
    public let acceptsExtraOptions: Bool
    public let discussion: String?

    public init(
        name: String, abstract: String, positionals: [(name: String, help: String)] = [],
        options: [OptionDefinition], acceptsExtraOptions: Bool = false, discussion: String? = nil
    ) {
        self.name = name
        self.abstract = abstract
        self.positionals = positionals
        self.options = options + [OptionDefinition("help", short: "h", help: "show this help")]
        self.acceptsExtraOptions = acceptsExtraOptions
        self.discussion = discussion
    }

    public var helpText: String {
        var usage = "usage: thinkv-sim \(name)"
        for p in positionals { usage += p.name.hasSuffix("...") ? " <\(p.name.dropLast(3))>..." : " <\(p.name)>" }
        usage += " [options]"
        var lines = ["\(name): \(abstract)", "", usage]
        if !positionals.isEmpty {
            lines.append("")
            lines.append("arguments:")
            let width = positionals.map { $0.name.count + 2 }.max() ?? 0
            for p in positionals {
                lines.append("  " + "<\(p.name)>".padding(toLength: width + 2, withPad: " ", startingAt: 0) + p.help)
            }
        }
        lines.append("")
        lines.append("options:")
        let labels = options.map { o -> String in
            var label = o.short.map { "-\($0), " } ?? "    "
            label += "--\(o.name)"
            if let v = o.valueName { label += " \(v)" }
            return label
        }
        let width = min(labels.map(\.count).max() ?? 0, 30)
        for (o, label) in zip(options, labels) {
            var help = o.help
            if let d = o.defaultDescription { help += " (default: \(d))" }
            if label.count > width {
                lines.append("  \(label)")
                lines.append("  " + String(repeating: " ", count: width + 2) + help)
            } else {
                lines.append("  " + label.padding(toLength: width + 2, withPad: " ", startingAt: 0) + help)
            }
        }
        if let discussion {
            lines.append("")
            lines.append(discussion)
        }
        return lines.joined(separator: "\n")
    }
}

/// The result of parsing: positionals in order, option values by long name, extra options.
public struct ParsedArguments: Sendable {
    public var positionals: [String] = []
    public var values: [String: [String]] = [:]
    public var flags: Set<String> = []
    /// Undeclared `--name value` pairs, in order (only when the command accepts them).
    public var extra: [(name: String, value: String)] = []
    public var helpRequested = false

    public func value(_ name: String) -> String? { values[name]?.last }
    public func all(_ name: String) -> [String] { values[name] ?? [] }
    public func flag(_ name: String) -> Bool { flags.contains(name) }

    public func int(_ name: String, default fallback: Int? = nil, min lower: Int = Int.min, max upper: Int = Int.max)
        throws -> Int?
    {
        guard let raw = value(name) else { return fallback }
        guard let v = Int(raw), v >= lower, v <= upper else {
            let range =
                lower > Int.min && upper < Int.max ? " in \(lower)...\(upper)" : lower > Int.min ? " ≥ \(lower)" : ""
            throw UsageError("--\(name) must be an integer\(range), got '\(raw)'")
        }
        return v
    }
}

public enum ArgumentParser {
    /// Parses `arguments` (without the program and subcommand names) against `spec`.
    /// Accepts `--name value`, `--name=value`, `-x value`, and `--` to end options.
    public static func parse(_ arguments: [String], _ spec: CommandSpec) throws -> ParsedArguments {
        var result = ParsedArguments()
        var byName: [String: OptionDefinition] = [:]
        var byShort: [Character: OptionDefinition] = [:]
        for o in spec.options {
            byName[o.name] = o
            if let s = o.short { byShort[s] = o }
        }
        var i = 0
        var optionsEnded = false
        func takeValue(for name: String, inline: String?) throws -> String {
            if let inline { return inline }
            i += 1
            guard i < arguments.count else { throw UsageError("--\(name) needs a value") }
            return arguments[i]
        }
        while i < arguments.count {
            let arg = arguments[i]
            if optionsEnded || !arg.hasPrefix("-") || arg == "-" || Double(arg) != nil {
                result.positionals.append(arg)
            } else if arg == "--" {
                optionsEnded = true
            } else {
                var name: String
                var inline: String? = nil
                var definition: OptionDefinition?
                if arg.hasPrefix("--") {
                    name = String(arg.dropFirst(2))
                    if let eq = name.firstIndex(of: "=") {
                        inline = String(name[name.index(after: eq)...])
                        name = String(name[..<eq])
                    }
                    definition = byName[name]
                } else {
                    guard arg.count == 2, let d = byShort[arg.last!] else {
                        throw UsageError(
                            "unknown option \(arg)"
                                + Suggestions.hint(
                                    for: String(arg.drop { $0 == "-" }), among: spec.options.map(\.name), prefix: "--"))
                    }
                    definition = d
                    name = d.name
                }
                if let d = definition {
                    if d.name == "help" {
                        result.helpRequested = true
                    } else if d.isFlag {
                        if let inline {
                            switch inline.lowercased() {
                            case "true", "1", "yes": result.flags.insert(d.name)
                            case "false", "0", "no": result.flags.remove(d.name)
                            default: throw UsageError("--\(d.name) is a flag; it takes no value")
                            }
                        } else {
                            result.flags.insert(d.name)
                        }
                    } else {
                        let v = try takeValue(for: d.name, inline: inline)
                        if !d.repeatable, result.values[d.name] != nil {
                            throw UsageError("--\(d.name) given more than once")
                        }
                        result.values[d.name, default: []].append(v)
                    }
                } else if spec.acceptsExtraOptions && arg.hasPrefix("--") && !name.isEmpty {
                    result.extra.append((name, try takeValue(for: name, inline: inline)))
                } else {
                    throw UsageError(
                        "unknown option --\(name)"
                            + Suggestions.hint(for: name, among: spec.options.map(\.name), prefix: "--"))
                }
            }
            i += 1
        }
        if result.helpRequested { return result }
        let required = spec.positionals.filter { !$0.name.hasSuffix("?") }
        let variadic = spec.positionals.last?.name.hasSuffix("...") == true
        if result.positionals.count < required.count {
            let missing = required[result.positionals.count].name.replacingOccurrences(of: "...", with: "")
            throw UsageError("missing <\(missing)>")
        }
        if !variadic && result.positionals.count > spec.positionals.count {
            throw UsageError("unexpected argument '\(result.positionals[spec.positionals.count])'")
        }
        return result
    }
}
