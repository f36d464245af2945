import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The executable's contract: a bad trace is one line on stderr and exit 1, a usage mistake is
/// exit 2, help is exit 0. Runs the built `thinkv-sim` next to the test bundle.
final class CLITests: XCTestCase {
    typealias Outcome = CommandRunner.Outcome

    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func run(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> Outcome {
        try CommandRunner.run(arguments, in: directory, file: file, line: line)
    }

    /// A small valid trace: q/k/v in layer 0, labels.
    private func goodTrace(_ name: String = "good.h5") throws -> String {
        try TestTraces.write(
            to: directory.appendingPathComponent(name), T: 12, P: 4, Hq: 2, Hkv: 1, D: 4,
            layers: [TestTraces.randomLayer(T: 12, Hq: 2, Hkv: 1, D: 4, seed: 3)],
            thought: [-1, -1, -1, -1, 0, 0, 1, 1, 2, 0, 0, 0])
    }

    private func assertOneLineFailure(
        _ outcome: Outcome, command: String, path: String, mentions: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(outcome.status, 1, outcome.stderr, file: file, line: line)
        let lines = outcome.stderr.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(
            lines.count, 2, "exactly one line, newline-terminated: \(outcome.stderr)", file: file, line: line)
        XCTAssertEqual(lines.last, "", file: file, line: line)
        XCTAssertTrue(
            outcome.stderr.hasPrefix("thinkv-sim \(command): \(path): "), outcome.stderr, file: file, line: line)
        XCTAssertTrue(
            outcome.stderr.contains(mentions), "'\(mentions)' missing from: \(outcome.stderr)", file: file, line: line)
        XCTAssertFalse(outcome.stderr.contains("\r"), "no progress residue: \(outcome.stderr)", file: file, line: line)
        XCTAssertEqual(outcome.stdout, "", "no report for a bad trace", file: file, line: line)
    }

    // MARK: Bad traces: exit 1, one line

    func testBadTracesGiveOneLineAndExitOne() throws {
        let text = directory.appendingPathComponent("text.h5").path
        try Data("not a trace\n".utf8).write(to: URL(fileURLWithPath: text))
        let missing = directory.appendingPathComponent("missing.h5").path
        let noModel = try goodTrace("no-model.h5")
        try HDF5Editor.edit(noModel) { try $0.deleteAttribute("model") }
        let nan = try goodTrace("nan.h5")
        try HDF5Editor.edit(nan) { try $0.patch("/layers/0/q", element: 6 * 2 * 4, with: .nan) }  // row 6

        let truncated = directory.appendingPathComponent("truncated.h5").path
        let whole = try Data(contentsOf: URL(fileURLWithPath: try goodTrace("whole.h5")))
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: truncated))

