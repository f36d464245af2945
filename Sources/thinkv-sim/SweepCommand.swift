import Foundation
import ThinKVSim

enum SweepCommand: Subcommand {
    static let spec = CommandSpec(
        name: "sweep",
        abstract:
            "run a grid of traces x policies x parameters from a JSON config into a results CSV (resumable, shardable)",
        positionals: [("config", "a sweep config (docs/configs.md), e.g. configs/budget-sweep.json")],
        options: [
            OptionDefinition(
                "shard", value: "I/N",
                help: "run only slice I (0-based) of N of the grid, into <output>.shard-I-of-N.csv"),
            OptionDefinition(
                "output", short: "o", value: "FILE", help: "results CSV", default: "the config's 'output'"),
            OptionDefinition(
                "threads", value: "N", help: "worker threads; results do not depend on it",
                default: "the config's, else all cores"),
            OptionDefinition(
                "stop-after", value: "N",
                help: "stop after N engine runs (one per trace, unless the config sets batch); a later call resumes"),
            OptionDefinition("dry-run", help: "print the grid with each run's status (done/pending) and exit")
        ],
        discussion: """
            Every run is a row of the CSV, keyed by its run key (trace, policy, every effective parameter,
            replay options; docs/configs.md). Rows already in the output are not recomputed: re-running an
            interrupted sweep finishes it, and the result is the same file an uninterrupted run writes.
            Shards of one sweep are joined with 'thinkv-sim merge' (docs/cluster.md has a Slurm example).

            examples:
              thinkv-sim sweep configs/budget-sweep.json
              thinkv-sim sweep configs/budget-sweep.json --shard 0/4
              thinkv-sim merge out/budget-sweep.shard-*-of-4.csv -o out/budget-sweep.csv
            """)

    static func run(_ arguments: ParsedArguments) throws {
        // Options first: a usage mistake is exit 2 whatever the config.
        let shard = try arguments.value("shard").map(parseShard)
        let threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        let stopAfter = try arguments.int("stop-after", min: 1)
        var config = try SweepConfig.load(path: arguments.positionals[0], output: arguments.value("output"))
        if let threads { config.threads = threads }
        let grid = try SweepGrid(config: config)
        let runner = SweepRunner(grid: grid, shard: shard, output: arguments.value("output"))
        runner.stopAfterEngineRuns = stopAfter
        runner.progress = TerminalProgress(label: "sweep")
        runner.note = { printError("thinkv-sim sweep: note: \($0)") }

        if arguments.flag("dry-run") {
            let plan = try runner.plan()
            let invalid = Dictionary(
                try runner.invalidRuns(plan.pending).map { ($0.run.id, $0.problem) }, uniquingKeysWith: { a, _ in a })
            var table = TextTable(headers: ["run_id", "status", "trace", "policy", "paging", "block"])
            for run in runner.runs {
                let status =
                    plan.reusable[run.id] != nil ? "done" : invalid[run.id].map { "invalid: \($0)" } ?? "pending"
                table.add([
                    String(run.id), status, run.trace, run.spec.label,
                    run.layout.mode.rawValue, run.layout.blockSize.map(String.init) ?? "auto"
                ])
            }
            if !invalid.isEmpty { printError("thinkv-sim sweep: note: \(invalid.count) invalid run(s) (see status)") }
            print(table.render())
            print(
                "\n\(runner.runs.count) run(s) in \(shard.map { "shard \($0.index)/\($0.count) of " } ?? "")a grid "
                    + "of \(grid.runs.count); \(plan.reusable.count) done, \(plan.pending.count) pending; output "
                    + "\(runner.outputPath)"
            )
            return
        }
        let outcome = try runner.run()
        var summary = "\(runner.outputPath): \(outcome.computed + outcome.reused) of \(runner.runs.count) run(s)"
        summary +=
            " (\(outcome.computed) computed in \(outcome.engineRuns) engine run(s), \(outcome.reused) already there)"
        if outcome.pending > 0 { summary += "; \(outcome.pending) pending: run the same command again to resume" }
        print(summary)
    }

    /// `2/8` -> (2, 8); the index is 0-based, as Slurm's SLURM_ARRAY_TASK_ID with --array=0-7.
    static func parseShard(_ raw: String) throws -> (index: Int, count: Int) {
        let parts = raw.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let index = Int(parts[0]), let count = Int(parts[1]), count >= 1, index >= 0,
            index < count
        else {
            throw UsageError("--shard takes I/N with 0 <= I < N (e.g. 0/4), got '\(raw)'")
        }
        return (index, count)
    }
}
