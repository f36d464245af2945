import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVSim

/// `replay --metric-steps`: which steps are measured, the confidence intervals of the sampled
/// means against the exact ones, what the reports say, and the usage errors. (That every
/// policy keeps what it keeps in a full replay is `PolicyConformanceTests`.)
final class SampledReferenceTests: XCTestCase {
    private var directory: URL!
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    private static let syntheticTrace = root.appendingPathComponent("traces/sample-synthetic.h5").path

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func testSelectionsPickTheStepsTheyName() throws {
        func parse(_ text: String) throws -> MetricStepSelection { try MetricStepSelection.parse(text) }
        XCTAssertEqual(try parse("all").steps(of: 5), [0, 1, 2, 3, 4])
        XCTAssertEqual(try parse("stride:4").steps(of: 10), [0, 4, 8, 9], "every 4th, plus the last")
        XCTAssertEqual(try parse("stride:4").steps(of: 9), [0, 4, 8], "the last is a multiple")
        let random = try parse("random:20:9")
        let drawn = random.steps(of: 1000)
        XCTAssertEqual(drawn.count, 20)
        XCTAssertEqual(drawn, drawn.sorted())
        XCTAssertEqual(Set(drawn).count, 20, "without replacement")
        XCTAssertTrue(drawn.allSatisfy { (0..<1000).contains($0) })
        XCTAssertEqual(drawn, random.steps(of: 1000), "seeded: the same steps every time")
        XCTAssertNotEqual(drawn, try parse("random:20:10").steps(of: 1000), "another seed, other steps")
        XCTAssertEqual(try parse("random:20"), .random(count: 20, seed: MetricStepSelection.defaultSeed))
        XCTAssertEqual(try parse("random:50").steps(of: 30), Array(0..<30), "more than there are: all")
        for bad in [
            "", "stride", "stride:0", "stride:-2", "stride:x", "random:", "random:5:-1", "every:3", "all:1",
            "stride:2:3"
        ] {
            XCTAssertThrowsError(try MetricStepSelection.parse(bad), bad) { error in
                XCTAssertTrue(error is UsageError, "\(bad): \(error)")
            }
        }
    }

    /// One layer of 600 tokens (Gaussian q/k/v), H2O at a small budget: the fidelity varies
    /// from step to step, so a sample's mean is not the exact one.
    private func trace() throws -> String {
        let (T, P, Hq, Hkv, D) = (600, 16, 4, 2, 16)
        var layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 77)
        // Sharper attention on some stretches, so recall drifts along the trace.
        for p in 0..<T where (p / 50) % 2 == 1 {
            for i in 0..<(Hq * D) { layer.q![p * Hq * D + i] *= 3 }
        }
        return try TestTraces.write(
            to: directory.appendingPathComponent("drift.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv,
            D: D, layers: [layer])
    }

    private func replay(_ path: String, _ selection: MetricStepSelection) throws -> ReplayResult {
        let h2o = try PolicySpec(name: "h2o", values: ["budget": "48"])
        var configuration = ReplayConfiguration(policies: [h2o], threads: 2)
        configuration.metricSteps = selection
        return try ReplayEngine(reader: try TraceReader(path: path), configuration: configuration).run()
    }