        for command in ["validate", "inspect", "replay"] {
            assertOneLineFailure(try run([command, text]), command: command, path: text, mentions: "not an HDF5 file")
            assertOneLineFailure(
                try run([command, truncated]), command: command, path: truncated, mentions: "truncated")
            assertOneLineFailure(try run([command, missing]), command: command, path: missing, mentions: "no such file")
            assertOneLineFailure(
                try run([command, noModel]), command: command, path: noModel, mentions: "attribute 'model': missing")
            assertOneLineFailure(
                try run([command, nan]), command: command, path: nan, mentions: "/layers/0/q: NaN in row 6")
        }
    }

    func testBadLabelsFailInspectAndValidate() throws {
        let path = try goodTrace("labels.h5")
        try HDF5Editor.edit(path) {
            try $0.setDataset(
                "/tokens/thought", type: .int8, shape: [12], values: [-1, -1, -1, -1, 0, 3, 1, 1, 2, 0, 0, 0])
        }
        assertOneLineFailure(
            try run(["inspect", path, "--no-sparsity"]), command: "inspect", path: path,
            mentions: "value 3 at position 5")
        assertOneLineFailure(try run(["validate", path]), command: "validate", path: path, mentions: "/tokens/thought")
    }

    func testGoodTraceSucceeds() throws {
        let path = try goodTrace()
        let validate = try run(["validate", path])
        XCTAssertEqual(validate.status, 0, validate.stderr)
        XCTAssertTrue(validate.stdout.hasPrefix("\(path): ok"), validate.stdout)
        XCTAssertEqual(validate.stderr, "")
        let replay = try run(["replay", path, "--threads", "1"])
        XCTAssertEqual(replay.status, 0, replay.stderr)
        XCTAssertTrue(replay.stdout.contains("full"), replay.stdout)
    }

    // MARK: Usage errors: exit 2

    func testUsageErrorsExitTwo() throws {
        let good = try goodTrace()
        let missing = directory.appendingPathComponent("missing.h5").path
        let cases: [[String]] = [
            [],  // no command
            ["frobnicate"],  // unknown command
            ["validate"],  // missing <trace>
            ["inspect", good, "extra.h5"],  // unexpected argument
            ["replay", good, "--steps", "0"],
            ["replay", good, "--topk", "many"],
            ["replay", good, "--policy", "nonesuch"],
            ["replay", good, "--frobnicate", "1"],  // not a parameter of any chosen policy
            ["replay", good, "--json=maybe"],
            ["replay", good, "--csv", good],  // would overwrite the input
            ["inspect", good, "--width", "2"],
            ["replay", missing, "--steps", "0"],  // the usage mistake is reported, not the file
            ["inspect", missing, "--width", "2"],
            ["replay", good, "--policy", "h2o", "--kv-percent", "20", "--cache-timeline", "t.jsonl"],
            [
                "replay", good, "--policy", "h2o", "--budget", "4", "--kept", "same.jsonl", "--cache-timeline",
                "same.jsonl"
            ],
            ["quantize", good, "-o", "out.f32"],  // no --quantizer
            ["quantize", good, "--quantizer", "int9", "-o", "out.f32"],
            ["quantize", good, "--quantizer", "fp8"]  // no -o
        ]
        for arguments in cases {
            let outcome = try run(arguments)
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
            if !arguments.isEmpty {
                XCTAssertTrue(outcome.stderr.hasPrefix("thinkv-sim"), "\(arguments): \(outcome.stderr)")
            }
        }
    }

    /// `quantize` rounds each group as the policies do; a file that is not float32 values is one
    /// line and exit 1, and the output is not created.
    func testQuantizeRoundTripsGroupsAndRefusesBadInput() throws {
        let input = directory.appendingPathComponent("x.f32"), output = directory.appendingPathComponent("y.f32")
        let values: [Float] = [0.1, 0.5, -0.3, 1.0, 2, 2, 2, 2, 7]
        try values.withUnsafeBytes { Data($0) }.write(to: input)
        let outcome = try run(["quantize", input.path, "--quantizer", "int2", "--group", "4", "-o", output.path])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        let data = try Data(contentsOf: output)
        let got = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        var expected = values
        for start in stride(from: 0, to: values.count, by: 4) {
            var group = Array(expected[start..<min(start + 4, values.count)])
            GroupQuantizer.integer(bits: 2).roundTrip(&group)
            expected.replaceSubrange(start..<min(start + 4, values.count), with: group)
        }
        XCTAssertEqual(got, expected)
        // By hand: min -0.3, scale (1.0 + 0.3) / 3; 0.1 → code 1 → -0.3 + 1.3/3.
        XCTAssertEqual(got[0], Float(1) * (Float(1.3) / 3) + Float(-0.3), accuracy: 1e-6)
        XCTAssertEqual(Array(got[4...8]), [2, 2, 2, 2, 7])  // constant groups are exact

        let odd = directory.appendingPathComponent("odd.f32"), refused = directory.appendingPathComponent("no.f32")
        try Data([1, 2, 3, 4, 5]).write(to: odd)
        let bad = try run(["quantize", odd.path, "--quantizer", "nvfp4", "-o", refused.path])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(
            bad.stderr.hasPrefix("thinkv-sim quantize: \(odd.path): 5 bytes is not a whole number of float32 values"),
            bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: refused.path))

        // A device that never ends is cut at the limit; a full disk is an error, not a short file.
        let endless = try run(["quantize", "/dev/zero", "--quantizer", "fp8", "-o", refused.path])
        XCTAssertEqual(endless.status, 1)
        XCTAssertTrue(endless.stderr.contains("/dev/zero: more than \(256 << 20) bytes"), endless.stderr)
        if FileManager.default.fileExists(atPath: "/dev/full") {
            let full = try run(["quantize", input.path, "--quantizer", "fp8", "-o", "/dev/full"])
            XCTAssertEqual(full.status, 1, full.stderr)
        }
    }

    func testCacheTimelineFileHasALinePerPolicyAndKVHead() throws {
        let good = try goodTrace()
        let timeline = directory.appendingPathComponent("timeline.jsonl").path
        let outcome = try run(["replay", good, "--policy", "full,h2o", "--budget", "4", "--cache-timeline", timeline])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        let lines = try String(contentsOfFile: timeline, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 2)  // 2 policies × 1 kv head
        let h2o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
        XCTAssertEqual(h2o["policy"] as? String, "h2o(budget=4)")
        let dropped = try XCTUnwrap(h2o["dropped_at"] as? [Int])
        XCTAssertEqual(dropped.count, 12)
        // 8 decode steps at budget 4, one eviction after each: the first 7 are seen by a later
        // step; the eviction after the last step has no step to show it.
        XCTAssertEqual(dropped.filter { $0 >= 0 }.count, 12 - 4 - 1)
    }

    // MARK: Help: exit 0

    func testHelpExitsZero() throws {
        for arguments in [
            ["--help"], ["-h"], ["help"], ["replay", "--help"], ["inspect", "-h"], ["validate", "--help"],
            ["policies", "--help"], ["--version"]
        ] {
            let outcome = try run(arguments)
            XCTAssertEqual(outcome.status, 0, "\(arguments): \(outcome.stderr)")
            XCTAssertEqual(outcome.stderr, "", "\(arguments)")
            XCTAssertFalse(outcome.stdout.isEmpty, "\(arguments)")
        }
        XCTAssertTrue(try run(["replay", "--help"]).stdout.contains("usage: thinkv-sim replay <trace> [options]"))
    }

    // MARK: A trace another program is writing

    private func startTrace(_ name: String) throws -> (TraceWriter, String) {
        let path = directory.appendingPathComponent(name).path
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: 1, numKVHeads: 1, headDim: 2, promptLength: 1, numTokens: 3)
        let writer = try TraceWriter(path: path, header: header)
        try writer.writeTokens(ids: [0, 1, 2])
        try writer.writeTensor(.q, layer: 0, dtype: .float32, [1, 2, 3, 4, 5, 6])
        try writer.writeTensor(.k, layer: 0, dtype: .float32, [1, 0, 0, 1, 1, 1])
        return (writer, path)
    }

    /// close() must release the file, not just flush it: a generator that writes a trace and
    /// then runs the simulator on it, before its writer object is gone, must not be refused.
    func testAnotherProgramCanReadATraceOnceItsWriterCloses() throws {
        let (writer, path) = try startTrace("closed.h5")
        writer.close()
        let outcome = try run(["validate", path])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        withExtendedLifetime(writer) {}
    }

    /// HDF5 locks a file while writing it; that is reported as such, not as damage.
    func testTraceStillBeingWrittenIsReportedAsSuch() throws {
        try XCTSkipIf(
            ProcessInfo.processInfo.environment["HDF5_USE_FILE_LOCKING"]?.uppercased() == "FALSE",
            "HDF5 file locking is switched off in this environment")
        let (writer, path) = try startTrace("open.h5")
        assertOneLineFailure(
            try run(["validate", path]), command: "validate", path: path,
            mentions: "open for writing in another program")
        writer.close()
    }

    // MARK: Progress

    /// A failing run must still clear its progress line, or the error lands on the same line.
    func testProgressIsFinishedWhenAReplayFails() throws {
        let path = try goodTrace("nan-progress.h5")
        try HDF5Editor.edit(path) { try $0.patch("/layers/0/k", element: 0, with: .positiveInfinity) }
        final class Recorder: ThinKVSim.ProgressReporting {
            var finished = 0
            func update(fraction: Double, detail: String) {}
            func finish() { finished += 1 }
        }
        let recorder = Recorder()
        let engine = ReplayEngine(
            reader: try TraceReader(path: path),
            configuration: ReplayConfiguration(policies: [try PolicySpec(name: "full")], threads: 1))
        engine.progress = recorder
        XCTAssertThrowsError(try engine.run())
        XCTAssertEqual(recorder.finished, 1)

        let profileRecorder = Recorder()
        XCTAssertThrowsError(
            try SparsityProfile.compute(try TraceReader(path: path), threads: 1, progress: profileRecorder))
        XCTAssertEqual(profileRecorder.finished, 1)
    }
}
