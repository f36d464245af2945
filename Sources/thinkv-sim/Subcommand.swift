import Foundation
import ThinKVSim

/// A `thinkv-sim` subcommand: its interface and its body. Bodies throw; `runSubcommand` turns
/// errors into one line on stderr and an exit status.
protocol Subcommand {
    static var spec: CommandSpec { get }
    static func run(_ arguments: ParsedArguments) throws
}

func runSubcommand(_ command: any Subcommand.Type, _ arguments: [String]) -> Int32 {
    let name = command.spec.name
    do {
        let parsed = try ArgumentParser.parse(arguments, command.spec)
        if parsed.helpRequested {
            print(command.spec.helpText)
            return 0
        }
        try command.run(parsed)
        // The report went through stdout's buffer: a full disk or /dev/full shows only here.
        if fflush(stdout) != 0 || ferror(stdout) != 0 {
            printError("thinkv-sim \(name): cannot write to standard output (\(String(cString: strerror(errno))))")
            return 1
        }
        return 0
    } catch let error as UsageError {
        printError("thinkv-sim \(name): \(error.description)\nRun 'thinkv-sim \(name) --help' for usage.")
        return 2
    } catch {
        printError("thinkv-sim \(name): \(error)")
        return 1
    }
}

func printError(_ message: String) {
    StandardError.write(message + "\n")
}

/// Splits comma-separated and repeated values of `--<option>`: `--policy a,b --policy c` ->
/// [a, b, c]. An empty item (`--policy h2o,`) is a usage error (`CommaList`).
func listValues(_ raw: [String], option: String) throws -> [String] {
    try raw.flatMap { try CommaList.items($0, of: "--\(option)", error: UsageError.init) }
}
