import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Every mistake in what the user typed exits 2 (the README's usage error) with a message that
/// says what to type instead: missing or refused policy parameters, parameter combinations a
/// policy refuses, a plural option name, the wrong kind of file for plot, an existing synth
/// output, and a stray comma in any comma list.
final class UsageErrorTests: XCTestCase {
    private var directory: URL!
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    private static let syntheticTrace = root.appendingPathComponent("traces/sample-synthetic.h5").path
    private static let realTrace = root.appendingPathComponent("traces/smollm2-135m-math.h5").path

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func run(_ arguments: [String]) throws -> CommandRunner.Outcome {
        try CommandRunner.run(arguments, in: directory)
    }

    /// Exit 2, the message on stderr, the pointer to --help, nothing on stdout.
    private func assertUsageError(
        _ arguments: [String], _ expected: String, file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let outcome = try run(arguments)
        XCTAssertEqual(
            outcome.status, 2, "\(arguments.joined(separator: " ")): \(outcome.stderr)", file: file, line: line)
        XCTAssertTrue(
            outcome.stderr.contains(expected),
            "\(arguments.joined(separator: " ")): expected '\(expected)' in: \(outcome.stderr)",
            file: file, line: line)
        XCTAssertTrue(outcome.stderr.contains("--help' for usage"), outcome.stderr, file: file, line: line)
        XCTAssertEqual(outcome.stdout, "", file: file, line: line)
    }

    func testPolicyParameterMistakesAreUsageErrors() throws {
        let trace = Self.syntheticTrace
        try assertUsageError(["replay", trace, "--policy", "h2o"], "h2o: --budget is required")
        try assertUsageError(["replay", trace, "--policy", "h2o", "--budget", "-5"], "h2o: --budget must be in 1...")
        try assertUsageError(
            ["replay", trace, "--policy", "h2o", "--budget", "many"], "h2o: --budget must be an integer")
        try assertUsageError(
            ["replay", trace, "--policy", "rkv", "--budget", "8"], "rkv: --budget (8) must exceed --window")
        try assertUsageError(
            ["replay", trace, "--policy", "h2o,rkv", "--budget", "64", "--window", "64"],
            "rkv: --budget (64) must exceed --window (64)")
    }

    func testAPluralOptionSuggestsTheSingular() throws {
        try assertUsageError(
            ["replay", Self.syntheticTrace, "--policies", "h2o"], "unknown option --policies (did you mean --policy?)")
        XCTAssertEqual(Suggestions.closest(to: "policies", among: ["policy", "layers", "steps"]), "policy")
        XCTAssertEqual(Suggestions.singular("policies"), "policy")
        XCTAssertEqual(Suggestions.singular("class"), "class", "a double s is not a plural")
    }

    /// ThinKV calibrates its thresholds on the trace before the first layer; a combination it
    /// refuses anyway is refused before that work, from replay, a memory target and a sweep alike.
    /// The copy of the trace holds a NaN in every layer's tensors, which any reading of them (a
    /// calibration, a preparation, a replay) reports with exit 1 (the control): a usage error
    /// (exit 2) shows that nothing read them.
    func testACombinationIsRefusedBeforeThePolicyPrepares() throws {
        let poisoned = directory.appendingPathComponent("poisoned.h5").path
        try FileManager.default.copyItem(atPath: Self.syntheticTrace, toPath: poisoned)
        // The reader is closed (released) before the file is edited.
        let (tokens, tensors) = try { () throws -> (Int, [String]) in
            let reader = try TraceReader(path: poisoned)
            return (
                reader.header.numTokens,
                reader.recordedLayerIndices.flatMap { layer in
                    LayerTensor.allCases.filter { reader.layerInfo(layer)!.has($0) }
                        .map { "/layers/\(layer)/\($0.rawValue)" }
                }
            )
        }()
        try HDF5Editor.edit(poisoned) { editor in
            for tensor in tensors { try editor.patch(tensor, element: 0, with: .nan) }
        }
        let control = try run(["replay", poisoned, "--policy", "thinkv", "--budget", "256"])
        XCTAssertEqual(control.status, 1, "reading the tensors meets the NaN: \(control.stderr)")
        XCTAssertTrue(control.stderr.contains("NaN"), control.stderr)

        try assertUsageError(
            ["replay", poisoned, "--policy", "thinkv", "--budget", "4"],
            "thinkv: --budget (4) must be at least --sinks + --recent (4 + 16)")
        try assertUsageError(
            ["replay", poisoned, "--policy", "thinkv", "--budget", "256", "--schedule", "64,128"],
            "strictly decreasing")
        // A memory target: no budget up to the trace's length holds sinks + recent.
        try assertUsageError(
            [
                "replay", poisoned, "--policy", "h2o,thinkv", "--kv-percent", "20",
                "--recent", String(tokens)
            ],
            "thinkv: --budget (\(tokens)) must be at least --sinks + --recent (4 + \(tokens))")
        let config = directory.appendingPathComponent("refused.json")
        let output = directory.appendingPathComponent("o.csv").path
        try #"""
        {"traces": ["\#(poisoned)"], "output": "\#(output)", "policies": ["thinkv"], "parameters": {"budget": [4]}}
        """#.write(to: config, atomically: true, encoding: .utf8)
        try assertUsageError(["sweep", config.path], "thinkv: --budget (4) must be at least --sinks + --recent")
        let matched = directory.appendingPathComponent("matched.json")
        try #"""
        {"traces": ["\#(poisoned)"], "output": "\#(output)", "policies": ["thinkv"],
         "parameters": {"recent": [\#(tokens)]}, "kv_percent": 20}
        """#.write(to: matched, atomically: true, encoding: .utf8)
        try assertUsageError(["sweep", matched.path], "must be at least --sinks + --recent")
    }

    func testPlotNamesTheKindOfFileItWasGiven() throws {
        let prefix = directory.appendingPathComponent("r").path
        let replay = try run([
            "replay", Self.syntheticTrace, "--policy", "h2o", "--budget", "64", "--steps", "4",
            "--kept", prefix + ".kept.jsonl", "--cache-timeline", prefix + ".timeline.jsonl", "--csv",
            prefix + ".steps.csv"
        ])
        XCTAssertEqual(replay.status, 0, replay.stderr)
        try assertUsageError(
            ["plot", prefix + ".kept.jsonl"], "is a list of compression events of 'thinkv-sim replay --kept'")
        try assertUsageError(
            ["plot", prefix + ".timeline.jsonl"], "is a cache timeline of 'thinkv-sim replay --cache-timeline'")
        try assertUsageError(["plot", Self.syntheticTrace], "is an HDF5 file (a trace?)")
        try assertUsageError(
            ["plot", Self.root.appendingPathComponent("configs/budget-sweep.json").path], "is a sweep config")
        let other = directory.appendingPathComponent("other.csv")
        try "name,score\na,1\n".write(to: other, atomically: true, encoding: .utf8)
        try assertUsageError(["plot", other.path], "is not a results CSV: no 'trace' column (its columns: name, score)")
        let all = try run(["plot", prefix + ".kept.jsonl"]).stderr
        XCTAssertTrue(all.contains("plot expects a results CSV of 'thinkv-sim sweep' or 'merge'"), all)
        // The per-step CSV of the same replay is one plot draws.
        let steps = try run(["plot", prefix + ".steps.csv", "--format", "svg"])
        XCTAssertEqual(steps.status, 0, steps.stderr)
    }

    func testSynthSaysTheOutputExistsFirst() throws {
        let existing = directory.appendingPathComponent("existing.h5")
        try Data("x".utf8).write(to: existing)
        try assertUsageError(
            ["synth", "-o", existing.path, "--tokens", "64", "--prompt", "5000"], "exists; pass --force to overwrite it"
        )
        XCTAssertEqual(try Data(contentsOf: existing), Data("x".utf8), "left alone")
    }

    func testAnEmptyItemInACommaListIsRefusedEverywhere() throws {
        let trace = Self.syntheticTrace
        try assertUsageError(
            ["replay", trace, "--policy", "h2o,", "--budget", "64"], "--policy has an empty item in 'h2o,'")
        try assertUsageError(["replay", trace, "--policy", "h2o,,rkv", "--budget", "64"], "--policy has an empty item")
        try assertUsageError(
            ["replay", trace, "--policy", "h2o", "--budget", "64", "--layers", "0,"],
            "--layers has an empty item in '0,'")
        try assertUsageError(
            ["replay", trace, "--policy", "thinkv", "--budget", "256", "--schedule", "64,32,"],
            "thinkv: --schedule has an empty item in '64,32,'")
        try assertUsageError(
            [
                "replay", trace, "--policy", "rkv", "--budget", "64", "--trigger", "legacy",
                "--divide-method", "newline", "--newline-ids", "13,"
            ], "rkv: --newline-ids has an empty item")
        try assertUsageError(["plot", "results.csv", "--metric", "kl,"], "--metric has an empty item")
        try assertUsageError(["bench", "--tokens", "128,"], "--tokens has an empty item")
        try assertUsageError(
            ["synth", "-o", directory.appendingPathComponent("n.h5").path, "--importance", "R=1,"],
            "--importance has an empty item")
        XCTAssertThrowsError(try CommaList.items(" ", of: "--x", error: UsageError.init)) { error in
            XCTAssertEqual((error as? UsageError)?.description, "--x is empty; give at least one item")
        }
        XCTAssertEqual(try CommaList.items(" 0, 3 ,-1", of: "--x", error: UsageError.init), ["0", "3", "-1"])
    }

    /// A sweep config is input, not typing: its mistakes exit 1 (README), with the config's
    /// path and key.
    func testAnEmptyItemInASweepConfigNamesTheKey() throws {
        let config = directory.appendingPathComponent("sweep.json")
        try """
        {"traces": ["\(Self.syntheticTrace)"],
         "policies": [{"policy": "thinkv", "parameters": {"thought-layers": "0,1,"}}],
         "parameters": {"budget": [64]}, "output": "\(directory.appendingPathComponent("out.csv").path)"}
        """.write(to: config, atomically: true, encoding: .utf8)
        let outcome = try run(["sweep", config.path])
        XCTAssertEqual(outcome.status, 1, outcome.stderr)
        XCTAssertTrue(
            outcome.stderr.contains(
                "sweep.json: policies[0].parameters.thought-layers: thinkv: --thought-layers has an empty item in "
                    + "'0,1,'"
            ),
            outcome.stderr)
    }
}
