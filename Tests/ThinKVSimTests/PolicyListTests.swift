import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Policy lists with parameters per item (`--policy h2o:budget=64,rkv:budget=128:divide=8`):
/// the spelling, its refusals, and replays that equal the separate replays of each item.
final class PolicyListTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func trace() throws -> String {
        try TestTraces.write(
            to: directory.appendingPathComponent("t.h5"), T: 40, P: 8, Hq: 2, Hkv: 1, D: 8,
            numLayers: 2,
            layers: [
                TestTraces.randomLayer(T: 40, Hq: 2, Hkv: 1, D: 8, seed: 5),
                TestTraces.randomLayer(T: 40, Hq: 2, Hkv: 1, D: 8, seed: 6, index: 1)
            ])
    }

    private func run(
        _ arguments: [String], file: StaticString = #filePath,
        line: UInt = #line
    ) throws -> CommandRunner.Outcome {
        try CommandRunner.run(arguments, in: directory, file: file, line: line)
    }

    /// Outputs go in the test's directory (the command runs in the test runner's).
    private func file(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func item(_ name: String, _ settings: [(String, String)] = []) -> PolicyItem {
        PolicyItem(name: name, settings: settings.map { PolicyItem.Setting($0.0, $0.1) })
    }

    // MARK: Spelling

    func testHandExamplesParse() throws {
        func names(_ items: [PolicyItem]) -> [String] { items.map(\.name) }
        XCTAssertEqual(try PolicyList.items("h2o"), [item("h2o")])
        let two = try PolicyList.items("h2o:budget=64,rkv:budget=128:divide=8")
        XCTAssertEqual(names(two), ["h2o", "rkv"])
        XCTAssertEqual(two[0].settings, [.init("budget", "64")])
        XCTAssertEqual(two[1].settings, [.init("budget", "128"), .init("divide", "8")], "in the order written")
        XCTAssertEqual(two[1].text, "rkv:budget=128:divide=8")
        let spaced = try PolicyList.items(" h2o : budget = 64 , rkv ")
        XCTAssertEqual(spaced.map(\.values), [["budget": "64"], [:]])
        // A list value keeps its commas: pieces starting with a digit or sign continue it.
        let lists = try PolicyList.items("thinkv:schedule=64,32,16,rkv,thinkv:thought-layers=-1,-2")
        XCTAssertEqual(names(lists), ["thinkv", "rkv", "thinkv"])
        XCTAssertEqual(lists[0].values["schedule"], "64,32,16")
        XCTAssertEqual(lists[2].values["thought-layers"], "-1,-2")
        XCTAssertEqual(
            names(try PolicyList.items(["h2o", "rkv:divide=4,full"])), ["h2o", "rkv", "full"],
            "repeated --policy")
        XCTAssertEqual(try PolicyList.item("snapkv:window=4:budget=16").values, ["window": "4", "budget": "16"])
        XCTAssertEqual(
            try PolicyList.item("raas:x=a=b").values, ["x": "a=b"],
            "the value is everything after the first '='")
    }

    func testMisspellingsAreUsageErrorsNamingTheItem() {
        let cases: [(String, String)] = [
            ("h2o:", "--policy item 'h2o:': no parameter after ':'"),
            ("h2o:budget", "parameter 'budget' has no value (write budget=VALUE)"),
            ("h2o:budget=", "parameter 'budget' has an empty value"),
            ("h2o:budget=1:budget=2", "parameter 'budget' is given twice"),
            ("h2o::budget=1", "an empty parameter between ':'"),
            ("h2o:=3", "'=3' has no parameter name before '='"),
            (":budget=3", "no policy name before ':'"),
            ("budget=64", "'budget=64' is a parameter; write it after a policy name"),
            ("h2o,,rkv", "--policy has an empty item in 'h2o,,rkv'"),
            ("thinkv:schedule=64,32:budget=100", "a list value must be the last parameter of its item")
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try PolicyList.items(text), text) { error in
                let message = (error as? UsageError)?.description ?? "\(error)"
                XCTAssertTrue(message.contains(expected), "\(text): \(message)")
            }
        }
    }

    // MARK: Specs

    func testItemParametersOverrideSharedOptionsAndLabelTheRun() throws {
        let items = try PolicyList.items("h2o:budget=64,rkv:divide=8,h2o:budget=128:recent=16,full")
        let specs = try PolicySpec.specs(items: items, options: [("budget", "256")])
        XCTAssertEqual(
            specs.map(\.label),
            ["h2o(budget=64)", "rkv(budget=256,divide=8)", "h2o(budget=128,recent=16)", "full"])
        // The same run as the shared spelling: an item is a shorthand, not another kind of run.
        XCTAssertEqual(
            specs[1],
            try PolicySpec.specs(policies: ["rkv"], options: [("budget", "256"), ("divide", "8")])[0])
        // Without items with parameters, specs(items:) is specs(policies:).
        XCTAssertEqual(
            try PolicySpec.specs(items: [item("h2o"), item("rkv")], options: [("budget", "32")]),
            try PolicySpec.specs(policies: ["h2o", "rkv"], options: [("budget", "32")]))
    }

    func testRefusedSpecsSayWhy() {
        let cases: [([PolicyItem], [(name: String, value: String)], String)] = [
            (
                [item("h2o", [("recnet", "8"), ("budget", "8")])], [],
                "--policy h2o:recnet=8:budget=8: h2o has no parameter 'recnet' (did you mean recent?); "
                    + "its parameters: budget, recent"
            ),
            ([item("full", [("budget", "8")])], [], "full has no parameter 'budget'; it has no parameters"),
            ([item("h2o", [("budget", "0")])], [], "--policy h2o:budget=0: budget must be in 1...2147483647, got '0'"),
            (
                [item("h2o", [("budget", "8"), ("score-dtype", "float8")])], [],
                "--policy h2o:budget=8:score-dtype=float8: score-dtype must be one of"
            ),
            (
                [item("h2o", [("budget", "8")]), item("rkv", [("budget", "9")])], [("budget", "4")],
                "--budget 4 applies to no policy: h2o:budget=8 and rkv:budget=9 set their own"
            ),
            (
                [item("h2o", [("budget", "8")]), item("h2o")], [("budget", "8")],
                "--policy names the same run twice (h2o:budget=8 and h2o)"
            ),
            (
                [item("h2o"), item("rkv")], [("budget", "4"), ("budget", "8")],
                "--budget given more than once; to give policies different values, write them after each name"
            ),
            (
                [item("thinkv", [("calibration", "a/cal.json")]), item("thinkv", [("calibration", "b/cal.json")])],
                [("budget", "64")],
                "would both be labelled thinkv(budget=64,calibration=cal.json)"
            ),
            ([item("h20")], [], "unknown policy 'h20' (did you mean h2o?")
        ]
        for (items, options, expected) in cases {
            XCTAssertThrowsError(try PolicySpec.specs(items: items, options: options), expected) { error in
                XCTAssertTrue(error is UsageError, "\(error)")
                XCTAssertTrue("\(error)".contains(expected), "\(error)")
            }
        }
    }

    func testAMemoryTargetRefusesABudgetOfAnItemAndMatchesTheRest() throws {
        let budgeted = [item("h2o", [("budget", "8")]), item("kivi")]
        XCTAssertThrowsError(try MemoryMatcher.specs(items: budgeted, options: [])) { error in
            XCTAssertTrue(
                "\(error)".contains("--policy h2o:budget=8: a budget of its own and a memory target"),
                "\(error)")
        }
        let items = [item("h2o", [("recent", "2")]), item("h2o", [("recent", "4")]), item("kivi")]
        let specs = try MemoryMatcher.specs(items: items, options: [])
        // No stand-in value: the budget awaits the search, and a typed read of it throws until then.
        XCTAssertEqual(specs.map { $0.parameters.given["budget"] }, [nil, nil, nil])
        XCTAssertEqual(specs.map(\.awaitsBudget), [true, true, false])
        XCTAssertEqual(specs.map(\.label), ["h2o(recent=2)", "h2o(recent=4)", "kivi"])
        XCTAssertThrowsError(try specs[0].parameters.integer("budget"))
        XCTAssertEqual(try specs[0].withBudget(12).parameters.integer("budget"), 12)
        XCTAssertEqual(specs.map { $0.parameters.given["recent"] }, ["2", "4", nil])
    }

    // MARK: Replays

    private func json(
        _ outcome: CommandRunner.Outcome, file: StaticString = #filePath,
        line: UInt = #line
    ) throws -> [[String: Any]] {
        XCTAssertEqual(outcome.status, 0, outcome.stderr, file: file, line: line)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
        return try XCTUnwrap(report["runs"] as? [[String: Any]])
    }

    /// The CSV's rows as column name -> cell, without the header.
    private func rows(_ path: String) throws -> [[String: String]] {
        let lines = try SweepFixture.contents(path).split(separator: "\n").map(String.init)
        let header = lines[0].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        return lines.dropFirst().map { line in
            // Labels with commas are quoted; they are compared whole below, so split on the
            // quotes first.
            var cells: [String] = [], cell = "", quoted = false
            for character in line {
                if character == "\"" {
                    quoted.toggle(); cell.append(character)
                } else if character == ",", !quoted {
                    cells.append(cell); cell = ""
                } else {
                    cell.append(character)
                }
            }
            cells.append(cell)
            return Dictionary(uniqueKeysWithValues: zip(header, cells))
        }
    }

    func testOneReplayOfTwoBudgetsEqualsTwoReplays() throws {
        let path = try trace()
        let together = try run([
            "replay", path, "--policy", "h2o:budget=12,rkv:budget=16:divide=4,streaming",
            "--budget", "10", "--sinks", "2", "--json", "--csv", file("together.csv")
        ])
        let apart = [
            try run(["replay", path, "--policy", "h2o", "--budget", "12", "--json", "--csv", file("h2o.csv")]),
            try run([
                "replay", path, "--policy", "rkv", "--budget", "16", "--divide", "4", "--json",
                "--csv", file("rkv.csv")
            ]),
            try run([
                "replay", path, "--policy", "streaming", "--budget", "10", "--sinks", "2", "--json",
                "--csv", file("streaming.csv")
            ])
        ]
        let combined = try json(together)
        let separate = try apart.map { try json($0)[0] }
        XCTAssertEqual(
            combined.map { $0["label"] as? String },
            ["h2o(budget=12)", "rkv(budget=16,divide=4)", "streaming(budget=10,sinks=2)"])
        for (run, alone) in zip(combined, separate) {
            for key in ["policy", "label", "parameters", "compresses", "summary"] {
                XCTAssertEqual(
                    try JSONSerialization.data(
                        withJSONObject: [key: try XCTUnwrap(run[key])],
                        options: .sortedKeys),
                    try JSONSerialization.data(
                        withJSONObject: [key: try XCTUnwrap(alone[key])],
                        options: .sortedKeys),
                    "\(run["label"] ?? "?") \(key)")
            }
        }
        // The per-step CSV: the rows of each policy are the rows of its own replay, on the
        // columns both have (the combined one has every chosen policy's parameter columns).
        let combinedRows = try rows(file("together.csv"))
        var offset = 0
        for name in ["h2o", "rkv", "streaming"] {
            let own = try rows(file("\(name).csv"))
            XCTAssertFalse(own.isEmpty)
            for (i, row) in own.enumerated() {
                let other = combinedRows[offset + i]
                for (column, cell) in row { XCTAssertEqual(other[column], cell, "\(name) row \(i) \(column)") }
            }
            offset += own.count
        }
        XCTAssertEqual(offset, combinedRows.count)
    }

    func testTheSamePolicyTwiceIsToldApartInEveryOutput() throws {
        let path = try trace()
        let outcome = try run([
            "replay", path, "--policy", "h2o:budget=8,h2o:budget=16:recent=4", "--json",
            "--csv", file("s.csv"), "--kept", file("k.jsonl"), "--cache-timeline", file("t.jsonl")
        ])
        let labels = ["h2o(budget=8)", "h2o(budget=16,recent=4)"]
        XCTAssertEqual(try json(outcome).map { $0["label"] as? String }, labels)
        let csv = try rows(file("s.csv"))
        XCTAssertEqual(Set(csv.map { $0["policy"]! }), ["h2o(budget=8)", "\"h2o(budget=16,recent=4)\""])
        XCTAssertEqual(Set(csv.map { $0["policy_name"]! }), ["h2o"])
        for output in [file("k.jsonl"), file("t.jsonl")] {
            let lines = try SweepFixture.contents(output).split(separator: "\n")
            let policies = try lines.map { line -> String in
                let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
                return try XCTUnwrap(object["policy"] as? String)
            }
            XCTAssertEqual(Set(policies), Set(labels), output)
        }
        let text = try run(["replay", path, "--policy", "h2o:budget=8,h2o:budget=16:recent=4"])
        XCTAssertEqual(text.status, 0, text.stderr)
        for label in labels { XCTAssertTrue(text.stdout.contains(label), text.stdout) }

        // Layer shards of it merge into the one replay's report.
        let whole = try json(run(["replay", path, "--policy", "h2o:budget=8,h2o:budget=16:recent=4", "--json"]))
        for (layer, name) in [("0", file("a.json")), ("1", file("b.json"))] {
            let shard = try run([
                "replay", path, "--policy", "h2o:budget=8,h2o:budget=16:recent=4", "--layers", layer,
                "--shard-state", name
            ])
            XCTAssertEqual(shard.status, 0, shard.stderr)
        }
        let merged = try json(run(["merge", file("a.json"), file("b.json"), "--json"]))
        XCTAssertEqual(merged.map { $0["label"] as? String }, labels)
        for (a, b) in zip(whole, merged) {
            XCTAssertEqual(
                try JSONSerialization.data(withJSONObject: a["summary"]!, options: .sortedKeys),
                try JSONSerialization.data(withJSONObject: b["summary"]!, options: .sortedKeys))
        }
    }

    func testUsageErrorsExitTwoBeforeAnyWork() throws {
        let path = try trace()
        let cases: [([String], String)] = [
            (["--policy", "h2o:recnet=8", "--budget", "8"], "h2o has no parameter 'recnet' (did you mean recent?)"),
            (["--policy", "h2o:budget=-4"], "--policy h2o:budget=-4: budget must be in 1...2147483647, got '-4'"),
            (["--policy", "h2o:"], "--policy item 'h2o:': no parameter after ':'"),
            (["--policy", "h2o:budget"], "parameter 'budget' has no value"),
            (["--policy", "h2o:budget=1:budget=2"], "parameter 'budget' is given twice"),
            (["--policy", "h2o:budget=8,h2o:budget=8"], "--policy names the same run twice"),
            (["--policy", "h2o:budget=8,rkv", "--kv-percent", "20"], "a budget of its own and a memory target"),
            (["--policy", "h2o", "--budget", "8", "--policy", "rkv", "--budget", "16"], "write them after each name"),
            (["--policy", "hto:budget=8"], "did you mean h2o?"),
            // A combination the policy refuses is checked against the trace before the replay.
            (["--policy", "snapkv:budget=4:window=8"], "snapkv")
        ]
        for (arguments, expected) in cases {
            let outcome = try run(["replay", path, "--csv", file("never.csv")] + arguments)
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.hasPrefix("thinkv-sim replay: "), outcome.stderr)
            XCTAssertTrue(outcome.stderr.contains(expected), "\(arguments): \(outcome.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: file("never.csv")))
        }
    }

    func testAMemoryTargetMatchesEachItem() throws {
        let path = try trace()
        let runs = try json(
            run([
                "replay", path, "--policy", "h2o:recent=2,h2o:recent=6,kivi", "--kv-percent", "50",
                "--json"
            ]))
        XCTAssertEqual(runs.map { ($0["parameters"] as? [String: Any])?["recent"] as? Int }, [2, 6, nil])
        let statuses = runs.map { ($0["memory_match"] as? [String: Any])?["status"] as? String }
        XCTAssertEqual(statuses[2], "not matched")
        XCTAssertTrue(statuses[0] != "not matched" && statuses[1] != "not matched", "\(statuses)")
        let labels = runs.compactMap { $0["label"] as? String }
        XCTAssertEqual(Set(labels).count, 3, "\(labels)")

        // A target out of reach: each run's note says which of the two runs it is.
        let unreachable = try json(
            run([
                "replay", path, "--policy", "rkv:divide=4,rkv:divide=2", "--kv-percent", "1",
                "--json"
            ]))
        let notes = unreachable.map { ($0["memory_match"] as? [String: Any])?["note"] as? String ?? "" }
        XCTAssertTrue(notes[0].hasPrefix("rkv(divide=4): mean KV of 1.00 %"), notes[0])
        XCTAssertTrue(notes[1].hasPrefix("rkv(divide=2): mean KV of 1.00 %"), notes[1])
    }

    // MARK: serve-policy and sweep configs

    func testServePolicyTakesOneItem() throws {
        let binary = try XCTUnwrap(CommandRunner.binary)
        // A header (1 layer, 1 q head, 1 kv head, dim 4, prompt 2, 32 positions, scale 0), then the end frame.
        var input = Data("TKVSERV1".utf8)
        for value: Int32 in [1, 1, 1, 4, 2, 32, 0, 3] {
            withUnsafeBytes(of: value.littleEndian) { input.append(contentsOf: $0) }
        }
        let inputURL = directory.appendingPathComponent("frames.bin")
        let outputURL = directory.appendingPathComponent("answer.bin")
        try input.write(to: inputURL)
        FileManager.default.createFile(atPath: outputURL.path, contents: nil)
        let process = Process()
        process.executableURL = binary
        process.arguments = ["serve-policy", "--policy", "rkv:budget=16:divide=2"]
        process.standardInput = try FileHandle(forReadingFrom: inputURL)
        process.standardOutput = try FileHandle(forWritingTo: outputURL)
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        let answer = try Data(contentsOf: outputURL)
        XCTAssertGreaterThan(answer.count, 12)
        let summary = String(decoding: answer.dropFirst(12), as: UTF8.self)
        XCTAssertTrue(summary.contains("\"policy\":\"rkv(budget=16,divide=2)\""), summary)

        let two = try run(["serve-policy", "--policy", "rkv:budget=6,h2o:budget=6"])
        XCTAssertEqual(two.status, 2)
        XCTAssertTrue(two.stderr.contains("--policy takes one policy"), two.stderr)
        let typo = try run(["serve-policy", "--policy", "rkv:budget=6:divde=2"])
        XCTAssertEqual(typo.status, 2)
        XCTAssertTrue(typo.stderr.contains("rkv has no parameter 'divde' (did you mean divide?)"), typo.stderr)
    }

    func testASweepEntryMayCarryParameters() throws {
        let traces = try SweepFixture.traces(in: directory)
        func grid(_ entries: String) throws -> SweepGrid {
            try SweepFixture.grid(
                #"{"traces": ["\#(traces[0])"], "output": "o.csv", "#
                    + #""parameters": {"budget": [8, 16]}, "policies": [\#(entries)]}"#)
        }
        let spelled = try grid(#""rkv:divide=4", "h2o:budget=12", "full""#)
        let objects = try grid(
            #"{"policy": "rkv", "parameters": {"divide": 4}}, "#
                + #"{"policy": "h2o", "parameters": {"budget": 12}}, "full""#)
        XCTAssertEqual(spelled.runs.map(\.key), objects.runs.map(\.key))
        XCTAssertEqual(
            spelled.runs.map(\.spec.label),
            ["rkv(budget=8,divide=4)", "rkv(budget=16,divide=4)", "h2o(budget=12)", "full"])

        func problem(_ entries: String) -> String {
            do { _ = try grid(entries); return "accepted" } catch { return "\(error)" }
        }
        let cases: [(String, String)] = [
            (#""full", "rkv:divide""#, "test.json: policies[1]: entry 'rkv:divide': parameter 'divide' has no value"),
            (#""rkv:divde=4""#, "policies[0].parameters.divde: unknown parameter of rkv"),
            (#""rkv:divide=0""#, "policies[0].parameters.divide: rkv: --divide must be in"),
            (#"{"policy": "rkv:divide=4"}"#, "policies[0].policy: 'rkv:divide=4': in an object entry"),
            (#""rkv:divide=4", "rkv:divide=4""#, "repeats a run")
        ]
        for (entries, expected) in cases {
            XCTAssertTrue(problem(entries).contains(expected), problem(entries))
        }
    }
}
