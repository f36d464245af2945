import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

final class MemoryMatchingTests: XCTestCase {
    /// 100 tokens (8 prompt), two layers of random q/k/v, 4 layers in the model.
    private func trace() throws -> String {
        let directory = try TestTraces.directory(self)
        let T = 100
        return try TestTraces.write(
            to: directory.appendingPathComponent("m.h5"), T: T, P: 8, Hq: 2, Hkv: 1, D: 4, numLayers: 4,
            layers: [
                TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 4, seed: 5),
                TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 4, seed: 6, index: 1)
            ])
    }

    private func matcher(
        _ path: String, _ specs: [PolicySpec], _ target: MemoryTarget, _ statistic: MemoryStatistic = .mean,
        tolerance: Double = 1
    ) throws -> MemoryMatcher {
        var configuration = ReplayConfiguration(policies: specs)
        // Two workers: the reference is filled in parallel parts while a store copies it.
        configuration.threads = 2
        configuration.chunkSteps = 16  // several chunks, so stored chunks are restored in order
        return MemoryMatcher(
            reader: try TraceReader(path: path), configuration: configuration, target: target, statistic: statistic,
            tolerance: tolerance)
    }

    /// Every budget from 1 to T in one engine run: the memory figure of each.
    private func exhaustive(
        _ path: String, policy: String, values: [String: String] = [:], lowest: Int,
        figure: (MemorySummary) -> Double
    ) throws -> [Int: Double] {
        let reader = try TraceReader(path: path)
        let budgets = Array(lowest...reader.header.numTokens)
        let specs = try budgets.map { b in
            try PolicySpec(name: policy, values: values.merging(["budget": String(b)]) { $1 })
        }
        var configuration = ReplayConfiguration(policies: specs)
        configuration.threads = 1
        let result = try ReplayEngine(reader: reader, configuration: configuration).run()
        return Dictionary(uniqueKeysWithValues: zip(budgets, result.runs.map { figure($0.summary.memory) }))
    }

    /// The search finds the budget an exhaustive search finds: the largest whose figure is not
    /// above the target. Each target sits 0.3 points above one budget's figure, so that budget
    /// is within the tolerance; memory grows with the budget here, so the answer is unique.
    func testBisectionFindsTheExhaustiveBudget() throws {
        let path = try trace()
        let mean: (MemorySummary) -> Double = { $0.meanPercentOfFull }
        let peak: (MemorySummary) -> Double = { 100 * $0.peakBytes / $0.finalFullBytes }
        let cases: [(policy: String, values: [String: String], lowest: Int, near: Int, statistic: MemoryStatistic)] = [
            ("h2o", [:], 2, 23, .mean),
            ("h2o", [:], 2, 37, .peak),
            ("streaming", ["sinks": "4", "trigger": "legacy", "divide": "16"], 5, 30, .mean)
        ]
        for c in cases {
            let all = try exhaustive(
                path, policy: c.policy, values: c.values, lowest: c.lowest,
                figure: c.statistic == .mean ? mean : peak)
            let budgets = all.keys.sorted()
            for (a, b) in zip(budgets, budgets.dropFirst()) {
                XCTAssertLessThanOrEqual(all[a]!, all[b]! + 1e-9, "\(c.policy): memory not monotone at \(a)")
            }
            let target = all[c.near]! + 0.3
            let expected = budgets.last { all[$0]! <= target }!

            let spec = try PolicySpec(name: c.policy, values: c.values.merging(["budget": "1000"]) { $1 })
            let result = try matcher(path, [spec], .percent(target), c.statistic).run()
            let match = try XCTUnwrap(result.runs[0].memoryMatch)
            XCTAssertEqual(match.budget, expected, "\(c.policy) at \(target) %")
            XCTAssertEqual(match.status, .matched)
            XCTAssertEqual(match.achievedPercent, all[expected]!, accuracy: 1e-9)
            XCTAssertEqual(match.achievedPercent, target, accuracy: 1)
            XCTAssertEqual(result.runs[0].spec.parameters.int("budget"), expected)
            // Bisection, not a scan: about log2(100) + 2 replays.
            XCTAssertLessThanOrEqual(match.trials, 9)
        }
    }

    /// The reference is computed by the first engine run only; the matched run's metrics are
    /// those of a plain replay at the budget found (the stored reference gives the same bits).
    func testTrialsShareTheReferenceAndKeepItsBits() throws {
        let path = try trace()
        let specs = try [
            PolicySpec(name: "full"), PolicySpec(name: "h2o", values: ["budget": "1"]),
            PolicySpec(name: "streaming", values: ["budget": "1", "sinks": "2"]), PolicySpec(name: "kivi")
        ]
        // One token is about 1.9 points of this trace's mean full cache: a 2-point tolerance.
        let m = try matcher(path, specs, .percent(20), tolerance: 2)
        let matched = try m.run()
        XCTAssertEqual(m.store.storedLayers, [0, 1])

        let plainSpecs = matched.runs.map(\.spec)
        var configuration = ReplayConfiguration(policies: plainSpecs)
        configuration.threads = 1
        configuration.chunkSteps = 16
        let plain = try ReplayEngine(reader: try TraceReader(path: path), configuration: configuration).run()
        // One reference's arithmetic in total, over all the trials.
        XCTAssertEqual(matched.timing.referenceFLOPs, plain.timing.referenceFLOPs)
        for (a, b) in zip(matched.runs, plain.runs) {
            XCTAssertEqual(a.summary, b.summary, a.spec.label)
        }
        XCTAssertEqual(matched.runs.map { $0.memoryMatch?.status }, [.notMatched, .matched, .matched, .notMatched])
        XCTAssertNil(matched.runs[0].memoryMatch?.budget)
        XCTAssertEqual(matched.runs[0].memoryMatch?.achievedPercent ?? 0, 100, accuracy: 1e-9)
    }

    /// ThinKV's deployed classifier reads its own cache, so its thought timeline depends on the
    /// budget: every trial prepares for its own budget, and the matched run equals a plain replay
    /// at the budget found (timeline, kept tokens and metrics).
    func testAMatchedThinKVPreparesForItsOwnBudget() throws {
        let path = try trace()
        let values = ["theta1": "0.3", "theta2": "0.7", "tau": "4", "sinks": "2", "recent": "4", "budget": "1000"]
        let m = try matcher(path, [try PolicySpec(name: "thinkv", values: values)], .percent(15), tolerance: 2)
        let matched = try m.run()
        let budget = try XCTUnwrap(matched.runs[0].memoryMatch?.budget)
        var configuration = ReplayConfiguration(policies: [matched.runs[0].spec])
        configuration.threads = 1
        configuration.chunkSteps = 16
        let plain = try ReplayEngine(reader: try TraceReader(path: path), configuration: configuration).run()
        XCTAssertEqual(matched.runs[0].spec.parameters.int("budget"), budget)
        XCTAssertEqual(
            matched.runs[0].steps.map(\.thought), plain.runs[0].steps.map(\.thought), "the same types and caches")
        XCTAssertEqual(matched.runs[0].summary, plain.runs[0].summary)
        XCTAssertTrue(
            matched.notes.allSatisfy { !$0.hasPrefix("thinkv(budget=") || $0.hasPrefix("thinkv(budget=\(budget),") },
            "notes name the chosen run: \(matched.notes)")
    }

    /// A target below what the smallest budget holds is reported, with the smallest budget run.
    func testUnreachableTargetSaysSo() throws {
        let path = try trace()
        // Sinks 40: the budget must exceed them, so at least 41 tokens of at most 100.
        let spec = try PolicySpec(name: "streaming", values: ["budget": "100", "sinks": "40"])
        let result = try matcher(path, [spec], .percent(2)).run()
        let match = try XCTUnwrap(result.runs[0].memoryMatch)
        XCTAssertEqual(match.status, .unreachable)
        XCTAssertEqual(match.budget, 41)
        XCTAssertGreaterThan(match.achievedPercent, 3)
        XCTAssertTrue(match.note?.contains("out of reach") == true, match.note ?? "")
        XCTAssertTrue(ReplayReport.text(result).contains("unreachable: streaming"))
    }

    /// A byte target: the mean bytes land within one point of the full cache of it.
    func testByteTarget() throws {
        let path = try trace()
        let reference = try exhaustive(path, policy: "h2o", lowest: 2) { $0.meanBytes }
        let target = reference[30]!
        let result = try matcher(path, [try PolicySpec(name: "h2o", values: ["budget": "1"])], .bytes(target)).run()
        let match = try XCTUnwrap(result.runs[0].memoryMatch)
        XCTAssertEqual(match.budget, 30)
        XCTAssertEqual(match.achievedBytes, target)
    }

    func testSpecsRefuseAnExplicitBudget() {
        XCTAssertThrowsError(try MemoryMatcher.specs(policies: ["h2o"], options: [("budget", "8")]))
        XCTAssertNoThrow(try MemoryMatcher.specs(policies: ["h2o", "kivi"], options: []))
        XCTAssertNoThrow(try MemoryMatcher.specs(policies: ["kivi"], options: []))
    }
}

