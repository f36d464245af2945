import Foundation
import XCTest

/// Runs the built `thinkv-sim` in a child with a time limit, telling a signal death from an
/// exit status, and checks the outcome the way the hostile-input and hostile-output suites
/// require: exit 0, or exit 1...123 with one line on stderr starting "thinkv-sim ".
enum ChildRun {
    struct Outcome {
        var status: Int32
        var crashed: Bool
        var timedOut: Bool
        var stdout: String
        var stderr: String
        var seconds: Double
    }

    /// A started child: `wait()` collects it.
    final class Running {
        let process: Process
        let outURL: URL, errURL: URL
        private let outHandle: FileHandle, errHandle: FileHandle
        let started = Date()
        let limit: Double

        init(_ arguments: [String], in directory: URL, seconds: Double) throws {
            let binary = try XCTUnwrap(CommandRunner.binary, "thinkv-sim not built")
            outURL = directory.appendingPathComponent(".stdout-\(UUID().uuidString)")
            errURL = directory.appendingPathComponent(".stderr-\(UUID().uuidString)")
            _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
            _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
            process = Process()
            process.executableURL = binary
            process.arguments = arguments
            process.currentDirectoryURL = directory
            outHandle = try FileHandle(forWritingTo: outURL)
            errHandle = try FileHandle(forWritingTo: errURL)
            process.standardOutput = outHandle
            process.standardError = errHandle
            limit = seconds
            try process.run()
        }

        func wait() throws -> Outcome {
            var timedOut = false
            while process.isRunning {
                if Date().timeIntervalSince(started) > limit {
                    timedOut = true
                    process.terminate()
                    break
                }
                usleep(5_000)
            }
            process.waitUntilExit()
            try? outHandle.close()
            try? errHandle.close()
            let outcome = Outcome(
                status: process.terminationStatus, crashed: process.terminationReason == .uncaughtSignal,
                timedOut: timedOut, stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
                stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self),
                seconds: Date().timeIntervalSince(started))
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
            return outcome
        }
    }

    /// Runs `thinkv-sim arguments…` in `directory` (relative paths resolve there).
    static func run(_ arguments: [String], in directory: URL, seconds: Double = 60) throws -> Outcome {
        try Running(arguments, in: directory, seconds: seconds).wait()
    }

    /// Exit 0, or exit 1...123 with one line (plus, for usage errors, the help pointer).
    static func assertHandled(_ outcome: Outcome, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(
            outcome.crashed, "\(what): killed by a signal: \(outcome.stderr.suffix(300))", file: file, line: line)
        XCTAssertFalse(outcome.timedOut, "\(what): did not finish", file: file, line: line)
        guard outcome.status != 0 else { return }
        XCTAssertTrue((1...123).contains(outcome.status), "\(what): exit \(outcome.status)", file: file, line: line)
        let lines = outcome.stderr.split(separator: "\n").filter { !$0.hasPrefix("Run '") && !$0.hasPrefix("note:") }
        XCTAssertEqual(
            lines.count, 1, "\(what): one line on stderr: \(outcome.stderr.prefix(400))", file: file, line: line)
        XCTAssertTrue(
            lines.first?.hasPrefix("thinkv-sim ") == true, "\(what): \(outcome.stderr.prefix(200))", file: file,
            line: line)
    }

    /// Contents of every regular file under `directory` (links followed, hidden files
    /// included), by path relative to it: to show that a run changed nothing it must not.
    static func snapshot(_ directory: URL) throws -> [String: Data] {
        var files: [String: Data] = [:]
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        for name in names where !name.hasPrefix(".stdout-") && !name.hasPrefix(".stderr-") {
            let path = directory.appendingPathComponent(name).path
            var info = stat(), link = stat()
            guard stat(path, &info) == 0, lstat(path, &link) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
            files[name + (link.st_mode & S_IFMT == S_IFLNK ? " (link)" : "")] = try Data(
                contentsOf: URL(fileURLWithPath: path))
        }
        return files
    }
}
