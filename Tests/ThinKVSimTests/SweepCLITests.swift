import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// `thinkv-sim sweep`, `merge` and `plot` as a user runs them: exit statuses, one-line errors,
/// and files that match what the library writes.
final class SweepCLITests: XCTestCase {
    private var directory: URL!
    private var traces: [String] = []

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
        traces = try SweepFixture.traces(in: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func run(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws
        -> CommandRunner.Outcome
    {
        try CommandRunner.run(arguments, in: directory, file: file, line: line)
    }

    private func config(_ name: String, output: String, extra: String = "") throws -> String {
        try SweepFixture.write(
            SweepFixture.json(traces: traces, output: output, extra: extra), to: directory.appendingPathComponent(name))
    }

    func testBadConfigIsOneLineNamingFileAndKey() throws {
        let good = SweepFixture.json(traces: traces, output: path("o.csv"))
        let cases = [
            (
                "top.json",
                good.replacingOccurrences(of: "\"parameters\": {\"budget\"", with: "\"parameter\": {\"budget\""),
                "parameter: unknown key"
            ),
            (
                "entry.json",
                good.replacingOccurrences(
                    of: "{\"policy\": \"streaming\", \"parameters\"", with: "{\"policy\": \"streaming\", \"params\""),
                "policies[1].params: unknown key"
            ),
            (
                "value.json", good.replacingOccurrences(of: "\"sinks\": 1", with: "\"sinks\": -1"),
                "policies[1].parameters.sinks: streaming: --sinks must be in"
            )
        ]
        for (name, text, expected) in cases {
            let file = try SweepFixture.write(text, to: directory.appendingPathComponent(name))
            let outcome = try run(["sweep", file])
            XCTAssertEqual(outcome.status, 1, outcome.stderr)
            XCTAssertTrue(outcome.stderr.hasPrefix("thinkv-sim sweep: \(file): \(expected)"), outcome.stderr)
            XCTAssertEqual(outcome.stderr.filter { $0 == "\n" }.count, 1, "one line: \(outcome.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("o.csv")))
        }
        let missing = try run(["sweep", path("nope.json")])
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.stderr, "thinkv-sim sweep: \(path("nope.json")): does not exist\n")
    }

    func testUsageErrorsExitTwo() throws {
        let file = try config("c.json", output: path("o.csv"))
        for arguments in [
            ["sweep", file, "--shard", "2/2"], ["sweep", file, "--shard", "x"], ["sweep"], ["merge", file],
            ["plot", file, "--bytes", "median"]
        ] {
            let outcome = try run(arguments)
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
        }
    }

    func testStopResumeShardMergeAndPlotEndToEnd() throws {
        let whole = path("whole.csv")
        let file = try config("c.json", output: whole)
        let first = try run(["sweep", file, "--stop-after", "1", "--threads", "1"])
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertTrue(first.stdout.contains("7 pending"), first.stdout)
        let dry = try run(["sweep", file, "--dry-run"])
        XCTAssertEqual(dry.stdout.components(separatedBy: " done ").count - 1, 7, dry.stdout)
        let second = try run(["sweep", file])
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(
            second.stdout.contains("14 of 14 run(s) (7 computed in 1 engine run(s), 7 already there)"), second.stdout)

        // The same sweep in two shards, merged, is the same file.
        var shards: [String] = []
        for i in 0..<2 {
            let outcome = try run(["sweep", file, "--shard", "\(i)/2", "-o", path("part-\(i).csv")])
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            shards.append(path("part-\(i).csv"))
        }
        let merged = path("merged.csv")
        let merge = try run(["merge"] + shards + ["-o", merged])
        XCTAssertEqual(merge.status, 0, merge.stderr)
        XCTAssertEqual(try SweepFixture.contents(merged), try SweepFixture.contents(whole))

        // A shard of another config (other metric columns) is refused with one line.
        let other = try config(
            "other.json", output: path("other.csv"), extra: ",\n  \"metrics\": [\"mass_recall_mean\"]")
        XCTAssertEqual(try run(["sweep", other, "--shard", "1/2"]).status, 0)
        let refused = try run(["merge", shards[0], path("other.shard-1-of-2.csv"), "-o", path("bad.csv")])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(
            refused.stderr.hasPrefix("thinkv-sim merge: \(path("other.shard-1-of-2.csv")): columns differ"),
            refused.stderr)
        XCTAssertEqual(refused.stderr.filter { $0 == "\n" }.count, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("bad.csv")))

        let plot = try run(["plot", merged, "-o", path("figures"), "--format", "svg"])
        XCTAssertEqual(plot.status, 0, plot.stderr)
        XCTAssertEqual(
            plot.stdout.split(separator: "\n").count, 7,
            "two fidelity figures and a timeline per trace, one figure over both: \(plot.stdout)")
        XCTAssertTrue(plot.stderr.contains("step_csv_dir"), "the missing per-step figure is explained: \(plot.stderr)")
    }
}