    /// The intervals contain the exact means, and a denser sample gives a narrower interval
    /// (deterministic: the trace and the samples are seeded).
    func testIntervalsContainTheExactMeansAndShrinkWithMoreSteps() throws {
        let path = try trace()
        let exact = try replay(path, .all).runs[0].summary
        XCTAssertNil(exact.massRecall.ci95HalfWidth, "no interval without sampling")
        let metrics: [(String, (RunSummary) -> MetricSummary)] = [
            ("mass recall", { $0.massRecall }), ("top-k recall", { $0.topKRecall }), ("KL", { $0.attentionKL }),
            ("output error", { $0.outputError! })
        ]
        var widths: [String: [Double]] = [:]
        for selection in [
            MetricStepSelection.stride(32), .stride(8), .stride(2), .random(count: 20, seed: 5),
            .random(count: 150, seed: 5)
        ] {
            let result = try replay(path, selection)
            let sampling = try XCTUnwrap(result.metricSampling)
            XCTAssertEqual(sampling.sampledSteps, selection.steps(of: 584).count)
            XCTAssertEqual(sampling.decodeSteps, 584)
            XCTAssertEqual(sampling.systematic, selection.isSystematic)
            for (name, metric) in metrics {
                let estimate = metric(result.runs[0].summary), truth = metric(exact)
                let half = try XCTUnwrap(estimate.ci95HalfWidth, name)
                XCTAssertGreaterThan(half, 0, "\(name) \(selection.description)")
                let what = "\(name) \(selection.description)"
                XCTAssertNotEqual(estimate.mean, truth.mean, "\(what): a sample, not the census")
                XCTAssertLessThanOrEqual(
                    abs(estimate.mean - truth.mean), half,
                    "\(what): \(estimate.mean) ± \(half) misses \(truth.mean)")
                widths[name, default: []].append(half)
            }
        }
        for (name, w) in widths {
            XCTAssertGreaterThan(w[0], w[1], "\(name): stride 8 narrower than 32")
            XCTAssertGreaterThan(w[1], w[2], "\(name): stride 2 narrower than 8")
            XCTAssertGreaterThan(w[3], w[4], "\(name): 150 random steps narrower than 20")
        }
    }

    /// The interval is the normal one over per-step means with the finite-population correction.
    func testTheHalfWidthIsTheStepMeansStandardError() {
        // 2 layers × 3 sampled steps × 2 heads, layer-major; step means 1, 2, 6 (over layers and heads).
        let samples: [Float] = [1, 1, 2, 2, 6, 6, 1, 1, 2, 2, 6, 6]
        let half = MetricSummary.stepSampleHalfWidth(samples, sampledSteps: 3, headsPerStep: 2, decodeSteps: 30)
        let variance = (4.0 + 1.0 + 9.0) / 2  // mean 3
        XCTAssertEqual(half, 1.959964 * (variance / 3 * (1 - 3.0 / 30)).squareRoot(), accuracy: 1e-12)
        XCTAssertEqual(
            MetricSummary.stepSampleHalfWidth(samples, sampledSteps: 3, headsPerStep: 2, decodeSteps: 3), 0,
            "every step: no sampling error")
        XCTAssertTrue(
            MetricSummary.stepSampleHalfWidth([1, 2], sampledSteps: 1, headsPerStep: 2, decodeSteps: 9).isNaN,
            "one step gives no spread")
    }

