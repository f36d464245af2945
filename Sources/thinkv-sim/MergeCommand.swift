import Foundation
import ThinKVSim

enum MergeCommand: Subcommand {
    static let spec = CommandSpec(
        name: "merge",
        abstract: "join the results CSVs of a sweep's shards into one, ordered by run_id",
        positionals: [("shard.csv...", "results of 'thinkv-sim sweep --shard', all from one config")],
        options: [
            OptionDefinition("output", short: "o", value: "FILE", help: "merged CSV (required)"),
            OptionDefinition("partial", help: "write what the shards hold even when some runs or shards are missing (exit 0)"),
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
        try OutputFile.checkWritable(output, protecting: arguments.positionals)
        let table = try ShardMerge.merge(paths: arguments.positionals)
        let gaps = ShardMerge.gaps(table)
        let shards = ShardMerge.missingShards(arguments.positionals)
        var missing: [String] = []
        if gaps.count > 0 {
            let shown = gaps.first.map(String.init).joined(separator: ", ") + (gaps.count > gaps.first.count ? ", ..." : "")
            missing.append("\(gaps.count) run id(s) missing (\(shown))")
        }
        if !shards.isEmpty { missing.append("no file for \(shards.joined(separator: ", "))") }
        if !missing.isEmpty && !arguments.flag("partial") {
            throw CSVError("incomplete: \(missing.joined(separator: "; ")); a shard is missing or unfinished (--partial writes what there is)")
        }
        try OutputFile.write(table.render(), to: output, protecting: arguments.positionals)
        if !missing.isEmpty { printError("thinkv-sim merge: note: partial: \(missing.joined(separator: "; "))") }
        print("\(output): \(table.rows.count) row(s) from \(arguments.positionals.count) file(s)")
    }
}
