import Foundation

/// Writes result files so that nothing the user had is lost:
/// - a regular file (or a new path) is written to a temporary file beside it and renamed into
///   place, so an interrupted or failed run never leaves a half-written file where a good one was;
///   through a symbolic link, the file the link leads to is replaced that way and the link kept;
/// - anything else that can be written (a character device such as /dev/null or a terminal, a
///   FIFO, /dev/stdout) is written straight through, never replaced by a file;
/// - "-" is standard output;
/// - an output is never one of the command's inputs under any name: files are compared by
///   device and inode (`checkWritable`); `OutputClaim` also keeps two outputs, or two
///   processes, off one file.
/// Every write is checked: a full disk or /dev/full is an error, not a silent truncation.
public enum OutputFile {
    /// "-": the path that means standard output.
    public static let standardOutput = "-"

    public static func write(_ text: String, to path: String, protecting inputs: [String] = []) throws {
        try write(Data(text.utf8), to: path, protecting: inputs)
    }

    public static func write(_ data: Data, to path: String, protecting inputs: [String] = []) throws {
        try checkWritable(path, protecting: inputs)
        let destination = try Destination(path)
        do {
            try writeAll(data, to: destination.fd, path: destination.name)
            try destination.finish()
        } catch {
            destination.discard()
            throw error
        }
    }

    /// An output open for writing in pieces (`writeAll` to `fd`, named `name` in errors): a
    /// regular file or new path is a temporary file beside it that `finish()` renames into place
    /// and `discard()` removes; anything else is written straight through.
    public final class Destination {
        public let fd: Int32
        /// What error messages call it: the path, or "standard output" for "-".
        public let name: String
        private let target: String
        /// The temporary file renamed over `target` by `finish()` (regular files only).
        private let temporary: String?
        private var done = false

        public init(_ path: String) throws {
            name = path == OutputFile.standardOutput ? "standard output" : path
            if path == OutputFile.standardOutput || OutputFile.isStandardOutput(path) {
                // "-", /dev/stdout, /proc/self/fd/1 or the file stdout is redirected to: share its offset.
                fd = STDOUT_FILENO
                target = path
                temporary = nil
                return
            }
            if let kind = OutputFile.fileKind(path), kind != S_IFREG {
                // A device, FIFO or terminal (also through a link): write through it, as a shell
                // redirection would, so the device stays what it is.
                fd = open(path, O_WRONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    throw OutputError("\(path): cannot open for writing (\(String(cString: strerror(errno))))")
                }
                target = path
                temporary = nil
                return
            }
            // A regular file, a new path, or a link to a regular file: the file the links lead to
            // is replaced, so a link stays a link and still names the new contents.
            let resolved = URL(fileURLWithPath: OutputFile.resolvedPath(path))
            target = resolved.path
            let directory = resolved.deletingLastPathComponent().path
            var template = Array((directory + "/.\(resolved.lastPathComponent).tmp-XXXXXX").utf8CString)
            fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            guard fd >= 0 else {
                throw OutputError("\(path): cannot create a file in \(directory) (\(String(cString: strerror(errno))))")
            }
            temporary = String(cString: template)
        }

        deinit { discard() }

        /// Puts the written file in place: synced, with the usual permissions (mkstemp makes
        /// 0600), renamed over the target. On failure nothing of it is left.
        public func finish() throws {
            guard !done else { return }
            done = true
            guard let temporary else {
                if fd != STDOUT_FILENO { close(fd) }
                return
            }
            guard fsync(fd) == 0 || errno == EINVAL else {
                let reason = String(cString: strerror(errno))
                close(fd)
                unlink(temporary)
                throw OutputError("\(name): cannot write (\(reason))")
            }
            let mask = umask(0)
            umask(mask)
            fchmod(fd, 0o666 & ~mask)
            close(fd)
            guard rename(temporary, target) == 0 else {
                let reason = String(cString: strerror(errno))
                unlink(temporary)
                throw OutputError("\(name): cannot replace (\(reason))")
            }
        }

        /// Gives up: closes, and removes the temporary file, leaving what was at the path.
        public func discard() {
            guard !done else { return }
            done = true
            if fd != STDOUT_FILENO { close(fd) }
            if let temporary { unlink(temporary) }
        }
    }

