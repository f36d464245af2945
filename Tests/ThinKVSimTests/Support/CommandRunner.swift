import Foundation
import XCTest

/// Runs the `thinkv-sim` built next to the tests, as a user would, and collects what it wrote.
enum CommandRunner {
    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// The `thinkv-sim` built alongside the tests (same build directory), or the debug build
    /// under the package's .build directory.
    static let binary: URL? = {
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let candidates = [
            Bundle.main.bundleURL,
            Bundle(for: BundleMarker.self).bundleURL.deletingLastPathComponent(),
            packageRoot.appendingPathComponent(".build/debug")
        ].map { $0.appendingPathComponent("thinkv-sim") }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) }
    }()

    private final class BundleMarker {}

    /// Runs `thinkv-sim arguments…`; scratch files for its output go in `directory`.
    static func run(_ arguments: [String], in directory: URL, file: StaticString = #filePath, line: UInt = #line) throws
        -> Outcome
    {
        let binary = try XCTUnwrap(
            binary, "thinkv-sim not built; run 'swift build --build-tests'", file: file, line: line)
        // Output goes to files rather than pipes, so a chatty child can never stall on a full pipe.
        let outURL = directory.appendingPathComponent("stdout-\(UUID().uuidString)")
        let errURL = directory.appendingPathComponent("stderr-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: outURL), err = try FileHandle(forWritingTo: errURL)
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.standardOutput = out
        process.standardError = err
        try process.run()
        process.waitUntilExit()
        try out.close()
        try err.close()
        return Outcome(
            status: process.terminationStatus,
            stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
            stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
    }
}
