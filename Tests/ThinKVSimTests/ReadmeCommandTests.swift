import Foundation
import XCTest

/// The README's shell examples run as written from a clone: every ```sh block is run line by
/// line, in order, with the built `thinkv-sim` first on PATH, in a scratch directory holding
/// copies of traces/ and configs/, and every line must exit 0.
///
/// Rules, so the test stays a few minutes on a debug build and needs no model:
/// - A block with a `make` target or the recorder's Python (`.venv-recorder`, `tools/`) is
///   skipped whole: those need apt-get, a model, torch or a release build, and later lines of
///   the block read what they write.
/// - `replay`, `inspect` and `calibrate` lines without `--steps` get `--steps 32`: the same
///   command over a prefix of the trace (the full replays are what `make run` does).
final class ReadmeCommandTests: XCTestCase {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// The shell blocks of README.md, each a list of commands (continuation lines joined).
    static func shellBlocks(_ text: String) -> [[String]] {
        var blocks: [[String]] = []
        var current: [String]?
        var pending = ""
        for line in text.components(separatedBy: "\n") {
            if current == nil {
                if line.trimmingCharacters(in: .whitespaces) == "```sh" { current = [] }
                continue
            }
            if line.trimmingCharacters(in: .whitespaces) == "```" {
                blocks.append(current!)
                current = nil
                continue
            }
            if line.hasSuffix("\\") {
                pending += line.dropLast() + " "
                continue
            }
            let command = (pending + line).trimmingCharacters(in: .whitespaces)
            pending = ""
            if !command.isEmpty { current!.append(command) }
        }
        return blocks
    }

    /// Why a block is not run (nil: it is run).
    static func skipReason(_ block: [String]) -> String? {
        if block.contains(where: { $0.hasPrefix("make ") }) { return "runs make (apt-get, a release build)" }
        if block.contains(where: { $0.contains(".venv-recorder") || $0.contains("tools/") }) {
            return "needs the recorder's Python environment and a model"
        }
        return nil
    }

    /// The command as the test runs it: `--steps 32` added to a replay, inspect or calibrate
    /// without one (before a trailing comment).
    static func shortened(_ command: String) -> String {
        let words = command.split(separator: " ")
        guard words.count > 1, words[0] == "thinkv-sim", ["replay", "inspect", "calibrate"].contains(String(words[1])),
            !command.contains("--steps"), !command.contains("--help")
        else { return command }
        if let comment = command.range(of: " # ") ?? command.range(of: "  #") {
            return command[..<comment.lowerBound].trimmingCharacters(in: .whitespaces) + " --steps 32"
                + command[comment.lowerBound...]
        }
        return command + " --steps 32"
    }

    func testShortenedCommands() {
        XCTAssertEqual(
            Self.shortened("thinkv-sim replay t.h5 --budget 8  # note"),
            "thinkv-sim replay t.h5 --budget 8 --steps 32 # note")
        XCTAssertEqual(Self.shortened("thinkv-sim replay t.h5 --steps 4"), "thinkv-sim replay t.h5 --steps 4")
        XCTAssertEqual(Self.shortened("thinkv-sim sweep c.json"), "thinkv-sim sweep c.json")
        XCTAssertEqual(Self.shortened("thinkv-sim replay --help"), "thinkv-sim replay --help")
    }

    func testEveryReadmeShellCommandRuns() throws {
        let binary = try XCTUnwrap(CommandRunner.binary, "thinkv-sim not built; run 'swift build --build-tests'")
        let readme = try String(contentsOf: Self.root.appendingPathComponent("README.md"), encoding: .utf8)
        let blocks = Self.shellBlocks(readme)
        XCTAssertGreaterThanOrEqual(blocks.count, 4, "the README's sh blocks were found")
        let directory = try TestTraces.directory(self)
        for folder in ["traces", "configs"] {
            try FileManager.default.copyItem(
                at: Self.root.appendingPathComponent(folder), to: directory.appendingPathComponent(folder))
        }
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = binary.deletingLastPathComponent().path + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        var ran = 0
        for block in blocks where Self.skipReason(block) == nil {
            for command in block {
                let line = Self.shortened(command)
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/bin/sh")
                process.arguments = ["-c", line]
                process.currentDirectoryURL = directory
                process.environment = environment
                let log = directory.appendingPathComponent("command.log")
                _ = FileManager.default.createFile(atPath: log.path, contents: nil)
                let handle = try FileHandle(forWritingTo: log)
                process.standardOutput = handle
                process.standardError = handle
                try process.run()
                process.waitUntilExit()
                try handle.close()
                let output = String(decoding: try Data(contentsOf: log), as: UTF8.self)
                XCTAssertEqual(process.terminationStatus, 0, "README: \(line)\n\(output.suffix(1500))")
                ran += 1
            }
        }
        XCTAssertGreaterThanOrEqual(ran, 20, "the README's commands ran")
    }
}