    /// Checks before any work that `path` can be written: not an input (the same file, however
    /// named: through links, a linked directory or a hard link), not a directory, not a link
    /// to nothing, its directory exists and is writable (for a new or regular file); "-" always.
    public static func checkWritable(_ path: String, protecting inputs: [String] = []) throws {
        guard path != standardOutput else { return }
        guard !path.isEmpty else { throw UsageError("an output path is empty") }
        if let output = identity(path), output.kind != S_IFCHR {
            for input in inputs where identity(input) == output {
                let alias = input == path ? "" : " (\(input))"
                throw UsageError("\(path): refusing to overwrite an input file\(alias)")
            }
        }
        if let kind = fileKind(path) {
            if kind == S_IFDIR { throw UsageError("\(path): is a directory") }
            if kind != S_IFREG {
                guard access(path, W_OK) == 0 else { throw OutputError("\(path): not writable") }
                return
            }
        } else if linkKind(path) == S_IFLNK {
            throw UsageError("\(path): is a symbolic link to a file that does not exist")
        }
        let directory = URL(fileURLWithPath: resolvedPath(path)).deletingLastPathComponent().path
        guard fileKind(directory) == S_IFDIR else { throw UsageError("\(path): directory \(directory) does not exist") }
        guard access(directory, W_OK) == 0 else { throw OutputError("\(path): directory \(directory) is not writable") }
    }

    /// What identifies a file whatever its name: device and inode (after following links), and
    /// its type bits.
    public struct Identity: Equatable, Sendable {
        public let device: UInt64
        public let inode: UInt64
        public let kind: mode_t

        public static func == (a: Identity, b: Identity) -> Bool { a.device == b.device && a.inode == b.inode }
    }

    /// The identity of the file `path` names, links followed; nil when nothing is there.
    public static func identity(_ path: String) -> Identity? {
        var info = stat()
        guard !path.isEmpty, stat(path, &info) == 0 else { return nil }
        return Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), kind: info.st_mode & S_IFMT)
    }

    /// The absolute path `path` leads to with every link followed: the file itself when it
    /// exists, else its directory resolved with the last name appended (a new file). The
    /// temporary file and the lock go beside this path, so two names of one file share them.
    public static func resolvedPath(_ path: String) -> String {
        if let real = realPath(path) { return real }
        let url = URL(fileURLWithPath: path).standardizedFileURL
        guard let directory = realPath(url.deletingLastPathComponent().path) else { return url.path }
        return URL(fileURLWithPath: directory).appendingPathComponent(url.lastPathComponent).path
    }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Removes the hidden temporary files (`.<name>.tmp-XXXXXX`, as `Destination` makes them)
    /// of the regular files `files` (resolved paths) that a killed process left: all of them
    /// when the caller holds the files' locks (no one else can be writing them), else only those
    /// older than `age` seconds (a temporary lives for moments, so an old one is orphaned).
    /// Each directory is listed once.
    public static func removeTemporaries(of files: [String], olderThan age: TimeInterval? = nil) {
        var names: [String: Set<String>] = [:]
        for file in files {
            let url = URL(fileURLWithPath: file)
            names[url.deletingLastPathComponent().path, default: []].insert(url.lastPathComponent)
        }
        let now = Date().timeIntervalSince1970
        for (directory, owned) in names {
            guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { continue }
            for entry in entries where entry.hasPrefix(".") && entry.count > 12 {
                // ".<name>.tmp-" followed by mkstemp's six characters.
                let stem = entry.dropFirst().dropLast(6)
                guard stem.hasSuffix(".tmp-"), owned.contains(String(stem.dropLast(5))) else { continue }
                let path = directory + "/" + entry
                var info = stat()
                guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
                if let age, now - Double(info.st_mtim.tv_sec) <= age { continue }
                unlink(path)
            }
        }
    }

    /// The file type bits (S_IFREG, S_IFDIR, S_IFCHR, S_IFIFO, ...) of what `path` names after
    /// following links, or nil when nothing is there.
    public static func fileKind(_ path: String) -> mode_t? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mode & S_IFMT
    }

    /// Whether `path` names the file standard output is (same device and inode).
    public static func isStandardOutput(_ path: String) -> Bool {
        var named = stat(), out = stat()
        guard stat(path, &named) == 0, fstat(STDOUT_FILENO, &out) == 0 else { return false }
        return named.st_dev == out.st_dev && named.st_ino == out.st_ino
    }

    /// The type bits of `path` itself (S_IFLNK for a symbolic link), or nil.
    public static func linkKind(_ path: String) -> mode_t? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return info.st_mode & S_IFMT
    }

    /// Writes all of `data` to `fd`, retrying short writes and interrupts; any other failure
    /// (no space, a closed pipe, /dev/full) is an error naming `path`.
    public static func writeAll(_ data: Data, to fd: Int32, path: String) throws {
        try data.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) in
            guard var pointer = buffer.baseAddress else { return }
            var left = buffer.count
            while left > 0 {
                let written = Foundation.write(fd, pointer, left)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw OutputError("\(path): cannot write (\(String(cString: strerror(errno))))")
                }
                left -= written
                pointer += written
            }
        }
    }
}