    func testReportsSayTheMetricsAreSampledAndAllSaysNothing() throws {
        let path = try trace()
        let sampled = try replay(path, .stride(16))
        let text = ReplayReport.text(sampled)
        XCTAssertTrue(text.contains("fidelity measured on 38 of 584 decode steps (stride:16, systematic sample)"), text)
        XCTAssertTrue(text.contains("recall ± 95 %"), text)
        let json = try ReplayReport.json(sampled)
        XCTAssertTrue(json.contains("\"metric_steps\""), json)
        XCTAssertTrue(json.contains("\"ci95_half_width\""), json)
        let csv = ReplayReport.stepCSV(sampled).split(separator: "\n")
        let recallColumn = try XCTUnwrap(ReplayReport.stepColumns.firstIndex(of: "mass_recall"))
        let cells = csv.dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false)[recallColumn] }
        XCTAssertEqual(cells.filter { !$0.isEmpty }.count, 38, "a recall cell per sampled step, empty elsewhere")

        let exact = try replay(path, .all)
        XCTAssertFalse(ReplayReport.text(exact).contains("sampled"))
        let exactJSON = try ReplayReport.json(exact)
        XCTAssertFalse(exactJSON.contains("metric_steps") || exactJSON.contains("ci95"), exactJSON)
    }

    func testUsageMistakesExitTwo() throws {
        let trace = Self.syntheticTrace
        func assertUsage(
            _ arguments: [String], _ expected: String, file: StaticString = #filePath,
            line: UInt = #line
        ) throws {
            let outcome = try CommandRunner.run(arguments, in: directory)
            XCTAssertEqual(outcome.status, 2, outcome.stderr, file: file, line: line)
            XCTAssertTrue(
                outcome.stderr.contains(expected), "expected '\(expected)' in: \(outcome.stderr)",
                file: file, line: line)
            XCTAssertEqual(outcome.stdout, "", file: file, line: line)
        }
        try assertUsage(
            ["replay", trace, "--metric-steps", "stride:0"],
            "--metric-steps: the stride must be a positive integer")
        try assertUsage(
            ["replay", trace, "--metric-steps", "every:4"],
            "--metric-steps must be all, stride:N or random:N[:SEED]")
        try assertUsage(
            [
                "replay", trace, "--policy", "thinkv", "--sparsity-source", "full",
                "--metric-steps", "stride:8"
            ], "--sparsity-source full")
        // A composition is refused for what its parts declare (here the TBQ quantizer's classifier).
        try assertUsage(
            [
                "replay", trace, "--policy", "rkv+tbq:budget=64:sparsity-source=full",
                "--metric-steps", "stride:8"
            ], "--sparsity-source full")
        try assertUsage(
            ["replay", trace, "--policy", "h2o", "--kv-percent", "20", "--metric-steps", "stride:8"],
            "memory target")
        let fine = try CommandRunner.run(
            [
                "replay", trace, "--policy", "full,h2o", "--budget", "64", "--metric-steps",
                "random:40:2", "--layers", "0"
            ], in: directory)
        XCTAssertEqual(fine.status, 0, fine.stderr)
        XCTAssertTrue(fine.stdout.contains("fidelity measured on 40 of"), fine.stdout)
    }

    /// Layer shards of a sampled replay merge into the sampled replay over every layer (same
    /// summaries and intervals, same per-step CSV); shards of different samples do not merge.
    func testSampledLayerShardsMergeIntoTheSampledReplay() throws {
        let (T, P) = (160, 16)
        let layers = (0..<3).map { TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 8, seed: 60 + UInt64($0), index: $0) }
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("three.h5"), T: T, P: P, Hq: 4, Hkv: 2,
            D: 8, numLayers: 3, layers: layers)
        func replay(_ subset: [Int]?, _ selection: MetricStepSelection) throws -> ReplayResult {
            var configuration = ReplayConfiguration(
                policies: [try PolicySpec(name: "h2o", values: ["budget": "40"])],
                layers: subset, threads: 2)
            configuration.metricSteps = selection
            return try ReplayEngine(reader: try TraceReader(path: path), configuration: configuration).run()
        }
        let whole = try replay(nil, .random(count: 30, seed: 4))
        var paths: [String] = []
        for (n, subset) in [[2], [0, 1]].enumerated() {
            let file = directory.appendingPathComponent("shard\(n).json").path
            try ReplayShard(try replay(subset, .random(count: 30, seed: 4)), layersWithValues: subset).write(to: file)
            paths.append(file)
        }
        let merged = try ReplayShard.merge(try paths.map(ReplayShard.read), paths: paths)
        XCTAssertEqual(merged.metricSampling, whole.metricSampling)
        XCTAssertEqual(merged.runs[0].summary, whole.runs[0].summary)
        XCTAssertNotNil(merged.runs[0].summary.massRecall.ci95HalfWidth)
        XCTAssertEqual(ReplayReport.stepCSV(merged), ReplayReport.stepCSV(whole))

        let other = directory.appendingPathComponent("other.json").path
        try ReplayShard(try replay([2], .stride(4)), layersWithValues: [2]).write(to: other)
        XCTAssertThrowsError(
            try ReplayShard.merge(try [paths[1], other].map(ReplayShard.read), paths: [paths[1], other])
        ) {
            XCTAssertTrue("\($0)".contains("--metric-steps (stride:4 vs random:30:4)"), "\($0)")
        }
    }
}
