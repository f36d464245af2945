import Foundation

/// Writes JSON lines to a file as they come (`--kept` events, `--cache-timeline` timelines; the
/// file can be large). A regular file is written under a temporary name and renamed into place by `close()`, so a failed run
/// leaves what was there; devices, FIFOs and "-" (stdout) are written straight through. Write
/// errors are kept and thrown by `close()`.
public final class JSONLinesFileWriter: KeptEventSink, CacheTimelineSink, @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    public let path: String
    /// The temporary file renamed over `path` on success (regular files only).
    private let temporary: String?
    private var failure: Error?
    private var closed = false

    /// `option`: the command-line option that named the file, for error messages.
    public init(path: String, option: String) throws {
        self.path = path
        try OutputFile.checkWritable(path)
        if path == OutputFile.standardOutput || OutputFile.isStandardOutput(URL(fileURLWithPath: path).standardizedFileURL.path) {
            fd = STDOUT_FILENO
            temporary = nil
            return
        }
        let target = URL(fileURLWithPath: path).standardizedFileURL.path
        if let kind = OutputFile.fileKind(target), kind != S_IFREG || OutputFile.linkKind(target) == S_IFLNK {
            fd = open(target, O_WRONLY | O_CLOEXEC | (kind == S_IFREG ? O_TRUNC : 0))
            temporary = nil
        } else {
            var template = Array((target + ".tmp-XXXXXX").utf8CString)
            fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            temporary = fd >= 0 ? String(cString: template) : nil
        }
        guard fd >= 0 else { throw OutputError("\(path): cannot create the \(option) file (\(String(cString: strerror(errno))))") }
    }

    deinit {
        if !closed, let temporary { Foundation.close(fd); unlink(temporary) }
    }

    public func record(_ events: [KeptEvent]) {
        write(events.map(\.jsonLine))
    }

    public func record(_ timelines: [CacheTimeline]) {
        write(timelines.map(\.jsonLine))
    }

    private func write(_ lines: [String]) {
        guard !lines.isEmpty else { return }
        var text = ""
        for line in lines { text += line + "\n" }
        lock.lock()
        defer { lock.unlock() }
        guard failure == nil else { return }
        do { try OutputFile.writeAll(Data(text.utf8), to: fd, path: path) } catch { failure = error }
    }

    /// Finishes the file: renames it into place, or removes it and throws the first write error.
    public func close() throws {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { return }
        closed = true
        if fd != STDOUT_FILENO { Foundation.close(fd) }
        if let failure {
            if let temporary { unlink(temporary) }
            throw failure
        }
        if let temporary {
            let mask = umask(0)
            umask(mask)
            chmod(temporary, 0o666 & ~mask)
            guard rename(temporary, URL(fileURLWithPath: path).standardizedFileURL.path) == 0 else {
                unlink(temporary)
                throw OutputError("\(path): cannot replace (\(String(cString: strerror(errno))))")
            }
        }
    }
}
