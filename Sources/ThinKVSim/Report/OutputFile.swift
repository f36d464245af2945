import Foundation

/// Writes result files so that nothing the user had is lost:
/// - a regular file (or a new path) is written to a temporary file beside it and renamed into
///   place, so an interrupted or failed run never leaves a half-written file where a good one was;
/// - anything else that can be written (a character device such as /dev/null or a terminal, a
///   FIFO, /dev/stdout) is written straight through, never replaced by a file;
/// - "-" is standard output.
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
            let target = URL(fileURLWithPath: path).standardizedFileURL
            self.target = target.path
            name = path == OutputFile.standardOutput ? "standard output" : path
            if path == OutputFile.standardOutput || OutputFile.isStandardOutput(target.path) {
                // "-", /dev/stdout, /proc/self/fd/1 or the file stdout is redirected to: share its offset.
                fd = STDOUT_FILENO
                temporary = nil
                return
            }
            if let kind = OutputFile.fileKind(target.path), kind != S_IFREG || OutputFile.linkKind(target.path) == S_IFLNK {
                // A device, FIFO or terminal, or a link: write through it, as a shell redirection
                // would, so the device or link stays what it is.
                fd = open(target.path, O_WRONLY | O_CLOEXEC | (kind == S_IFREG ? O_TRUNC : 0))
                guard fd >= 0 else { throw OutputError("\(path): cannot open for writing (\(String(cString: strerror(errno))))") }
                temporary = nil
                return
            }
            let directory = target.deletingLastPathComponent().path
            var template = Array((directory + "/.\(target.lastPathComponent).tmp-XXXXXX").utf8CString)
            fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            guard fd >= 0 else { throw OutputError("\(path): cannot create a file in \(directory) (\(String(cString: strerror(errno))))") }
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

    /// Checks before any work that `path` can be written: not an input, not a directory, its
    /// directory exists and is writable (for a new or regular file), "-" always.
    public static func checkWritable(_ path: String, protecting inputs: [String] = []) throws {
        guard path != standardOutput else { return }
        guard !path.isEmpty else { throw UsageError("an output path is empty") }
        let target = URL(fileURLWithPath: path).standardizedFileURL
        for input in inputs where URL(fileURLWithPath: input).standardizedFileURL.path == target.path {
            throw UsageError("\(path): refusing to overwrite an input file")
        }
        if let kind = fileKind(target.path) {
            if kind == S_IFDIR { throw UsageError("\(path): is a directory") }
            if kind != S_IFREG {
                guard access(target.path, W_OK) == 0 else { throw OutputError("\(path): not writable") }
                return
            }
        }
        let directory = target.deletingLastPathComponent().path
        guard fileKind(directory) == S_IFDIR else { throw UsageError("\(path): directory \(directory) does not exist") }
        guard access(directory, W_OK) == 0 else { throw OutputError("\(path): directory \(directory) is not writable") }
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
    static func linkKind(_ path: String) -> mode_t? {
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
