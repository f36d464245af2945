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
}
