import Foundation

/// What `thinkv-sim plot` was given when it is not something it draws: a replay's `--kept` or
/// `--cache-timeline` file, a trace, a config, another CSV. Naming the file's kind (and what plot
/// expects) says more than the CSV parser's complaint about its first odd character.
public enum PlotInputKind {
    /// What plot reads, for the end of every refusal.
    public static let expected =
        "plot expects a results CSV of 'thinkv-sim sweep' or 'merge', or a per-step CSV of 'thinkv-sim replay --csv'"

    /// Refuses, as a usage error, a file that is recognisably not a CSV plot reads. A file it
    /// cannot tell is left to the CSV reader, whose message names the damage.
    public static func check(_ path: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else { return }  // the reader says why
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 4096)) ?? Data()
        if let kind = describe(head) { throw UsageError("\(path) is \(kind), not a results CSV; \(expected)") }
    }

    /// What the first bytes of a file say it is, or nil when they could be a CSV.
    static func describe(_ head: Data) -> String? {
        if head.starts(with: [0x89, 0x48, 0x44, 0x46]) { return "an HDF5 file (a trace?)" }
        guard let text = String(data: head, encoding: .utf8) ?? String(data: head.dropLast(3), encoding: .utf8) else {
            return nil
        }
        let start = text.drop { $0.isWhitespace || $0 == "\u{FEFF}" }
        guard start.first == "{" || start.first == "[" else { return nil }
        let firstLine = start.prefix { $0 != "\n" }
        if firstLine.contains("\"dropped_at\"") {
            return "a cache timeline of 'thinkv-sim replay --cache-timeline' (JSON lines)"
        }
        if firstLine.contains("\"kept\"") {
            return "a list of compression events of 'thinkv-sim replay --kept' (JSON lines)"
        }
        if start.contains("\"traces\"") && start.contains("\"policies\"") { return "a sweep config (JSON)" }
        if start.contains("\"theta1\"") { return "a thresholds file of 'thinkv-sim calibrate' (JSON)" }
        return "JSON"
    }

    /// The refusal of a CSV without the columns plot needs, naming the columns it has.
    public static func notResults(_ path: String, missing column: String, header: [String]) -> UsageError {
        let shown = header.prefix(8).joined(separator: ", ") + (header.count > 8 ? ", …" : "")
        return UsageError("\(path) is not a results CSV: no '\(column)' column (its columns: \(shown)); \(expected)")
    }
}
