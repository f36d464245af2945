import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// An equal-memory target below what a policy's smallest budget holds is out of reach because
/// of how far the cache grows between compressions; the note names the parameter that sets it
/// and a value, found by replaying, that reaches the target.
final class UnreachableTargetTests: XCTestCase {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    private static let realTrace = root.appendingPathComponent("traces/smollm2-135m-math.h5").path

    /// Every registered policy says when it compresses, and a cadence parameter it names is one
    /// of its integer parameters.
    func testEveryPolicyStatesItsCadence() throws {
        for type in PolicyRegistry.all {
            let budget = type.budgetParameter.map { [$0.name: "256"] } ?? [:]
            let spec = try PolicySpec(name: type.name, values: budget)
            let cadence = type.compressionCadence(spec.parameters)
            XCTAssertFalse(cadence.isEmpty, type.name)
            XCTAssertFalse(cadence.contains("?"), "\(type.name): every value the cadence names is declared: \(cadence)")
            XCTAssertFalse(cadence.contains("not stated"), type.name)
            if let name = type.cadenceParameter(spec.parameters) {
                let parameter = try XCTUnwrap(type.parameters.first { $0.name == name }, "\(type.name): --\(name)")
                guard case .integer = parameter.kind else {
                    return XCTFail("\(type.name): --\(name) is not an integer")
                }
            }
        }
    }

    func testRKVAtFivePercentNamesADivideThatReachesIt() throws {
        let directory = try TestTraces.directory(self)
        // One layer and 400 decode steps keep the test short; R-KV's default --divide 128 still
        // holds the cache far above 5 % of the full one at its smallest budget.
        let common = ["--kv-percent", "5", "--layers", "0", "--steps", "400", "--json", "--progress", "none"]
        let first = try CommandRunner.run(["replay", Self.realTrace, "--policy", "rkv"] + common, in: directory)
        XCTAssertEqual(first.status, 0, first.stderr)
        let match = try Self.memoryMatch(first.stdout)
        XCTAssertEqual(match["status"] as? String, "unreachable")
        let note = try XCTUnwrap(match["note"] as? String)
        let found = try XCTUnwrap(note.range(of: #"--divide (\d+) reaches it"#, options: .regularExpression), note)
        let value = String(note[found].split(separator: " ")[1])
        XCTAssertLessThan(try XCTUnwrap(Int(value)), 128, note)
        XCTAssertTrue(note.contains("at --divide 128 the cache grows by up to 127 tokens between compressions"), note)

        let second = try CommandRunner.run(
            ["replay", Self.realTrace, "--policy", "rkv", "--divide", value] + common, in: directory)
        XCTAssertEqual(second.status, 0, second.stderr)
        let rematch = try Self.memoryMatch(second.stdout)
        XCTAssertEqual(rematch["status"] as? String, "matched", "--divide \(value) reaches 5 %: \(rematch)")
        XCTAssertEqual(try XCTUnwrap(rematch["achieved_percent"] as? Double), 5, accuracy: 1)
        XCTAssertTrue(note.hasSuffix("(--kv-adapt runs it)"), note)

        // --kv-adapt makes the same change itself, and says so.
        let adapted = try CommandRunner.run(
            ["replay", Self.realTrace, "--policy", "rkv", "--kv-adapt"] + common, in: directory)
        XCTAssertEqual(adapted.status, 0, adapted.stderr)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(adapted.stdout.utf8)) as? [String: Any])
        let run = try XCTUnwrap((report["runs"] as? [[String: Any]])?.first)
        XCTAssertEqual((run["parameters"] as? [String: Any])?["divide"] as? Int, Int(value), "\(run)")
        let adaptedMatch = try Self.memoryMatch(adapted.stdout)
        XCTAssertEqual(adaptedMatch["status"] as? String, "matched")
        XCTAssertEqual(
            try XCTUnwrap(adaptedMatch["achieved_percent"] as? Double),
            try XCTUnwrap(rematch["achieved_percent"] as? Double),
            accuracy: 1e-9, "the same run as --divide \(value)")
        XCTAssertTrue(
            (adaptedMatch["note"] as? String)?.contains("--kv-adapt set --divide \(value) (was 128)") == true,
            "\(adaptedMatch)")
        let refused = try CommandRunner.run(
            ["replay", Self.realTrace, "--policy", "rkv", "--budget", "64", "--kv-adapt"], in: directory)
        XCTAssertEqual(refused.status, 2, refused.stderr)
    }

    private static func memoryMatch(_ json: String) throws -> [String: Any] {
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let runs = try XCTUnwrap(report["runs"] as? [[String: Any]])
        return try XCTUnwrap(runs.first?["memory_match"] as? [String: Any], "\(runs.first ?? [:])")
    }
}
