import Foundation
import ThinKVSim

// Exit codes: 0 success, 1 bad input or failed run (trace, config, I/O), 2 usage error.
let commands: [any Subcommand.Type] = [
    ReplayCommand.self,
    InspectCommand.self,
    CalibrateCommand.self,
    ValidateCommand.self,
    SynthCommand.self,
    PoliciesCommand.self,
    BenchCommand.self,
    SweepCommand.self,
    MergeCommand.self,
    LabelCommand.self,
    QuantizeCommand.self,
    ServePolicyCommand.self,
    PlotCommand.self
]

func topLevelHelp() -> String {
    var lines = [
        "thinkv-sim: replay recorded reasoning-model KV traces through cache-compression policies",
        "",
        "usage: thinkv-sim <command> [arguments] [options]",
        "",
        "commands:"
    ]
    let width = commands.map { $0.spec.name.count }.max() ?? 0
    for c in commands {
        lines.append("  " + c.spec.name.padding(toLength: width + 2, withPad: " ", startingAt: 0) + c.spec.abstract)
    }
    lines += [
        "", "Run 'thinkv-sim <command> --help' for a command's options.",
        "--progress auto|bar|plain|none (any command): a bar on a terminal, else a line every 10 s (auto), or none.",
        "Exit status: 0 success, 1 bad input or failed run, 2 usage error."
    ]
    return lines.joined(separator: "\n")
}

var arguments = Array(CommandLine.arguments.dropFirst())
// --progress auto|plain|none applies to every command, so it is taken here (before any '--',
// after which every argument is a path or value: a trace may be named '--progress').
let optionsEnd = arguments.firstIndex(of: "--") ?? arguments.endIndex
if let i = arguments[..<optionsEnd].firstIndex(where: { $0 == "--progress" || $0.hasPrefix("--progress=") }) {
    let inline = arguments[i].hasPrefix("--progress=") ? String(arguments[i].dropFirst("--progress=".count)) : nil
    let raw = inline ?? (i + 1 < arguments.count ? arguments[i + 1] : "")
    guard let mode = TerminalProgress.Mode(rawValue: raw) else {
        StandardError.write("thinkv-sim: --progress must be auto, bar, plain or none, got '\(raw)'\n")
        exit(2)
    }
    TerminalProgress.mode = mode
    arguments.removeSubrange(i..<(inline == nil ? min(i + 2, arguments.count) : i + 1))
}
guard let name = arguments.first, !["-h", "--help", "help"].contains(name) else {
    print(topLevelHelp())
    exit(arguments.isEmpty ? 2 : 0)
}
if name == "--version" {
    print("thinkv-sim \(ThinKVSimVersion.current)")
    exit(0)
}
guard let command = commands.first(where: { $0.spec.name == name }) else {
    StandardError.write(
        "thinkv-sim: unknown command '\(name)'" + Suggestions.hint(for: name, among: commands.map { $0.spec.name })
            + "; run 'thinkv-sim --help'\n")
    exit(2)
}
let status = runSubcommand(command, Array(arguments.dropFirst()))
if HDF5Library.closeFailed {
    // The error is reported; HDF5's own exit handler would crash on the file it failed to close.
    fflush(stdout)
    _exit(status)
}
exit(status)
