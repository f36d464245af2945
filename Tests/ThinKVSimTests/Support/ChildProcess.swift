import Foundation
import XCTest

/// Runs a program as a child process with a time limit and reports what a hostile-input test
/// checks: exit status or signal, stderr, and the child's own peak RSS (from wait4, so earlier
/// children do not count, unlike getrusage(RUSAGE_CHILDREN)).
enum ChildProcess {
    struct Outcome {
        var status: Int32
        /// The signal that ended the child, if one did.
        var signal: Int32?
        var timedOut: Bool
        var seconds: Double
        var stdout: String
        var stderr: String
        var maxRSSKiB: Int
    }

    /// Runs `executable arguments…` with stdin from /dev/null, stdout and stderr to files in
    /// `directory`; after `seconds` the child is killed (SIGKILL) and `timedOut` set.
    static func run(
        _ executable: String, _ arguments: [String], in directory: URL, seconds: Double = 60,
        environment: [String: String] = [:], stdoutPath: String? = nil, workingDirectory: String? = nil
    ) throws -> Outcome {
        let outPath = stdoutPath ?? directory.appendingPathComponent("stdout-\(UUID().uuidString)").path
        let errPath = directory.appendingPathComponent("stderr-\(UUID().uuidString)").path
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        // The test's own limits (THINKV_PROBE_SECONDS and the like) must not reach the child.
        // posix_spawn's chdir action is not in every libc: a shell changes directory, then execs.
        var (executable, arguments) = (executable, arguments)
        if let workingDirectory {
            arguments = ["-c", "cd \"$0\" && exec \"$@\"", workingDirectory, executable] + arguments
            executable = "/bin/sh"
        }
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("THINKV_") || $0.key == "THINKV_SIM" }
        for (key, value) in environment { env[key] = value }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        guard spawned == 0 else {
            throw NSError(
                domain: "ChildProcess", code: Int(spawned),
                userInfo: [
                    NSLocalizedDescriptionKey: "cannot start \(executable): \(String(cString: strerror(spawned)))"
                ])
        }
        let start = Date()
        var status: Int32 = 0
        var usage = rusage()
        var timedOut = false
        while true {
            let done = wait4(pid, &status, WNOHANG, &usage)
            if done == pid { break }
            if done < 0 && errno != EINTR { break }
            if Date().timeIntervalSince(start) > seconds && !timedOut {
                timedOut = true
                kill(pid, SIGKILL)
            }
            usleep(2_000)
        }
        let seconds = Date().timeIntervalSince(start)
        let signal = status & 0x7f
        let read = { (path: String) in
            String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self)
        }
        return Outcome(
            status: signal == 0 ? (status >> 8) & 0xff : 128 + signal, signal: signal == 0 ? nil : signal,
            timedOut: timedOut, seconds: seconds, stdout: read(outPath), stderr: read(errPath),
            maxRSSKiB: usage.ru_maxrss)
    }

    /// Runs the `thinkv-sim` built beside the tests.
    static func thinkv(
        _ arguments: [String], in directory: URL, seconds: Double = 60, environment: [String: String] = [:],
        file: StaticString = #filePath, line: UInt = #line
    ) throws -> Outcome {
        let binary = try XCTUnwrap(CommandRunner.binary, "thinkv-sim not built", file: file, line: line)
        return try run(binary.path, arguments, in: directory, seconds: seconds, environment: environment)
    }

    /// The first directory on PATH holding an executable `name`.
    static func which(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(name)" }.first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }
}

/// What every hostile input must end in: exit 0, or exit 1...123 with one line on stderr that
/// starts "thinkv-sim " (usage errors add the help pointer); never a signal, a hang (10 s), or
/// more than 1 GiB of memory.
func assertHandled(
    _ outcome: ChildProcess.Outcome, _ what: String, seconds: Double = 10,
    file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertNil(
        outcome.signal, "\(what): killed by signal \(outcome.signal ?? 0): \(outcome.stderr.suffix(300))", file: file,
        line: line)
    XCTAssertFalse(outcome.timedOut, "\(what): did not finish", file: file, line: line)
    XCTAssertLessThan(outcome.seconds, seconds, "\(what): took \(outcome.seconds) s", file: file, line: line)
    XCTAssertLessThan(
        outcome.maxRSSKiB, 1 << 20, "\(what): peak RSS \(outcome.maxRSSKiB / 1024) MiB, over 1 GiB", file: file,
        line: line)
    guard outcome.status != 0 else { return }
    XCTAssertTrue((1...123).contains(outcome.status), "\(what): exit \(outcome.status)", file: file, line: line)
    let lines = outcome.stderr.split(separator: "\n").filter { !$0.hasPrefix("Run '") && !$0.hasPrefix("note:") }
    XCTAssertEqual(lines.count, 1, "\(what): one line on stderr: \(outcome.stderr.prefix(400))", file: file, line: line)
    XCTAssertTrue(
        lines.first?.hasPrefix("thinkv-sim ") == true, "\(what): \(outcome.stderr.prefix(200))", file: file, line: line)
    XCTAssertLessThan(
        outcome.stderr.utf8.count, 1000, "\(what): stderr of \(outcome.stderr.utf8.count) bytes", file: file, line: line
    )
}

/// Checksums of files, to show a command left its inputs (and earlier outputs) as they were.
struct FileChecksums: Equatable {
    private var sums: [String: String]

    init(_ paths: [String]) {
        sums = [:]
        for path in paths {
            sums[path] = FileManager.default.contents(atPath: path).map(FileChecksums.fnv1a) ?? "missing"
        }
    }

    /// FNV-1a, 64 bits: enough to notice any change to a test's file.
    private static func fnv1a(_ data: Data) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in data {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return String(hash, radix: 16) + "/\(data.count)"
    }
}
