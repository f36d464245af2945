import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Small sweeps over tiny traces, shared by the sweep test classes.
enum SweepFixture {
    /// Two tiny traces with q/k/v and thought labels.
    static func traces(in directory: URL) throws -> [String] {
        try [(name: "a.h5", T: 28, seed: UInt64(11)), (name: "b.h5", T: 22, seed: UInt64(12))].map { t in
            let labels: [Int8] = (0..<t.T).map { $0 < 6 ? -1 : Int8(($0 / 5) % 3) }
            return try TestTraces.write(
                to: directory.appendingPathComponent(t.name), T: t.T, P: 6, Hq: 2, Hkv: 1, D: 4,
                numLayers: 4,
                layers: [
                    TestTraces.randomLayer(T: t.T, Hq: 2, Hkv: 1, D: 4, seed: t.seed),
                    TestTraces.randomLayer(T: t.T, Hq: 2, Hkv: 1, D: 4, seed: t.seed + 100, index: 2)
                ],
                thought: labels)
        }
    }

    /// A config (as JSON text) sweeping budgets of two eviction policies, kivi bit widths and
    /// the full cache over the traces.
    static func json(traces: [String], output: String, steps: String? = nil, extra: String = "", kivi: Bool = true)
        -> String
    {
        let list = traces.map { "\"\($0)\"" }.joined(separator: ", ")
        let kiviEntry =
            kivi
            ? ",\n    {\"policy\": \"kivi\", \"parameters\": {\"k-bits\": [2, 4], \"residual\": 4, \"group\": 4}}" : ""
        return """
            {
              "name": "test sweep",
              "traces": [\(list)],
              "policies": [
                "full",
                {"policy": "streaming", "parameters": {"sinks": 1}},
                "h2o"\(kiviEntry)
              ],
              "parameters": {"budget": [4, 8]},
              "output": "\(output)"\(steps.map { ",\n  \"step_csv_dir\": \"\($0)\"" } ?? "")\(extra)
            }
            """
    }

    static func write(_ text: String, to url: URL) throws -> String {
        try Data(text.utf8).write(to: url)
        return url.path
    }

    static func grid(_ json: String, file: String = "test.json") throws -> SweepGrid {
        try SweepGrid(config: SweepConfig.decode(Data(json.utf8), file: file))
    }

    static func contents(_ path: String) throws -> String {
        String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
    }
}

// MARK: - Config

final class SweepConfigTests: XCTestCase {
    private func configError(_ json: String, file: StaticString = #filePath, line: UInt = #line) -> SweepConfigError? {
        do {
            _ = try SweepConfig.decode(Data(json.utf8), file: "cfg.json")
            XCTFail("config accepted: \(json)", file: file, line: line)
            return nil
        } catch let error as SweepConfigError {
            return error
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
            return nil
        }
    }

    private let base = #""traces": ["t.h5"], "output": "o.csv""#