/// Writing an output failed (disk full, device error, permissions): exit 1, not a usage error.
public struct OutputError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Messages for the user on standard error. Never fails: when stderr itself cannot be written
/// (a full device), there is nowhere left to say so.
public enum StandardError {
    public static func write(_ text: String) {
        try? OutputFile.writeAll(Data(text.utf8), to: STDERR_FILENO, path: "standard error")
    }
}

/// The outputs of one command, checked together before any work and held until the command
/// ends, so that two processes never write the same file at once (where the last to finish
/// would silently drop the other's result).
///
/// Each output must be writable and must not be one of `inputs` (`OutputFile.checkWritable`),
/// no two outputs may be the same file, and each regular file or new path is locked: an
/// exclusive `flock` on a hidden lock file beside it (`.<name>.lock`, beside the file its links
/// lead to). A second process claiming the same output fails at once, naming it. The lock dies
/// with the process, so a process killed with SIGKILL leaves at most an unlocked lock file,
/// which the next claim takes over (removing the temporary files such a process left beside the
/// output); `release()` (or deinit) removes it.
/// "-", devices and FIFOs are not locked: they are streams, not files anyone reads back.
public final class OutputClaim {
    private struct Lock {
        let path: String
        let fd: Int32
    }
    private var locks: [Lock] = []

    /// Checks and locks `outputs` (nil and repeated "-" entries are skipped) against `inputs`.
    public init(_ outputs: [String?], protecting inputs: [String]) throws {
        let named = outputs.compactMap { $0 }.filter { $0 != OutputFile.standardOutput }
        for output in named { try OutputFile.checkWritable(output, protecting: inputs) }
        // Two outputs naming one file: the second write would replace the first.
        // Existing files compare by identity (hard links too), new ones by their resolved path.
        var seen: [(path: String, file: String, identity: OutputFile.Identity?)] = []
        for output in named {
            let identity = OutputFile.identity(output)
            if let identity, identity.kind != S_IFREG { continue }
            let file = OutputFile.resolvedPath(output)
            if let earlier = seen.first(where: { $0.file == file || (identity != nil && $0.identity == identity) }) {
                let same =
                    earlier.path == output ? "named for two outputs" : "the same file as the output \(earlier.path)"
                throw UsageError("\(output): \(same); give each output its own file")
            }
            seen.append((output, file, identity))
        }
        do {
            for (output, file, _) in seen { try lock(file, for: output) }
        } catch {
            release()
            throw error
        }
    }

    deinit { release() }

    /// Unlocks every output and removes the lock files. Idempotent.
    public func release() {
        for lock in locks.reversed() {
            // Removed while still held: a process that opened this lock file meanwhile finds,
            // once it holds it, that the name now leads elsewhere, and starts over.
            unlink(lock.path)
            close(lock.fd)
        }
        locks.removeAll()
    }

    private func lock(_ file: String, for output: String) throws {
        let url = URL(fileURLWithPath: file)
        let path = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).lock").path
        // A few rounds at most: each retry means another process removed the file in between.
        for _ in 0..<100 {
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw OutputError(
                    "\(output): cannot create the lock file \(path) (\(String(cString: strerror(errno))))")
            }
            var result: Int32
            repeat { result = flock(fd, LOCK_EX | LOCK_NB) } while result != 0 && errno == EINTR
            if result != 0 {
                let busy = errno == EWOULDBLOCK
                let reason = String(cString: strerror(errno))
                close(fd)
                if busy {
                    throw OutputError(
                        "\(output): another thinkv-sim is writing this file (lock \(path) is held); wait for it or "
                            + "choose another output"
                    )
                }
                throw OutputError("\(output): cannot lock \(path) (\(reason))")
            }
            var held = stat(), named = stat()
            if fstat(fd, &held) == 0, stat(path, &named) == 0, held.st_dev == named.st_dev, held.st_ino == named.st_ino
            {
                locks.append(Lock(path: path, fd: fd))
                // Held: a temporary of this output can only be a killed writer's.
                OutputFile.removeTemporaries(of: [file])
                return
            }
            close(fd)  // the lock file was removed by its previous holder: take the new one
        }
        throw OutputError("\(output): cannot lock \(path) (it keeps being replaced)")
    }
}
