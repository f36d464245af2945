import Foundation

/// What a sweep row records of the trace file it was computed from, so that a resumed sweep
/// notices a trace replaced or rewritten at the same path: `<bytes>:<mtime seconds>.<ns>:<hash>`,
/// the hash being the 64-bit FNV-1a of the header attributes (as sorted-key JSON).
/// Size and modification time change with any rewrite; the header hash also catches a copy
/// with preserved times of another recording. A plain copy (new mtime) of the same trace
/// changes it too: its rows are recomputed, never wrongly reused.
public enum TraceFingerprint {
    public static func of(path: String, header: TraceHeader) throws -> String {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw TraceError(file: path, "cannot be read (\(String(cString: strerror(errno))))")
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        let json = try encoder.encode(header)
        let hash = SweepRunner.fnv1a(String(decoding: json, as: UTF8.self))
        let nanoseconds = String(format: "%09ld", info.st_mtim.tv_nsec)
        return "\(info.st_size):\(info.st_mtim.tv_sec).\(nanoseconds):\(String(format: "%016llx", hash))"
    }
}
