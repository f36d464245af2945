import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Outputs that would destroy something: an output that is an input under another name (a
/// link, a linked directory, a hard link), two outputs naming one file, two processes writing
/// one file, forged or mismatched merge shards, and sweep rows that are not what a sweep
/// writes. Every case runs the real binary in a child and must end in exit 0 with sane output,
/// or one line on stderr with exit 1...123, no signal, within 10 s, and must leave every input
/// and earlier output byte for byte as it was.
final class HostileOutputTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func run(_ arguments: [String], seconds: Double = 60) throws -> ChildRun.Outcome {
        try ChildRun.run(arguments, in: directory, seconds: seconds)
    }

    /// Runs a command that must be refused without touching any file of the directory.
    private func assertRefused(
        _ arguments: [String], _ what: String, status: Int32, containing text: String,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let before = try ChildRun.snapshot(directory)
        let outcome = try run(arguments, seconds: 10)
        ChildRun.assertHandled(outcome, what, file: file, line: line)
        XCTAssertEqual(outcome.status, status, "\(what): \(outcome.stderr)", file: file, line: line)
        XCTAssertTrue(outcome.stderr.contains(text), "\(what): \(outcome.stderr)", file: file, line: line)
        XCTAssertLessThan(outcome.seconds, 10, what, file: file, line: line)
        let after = try ChildRun.snapshot(directory)
        XCTAssertEqual(
            after.keys.sorted(), before.keys.sorted(), "\(what): files added or removed", file: file, line: line)
        for (name, data) in before where after[name] != data {
            XCTFail("\(what): \(name) changed", file: file, line: line)
        }
    }

    /// A small trace with token text (so per-step CSVs have a token_text column).
    @discardableResult
    private func trace(
        _ name: String, T: Int = 48, Hq: Int = 2, D: Int = 8, seed: UInt64 = 7, model: String = "hostile-output"
    ) throws -> String {
        let P = 8
        let url = directory.appendingPathComponent(name)
        let header = TraceHeader(
            model: model, numLayers: 2, numQHeads: Hq, numKVHeads: 1, headDim: D,
            promptLength: P, numTokens: T, source: "synthetic", generator: "tests")
        let writer = try TraceWriter(path: url.path, header: header)
        try writer.writeTokens(
            ids: (0..<T).map { Int32($0) }, text: (0..<T).map { "tok\($0), \"quoted\"" },
            thought: Array(repeating: -1, count: P) + (P..<T).map { Int8($0 % 3) })
        for index in 0..<2 {
            let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: 1, D: D, seed: seed + UInt64(index), index: index)
            try writer.writeTensor(.q, layer: index, dtype: .float16, layer.q!)
            try writer.writeTensor(.k, layer: index, dtype: .float16, layer.k!)
            try writer.writeTensor(.v, layer: index, dtype: .float16, layer.v!)
        }
        writer.close()
        return url.path
    }

    private func symlink(_ name: String, to target: String) {
        XCTAssertEqual(Foundation.symlink(target, path(name)), 0, "symlink \(name) -> \(target)")
    }

    // MARK: 1. An output is never an input under another name

    func testOutputsThatAreInputsUnderAnotherNameAreRefused() throws {
        try trace("t.h5")
        symlink("out.csv", to: "t.h5")
        try FileManager.default.createDirectory(atPath: path("sub"), withIntermediateDirectories: true)
        symlink("sub/up", to: "..")
        XCTAssertEqual(link(path("t.h5"), path("hard.h5")), 0)
        let replay = ["replay", "t.h5", "--policy", "h2o", "--budget", "16"]
        for (option, output) in [
            ("--csv", "out.csv"), ("--csv", "sub/up/t.h5"), ("--csv", "hard.h5"), ("--shard-state", "out.csv"),
            ("--kept", "out.csv"), ("--cache-timeline", "out.csv"), ("--kept", "hard.h5")
        ] {
            try assertRefused(
                replay + [option, output], "replay \(option) \(output)", status: 2,
                containing: "refusing to overwrite an input file")
        }
        // ThinKV's calibration file is an input too.
        let calibration = path("cal.json")
        try Data(#"{"theta1": 0.3, "theta2": 0.7, "layers": [0, 1], "refresh_interval": 8}"#.utf8).write(
            to: URL(fileURLWithPath: calibration))
        symlink("cal-link.csv", to: "cal.json")
        try assertRefused(
            [
                "replay", "t.h5", "--policy", "thinkv", "--budget", "16", "--calibration", "cal.json", "--csv",
                "cal-link.csv"
            ],
            "replay --csv onto the calibration", status: 2, containing: "refusing to overwrite an input file")

        // Two outputs naming one file, directly or through a link.
        try Data("earlier\n".utf8).write(to: URL(fileURLWithPath: path("a.csv")))
        symlink("a-link.jsonl", to: "a.csv")
        try assertRefused(
            replay + ["--csv", "a.csv", "--kept", "a.csv"], "same file twice", status: 2,
            containing: "named for two outputs")
        try assertRefused(
            replay + ["--csv", "a.csv", "--cache-timeline", "a-link.jsonl"], "same file through a link", status: 2,
            containing: "the same file as the output a.csv")

        // merge, quantize, calibrate and sweep check their inputs the same way.
        for n in 0..<2 {
            let o = try run(replay + ["--layers", String(n), "--shard-state", "s\(n).json"])
            XCTAssertEqual(o.status, 0, o.stderr)
        }
        symlink("m.json", to: "s0.json")
        try assertRefused(
            ["merge", "s0.json", "s1.json", "-o", "m.json"], "merge -o onto a shard", status: 2,
            containing: "refusing to overwrite")
        try assertRefused(
            ["merge", "s0.json", "s1.json", "--csv", "m.json"], "merge --csv onto a shard", status: 2,
            containing: "refusing to overwrite")
        try Data((0..<64).flatMap { i -> [UInt8] in withUnsafeBytes(of: Float(i).bitPattern.littleEndian, Array.init) })
            .write(to: URL(fileURLWithPath: path("in.f32")))
        symlink("q.f32", to: "in.f32")
        try assertRefused(
            ["quantize", "in.f32", "--quantizer", "int4", "-o", "q.f32"], "quantize -o onto its input", status: 2,
            containing: "refusing to overwrite")
        try assertRefused(
            ["calibrate", "t.h5", "-o", "out.csv"], "calibrate -o onto its trace", status: 2,
            containing: "refusing to overwrite")
        let config = path("sweep.json")
        try Data(
            #"{"traces": ["t.h5"], "policies": ["h2o"], "parameters": {"budget": [16]}, "output": "out.csv"}"#.utf8
        )
        .write(to: URL(fileURLWithPath: config))
        try assertRefused(
            ["sweep", "sweep.json"], "sweep output onto its trace", status: 2, containing: "refusing to overwrite")
        symlink("config-link.csv", to: "sweep.json")
        try assertRefused(
            ["sweep", "sweep.json", "-o", "config-link.csv"], "sweep output onto its config", status: 2,
            containing: "refusing to overwrite")

        // A link to a regular file that is not an input: that file is replaced whole and the
        // link stays a link. A device behind a link (/dev/stdout) is written through.
        try Data("old\n".utf8).write(to: URL(fileURLWithPath: path("target.csv")))
        symlink("via.csv", to: "target.csv")
        let through = try run(replay + ["--csv", "via.csv"])
        XCTAssertEqual(through.status, 0, through.stderr)
        XCTAssertEqual(OutputFile.linkKind(path("via.csv")), S_IFLNK, "the link is kept")
        XCTAssertTrue(try String(contentsOfFile: path("target.csv"), encoding: .utf8).hasPrefix("policy,layer,step"))
        let stdout = try run(replay + ["--steps", "2", "--csv", "/dev/stdout"])
        XCTAssertEqual(stdout.status, 0, stdout.stderr)
        XCTAssertTrue(stdout.stdout.contains("policy,layer,step"), stdout.stdout)
        // Nothing is left behind: no temporary or lock file.
        let hidden = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter {
            $0.hasPrefix(".") && !$0.hasPrefix(".std")
        }
        XCTAssertEqual(hidden, [])
    }

    // MARK: 9. Two processes never write one output at once

    func testASecondWriterOfTheSameOutputFailsAtOnce() throws {
        try trace("slow.h5", T: 768, Hq: 4, D: 32)
        let slow = ["replay", "slow.h5", "--policy", "h2o,tova", "--budget", "64", "--threads", "1", "--csv", "c.csv"]
        let lock = path(".c.csv.lock")
        func waitForLock(_ first: ChildRun.Running) {
            let deadline = Date().addingTimeInterval(10)
            while !FileManager.default.fileExists(atPath: lock) && first.process.isRunning && Date() < deadline {
                usleep(2_000)
            }
        }
        let first = try ChildRun.Running(slow, in: directory, seconds: 120)
        waitForLock(first)
        XCTAssertTrue(first.process.isRunning, "the first replay is still running when the second starts")
        let second = try run(["replay", "slow.h5", "--policy", "h2o", "--budget", "32", "--csv", "c.csv"], seconds: 10)
        ChildRun.assertHandled(second, "second writer")
        XCTAssertEqual(second.status, 1, second.stderr)
        XCTAssertTrue(second.stderr.contains("c.csv: another thinkv-sim is writing this file"), second.stderr)
        XCTAssertLessThan(second.seconds, 5, "fails fast")
        let done = try first.wait()
        XCTAssertEqual(done.status, 0, done.stderr)
        XCTAssertTrue(
            try String(contentsOfFile: path("c.csv"), encoding: .utf8).contains("tova("),
            "the first replay's result is there")
        XCTAssertFalse(FileManager.default.fileExists(atPath: lock), "the lock file is removed on exit")

        // A writer killed with SIGKILL leaves its lock file, which does not block the next one.
        let killed = try ChildRun.Running(slow, in: directory, seconds: 120)
        waitForLock(killed)
        kill(killed.process.processIdentifier, SIGKILL)
        _ = try killed.wait()
        XCTAssertTrue(FileManager.default.fileExists(atPath: lock), "a killed writer leaves its lock file")
        // ... and possibly a temporary beside the output, which the next writer removes.
        try Data("partial".utf8).write(to: URL(fileURLWithPath: path(".c.csv.tmp-Kill01")))
        let before = try Data(contentsOf: URL(fileURLWithPath: path("c.csv")))
        let after = try run(
            ["replay", "slow.h5", "--policy", "h2o", "--budget", "32", "--steps", "4", "--csv", "c.csv"], seconds: 10)
        XCTAssertEqual(after.status, 0, after.stderr)
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: path("c.csv"))), before)
        XCTAssertFalse(FileManager.default.fileExists(atPath: lock))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path(".c.csv.tmp-Kill01")))

        // Two sweeps of one output: the second fails at once too.
        try Data(
            (#"{"traces": ["slow.h5"], "policies": ["h2o", "tova"], "parameters": {"budget": [64]}, "threads": 1, "#
                + #""output": "r.csv"}"#).utf8
        )
        .write(to: URL(fileURLWithPath: path("slow.json")))
        let sweep = try ChildRun.Running(["sweep", "slow.json"], in: directory, seconds: 120)
        let sweepLock = path(".r.csv.lock")
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: sweepLock) && sweep.process.isRunning && Date() < deadline {
            usleep(2_000)
        }
        let rival = try run(["sweep", "slow.json"], seconds: 10)
        ChildRun.assertHandled(rival, "second sweep")
        XCTAssertEqual(rival.status, 1, rival.stderr)
        XCTAssertTrue(rival.stderr.contains("r.csv: another thinkv-sim is writing this file"), rival.stderr)
        let swept = try sweep.wait()
        XCTAssertEqual(swept.status, 0, swept.stderr)
        XCTAssertEqual(try CSVTable.read(path: path("r.csv")).table.rows.count, 2)
    }

    // MARK: 7. merge checks every setting and the contents of layer shards

    func testMergeRefusesMismatchedAndForgedShards() throws {
        try trace("t.h5")
        let replay = ["replay", "t.h5", "--policy", "h2o,kivi", "--budget", "16", "--threads", "1"]
        func shard(_ name: String, layer: Int, _ extra: [String] = []) throws {
            let o = try run(replay + ["--layers", String(layer), "--shard-state", name] + extra)
            XCTAssertEqual(o.status, 0, o.stderr)
        }
        try shard("s0.json", layer: 0)
        try shard("s1.json", layer: 1)
        for (name, extra, setting) in [
            ("k8.json", ["--topk", "8"], "--topk"), ("b4.json", ["--block-size", "4"], "--block-size"),
            ("compact.json", ["--paging", "compact"], "--paging")
        ] {
            try shard(name, layer: 1, extra)
            try assertRefused(
                ["merge", "s0.json", name], "merge of shards with different \(setting)", status: 1, containing: setting)
        }

        // Forged contents: each edit of a valid shard is refused, naming the file.
        let valid = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("s1.json"))))
                as? [String: Any])
        func forge(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
            var object = valid
            edit(&object)
            try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path(name)))
            return name
        }
        func editRun(_ object: inout [String: Any], _ edit: (inout [String: Any]) -> Void) {
            var runs = object["runs"] as! [[String: Any]]
            edit(&runs[0])
            object["runs"] = runs
        }
        func editRecord(_ object: inout [String: Any], _ key: String, _ value: Any) {
            editRun(&object) { run in
                var records = run["records"] as! [[String: Any]]
                records[0][key] = value
                run["records"] = records
            }
        }
        let forged = [
            try forge("minus.json") { $0["layers"] = [-1] },
            try forge("huge.json") { $0["layers"] = [1 << 62] },
            try forge("layer999.json") { editRecord(&$0, "layer", 999) },
            try forge("negative.json") { editRecord(&$0, "attendedBytes", -5) },
            try forge("nan-record.json") { editRecord(&$0, "massRecall", "nan") },
            try forge("nan-sample.json") { object in
                editRun(&object) { run in
                    var samples = run["samples"] as! [String: Any]
                    var recall = samples["massRecall"] as! [Any]
                    recall[3] = "nan"
                    samples["massRecall"] = recall
                    run["samples"] = samples
                }
            },
            try forge("short.json") { object in
                editRun(&object) { run in run["records"] = Array((run["records"] as! [Any]).dropLast()) }
            },
            try forge("steps.json") { $0["decodeSteps"] = 1 << 40 },
            try forge("param.json") { editRun(&$0) { run in run["given"] = ["budget": "abc"] } },
            try forge("policy.json") { editRun(&$0) { run in run["policy"] = "nosuch" } },
            try forge("v1.json") { $0["version"] = 1 }
        ]
        for name in forged {
            try assertRefused(
                ["merge", "s0.json", name, "--csv", "m.csv"], "merge of \(name)", status: 1, containing: name)
        }

        // The merged per-step CSV is the one replay's, token_text included.
        let single = try run(replay + ["--csv", "all.csv"])
        XCTAssertEqual(single.status, 0, single.stderr)
        let merged = try run(["merge", "s1.json", "s0.json", "--csv", "m.csv"])
        XCTAssertEqual(merged.status, 0, merged.stderr)
        let all = try String(contentsOfFile: path("all.csv"), encoding: .utf8)
        XCTAssertTrue(all.split(separator: "\n")[0].hasSuffix(",token_text"), all.prefix(200).description)
        XCTAssertEqual(try String(contentsOfFile: path("m.csv"), encoding: .utf8), all)
    }

    // MARK: 8. A resumed sweep checks every row it keeps

    func testSweepResumeRecomputesRowsThatAreNotWhatItWrites() throws {
        try trace("t.h5")
        let config = path("sweep.json")
        try Data(
            (#"{"traces": ["t.h5"], "policies": ["full", "h2o"], "parameters": {"budget": [8, 16]}, "threads": 1, "#
                + #""output": "out.csv", "step_csv_dir": "steps"}"#).utf8
        )
        .write(to: URL(fileURLWithPath: config))
        let first = try run(["sweep", "sweep.json"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let original = try String(contentsOfFile: path("out.csv"), encoding: .utf8)
        let table = try CSVTable.parse(original, file: "out.csv").table
        XCTAssertEqual(table.rows.count, 3)
        let fingerprint = try XCTUnwrap(table.index(of: "trace_fingerprint"))
        XCTAssertEqual(Set(table.rows.map { $0[fingerprint] }).count, 1)

        // Untouched: everything reused.
        let again = try run(["sweep", "sweep.json"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertTrue(again.stdout.contains("3 already there"), again.stdout)
        XCTAssertEqual(try String(contentsOfFile: path("out.csv"), encoding: .utf8), original)

        for (column, value) in [
            ("mass_recall_mean", "nan"), ("kv_bytes_mean", "abc"), ("topk_recall_mean", "-99"),
            ("decode_steps", "9999"),
            ("attention_kl_mean", "1e999"), ("tokens_attended_mean", "+12"), ("trace_fingerprint", "0:0:0")
        ] {
            var edited = table
            let index = try XCTUnwrap(edited.index(of: column), column)
            edited.rows[1][index] = value
            try Data(edited.render().utf8).write(to: URL(fileURLWithPath: path("out.csv")))
            let outcome = try run(["sweep", "sweep.json"], seconds: 30)
            ChildRun.assertHandled(outcome, "\(column)=\(value)")
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            XCTAssertTrue(
                outcome.stdout.contains("(1 computed in 1 engine run(s), 2 already there)"),
                "\(column)=\(value): \(outcome.stdout)")
            XCTAssertTrue(outcome.stderr.contains("recomputing 1 row(s)"), outcome.stderr)
            XCTAssertEqual(try String(contentsOfFile: path("out.csv"), encoding: .utf8), original, "\(column)=\(value)")
        }

        // Orphaned temporaries of an earlier, killed sweep are removed; a fresh one of a per-step
        // file (another sweep may be writing it) is left.
        let stepFile = try XCTUnwrap(
            try FileManager.default.contentsOfDirectory(atPath: path("steps")).first { !$0.hasPrefix(".") })
        for name in [".out.csv.tmp-Ab12Cd", "steps/.\(stepFile).tmp-Old123", "steps/.\(stepFile).tmp-New123"] {
            try Data("partial".utf8).write(to: URL(fileURLWithPath: path(name)))
        }
        var old = [timeval(tv_sec: time(nil) - 3600, tv_usec: 0), timeval(tv_sec: time(nil) - 3600, tv_usec: 0)]
        XCTAssertEqual(utimes(path("steps/.\(stepFile).tmp-Old123"), &old), 0)
        let cleaned = try run(["sweep", "sweep.json"])
        XCTAssertEqual(cleaned.status, 0, cleaned.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path(".out.csv.tmp-Ab12Cd")))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("steps/.\(stepFile).tmp-Old123")))
        XCTAssertTrue(FileManager.default.fileExists(atPath: path("steps/.\(stepFile).tmp-New123")))

        // A trace replaced at the same path (same size and header, other data) is replayed again.
        let replacement = try trace("other.h5", seed: 99)
        var later = [timeval(tv_sec: time(nil) + 10, tv_usec: 0), timeval(tv_sec: time(nil) + 10, tv_usec: 0)]
        XCTAssertEqual(utimes(replacement, &later), 0)
        XCTAssertEqual(rename(replacement, path("t.h5")), 0)
        let replaced = try run(["sweep", "sweep.json"])
        XCTAssertEqual(replaced.status, 0, replaced.stderr)
        XCTAssertTrue(replaced.stdout.contains("(3 computed"), replaced.stdout)
        XCTAssertTrue(replaced.stderr.contains("changed since the row was written"), replaced.stderr)
        let recomputed = try CSVTable.read(path: path("out.csv")).table
        XCTAssertNotEqual(recomputed.rows[1][fingerprint], table.rows[1][fingerprint])
        XCTAssertNotEqual(
            recomputed.rows.map { $0[table.index(of: "mass_recall_mean")!] },
            table.rows.map { $0[table.index(of: "mass_recall_mean")!] }, "new data, new figures")
    }
}
