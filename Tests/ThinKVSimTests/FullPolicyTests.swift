import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The full cache must reproduce the reference exactly: recall 1, KL 0, output error 0.
final class FullPolicyTests: XCTestCase {
    func testFullPolicyIsExactOnRandomTrace() throws {
        let dir = try TestTraces.directory(self)
        let layer = TestTraces.randomLayer(T: 40, Hq: 4, Hkv: 2, D: 8, seed: 1)
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("r.h5"), T: 40, P: 10, Hq: 4, Hkv: 2, D: 8, layers: [layer])
        let (result, events) = try TestTraces.replay(path, [try PolicySpec(name: "full")])
        let run = result.runs[0]
        XCTAssertEqual(run.steps.count, 30)
        XCTAssertEqual(run.summary.massRecall.min, 1, accuracy: 1e-5)
        XCTAssertEqual(run.summary.topKRecall.min, 1)
        XCTAssertEqual(run.summary.attentionKL.max, 0, accuracy: 1e-5)
        XCTAssertEqual(run.summary.outputError!.max, 0, accuracy: 1e-6)
        XCTAssertTrue(events.isEmpty, "the full cache never drops a token")
        for r in run.steps {
            XCTAssertEqual(r.attendedTokens, Double(r.position + 1))
            XCTAssertEqual(r.attendedBytes, r.fullBytes)
        }
    }

    func testH5pyWrittenTraceReplaysWithRecallOne() throws {
        let path = TestTraces.fixture("h5py-small.h5")
        let (result, _) = try TestTraces.replay(path, [try PolicySpec(name: "full")])
        XCTAssertEqual(result.layers, [0, 2], "layer 0 has q/k/v, layer 2 attention only")
        XCTAssertEqual(result.runs[0].summary.massRecall.min, 1, accuracy: 1e-4)
        XCTAssertEqual(result.runs[0].summary.massRecall.mean, 1, accuracy: 1e-5)
        XCTAssertEqual(result.runs[0].steps.count, 2 * 32)
    }
}
