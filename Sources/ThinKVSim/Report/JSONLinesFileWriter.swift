import Foundation

/// Writes JSON lines to a file as they come (`--kept` events, `--cache-timeline` timelines; the
/// file can be large), through an `OutputFile.Destination`: a regular file appears only when
/// `close()` succeeds, so a failed run leaves what was there; devices, FIFOs and "-" (stdout)
/// are written straight through. Write errors are kept and thrown by `close()`.
public final class JSONLinesFileWriter: KeptEventSink, CacheTimelineSink, @unchecked Sendable {
    private let destination: OutputFile.Destination
    private let lock = NSLock()
    public let path: String
    private var failure: Error?
    private var closed = false

    /// `inputs`: files of the command this one must not be (see `OutputFile.checkWritable`).
    public init(path: String, protecting inputs: [String] = []) throws {
        self.path = path
        try OutputFile.checkWritable(path, protecting: inputs)
        destination = try OutputFile.Destination(path)
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
        do { try OutputFile.writeAll(Data(text.utf8), to: destination.fd, path: path) } catch { failure = error }
    }

    /// Finishes the file: puts it in place, or removes it and throws the first write error.
    public func close() throws {
        lock.lock()
        defer { lock.unlock() }
        guard !closed else { return }
        closed = true
        if let failure {
            destination.discard()
            throw failure
        }
        try destination.finish()
    }
}