final class MemoryMatchingSweepTests: XCTestCase {
    /// `kv_percent` in a config: budgeted policies run once per target at the budget a direct
    /// match finds; the others once; the budget column holds the budget found.
    func testSweepMatchesEachTarget() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        let output = directory.appendingPathComponent("kv.csv").path
        let json = """
            {"traces": ["\(traces[0])"], "policies": ["full", {"policy": "streaming", "parameters": {"sinks": 1}}, \
            "h2o"],
             "kv_percent": [40, 60], "output": "\(output)", "threads": 1}
            """
        let grid = try SweepFixture.grid(json)
        XCTAssertEqual(grid.runs.count, 5)
        XCTAssertEqual(grid.runs.map(\.kvPercent), [nil, 40, 60, 40, 60])
        XCTAssertTrue(grid.runs[1].key.contains("kv_percent=40;kv_match=mean"), grid.runs[1].key)
        _ = try SweepRunner(grid: grid).run()
        let table = try CSVTable.read(path: output, dropPartialLast: false).table
        func column(_ name: String) -> [String] { table.rows.map { $0[table.index(of: name)!] } }
        XCTAssertEqual(column("kv_percent"), ["", "40", "60", "40", "60"])
        XCTAssertEqual(column("kv_match_status")[0], "not matched")

