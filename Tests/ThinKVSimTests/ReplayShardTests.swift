import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// A replay sharded by layer and merged equals one replay over all layers, bit for bit.
final class ReplayShardTests: XCTestCase {
    func testLayerShardsMergeIntoTheSingleReplay() throws {
        let directory = try TestTraces.directory(self)
        let T = 160, P = 16
        let layers = (0..<4).map {
            TestTraces.randomLayer(T: T, Hq: 4, Hkv: 2, D: 8, seed: 30 + UInt64($0), index: $0, values: $0 != 3)
        }
        let labels = [Int8](repeating: -1, count: P) + (P..<T).map { Int8(($0 / 30) % 3) }
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("four.h5"), T: T, P: P, Hq: 4, Hkv: 2, D: 8,
            numLayers: 8, layers: layers, thought: labels)
        let specs = [
            try PolicySpec(name: "h2o", values: ["budget": "40"]),
            try PolicySpec(name: "thinkv", values: ["budget": "40", "theta1": "0.3", "theta2": "0.7", "tau": "8"]),
            try PolicySpec(name: "kivi")
        ]
        func replay(_ subset: [Int]?) throws -> ReplayResult {
            var configuration = ReplayConfiguration(policies: specs, layers: subset)
            configuration.threads = 2
            return try ReplayEngine(reader: try TraceReader(path: path), configuration: configuration).run()
        }
        let whole = try replay(nil)
        var paths: [String] = []
        for (n, subset) in [[2, 3], [0, 1]].enumerated() {
            let part = try replay(subset)
            let file = directory.appendingPathComponent("shard\(n).json").path
            try ReplayShard(part, layersWithValues: subset.filter { $0 != 3 }).write(to: file)
            paths.append(file)
        }
        let merged = try ReplayShard.merge(try paths.map(ReplayShard.read), paths: paths)
        XCTAssertEqual(merged.layers, [0, 1, 2, 3])
        for (a, b) in zip(merged.runs, whole.runs) {
            XCTAssertEqual(a.spec.label, b.spec.label)
            XCTAssertEqual(a.summary, b.summary, a.spec.label)
            XCTAssertEqual(a.steps, b.steps, a.spec.label)
        }
        XCTAssertEqual(ReplayReport.stepCSV(merged), ReplayReport.stepCSV(whole))
        XCTAssertEqual(merged.notes, whole.notes)

        // The same through the command line: two --layers replays with --shard-state, then merge.
        func run(_ arguments: [String]) throws -> CommandRunner.Outcome {
            try CommandRunner.run(arguments, in: directory)
        }
        let common = ["--policy", "h2o,kivi", "--budget", "40", "--threads", "1"]
        let single = try run(
            ["replay", path, "--json", "--csv", directory.appendingPathComponent("all.csv").path] + common)
        XCTAssertEqual(single.status, 0, single.stderr)
        for (n, subset) in ["0,1", "2,3"].enumerated() {
            let o = try run(
                [
                    "replay", path, "--layers", subset, "--shard-state",
                    directory.appendingPathComponent("s\(n).json").path
                ] + common)
            XCTAssertEqual(o.status, 0, o.stderr)
        }
        let joined = try run([
            "merge", directory.appendingPathComponent("s1.json").path, directory.appendingPathComponent("s0.json").path,
            "--json", "--csv", directory.appendingPathComponent("merged.csv").path
        ])
        XCTAssertEqual(joined.status, 0, joined.stderr)
        func runs(_ json: String) throws -> [[String: Any]] {
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            return try XCTUnwrap(report["runs"] as? [[String: Any]])
        }
        XCTAssertEqual(
            try runs(joined.stdout).map { NSDictionary(dictionary: $0) },
            try runs(single.stdout).map { NSDictionary(dictionary: $0) })
        XCTAssertEqual(
            try String(contentsOfFile: directory.appendingPathComponent("merged.csv").path, encoding: .utf8),
            try String(contentsOfFile: directory.appendingPathComponent("all.csv").path, encoding: .utf8))
        // Overlapping shards are refused.
        let overlap = try run([
            "merge", directory.appendingPathComponent("s0.json").path, directory.appendingPathComponent("s0.json").path
        ])
        XCTAssertEqual(overlap.status, 1)
        XCTAssertTrue(overlap.stderr.contains("overlap"), overlap.stderr)
    }
}