    func testTypoAtTopLevelIsNamed() throws {
        let error = try XCTUnwrap(configError(#"{\#(base), "policies": ["full"], "bugdet": [64]}"#))
        XCTAssertEqual(error.path, "bugdet")
        XCTAssertTrue(error.description.hasPrefix("cfg.json: bugdet: unknown key"), error.description)
    }

    func testTypoInsidePolicyEntryIsNamed() throws {
        let error = try XCTUnwrap(
            configError(#"{\#(base), "policies": ["full", {"policy": "h2o", "paramters": {"budget": 4}}]}"#))
        XCTAssertEqual(error.path, "policies[1].paramters")
        XCTAssertTrue(error.description.contains("unknown key"), error.description)
    }

    func testUnknownParameterOfAPolicyIsNamed() throws {
        let error = try XCTUnwrap(
            configError(#"{\#(base), "policies": [{"policy": "h2o", "parameters": {"budget": 4, "recnet": 2}}]}"#))
        XCTAssertEqual(error.path, "policies[0].parameters.recnet")
        XCTAssertTrue(error.problem.contains("unknown parameter of h2o"), error.description)
        XCTAssertTrue(error.problem.contains("recent"), "lists the known ones: \(error.description)")
    }

    func testOutputMayComeFromTheCommandLineInstead() throws {
        let json = #"{"traces": ["t.h5"], "policies": ["full"]}"#
        let missing = try XCTUnwrap(configError(json))
        XCTAssertEqual(missing.path, "output")
        XCTAssertTrue(missing.problem.contains("--output"), missing.description)
        let given = try SweepConfig.decode(Data(json.utf8), file: "cfg.json", output: "cli.csv")
        XCTAssertEqual(given.output, "cli.csv")
        let overridden = try SweepConfig.decode(
            Data(#"{\#(base), "policies": ["full"]}"#.utf8), file: "cfg.json", output: "cli.csv")
        XCTAssertEqual(overridden.output, "cli.csv", "--output wins over the config's key")
    }

    func testSharedParameterNoPolicyHasIsAnError() throws {
        let error = try XCTUnwrap(
            configError(#"{\#(base), "policies": ["full", "kivi"], "parameters": {"budget": [4]}}"#))
        XCTAssertEqual(error.path, "parameters.budget")
    }

    func testTypoInsideTraceEntryIsNamed() throws {
        let error = try XCTUnwrap(
            configError(#"{"traces": ["t.h5", {"paht": "u.h5"}], "output": "o.csv", "policies": ["full"]}"#))
        XCTAssertEqual(error.path, "traces[1].paht")
        let parameter = try XCTUnwrap(
            configError(
                #"{"traces": [{"path": "t.h5", "parameters": {"budgett": 4}}], "output": "o.csv", "#
                    + #""policies": ["h2o"], "parameters": {"budget": 4}}"#
            ))
        XCTAssertEqual(parameter.path, "traces[0].parameters.budgett")
        let cases: [(String, String)] = [
            (
                #"{"traces": ["t.h5", {"path": "u.h5", "parmeters": {"budget": 4}}], "output": "o.csv", "#
                    + #""policies": ["h2o"]}"#,
                "traces[1].parmeters"
            ),
            (
                #"{"traces": [{"path": "t.h5", "parameters": {"budget": "x"}}], "output": "o.csv", "#
                    + #""policies": ["h2o"]}"#,
                "traces[0].parameters.budget"
            ),
            (
                #"{"traces": [{"path": "t.h5", "parameters": {"budget": [4, {}]}}], "output": "o.csv", "#
                    + #""policies": ["h2o"]}"#,
                "traces[0].parameters.budget[1]"
            ),
            (#"{"traces": [{"parameters": {"budget": 4}}], "output": "o.csv", "policies": ["h2o"]}"#, "traces[0]"),
            (#"{"traces": ["t.h5", 7], "output": "o.csv", "policies": ["full"]}"#, "traces[1]"),
            // budget given for one trace only: h2o lacks it on the other.
            (
                #"{"traces": ["t.h5", {"path": "u.h5", "parameters": {"budget": 4}}], "output": "o.csv", "#
                    + #""policies": ["h2o"]}"#,
                "policies[0]"
            )
        ]
        for (json, path) in cases {
            let error = try XCTUnwrap(configError(json), json)
            XCTAssertEqual(error.path, path, "\(json) -> \(error.description)")
            XCTAssertFalse(error.description.contains("\n"), "one line: \(error.description)")
        }
        XCTAssertTrue(
            try XCTUnwrap(configError(cases[0].0)).problem.contains(
                "unknown key (allowed here: comment, path, parameters)"))
        XCTAssertTrue(
            try XCTUnwrap(configError(cases.last!.0)).problem.contains("needs parameter 'budget' on traces[0]"))
    }

    func testCommentsAreAllowedInTraceAndPolicyEntries() throws {
        let config = try SweepConfig.decode(
            Data(
                #"""
                {"traces": ["t.h5", {"path": "u.h5", "comment": "no parameters"}], "output": "o.csv",
                 "policies": [{"policy": "full", "comment": "reference"}]}
                """#.utf8), file: "cfg.json")
        XCTAssertEqual(
            config.traces,
            [
                SweepConfig.TraceEntry(path: "t.h5", parameters: [:]),
                SweepConfig.TraceEntry(path: "u.h5", parameters: [:])
            ])
    }

    func testOtherProblemsNameTheirKey() throws {
        let cases: [(String, String)] = [
            (#"{\#(base), "policies": ["ful"]}"#, "policies[0].policy"),
            (#"{\#(base), "policies": ["full"], "metrics": ["mass_recall_mean", "mass_recal_p5"]}"#, "metrics[1]"),
            (
                #"{\#(base), "policies": [{"policy": "h2o", "parameters": {"budget": [4, "x"]}}]}"#,
                "policies[0].parameters.budget"
            ),
            (
                #"{\#(base), "policies": [{"policy": "h2o", "parameters": {"budget": {"a": 1}}}]}"#,
                "policies[0].parameters.budget"
            ),
            (#"{\#(base), "policies": ["h2o"]}"#, "policies[0]"),
            (#"{\#(base), "policies": ["full"], "paging": ["ct", "pages"]}"#, "paging"),
            (#"{\#(base), "policies": ["full"], "block_size": [8, "big"]}"#, "block_size[1]"),
            (#"{\#(base), "policies": ["full"], "topk": "32"}"#, "topk"),
            (#"{"traces": ["t.h5"], "policies": ["full"]}"#, "output"),
            (#"{\#(base), "policies": ["full"], "metric_steps": "stride:0"}"#, "metric_steps"),
            (#"{\#(base), "policies": ["full"], "metric_steps": "every:4"}"#, "metric_steps"),
            (#"{\#(base), "policies": ["h2o"], "metric_steps": "stride:4", "kv_percent": 20}"#, "metric_steps")
        ]
        for (json, path) in cases {
            let error = try XCTUnwrap(configError(json), json)
            XCTAssertEqual(error.path, path, "\(json) -> \(error.description)")
            XCTAssertFalse(error.description.contains("\n"), "one line: \(error.description)")
        }
    }

    func testInvalidJSONNamesTheFile() throws {
        let error = try XCTUnwrap(configError(#"{"traces": ["t.h5"],, }"#))
        XCTAssertTrue(error.description.hasPrefix("cfg.json: not valid JSON"), error.description)
        XCTAssertTrue(error.description.contains("line 1, column 21"), "says where: \(error.description)")
    }

    func testValuesAreNormalisedAsOptionValues() throws {
        let config = try SweepConfig.decode(
            Data(
                #"""
                {"traces": ["t.h5"], "output": "o.csv", "policies": [
                  {"policy": "streaming", "parameters": {"budget": [64, 128], "trigger": "legacy", "divide": 32}},
                  {"policy": "h2o", "parameters": {"budget": 8}}],
                 "layers": [0, 2], "paging": ["ct", "none"], "block_size": [8, "auto"], "metrics": ["kv_bytes_peak", \#
                 "mass_recall_mean"]}
                """#.utf8), file: "cfg.json")
        XCTAssertEqual(
            config.policies[0].parameters, ["budget": ["64", "128"], "trigger": ["legacy"], "divide": ["32"]])
        XCTAssertEqual(config.layers, [0, 2])
        XCTAssertEqual(config.paging, [.ct, .none])
        XCTAssertEqual(config.blockSizes, [8, nil])
        XCTAssertEqual(
            config.metrics, ["mass_recall_mean", "kv_bytes_peak"], "metrics come out in the canonical column order")
    }

    func testNestedArrayIsOneListValue() throws {
        let decoded = try JSONDecoder().decode(
            [String: ParameterValues].self, from: Data(#"{"x": [[64, 32, 16], "8,4", 2.5, true]}"#.utf8))
        XCTAssertEqual(decoded["x"]?.values, ["64,32,16", "8,4", "2.5", "true"])
    }
}

// MARK: - Grid

final class SweepGridTests: XCTestCase {
    func testGridOrderKeysAndColumns() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        let grid = try SweepFixture.grid(SweepFixture.json(traces: traces, output: "o.csv"))
        // Per trace: full, streaming x2 budgets, h2o x2 budgets, kivi x2 bit widths.
        XCTAssertEqual(grid.runs.count, 14)
        XCTAssertEqual(grid.runs.map(\.id), Array(0..<14))
        XCTAssertEqual(
            grid.runs.prefix(7).map(\.spec.label),
            [
                "full", "streaming(budget=4,sinks=1)", "streaming(budget=8,sinks=1)", "h2o(budget=4)", "h2o(budget=8)",
                "kivi(group=4,k-bits=2,residual=4)", "kivi(group=4,k-bits=4,residual=4)"
            ])
        XCTAssertEqual(
            grid.runs[3].key,
            "trace=\(traces[0]);policy=h2o;budget=4;gqa-reduce=sum;recent=auto;score-dtype=float32;"
                + "layers=all;steps=all;topk=32;paging=ct;block_size=16"
        )
        XCTAssertEqual(Set(grid.runs.map(\.key)).count, grid.runs.count)
        XCTAssertEqual(
            Array(grid.columns.prefix(10)),
            [
                "run_id", "run_key", "trace", "trace_fingerprint", "model", "num_layers", "decode_steps", "policy",
                "label", "budget"
            ])
        XCTAssertTrue(grid.columns.contains("k_bits"), "parameter columns use underscores")
        XCTAssertEqual(grid.columns.last, "transition_evicted_percent")
    }

    func testDefaultsGivenExplicitlyAreTheSameRunAsDefaults() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        let implicit = try SweepFixture.grid(
            #"{"traces": ["\#(traces[0])"], "output": "o.csv", "policies": [{"policy": "kivi"}]}"#)
        let explicit = try SweepFixture.grid(
            #"{"traces": ["\#(traces[0])"], "output": "o.csv", "policies": [{"policy": "kivi", "#
                + #""parameters": {"k-bits": 2, "group": 32}}]}"#
        )
        XCTAssertEqual(implicit.runs[0].key, explicit.runs[0].key, "the key holds effective values")
    }

    func testTraceEntryParametersApplyToItsTracesOnly() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        // Shared budget 8; trace b's entry sets 4 for every policy with a budget; the h2o entry's own wins everywhere.
        let grid = try SweepFixture.grid(
            #"""
            {"traces": ["\#(traces[0])", {"path": "\#(directory.path)/b*.h5", "parameters": {"budget": 4, \#
            "sinks": 2}, "comment": "small"}],
             "output": "o.csv", "parameters": {"budget": 8},
             "policies": ["full", "streaming", {"policy": "h2o", "parameters": {"budget": 6}}]}
            """#)
        XCTAssertEqual(
            grid.runs.map(\.spec.label),
            [
                "full", "streaming(budget=8)", "h2o(budget=6)",
                "full", "streaming(budget=4,sinks=2)", "h2o(budget=6)"
            ])
        XCTAssertEqual(grid.runs.map(\.trace), [traces[0], traces[0], traces[0], traces[1], traces[1], traces[1]])
    }

    func testTraceNamedAgainWithOtherParameters() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        let policies = #""output": "o.csv", "parameters": {"budget": 8}, "policies": ["h2o"]"#
        // Specific entry first, then a glob for the rest: the glob skips it, its parameters stay.
        let grid = try SweepFixture.grid(
            #"{"traces": [{"path": "\#(traces[1])", "parameters": {"budget": 4}}, "\#(directory.path)/*.h5"], "#
                + #"\#(policies)}"#
        )
        XCTAssertEqual(grid.runs.map(\.trace), [traces[1], traces[0]])
        XCTAssertEqual(grid.runs.map(\.spec.label), ["h2o(budget=4)", "h2o(budget=8)"])
        // The same path written out again with the same parameters is swept once.
        let same = try SweepFixture.grid(
            #"{"traces": ["\#(traces[0])", {"path": "\#(traces[0])", "comment": "again"}], \#(policies)}"#)
        XCTAssertEqual(same.runs.count, 1)
        // Written out after a glob that matched it, its parameters would be lost: an error.
        XCTAssertThrowsError(
            try SweepFixture.grid(
                #"{"traces": ["\#(directory.path)/*.h5", {"path": "\#(traces[1])", "parameters": {"budget": 4}}], "#
                    + #"\#(policies)}"#
            )
        ) { error in
            XCTAssertEqual((error as? SweepConfigError)?.path, "traces[1]", "\(error)")
            XCTAssertTrue("\(error)".contains("already named by traces[0]"), "\(error)")
        }
    }

    func testRepeatedRunIsAnError() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        XCTAssertThrowsError(
            try SweepFixture.grid(#"{"traces": ["\#(traces[0])"], "output": "o.csv", "policies": ["full", "full"]}"#)
        ) { error in
            XCTAssertEqual((error as? SweepConfigError)?.path, "policies[1]", "\(error)")
        }
    }

    func testMissingLiteralTraceFailsButEmptyGlobIsFine() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        XCTAssertThrowsError(
            try SweepFixture.grid(
                #"{"traces": ["\#(directory.path)/nope.h5"], "output": "o.csv", "policies": ["full"]}"#)
        ) { error in
            XCTAssertEqual((error as? SweepConfigError)?.path, "traces[0]", "\(error)")
        }
        let grid = try SweepFixture.grid(
            #"{"traces": ["\#(traces[1])", "\#(directory.path)/real/*.h5", "\#(directory.path)/*.h5"], "#
                + #""output": "o.csv", "policies": ["full"]}"#
        )
        XCTAssertEqual(
            grid.traces, [traces[1], traces[0]], "listed first, then the glob in sorted order without repeats")
    }

    func testShardsPartitionTheGrid() throws {
        let directory = try TestTraces.directory(self)
        let grid = try SweepFixture.grid(
            SweepFixture.json(traces: try SweepFixture.traces(in: directory), output: "o.csv"))
        for n in [1, 3, 5, 14, 20] {
            let ids = (0..<n).flatMap { grid.shard($0, of: n).map(\.id) }
            XCTAssertEqual(ids, Array(0..<14), "\(n) shards")
        }
        XCTAssertEqual(SweepRunner.shardOutputPath("out/s.csv", index: 2, count: 8), "out/s.shard-2-of-8.csv")
    }
}

// MARK: - Running, resuming, sharding

final class SweepRunnerTests: XCTestCase {
    private var directory: URL!
    private var traces: [String] = []

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
        traces = try SweepFixture.traces(in: directory)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func runner(output: String, steps: String? = nil, shard: (Int, Int)? = nil, extra: String = "") throws
        -> SweepRunner
    {
        let grid = try SweepFixture.grid(SweepFixture.json(traces: traces, output: output, steps: steps, extra: extra))
        let runner = SweepRunner(grid: grid, shard: shard.map { (index: $0.0, count: $0.1) })
        return runner
    }

    /// The uninterrupted sweep, for comparison.
    private func reference(steps: String? = nil) throws -> String {
        let output = path("reference.csv")
        let outcome = try runner(output: output, steps: steps).run()
        XCTAssertEqual(outcome.computed, 14)
        XCTAssertEqual(outcome.engineRuns, 2, "one engine run per trace")
        return try SweepFixture.contents(output)
    }

    func testRowsHoldTheEngineResults() throws {
        let csv = try CSVTable.parse(try reference(), file: "reference.csv").table
        XCTAssertEqual(csv.rows.count, 14)
        let column = { (name: String) in csv.index(of: name)! }
        let full = csv.rows[0]
        XCTAssertEqual(full[column("policy")], "full")
        XCTAssertEqual(full[column("mass_recall_mean")], "1")
        XCTAssertEqual(full[column("output_error_mean")], "0")
        XCTAssertEqual(full[column("percent_of_full_mean")], "100")
        XCTAssertEqual(full[column("budget")], "", "full has no budget")
        XCTAssertEqual(full[column("model")], "test-model")
        XCTAssertEqual(full[column("decode_steps")], "22")

        // The h2o budget-4 row equals a direct replay of that spec.
        let h2o = csv.rows[3]
        XCTAssertEqual(h2o[column("label")], "h2o(budget=4)")
        XCTAssertEqual(h2o[column("recent")], "auto")
        let (result, _) = try TestTraces.replay(traces[0], [try PolicySpec(name: "h2o", values: ["budget": "4"])])
        let summary = result.runs[0].summary
        XCTAssertEqual(h2o[column("mass_recall_mean")], SweepColumns.number(summary.massRecall.mean))
        XCTAssertEqual(h2o[column("kv_bytes_peak")], SweepColumns.number(summary.memory.peakBytes))
        XCTAssertLessThan(Double(h2o[column("mass_recall_mean")])!, 1, "eviction loses mass on a random trace")
        XCTAssertEqual(h2o[column("tokens_resident_final")], "4")
    }

    /// `metric_steps` samples every run's fidelity as `replay --metric-steps` does, and adds the
    /// sample and the confidence half-widths as columns; without it the columns are absent.
    func testMetricStepsSampleTheRowsAndAddIntervals() throws {
        let output = path("sampled.csv")
        _ = try runner(output: output, extra: ",\n  \"metric_steps\": \"stride:4\"").run()
        let csv = try CSVTable.parse(try SweepFixture.contents(output), file: "sampled.csv").table
        let column = { (name: String) in csv.index(of: name)! }
        let h2o = csv.rows[3]
        XCTAssertEqual(h2o[column("label")], "h2o(budget=4)")
        XCTAssertEqual(h2o[column("metric_steps")], "stride:4")
        var configuration = ReplayConfiguration(policies: [try PolicySpec(name: "h2o", values: ["budget": "4"])])
        configuration.metricSteps = .stride(4)
        let summary = try ReplayEngine(reader: try TraceReader(path: traces[0]), configuration: configuration).run()
            .runs[0].summary
        XCTAssertEqual(h2o[column("mass_recall_mean")], SweepColumns.number(summary.massRecall.mean))
        XCTAssertEqual(h2o[column("mass_recall_ci95")], SweepColumns.number(summary.massRecall.ci95HalfWidth))
        XCTAssertGreaterThan(Double(h2o[column("attention_kl_ci95")]) ?? 0, 0)
        XCTAssertTrue(h2o[column("run_key")].hasSuffix(";metric_steps=stride:4"), h2o[column("run_key")])
        let exact = try CSVTable.parse(try reference(), file: "reference.csv").table
        XCTAssertNil(exact.index(of: "metric_steps"))
        XCTAssertNil(exact.index(of: "mass_recall_ci95"))
        XCTAssertNotEqual(exact.rows[3][exact.index(of: "mass_recall_mean")!], h2o[column("mass_recall_mean")])
    }

    func testTraceEntryParametersReachTheEngine() throws {
        // Trace b gets budget 4 from its entry, trace a the shared 8: each row is a replay of its own spec.
        let output = path("per-trace.csv")
        let grid = try SweepFixture.grid(
            #"""
            {"traces": ["\#(traces[0])", {"path": "\#(traces[1])", "parameters": {"budget": 4}}],
             "output": "\#(output)", "parameters": {"budget": 8}, "policies": ["full", "h2o"]}
            """#)
        XCTAssertEqual(try SweepRunner(grid: grid).run().engineRuns, 2)
        let csv = try CSVTable.read(path: output).table
        let column = { (name: String) in csv.index(of: name)! }
        XCTAssertEqual(csv.rows.map { $0[column("budget")] }, ["", "8", "", "4"])
        XCTAssertTrue(
            csv.rows[3][column("run_key")].hasPrefix("trace=\(traces[1]);policy=h2o;budget=4;"),
            csv.rows[3][column("run_key")])
        for (row, trace, budget) in [(csv.rows[1], traces[0], "8"), (csv.rows[3], traces[1], "4")] {
            let (result, _) = try TestTraces.replay(trace, [try PolicySpec(name: "h2o", values: ["budget": budget])])
            XCTAssertEqual(row[column("mass_recall_mean")], SweepColumns.number(result.runs[0].summary.massRecall.mean))
            XCTAssertEqual(row[column("tokens_resident_final")], budget)
        }
    }

    func testStoppedSweepResumesToTheSameCSV() throws {
        let expected = try reference()
        let output = path("resumed.csv")
        let first = try runner(output: output)
        first.stopAfterEngineRuns = 1
        let partial = try first.run()
        XCTAssertEqual(partial.computed, 7)
        XCTAssertEqual(partial.pending, 7)
        let afterStop = try CSVTable.read(path: output).table
        XCTAssertEqual(afterStop.rows.count, 7, "the first trace's rows are on disk after its engine run")
        XCTAssertNotEqual(try SweepFixture.contents(output), expected)

        let second = try runner(output: output).run()
        XCTAssertEqual(second.reused, 7)
        XCTAssertEqual(second.computed, 7, "only the missing rows are computed")
        XCTAssertEqual(try SweepFixture.contents(output), expected)
    }

    func testTruncatedCSVResumesToTheSameCSV() throws {
        let expected = try reference()
        let lines = expected.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // Whole rows missing, and a file cut in the middle of a row.
        let cuts = [
            lines.prefix(4).joined(separator: "\n") + "\n",
            lines.prefix(10).joined(separator: "\n") + "\n" + lines[10].prefix(40)
        ]
        for (i, text) in cuts.enumerated() {
            let output = path("cut-\(i).csv")
            try Data(text.utf8).write(to: URL(fileURLWithPath: output))
            let outcome = try runner(output: output).run()
            XCTAssertEqual(outcome.reused, i == 0 ? 3 : 9)
            XCTAssertEqual(outcome.computed, 14 - outcome.reused)
            XCTAssertEqual(try SweepFixture.contents(output), expected, "cut \(i)")
        }
    }

    func testChangedRowIsKeptNotRecomputed() throws {
        // Proves rows are reused from the file rather than recomputed: an edited cell that is
        // still a possible value survives.
        let expected = try reference()
        let output = path("reference.csv")
        var (table, _) = try CSVTable.parse(expected, file: output)
        let column = try XCTUnwrap(table.index(of: "mass_recall_mean"))
        table.rows[2][column] = "0.5"
        let marked = table.render()
        try Data(marked.utf8).write(to: URL(fileURLWithPath: output))
        let outcome = try runner(output: output).run()
        XCTAssertEqual(outcome.computed, 0)
        XCTAssertEqual(try SweepFixture.contents(output), marked)

        // A cell that is not what this sweep writes (here the trace's model) is recomputed.
        try Data(marked.replacingOccurrences(of: "test-model", with: "edited-model").utf8).write(
            to: URL(fileURLWithPath: output))
        let again = try runner(output: output).run()
        XCTAssertEqual(again.computed, 14)
        XCTAssertEqual(try SweepFixture.contents(output), expected)
    }

    func testBatchingDoesNotChangeResults() throws {
        let expected = try reference()
        let output = path("batched.csv")
        let outcome = try runner(output: output, extra: ",\n  \"batch\": 3").run()
        XCTAssertEqual(outcome.engineRuns, 6, "7 runs per trace in batches of at most 3")
        XCTAssertEqual(try SweepFixture.contents(output), expected)
    }

    func testMergedShardsEqualTheUnshardedRun() throws {
        let expected = try reference()
        var paths: [String] = []
        for i in 0..<3 {
            let runner = try self.runner(output: path("unused.csv"), shard: (i, 3))
            XCTAssertEqual(runner.outputPath, path("unused.shard-\(i)-of-3.csv"))
            let outcome = try runner.run()
            XCTAssertEqual(outcome.computed, runner.runs.count)
            paths.append(runner.outputPath)
        }
        // Order of the inputs does not matter.
        let merged = try ShardMerge.merge(paths: paths.reversed())
        XCTAssertEqual(merged.render(), expected)
        XCTAssertEqual(ShardMerge.gaps(merged).count, 0)
        XCTAssertEqual(ShardMerge.missingShards(paths), [])
        let incomplete = try ShardMerge.merge(paths: [paths[0], paths[2]])
        XCTAssertGreaterThan(ShardMerge.gaps(incomplete).count, 0, "a missing middle shard shows as gaps")
        // The last shard missing leaves no gap; the file names tell.
        XCTAssertEqual(ShardMerge.gaps(try ShardMerge.merge(paths: [paths[0], paths[1]])).count, 0)
        XCTAssertEqual(ShardMerge.missingShards([paths[0], paths[1]]), ["shard 2 of 3"])
        let merge = { (arguments: [String]) in
            try CommandRunner.run(["merge"] + arguments, in: URL(fileURLWithPath: self.path("")))
        }
        let refused = try merge([paths[0], paths[1], "-o", path("m.csv")])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("shard 2 of 3") && refused.stderr.contains("--partial"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("m.csv")), "nothing written for an incomplete merge")
        let partial = try merge([paths[0], paths[1], "-o", path("m.csv"), "--partial"])
        XCTAssertEqual(partial.status, 0, partial.stderr)
        XCTAssertTrue(partial.stderr.contains("partial"), partial.stderr)
    }

    func testMergeRefusesShardsOfDifferentConfigs() throws {
        let a = try runner(output: path("a.csv"), shard: (0, 2))
        _ = try a.run()
        let other = try SweepFixture.grid(
            SweepFixture.json(
                traces: traces, output: path("b.csv"),
                extra: ",\n  \"metrics\": [\"mass_recall_mean\", \"kv_bytes_peak\"]"))
        let b = SweepRunner(grid: other, shard: (index: 1, count: 2))
        _ = try b.run()
        XCTAssertThrowsError(try ShardMerge.merge(paths: [a.outputPath, b.outputPath])) { error in
            let message = "\(error)"
            XCTAssertTrue(message.hasPrefix("\(b.outputPath): columns differ from \(a.outputPath)"), message)
            XCTAssertTrue(message.contains("only in \(a.outputPath): mass_recall_p5"), message)
            XCTAssertTrue(message.contains("different configs"), message)
        }
    }

    func testMetricsSelectColumnsAndResumeAcrossAddedPolicy() throws {
        let output = path("subset.csv")
        let metrics = ",\n  \"metrics\": [\"kv_bytes_peak\", \"mass_recall_mean\"]"
        let narrow = try SweepFixture.grid(
            SweepFixture.json(traces: traces, output: output, extra: metrics, kivi: false))
        XCTAssertEqual(try SweepRunner(grid: narrow).run().computed, 10)
        let table = try CSVTable.read(path: output).table
        XCTAssertEqual(Array(table.header.suffix(2)), ["mass_recall_mean", "kv_bytes_peak"])
        XCTAssertFalse(table.header.contains("k_bits"))

        // Adding a policy reuses every earlier row: the new policy's parameter columns are
        // empty in the old rows, as in a fresh run of the wider config.
        let wider = SweepFixture.json(traces: traces, output: output, extra: metrics)
        let outcome = try SweepRunner(grid: try SweepFixture.grid(wider)).run()
        XCTAssertEqual(outcome.reused, 10)
        XCTAssertEqual(outcome.computed, 4)
        let fresh = path("fresh.csv")
        _ = try SweepRunner(grid: try SweepFixture.grid(wider), output: fresh).run()
        XCTAssertEqual(try SweepFixture.contents(output), try SweepFixture.contents(fresh))
        XCTAssertTrue(try CSVTable.read(path: fresh).table.header.contains("k_bits"))
    }

    func testStepCSVsAreWrittenAndAMissingOneIsRecomputed() throws {
        let output = path("with-steps.csv")
        let steps = path("steps")
        let first = try runner(output: output, steps: steps).run()
        XCTAssertEqual(first.computed, 14)
        let table = try CSVTable.read(path: output).table
        let column = table.index(of: "steps_csv")!
        XCTAssertEqual(table.header.last, "steps_csv")
        let files = table.rows.map { $0[column] }
        XCTAssertEqual(Set(files).count, 14)
        let stepTable = try CSVTable.read(path: files[3]).table
        XCTAssertEqual(stepTable.header, ReplayReport.stepColumns)
        XCTAssertEqual(stepTable.rows.count, 2 * 22, "two layers x 22 decode steps")
        XCTAssertEqual(Set(stepTable.rows.map { $0[0] }), ["h2o(budget=4)"])

        let before = try SweepFixture.contents(output)
        try FileManager.default.removeItem(atPath: files[3])
        let second = try runner(output: output, steps: steps).run()
        XCTAssertEqual(second.computed, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: files[3]))
        XCTAssertEqual(try SweepFixture.contents(output), before)
    }

    func testPagingSweepSharesOneEngineRunAndMatchesSeparateRuns() throws {
        let output = path("paging.csv")
        let grid = try SweepFixture.grid(
            #"""
            {"traces": ["\#(traces[0])"], "output": "\#(output)", "policies": [{"policy": "h2o", \#
            "parameters": {"budget": 5}}],
             "paging": ["ct", "compact", "none"], "block_size": [2, 4]}
            """#)
        XCTAssertEqual(grid.runs.count, 6)
        let outcome = try SweepRunner(grid: grid).run()
        XCTAssertEqual(outcome.engineRuns, 1, "layouts of one trace share the reference")
        let table = try CSVTable.read(path: output).table
        let blocks = table.index(of: "paging_blocks_peak")!, paged = table.index(of: "paged_bytes_peak")!
        for (i, run) in grid.runs.enumerated() {
            var configuration = ReplayConfiguration(policies: [run.spec], threads: 1)
            configuration.paging = run.layout.mode
            configuration.blockSize = run.layout.blockSize
            let alone = try ReplayEngine(reader: TraceReader(path: traces[0]), configuration: configuration).run().runs[
                0
            ].summary.memory
            XCTAssertEqual(table.rows[i][blocks], SweepColumns.number(alone.peakBlocks), run.key)
            XCTAssertEqual(table.rows[i][paged], SweepColumns.number(alone.peakPagedBytes), run.key)
        }
        XCTAssertEqual(table.rows[4][blocks], "0", "no blocks with paging none")
        XCTAssertNotEqual(table.rows[0][blocks], table.rows[1][blocks], "block size 2 and 4 differ")
    }

    func testValuesThePolicyRefusesTogetherNameTheConfig() throws {
        // Each value is valid alone; streaming refuses sinks (default 4) not below the budget.
        let output = path("refused.csv")
        let grid = try SweepFixture.grid(
            #"{"traces": ["\#(traces[0])"], "output": "\#(output)", "policies": [{"policy": "streaming", "#
                + #""parameters": {"budget": [8, 4]}}]}"#,
            file: "combo.json")
        XCTAssertThrowsError(try SweepRunner(grid: grid).run()) { error in
            XCTAssertTrue(
                "\(error)".hasPrefix(
                    "combo.json: 1 of the grid's runs are invalid: run 1 (streaming(budget=4) on a.h5): streaming: "
                        + "--sinks (4) must be below --budget (4)"
                ), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: output), "checked before any replay: no rows")
    }

    func testCSVReadsBackWithPythonsCSVModule() throws {
        _ = try reference()
        let output = path("reference.csv")
        // Labels such as kivi(group=4,k-bits=2,residual=4) hold commas: the quoting must be right.
        let script = """
            import csv, sys
            with open(sys.argv[1], newline="") as f:
                rows = list(csv.reader(f))
            header, body = rows[0], rows[1:]
            assert all(len(r) == len(header) for r in body), "ragged rows"
            print(len(header), len(body), header[0], header[-1], body[5][header.index("label")], \
            body[3][header.index("run_key")].count(";"))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, output]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        if process.terminationStatus == 127 { throw XCTSkip("python3 not installed") }
        XCTAssertEqual(process.terminationStatus, 0)
        let grid = try SweepFixture.grid(SweepFixture.json(traces: traces, output: output))
        let fields = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).split(
            separator: " "
        ).map(String.init)
        XCTAssertEqual(
            fields,
            [
                String(grid.columns.count), "14", "run_id", "transition_evicted_percent",
                "kivi(group=4,k-bits=2,residual=4)", "10"
            ])
    }
}

// MARK: - CSV

final class ResultsCSVTests: XCTestCase {
    func testQuotingRoundTrips() throws {
        let table = CSVTable(header: ["a", "b,c", "d"], rows: [["x\"y", "1,2", "line\nbreak"], ["", "plain", "\r\n"]])
        let text = table.render()
        XCTAssertEqual(text, "a,\"b,c\",d\n\"x\"\"y\",\"1,2\",\"line\nbreak\"\n,plain,\"\r\n\"\n")
        XCTAssertEqual(try CSVTable.parse(text, file: "t").table, table)
        XCTAssertEqual(
            try CSVTable.parse(text.replacingOccurrences(of: "d\n", with: "d\r\n"), file: "t").table, table,
            "CRLF records")
    }

    func testBadCSVIsAnErrorNamingTheLine() {
        XCTAssertThrowsError(try CSVTable.parse("a,b\n1,2\n3\n", file: "t.csv")) {
            XCTAssertEqual("\($0)", "t.csv: line 3: 1 fields, the header has 2")
        }
        XCTAssertThrowsError(try CSVTable.parse("a,b\n1,x\"y\n", file: "t.csv")) {
            XCTAssertTrue("\($0)".contains("line 2: quote inside"))
        }
        XCTAssertThrowsError(try CSVTable.parse("a,b\n1,2", file: "t.csv")) {
            XCTAssertTrue("\($0)".contains("cut short"))
        }
        XCTAssertEqual(
            try CSVTable.parse("a,b\n1,2\n3,\"4", file: "t.csv", dropPartialLast: true).table.rows, [["1", "2"]])
    }

    func testNumbersAreDeterministic() {
        XCTAssertEqual(SweepColumns.number(1), "1")
        XCTAssertEqual(SweepColumns.number(-0.0), "0")
        XCTAssertEqual(SweepColumns.number(10035200), "10035200")
        XCTAssertEqual(SweepColumns.number(0.123456789123), "0.12345679")
        XCTAssertEqual(SweepColumns.number(.infinity), "inf")
        XCTAssertEqual(SweepColumns.number(.nan), "")
        XCTAssertEqual(SweepColumns.number(nil), "")
    }
}