        // The h2o run at 40 % is the direct match's run.
        var configuration = ReplayConfiguration(policies: [try PolicySpec(name: "h2o", values: ["budget": "9"])])
        configuration.threads = 1
        let direct = try MemoryMatcher(
            reader: try TraceReader(path: traces[0]), configuration: configuration, target: .percent(40)
        ).run()
        let h2o40 = table.rows.firstIndex {
            $0[table.index(of: "policy")!] == "h2o" && $0[table.index(of: "kv_percent")!] == "40"
        }!
        XCTAssertEqual(column("budget")[h2o40], String(direct.runs[0].memoryMatch!.budget!))
        XCTAssertEqual(
            column("achieved_percent")[h2o40], SweepColumns.number(direct.runs[0].memoryMatch!.achievedPercent))
        XCTAssertEqual(column("achieved_percent")[h2o40], column("percent_of_full_mean")[h2o40])
    }

    func testBudgetAndTargetExcludeEachOther() {
        let json = """
            {"traces": ["x.h5"], "policies": ["h2o"], "parameters": {"budget": 8}, "kv_percent": 10, "output": "o.csv"}
            """
        XCTAssertThrowsError(try SweepConfig.decode(Data(json.utf8), file: "c.json")) { error in
            XCTAssertTrue(
                "\(error)".contains("parameters.budget: budget and kv_percent exclude each other"), "\(error)")
        }
    }
}

