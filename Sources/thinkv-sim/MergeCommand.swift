import Foundation
import ThinKVSim

enum MergeCommand: Subcommand {
    static let spec = CommandSpec(
        name: "merge",
        abstract: "join the results CSVs of a sweep's shards into one, ordered by run_id",
        positionals: [("shard.csv...", "results of 'thinkv-sim sweep --shard', all from one config")],
        options: [
            OptionDefinition("output", short: "o", value: "FILE", help: "merged CSV (required)"),
        ],
        discussion: """
            The shards must have the same columns (the same config). The merged file is byte for byte the
            one an unsharded sweep writes. Run ids missing in the middle (a shard not run or not finished)
            are reported on stderr.

            example:
              thinkv-sim merge out/budget-sweep.shard-*-of-4.csv -o out/budget-sweep.csv
            """)

    static func run(_ arguments: ParsedArguments) throws {
        guard let output = arguments.value("output") else { throw UsageError("--output FILE is required") }
        let table = try ShardMerge.merge(paths: arguments.positionals)
        try OutputFile.write(table.render(), to: output, protecting: arguments.positionals)
        let gaps = ShardMerge.gaps(table)
        if !gaps.isEmpty {
            let shown = gaps.prefix(10).map(String.init).joined(separator: ", ") + (gaps.count > 10 ? ", ..." : "")
            printError("thinkv-sim merge: note: \(gaps.count) run id(s) missing (\(shown)): a shard is missing or unfinished")
        }
        print("\(output): \(table.rows.count) row(s) from \(arguments.positionals.count) file(s)")
    }
}
