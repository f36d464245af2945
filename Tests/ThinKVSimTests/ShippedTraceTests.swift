import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The traces and ThinKV calibration files in traces/ and configs/: what the README and the
/// documentation say about them stays true.
final class ShippedTraceTests: XCTestCase {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    private static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// The classifier's loss at τ = 128 on the synthetic sample is the hold rule's alone: per step
    /// (τ = 1) it recovers the labels, and at τ = 128 it scores what the true labels would score if
    /// they too were only read every 128 steps.
    func testSyntheticSampleCalibratesTriModalAndClassifiesItsLabels() throws {
        let trace = Self.path("traces/sample-synthetic.h5")
        let reader = try TraceReader(path: trace)
        let profile = try SparsityProfile.compute(reader)
        let calibration = try ThoughtCalibration.calibrate([
            .init(path: trace, model: reader.header.model, profile: profile)
        ])
        XCTAssertFalse(calibration.fallback)
        XCTAssertEqual(calibration.thresholds.layers, [1, 2, 3], "layer 0 blends the types; 1-3 are tri-modal")

        let labels = try XCTUnwrap(reader.readThoughtLabels())
        let reference = Array(labels[reader.header.promptLength...])
        let averaged = profile.averaged(over: calibration.thresholds.layers)
        var perStep = calibration.thresholds
        perStep.refreshInterval = 1
        let (stepAccuracy, confusion) = ThoughtClassifier.accuracy(
            predicted: ThoughtClassifier.timeline(averagedSparsity: averaged, thresholds: perStep), reference: reference
        )
        XCTAssertGreaterThanOrEqual(stepAccuracy, 0.9, "confusion \(confusion)")

        let tau = calibration.thresholds.refreshInterval
        XCTAssertEqual(tau, 128)
        let held = ThoughtClassifier.accuracy(
            predicted: ThoughtClassifier.timeline(averagedSparsity: averaged, thresholds: calibration.thresholds),
            reference: reference
        ).accuracy
        let oracle = reference.indices.map { t in ThoughtType(rawValue: reference[t - t % tau])! }
        let oracleHeld = ThoughtClassifier.accuracy(predicted: oracle, reference: reference).accuracy
        XCTAssertLessThan(oracleHeld, 0.9, "the sample's thoughts are shorter than τ: the hold rule costs accuracy")
        XCTAssertEqual(held, oracleHeld, accuracy: 0.01)

        // The shipped thresholds are this calibration's.
        let shipped = try ThoughtThresholds.load(path: Self.path("configs/thinkv-synthetic.json"))
        XCTAssertEqual(shipped.layers, calibration.thresholds.layers)
        XCTAssertEqual(shipped.theta1, calibration.thresholds.theta1, accuracy: 1e-4)
        XCTAssertEqual(shipped.theta2, calibration.thresholds.theta2, accuracy: 1e-4)
    }

    /// SmolLM2 is not a reasoning model: no recorded layer is tri-modal, and calibration says so
    /// and falls back to one thought type, as the shipped file records.
    func testRealTraceHasNoThoughtStructureAndFallsBack() throws {
        let calibration = try ThoughtCalibration.calibrate(
            traces: [Self.path("traces/smollm2-135m-math.h5")], maxSteps: 128)
        XCTAssertTrue(calibration.fallback)
        XCTAssertEqual(calibration.fallbackRule, "single-type")
        XCTAssertTrue(calibration.layers.allSatisfy { !$0.candidate })
        let shipped = try ThoughtThresholds.load(path: Self.path("configs/thinkv-smollm2-135m.json"))
        XCTAssertEqual(shipped.theta1, 0)
        XCTAssertEqual(shipped.theta2, 1)
    }

    /// Every registered policy replays the real trace (first decode steps of the last layer), keeps
    /// no more than its cap, and the full cache is exact. Nothing here names a policy but the full
    /// cache and LazyEviction (whose default window exceeds this budget).
    func testRealTraceReplaysThroughEveryPolicy() throws {
        let directory = try TestTraces.directory(self)
        // LazyEviction's default window (128) exceeds this budget, which it refuses: it runs on
        // its own with a window of 32.
        let names = PolicyRegistry.names.filter { $0 != "lazyeviction" }
        XCTAssertEqual(names.count, PolicyRegistry.names.count - 1)
        let budget = 96
        var runs: [[String: Any]] = []
        let calibration = ["--calibration", Self.path("configs/thinkv-smollm2-135m.json")]
        for (policies, extra) in [(names, calibration), (["lazyeviction"], ["--window", "32"])] {
            let outcome = try CommandRunner.run(
                [
                    "replay", Self.path("traces/smollm2-135m-math.h5"), "--policy", policies.joined(separator: ","),
                    "--budget", "\(budget)", "--steps", "48", "--layers", "29", "--json"
                ] + extra,
                in: directory)
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
            let these = try XCTUnwrap(report["runs"] as? [[String: Any]])
            XCTAssertEqual(these.map { $0["policy"] as? String }, policies)
            runs += these
        }
        for run in runs {
            let policy = run["policy"] as! String
            let summary = try XCTUnwrap(run["summary"] as? [String: Any])
            let recall = try XCTUnwrap((summary["mass_recall"] as? [String: Any])?["mean"] as? Double)
            let tokens = try XCTUnwrap((summary["memory"] as? [String: Any])?["final_resident_tokens"] as? Int)
            XCTAssertTrue((0...1.000001).contains(recall), "\(policy): recall \(recall)")
            // A run that evicted keeps at most its budget plus a buffer and loses some attention; one that
            // did not (quantization only, or a press whose interval is longer than 48 steps) holds every token.
            let evicted = try XCTUnwrap((summary["memory"] as? [String: Any])?["eviction_step_percent"] as? Double)
            if evicted > 0 {
                XCTAssertLessThanOrEqual(tokens, budget + 128, "\(policy) keeps at most budget plus its buffer")
                XCTAssertLessThan(recall, 1, policy)
            } else {
                XCTAssertEqual(tokens, 227 + 48, policy)
            }
            if policy == FullCachePolicy.name { XCTAssertEqual(recall, 1, accuracy: 1e-6) }
        }
    }
}