final class AggregateFigureTests: XCTestCase {
    /// Hand-computed: [1, 2, 3, 4] has mean 2.5, s = √(5/3) = 1.290994, s/√4 = 0.645497, and
    /// t(0.975, 3) = 3.182, so the interval is 2.5 ± 2.053972. [2, 4]: mean 3, s/√2 = 1,
    /// t(0.975, 1) = 12.706. One value: no interval. Non-finite values are left out.
    func testMeanAndInterval() throws {
        let a = try XCTUnwrap(MeanInterval([1, 2, 3, 4]))
        XCTAssertEqual(a.mean, 2.5, accuracy: 1e-12)
        XCTAssertEqual(a.lower, 2.5 - 2.053972, accuracy: 1e-6)
        XCTAssertEqual(a.upper, 2.5 + 2.053972, accuracy: 1e-6)
        let b = try XCTUnwrap(MeanInterval([2, 4, .nan]))
        XCTAssertEqual(b.count, 2)
        XCTAssertEqual(b.lower, 3 - 12.706, accuracy: 1e-9)
        XCTAssertEqual(b.upper, 3 + 12.706, accuracy: 1e-9)
        let c = try XCTUnwrap(MeanInterval([0.7]))
        XCTAssertEqual([c.lower, c.mean, c.upper], [0.7, 0.7, 0.7])
        XCTAssertNil(MeanInterval([]))
        XCTAssertEqual(MeanInterval.studentT975(degreesOfFreedom: 40), 1.96)
    }

    /// Two traces: one series per policy variant with its mean over the traces and each trace's
    /// own points, no interval (two traces are too few); the equal-memory figure has a bar per
    /// matched policy and target.
    func testAggregatedFigures() throws {
        let directory = try TestTraces.directory(self)
        let traces = try SweepFixture.traces(in: directory)
        let output = directory.appendingPathComponent("kv.csv").path
        let json = """
            {"traces": ["\(traces[0])", "\(traces[1])"], "policies": ["full", "h2o", {"policy": "streaming", \
            "parameters": {"sinks": 1}}],
             "kv_percent": [40, 60], "output": "\(output)", "threads": 1}
            """
        _ = try SweepRunner(grid: try SweepFixture.grid(json)).run()
        let data = try PlotData(path: output)
        let figure = try XCTUnwrap(
            AggregateFigure.fidelityVsBytes(
                data, metrics: [.kl], bytesColumn: "kv_bytes_mean",
                logBytes: true, budgetLabels: true))
        let panel = figure.panels[0]
        let lines = panel.series.filter { $0.role == "series" }
        XCTAssertEqual(lines.map(\.label), ["full", "h2o", "streaming"])
        // h2o: one point per target, each the mean of the two traces' KL.
        let h2oRows = data.table.rows.filter { data.cell($0, "policy") == "h2o" && data.number($0, "kv_percent") == 40 }
        XCTAssertEqual(h2oRows.count, 2)
        let meanKL = h2oRows.compactMap { data.number($0, "attention_kl_mean") }.reduce(0, +) / 2
        XCTAssertTrue(lines[1].points.contains { abs($0.y - meanKL) < 1e-12 }, "\(lines[1].points) lacks \(meanKL)")
        XCTAssertEqual(panel.series.filter { $0.role == "interval" }.count, 0, "n = 2: no interval")
        let h2oTraces = try XCTUnwrap(panel.series.first { $0.role == "trace-points" && $0.label == "h2o" })
        XCTAssertEqual(h2oTraces.points.count, 4, "2 targets × 2 traces")
        XCTAssertTrue(h2oTraces.points.contains { abs($0.y - data.number(h2oRows[0], "attention_kl_mean")!) < 1e-12 })
        XCTAssertEqual(panel.annotations.filter { $0.text == "40 %" }.count, 2)

        let bars = try XCTUnwrap(AggregateFigure.equalMemory(data, metrics: [.kl, .massRecall]))
        XCTAssertEqual(bars.panels.count, 2)
        XCTAssertEqual(bars.panels[0].bars.count, 4, "h2o and streaming at 40 and 60 %; full is not matched")
        XCTAssertEqual(bars.legend.map(\.label), ["h2o", "streaming", "one trace"])
        XCTAssertEqual(bars.panels[0].series.filter { $0.role == "interval" }.count, 0, "n = 2: no interval")
        XCTAssertEqual(bars.panels[0].bars[0].y1, meanKL, accuracy: 1e-12)
        XCTAssertEqual(bars.panels[0].x.labels, ["40 %", "60 %"])
        // Colour and marker differ between the two policies.
        XCTAssertNotEqual(bars.legend[0].style?.color, bars.legend[1].style?.color)
        XCTAssertNotEqual(bars.legend[0].style?.marker, bars.legend[1].style?.marker)
    }
}

