import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Runs the independent NumPy re-derivations under tools/reference/ and reads their kept events,
/// so tests can compare them with thinkv-sim's. A machine without python3, NumPy or h5py skips
/// these tests (with the reason), it does not fail them.
enum PythonReference {
    /// Path of a script under tools/reference.
    static func script(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tools/reference").appendingPathComponent(name).path
    }

    /// Runs `python3 arguments…`; returns (status, stdout, stderr).
    private static func python(_ arguments: [String]) throws -> (Int32, String, String) {
        let directory = FileManager.default.temporaryDirectory
        let outURL = directory.appendingPathComponent("py-out-\(UUID().uuidString)")
        let errURL = directory.appendingPathComponent("py-err-\(UUID().uuidString)")
        defer {
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
        }
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        process.standardOutput = out
        process.standardError = err
        try process.run()
        process.waitUntilExit()
        try out.close()
        try err.close()
        return (
            process.terminationStatus,
            String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
            String(decoding: try Data(contentsOf: errURL), as: UTF8.self)
        )
    }

    /// Throws XCTSkip unless python3 with NumPy and h5py is available.
    static func requireNumPy() throws {
        let (status, _, stderr) = try python(["-c", "import numpy, h5py"])
        if status == 127 { throw XCTSkip("python3 is not installed: the NumPy cross-check cannot run") }
        if status != 0 {
            throw XCTSkip(
                "python3 lacks NumPy or h5py (pip install numpy h5py): the NumPy cross-check cannot run "
                    + "(\(stderr.split(separator: "\n").last ?? ""))"
            )
        }
    }

    /// Kept events a reference script prints (JSON lines in the `--kept` format).
    static func keptEvents(script name: String, _ arguments: [String]) throws -> [KeptEvent] {
        try requireNumPy()
        let (status, stdout, stderr) = try python([script(name)] + arguments)
        XCTAssertEqual(status, 0, "\(name) failed: \(stderr)")
        let decoder = JSONDecoder()
        return try stdout.split(separator: "\n").map { try decoder.decode(KeptEvent.self, from: Data($0.utf8)) }
    }

    /// The non-empty lines a reference script prints (for outputs other than kept events).
    static func lines(script name: String, _ arguments: [String]) throws -> [String] {
        try requireNumPy()
        let (status, stdout, stderr) = try python([script(name)] + arguments)
        XCTAssertEqual(status, 0, "\(name) failed: \(stderr)")
        return stdout.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    }

    /// Events keyed by (layer, step, kv head), kept positions as sorted arrays.
    static func byKey(_ events: [KeptEvent]) -> [String: [Int32]] {
        var out: [String: [Int32]] = [:]
        for e in events { out["layer \(e.layer) step \(e.step) head \(e.kvHead)"] = e.kept.sorted() }
        return out
    }
}
