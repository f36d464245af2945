import Foundation
import ThinKVSim

enum MergeCommand: Subcommand {
    static let spec = CommandSpec(
        name: "merge",
        abstract: "join a sweep's shard CSVs into one, or replays of one trace's layer shards into one report",
        positionals: [
            ("shard...", "results of 'thinkv-sim sweep --shard' (CSV), or of 'replay --layers ... --shard-state FILE'")
        ],
        options: [
            OptionDefinition("output", short: "o", value: "FILE", help: "merged CSV (required for sweep shards)"),
            OptionDefinition("json", help: "replay shards: print the merged report as JSON"),
            OptionDefinition("csv", value: "FILE", help: "replay shards: write the merged per-step CSV"),
            OptionDefinition(
                "partial", help: "write what the shards hold even when some runs or shards are missing (exit 0)")
        ],
        discussion: """
            The shards must have the same columns (the same config). The merged file is byte for byte the
            one an unsharded sweep writes. Run ids missing in the middle (a shard not run or not finished)
            are reported on stderr.

            example:
              thinkv-sim merge out/budget-sweep.shard-*-of-4.csv -o out/budget-sweep.csv
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let inputs = arguments.positionals
        let replayShards = inputs.filter(isReplayShard)
        if !replayShards.isEmpty && replayShards.count < inputs.count {
            let csv = inputs.first { !isReplayShard($0) }!
            throw UsageError(
                "\(csv) is not a replay shard like \(replayShards[0]); merge joins either replay shards (JSON) or "
                    + "sweep shards (CSV)"
            )
        }
        if !replayShards.isEmpty {
            // Outputs first: one that is a shard under another name, or one another merge is
            // writing, fails before anything is read.
            let claim = try OutputClaim([arguments.value("csv"), arguments.value("output")], protecting: inputs)
            defer { claim.release() }
            let shards = try inputs.map(ReplayShard.read)
            let result = try ReplayShard.merge(shards, paths: inputs)
            if let csv = arguments.value("csv") {
                // The token text travels in the shards: the same per-step CSV as one replay's.
                try OutputFile.write(
                    ReplayReport.stepCSV(result, tokenText: shards[0].tokenText), to: csv, protecting: inputs)
            }
            let report = arguments.flag("json") ? try ReplayReport.json(result) : ReplayReport.text(result)
            if let output = arguments.value("output") {
                try OutputFile.write(report + "\n", to: output, protecting: inputs)
            } else {
                print(report)
            }
            return
        }
        guard let output = arguments.value("output") else { throw UsageError("--output FILE is required") }
        if let csv = arguments.value("csv") {
            throw UsageError("--csv \(csv): only for replay shards; sweep shards merge into -o FILE")
        }
        let claim = try OutputClaim([output], protecting: inputs)
        defer { claim.release() }
        let table = try ShardMerge.merge(paths: arguments.positionals)
        let gaps = ShardMerge.gaps(table)
        let shards = ShardMerge.missingShards(arguments.positionals)
        var missing: [String] = []
        if gaps.count > 0 {
            let shown =
                gaps.first.map(String.init).joined(separator: ", ") + (gaps.count > gaps.first.count ? ", ..." : "")
            missing.append("\(gaps.count) run id(s) missing (\(shown))")
        }
        if !shards.isEmpty { missing.append("no file for \(shards.joined(separator: ", "))") }
        if !missing.isEmpty && !arguments.flag("partial") {
            throw CSVError(
                "incomplete: \(missing.joined(separator: "; ")); a shard is missing or unfinished (--partial writes "
                    + "what there is)"
            )
        }
        try OutputFile.write(table.render(), to: output, protecting: inputs)
        if !missing.isEmpty { printError("thinkv-sim merge: note: partial: \(missing.joined(separator: "; "))") }
        print("\(output): \(table.rows.count) row(s) from \(arguments.positionals.count) file(s)")
    }

    /// A file 'replay --shard-state' wrote, or claims to be one: it names the shard kind
    /// anywhere (not only near the start: keys may come in any order in a JSON file written by
    /// another tool). `ReplayShard.read` then says what is wrong with it.
    static func isReplayShard(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let marker = Data("\"\(ReplayShard.kind)\"".utf8)
        var tail = Data()
        while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            let window = tail + chunk
            if window.range(of: marker) != nil { return true }
            tail = window.suffix(marker.count - 1)
        }
        return false
    }
}
