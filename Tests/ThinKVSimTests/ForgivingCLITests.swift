import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Mistakes a newcomer makes get a suggestion and a usage exit (2); layer lists accept Python's
/// negative indices; JSON parameters are typed.
final class ForgivingCLITests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func trace(layers: [Int] = [0, 2, 5]) throws -> String {
        try TestTraces.write(
            to: directory.appendingPathComponent("t.h5"), T: 24, P: 8, Hq: 2, Hkv: 1, D: 8,
            numLayers: 6, layers: layers.map { TestTraces.randomLayer(T: 24, Hq: 2, Hkv: 1, D: 8, seed: 1, index: $0) })
    }

    private func run(_ arguments: [String]) throws -> CommandRunner.Outcome {
        try CommandRunner.run(arguments, in: directory)
    }

    func testSuggestionsByEditDistanceAndPrefix() {
        XCTAssertEqual(Suggestions.closest(to: "h20", among: PolicyRegistry.names), "h2o")
        XCTAssertEqual(
            Suggestions.closest(to: "streamingllm", among: PolicyRegistry.names), "streaming", "the name users know")
        XCTAssertNil(Suggestions.closest(to: "quest", among: PolicyRegistry.names), "nothing close")
        XCTAssertEqual(
            Suggestions.closest(to: "layer", among: ["layers", "steps", "topk"]), "layers", "a prefix of one name")
        XCTAssertEqual(Suggestions.closest(to: "budgte", among: ["budget", "window"]), "budget", "two swapped letters")
        XCTAssertNil(Suggestions.closest(to: "zzz", among: ["budget", "window"]))
        XCTAssertEqual(Suggestions.distance("kitten", "sitting"), 3)
    }

    func testMistakesAreUsageErrorsWithSuggestions() throws {
        let path = try trace()
        let policy = try run(["replay", path, "--policy", "h20"])
        XCTAssertEqual(policy.status, 2)
        XCTAssertTrue(policy.stderr.contains("did you mean h2o?"), policy.stderr)
        let option = try run(["replay", path, "--layer", "0"])
        XCTAssertEqual(option.status, 2)
        XCTAssertTrue(option.stderr.contains("did you mean --layers?"), option.stderr)
        let foreign = try run(["replay", path, "--policy", "full", "--budget", "8"])
        XCTAssertEqual(foreign.status, 2)
        XCTAssertTrue(foreign.stderr.contains("a parameter of"), "names the policies that take it: \(foreign.stderr)")
        let twice = try run(["replay", path, "--policy", "full,full"])
        XCTAssertEqual(twice.status, 2)
        XCTAssertTrue(twice.stderr.contains("twice"), twice.stderr)
        let command = try run(["replya", path])
        XCTAssertEqual(command.status, 2)
    }

    func testNegativeLayersCountFromTheLastRecordedLayer() throws {
        let path = try trace()
        let last = try run(["replay", path, "--layers", "-1,0", "--json"])
        XCTAssertEqual(last.status, 0, last.stderr)
        let report = try JSONSerialization.jsonObject(with: Data(last.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(report["layers"] as? [Int], [5, 0])
        XCTAssertEqual(report["schema_version"] as? Int, ReplayReport.schemaVersion)
        let missing = try run(["replay", path, "--layers", "3"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("not recorded (recorded: 0, 2, 5)"), missing.stderr)
        let tooFar = try run(["replay", path, "--layers", "-4"])
        XCTAssertEqual(tooFar.status, 1)
        XCTAssertTrue(tooFar.stderr.contains("before the first recorded layer"), tooFar.stderr)
        XCTAssertEqual(
            try LayerSelection.resolve([-1, -3], recorded: [0, 2, 5], option: "--layers", file: path), [5, 0])
    }

    func testJSONParametersAreTyped() throws {
        let path = try trace()
        let outcome = try run(["replay", path, "--policy", "h2o", "--budget", "12", "--json"])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        let report = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as! [String: Any]
        let run = (report["runs"] as! [[String: Any]])[0]
        let parameters = run["parameters"] as! [String: Any]
        XCTAssertEqual(parameters["budget"] as? Int, 12)
        XCTAssertTrue(outcome.stdout.contains("\"budget\" : 12"), "a number, not a string")

        // Labels shorten paths to file names; the per-step CSV has every parameter as a column.
        let calibration = directory.appendingPathComponent("deep/er/cal.json")
        try FileManager.default.createDirectory(
            at: calibration.deletingLastPathComponent(), withIntermediateDirectories: true)
        try JSONEncoder().encode(ThoughtThresholds(theta1: 0.2, theta2: 0.8, layers: [0])).write(to: calibration)
        let csv = directory.appendingPathComponent("steps.csv").path
        let labelled = try self.run([
            "replay", path, "--policy", "h2o,thinkv", "--budget", "12", "--recent", "4", "--calibration",
            calibration.path,
            "--csv", csv, "--steps", "3"
        ])
        XCTAssertEqual(labelled.status, 0, labelled.stderr)
        XCTAssertTrue(labelled.stdout.contains("thinkv(budget=12,calibration=cal.json,recent=4)"), labelled.stdout)
        let table = try CSVTable.read(path: csv).table
        let budget = try XCTUnwrap(table.index(of: "budget")), name = try XCTUnwrap(table.index(of: "policy_name"))
        let theta = try XCTUnwrap(table.index(of: "r-bits"))
        XCTAssertEqual(Set(table.rows.map { $0[budget] }), ["12"])
        XCTAssertEqual(Set(table.rows.map { $0[name] }), ["h2o", "thinkv"])
        XCTAssertEqual(Set(table.rows.filter { $0[name] == "h2o" }.map { $0[theta] }), [""], "h2o has no r-bits")
    }

    func testProgressIsPlainLinesInLogsAndCanBeSilenced() throws {
        let path = try trace()
        setenv("THINKV_PROGRESS_SECONDS", "0", 1)
        defer { unsetenv("THINKV_PROGRESS_SECONDS") }
        // stderr is a file here, not a terminal: auto means plain lines.
        let plain = try run(["replay", path, "--policy", "h2o", "--budget", "8"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertTrue(plain.stderr.contains("progress: replay"), plain.stderr)
        XCTAssertFalse(plain.stderr.contains("\r"), "no terminal redraws in a log")
        let none = try run(["replay", path, "--policy", "h2o", "--budget", "8", "--progress", "none"])
        XCTAssertEqual(none.status, 0, none.stderr)
        XCTAssertFalse(none.stderr.contains("progress:"), none.stderr)
        let bad = try run(["replay", path, "--progress=loud"])
        XCTAssertEqual(bad.status, 2)
    }

    /// A sweep checks every grid point before replaying: all invalid points at once, or skipped.
    func testSweepsListEveryInvalidGridPointAtOnce() throws {
        let path = try trace()
        func config(_ extra: String) throws -> String {
            let file = directory.appendingPathComponent("grid\(extra.count).json")
            try Data(
                """
                {"traces": ["\(path)"], "output": "\(directory.path)/grid\(extra.count).csv", "steps": 4,
                 "policies": ["h2o", {"policy": "snapkv", "parameters": {"window": [8]}}, "thinkv-tbe"],
                 "parameters": {"budget": [6, 20], "theta1": [0.2], "theta2": [0.8]}\(extra)}
                """.utf8
            ).write(to: file)
            return file.path
        }
        // snapkv needs budget > window (6 is not), thinkv-tbe needs budget ≥ sinks + recent (6 is not).
        let strict = try run(["sweep", try config("")])
        XCTAssertEqual(strict.status, 2, "values the policies refuse together are a usage error: \(strict.stderr)")
        XCTAssertTrue(strict.stderr.contains("2 of the grid's runs are invalid"), strict.stderr)
        XCTAssertTrue(
            strict.stderr.contains("snapkv") && strict.stderr.contains("thinkv-tbe"), "both named: \(strict.stderr)")
        let dry = try run(["sweep", try config(""), "--dry-run"])
        XCTAssertEqual(dry.status, 0, dry.stderr)
        XCTAssertEqual(dry.stdout.components(separatedBy: "invalid:").count - 1, 2, dry.stdout)
        let skipping = try run(["sweep", try config(", \"skip_invalid\": true")])
        XCTAssertEqual(skipping.status, 0, skipping.stderr)
        XCTAssertTrue(skipping.stderr.contains("skipping 2 invalid run(s)"), skipping.stderr)
        XCTAssertTrue(skipping.stdout.contains("4 of 6 run(s)"), skipping.stdout)
    }

    func testABudgetLargerThanTheTraceSaysItKeepsEverything() throws {
        let path = try trace()
        let outcome = try run(["replay", path, "--policy", "h2o", "--budget", "5000", "--json"])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertTrue(
            outcome.stderr.contains(
                "h2o(budget=5000): the budget is at least the trace's 24 tokens, so it keeps everything"),
            outcome.stderr)
    }

    func testPlotRefusesABudgetTheResultsDoNotHave() throws {
        let csv = directory.appendingPathComponent("r.csv")
        try Data(
            """
            trace,model,num_layers,decode_steps,policy,label,budget,attention_kl_mean,kv_bytes_mean
            t.h5,m,4,100,h2o,h2o(budget=64),64,0.5,1000
            t.h5,m,4,100,h2o,h2o(budget=128),128,0.3,2000

            """.utf8
        ).write(to: csv)
        let outcome = try run(["plot", csv.path, "-o", directory.appendingPathComponent("p").path, "--budget", "100"])
        XCTAssertEqual(outcome.status, 2)
        XCTAssertTrue(
            outcome.stderr.contains("no run at that budget") && outcome.stderr.contains("64, 128"), outcome.stderr)
    }
}