final class MemoryMatchingCLITests: XCTestCase {
    func testReplayWithAMemoryTarget() throws {
        let directory = try TestTraces.directory(self)
        let trace = try SweepFixture.traces(in: directory)[0]
        func run(_ arguments: [String]) throws -> CommandRunner.Outcome {
            try CommandRunner.run(arguments, in: directory)
        }

        let json = try run([
            "replay", trace, "--policy", "full,h2o", "--kv-percent", "50", "--threads", "1", "--json",
            "--csv", directory.appendingPathComponent("s.csv").path
        ])
        XCTAssertEqual(json.status, 0, json.stderr)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let runs = try XCTUnwrap(report["runs"] as? [[String: Any]])
        let full = try XCTUnwrap(runs[0]["memory_match"] as? [String: Any])
        let h2o = try XCTUnwrap(runs[1]["memory_match"] as? [String: Any])
        XCTAssertEqual(full["status"] as? String, "not matched")
        XCTAssertEqual(h2o["target_percent"] as? Double, 50)
        let budget = try XCTUnwrap(h2o["budget"] as? Int)
        XCTAssertEqual((runs[1]["parameters"] as? [String: Any])?["budget"] as? Int, budget, "typed: a number")
        XCTAssertEqual(runs[1]["compresses"] as? String, "every step, one eviction; holds B, attends B+1")
        let csv = try CSVTable.read(path: directory.appendingPathComponent("s.csv").path).table
        let last = try XCTUnwrap(csv.rows.last)
        XCTAssertEqual(last[csv.index(of: "matched_budget")!], String(budget))
        XCTAssertEqual(last[csv.index(of: "kv_target_percent")!], "50")

        let text = try run(["replay", trace, "--policy", "h2o,kivi", "--kv-percent", "50", "--threads", "1"])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("not matched"), text.stdout)
        let header = try XCTUnwrap(
            text.stdout.split(separator: "\n").first { $0.hasPrefix("policy") && $0.contains("KL") })
        XCTAssertLessThan(
            try XCTUnwrap(header.range(of: "KL")).lowerBound, try XCTUnwrap(header.range(of: "recall")).lowerBound,
            "the table leads with KL: \(header)")

        for (arguments, message) in [
            (["--policy", "h2o", "--kv-percent", "10", "--budget", "8"], "--budget and a memory target"),
            (["--policy", "h2o", "--kv-percent", "10", "--kv-bytes", "1000"], "exclude each other"),
            (["--policy", "h2o", "--kv-match", "peak"], "--kv-match needs --kv-percent or --kv-bytes"),
            (["--policy", "h2o", "--kv-percent", "150"], "--kv-percent must be in (0, 100]"),
            (["--policy", "h2o", "--kv-percent", "ten"], "--kv-percent must be a number")
        ] {
            let outcome = try run(["replay", trace] + arguments)
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.contains(message), "\(arguments): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.hasPrefix("thinkv-sim replay: "), outcome.stderr)
        }
    }
}
