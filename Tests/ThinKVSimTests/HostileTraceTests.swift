import CHDF5
import Foundation
import XCTest
@testable import ThinKVSim

/// Hostile traces run through the built binary: each must be read with sane numbers or refused
/// in one line, within the time and memory limits of `assertHandled`, leaving the file as it was.
final class HostileTraceTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    /// An fp16 trace with large q·k: the exact logits and the reference's log-sum-exp differ by
    /// float32 rounding, which an uncapped Σ exp(x − lse) turned into mass recall above 1 on the
    /// quantized-key path (kivi, thinkv-tbq). Both paths cap at 1, as docs/metrics.md says.
    func testMassRecallNeverExceedsOneWithLargeLogits() throws {
        let T = 96, P = 16, Hq = 4, Hkv = 2, D = 32
        var layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 31)
        for i in layer.q!.indices { layer.q![i] *= 30 }
        for i in layer.k!.indices { layer.k![i] *= 30 }
        let path = try TestTraces.write(to: directory.appendingPathComponent("large-logits.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
                                        layers: [layer], dtype: .float16)
        let before = FileChecksums([path])
        // kivi and thinkv-tbq attend with quantized keys; h2o and snapkv with exact keys.
        for policy in [["kivi", "--k-bits", "4"], ["kivi"], ["thinkv-tbq"], ["h2o", "--budget", "32"],
                       ["snapkv", "--budget", "32"]] {
            let outcome = try ChildProcess.thinkv(["replay", path, "--policy"] + policy + ["--json"], in: directory)
            assertHandled(outcome, policy.joined(separator: " "), seconds: 30)
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
            for run in try XCTUnwrap(report["runs"] as? [[String: Any]]) {
                let summary = try XCTUnwrap(run["summary"] as? [String: Any])
                let recall = try XCTUnwrap(summary["mass_recall"] as? [String: Any])
                let max = try XCTUnwrap(recall["max"] as? Double), mean = try XCTUnwrap(recall["mean"] as? Double)
                XCTAssertLessThanOrEqual(max, 1, "\(policy): mass recall max")
                XCTAssertLessThanOrEqual(mean, 1, "\(policy): mass recall mean")
                XCTAssertGreaterThan(mean, 0, "\(policy): mass recall mean")
            }
        }
        XCTAssertEqual(FileChecksums([path]), before, "replay leaves the trace as it was")
    }

    /// A trace with token text (variable-length strings, kept in an HDF5 global heap).
    private func traceWithText(_ name: String) throws -> String {
        let T = 32, P = 8
        let url = directory.appendingPathComponent(name)
        let header = TraceHeader(model: "probe-test", numLayers: 1, numQHeads: 2, numKVHeads: 1, headDim: 8,
                                 promptLength: P, numTokens: T, source: "synthetic", generator: "tests")
        let writer = try TraceWriter(path: url.path, header: header)
        try writer.writeTokens(ids: (0..<T).map { Int32($0) }, text: (0..<T).map { "tok\($0)" }, thought: nil)
        let layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 8, seed: 3)
        try writer.writeTensor(.q, layer: 0, dtype: .float16, layer.q!)
        try writer.writeTensor(.k, layer: 0, dtype: .float16, layer.k!)
        writer.close()
        return url.path
    }

    /// The trace with the free-space object header of its global heap zeroed: an object of
    /// size 0, on which libhdf5 1.10 loops forever while loading the heap.
    private func loopingTrace() throws -> String {
        let path = try traceWithText("looping.h5")
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        func u64(_ at: Int) -> Int { (0..<8).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) } }
        let heap = try XCTUnwrap(Data(bytes).range(of: Data("GCOL".utf8))?.lowerBound, "a global heap")
        let end = heap + u64(heap + 8)
        var object = heap + 16  // signature, version, reserved, collection size
        while object + 16 <= end {
            let index = Int(bytes[object]) | Int(bytes[object + 1]) << 8
            if index == 0 { break }  // the free space
            object += 16 + (u64(object + 8) + 7) / 8 * 8
        }
        XCTAssertLessThan(object + 16, end, "the heap has a free-space object")
        for i in object..<(object + 16) { bytes[i] = 0 }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Processes whose parent is `parent`, from /proc (Linux).
    private func children(of parent: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == parent
        }
    }

    /// Running, not gone and not a zombie (an orphan's zombie waits for init, which may be slow
    /// in a container; it uses no CPU).
    private func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return state != "Z" && state != "X"
    }

    /// A file that loops the HDF5 library is refused within seconds (it took the 60 s timeout).
    func testLoopingMetadataIsRefusedInSeconds() throws {
        let path = try loopingTrace()
        let before = FileChecksums([path])
        for arguments in [["validate", path], ["replay", path, "--steps", "2"]] {
            let outcome = try ChildProcess.thinkv(arguments, in: directory, seconds: 30)
            assertHandled(outcome, "looping heap \(arguments[0])", seconds: 10)
            XCTAssertEqual(outcome.status, 1)
            XCTAssertTrue(outcome.stderr.contains("did not finish"), outcome.stderr)
        }
        XCTAssertEqual(FileChecksums([path]), before)
        // The valid trace the looping one was made from passes the same probe.
        let valid = try traceWithText("valid.h5")
        XCTAssertEqual(try ChildProcess.thinkv(["validate", valid], in: directory).status, 0)
    }

    /// kill -9 of the command while its probe loops on that file: the probe dies too (it ran on,
    /// at full CPU, forever).
    func testProbeDiesWithTheKilledCommand() throws {
        #if os(Linux)
        let path = try loopingTrace()
        let binary = try XCTUnwrap(CommandRunner.binary).path
        var pid: pid_t = 0
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let words: [String] = [binary, "validate", path]
        let argv = words.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        XCTAssertEqual(posix_spawn(&pid, binary, &actions, nil, argv, environ), 0)
        // Wait for the probe to start (it then loops until its timeout).
        var probes: [pid_t] = []
        let start = Date()
        while probes.isEmpty && Date().timeIntervalSince(start) < 4 {
            usleep(10_000)
            probes = children(of: pid)
        }
        XCTAssertFalse(probes.isEmpty, "the command forked its probe")
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let killed = Date()
        while probes.contains(where: isRunning) && Date().timeIntervalSince(killed) < 2 { usleep(10_000) }
        let survivors = probes.filter(isRunning)
        XCTAssertEqual(survivors, [], "the probe outlived its killed parent")
        for survivor in survivors { kill(survivor, SIGKILL) }
        #else
        throw XCTSkip("reads /proc (Linux)")
        #endif
    }
}
