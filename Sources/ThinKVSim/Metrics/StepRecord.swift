import Foundation

/// One decode step of one layer under one policy (docs/metrics.md defines every field).
public struct StepRecord: Codable, Equatable, Sendable {
    public var layer: Int
    public var step: Int
    public var position: Int
    /// Tokens the step's query attended to / left resident for the next step, mean over kv heads.
    public var attendedTokens: Double
    public var residentTokens: Double
    /// Bytes of K+V (with quantization metadata) of this layer, all kv heads.
    public var attendedBytes: Int
    public var residentBytes: Int
    /// Bytes the full 16-bit cache holds at this step (p+1 tokens).
    public var fullBytes: Int
    /// Paging (0 with `--paging none`): blocks held by the attended set over all kv heads, the
    /// fraction of their slots holding live tokens, the bytes those blocks occupy (plus
    /// quantization metadata), and the bytes a gather-compaction would copy at this step.
    public var blocks: Int
    public var slotOccupancy: Double
    public var pagedBytes: Int
    public var compactionBytes: Int
    /// Means over query heads (and the minimum recall over heads).
    public var massRecall: Float
    public var massRecallMin: Float
    public var topKRecall: Float
    public var attentionKL: Float
    /// nil when the trace has no values for this layer.
    public var outputError: Float?
    /// Attention sparsity of the full cache at this step (context for ThinKV).
    public var sparsity: Float
    /// The attended set by thought type and precision (policies with thought types only).
    public var thought: ThoughtStepBreakdown? = nil
}

/// A compression event for `--kept`: the positions a kv head holds after the policy dropped some.
public struct KeptEvent: Codable, Equatable, Sendable {
    public var policy: String
    public var step: Int
    public var position: Int
    public var layer: Int
    public var kvHead: Int
    public var kept: [Int32]

    enum CodingKeys: String, CodingKey {
        case policy, step, position, layer, kept
        case kvHead = "kv_head"
    }

    /// One JSON line, fields in a fixed order.
    public var jsonLine: String {
        var s = "{\"policy\":\"\(policy)\",\"step\":\(step),\"position\":\(position),\"layer\":\(layer),\"kv_head\":\(kvHead),\"kept\":["
        s.reserveCapacity(s.utf8.count + kept.count * 6)
        for (i, p) in kept.enumerated() {
            if i > 0 { s += "," }
            s += String(p)
        }
        return s + "]}"
    }
}

/// Receives kept events as they happen (thread-safe sinks only).
public protocol KeptEventSink: AnyObject, Sendable {
    func record(_ events: [KeptEvent])
}

/// Writes kept events as JSON lines to a file as they come (the file can be large). A regular
/// file is written under a temporary name and renamed into place by `close()`, so a failed run
/// leaves what was there; devices, FIFOs and "-" (stdout) are written straight through. Write
/// errors are kept and thrown by `close()`.
public final class KeptEventFileWriter: KeptEventSink, @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()
    public let path: String
    /// The temporary file renamed over `path` on success (regular files only).
    private let temporary: String?
    private var failure: Error?
    private var closed = false

    public init(path: String) throws {
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
        guard fd >= 0 else { throw OutputError("\(path): cannot create the --kept file (\(String(cString: strerror(errno))))") }
    }

    deinit {
        if !closed, let temporary { Foundation.close(fd); unlink(temporary) }
    }

    public func record(_ events: [KeptEvent]) {
        guard !events.isEmpty else { return }
        var text = ""
        for e in events { text += e.jsonLine + "\n" }
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

/// Keeps kept events in memory (tests, and callers that post-process them).
public final class KeptEventCollector: KeptEventSink, @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [KeptEvent] = []

    public init() {}

    public func record(_ events: [KeptEvent]) {
        lock.lock()
        stored += events
        lock.unlock()
    }

    /// Events ordered by (policy, layer, step, kv head), independent of thread timing.
    public var events: [KeptEvent] {
        lock.lock()
        defer { lock.unlock() }
        return stored.sorted { ($0.policy, $0.layer, $0.step, $0.kvHead) < ($1.policy, $1.layer, $1.step, $1.kvHead) }
    }
}
