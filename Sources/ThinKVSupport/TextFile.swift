import Foundation

/// Reading small line-oriented text inputs (label CSVs) the way editors write them: UTF-8 with
/// or without a byte-order mark, lines ended by LF or CRLF.
public enum TextFile {
    /// The text of the regular file at `path`, at most `limit` bytes, a leading UTF-8 BOM
    /// dropped. Errors name the file: missing, not a regular file (a device or FIFO could block
    /// or never end), too large, unreadable, or not UTF-8.
    public static func read(path: String, limit: Int) throws -> String {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw CSVError("\(path): cannot be read (\(String(cString: strerror(errno))))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else { throw CSVError("\(path): not a regular file") }
        guard Int(info.st_size) <= limit else {
            throw CSVError("\(path): \(info.st_size) bytes, more than the \(limit) this input may have")
        }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CSVError("\(path): cannot be read (permission denied)")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            // One byte past the limit shows a file that grew after the stat.
            data = try handle.read(upToCount: limit + 1) ?? Data()
        } catch {
            throw CSVError("\(path): cannot be read (\(error.localizedDescription))")
        }
        guard data.count <= limit else { throw CSVError("\(path): more than \(limit) bytes") }
        return try decode(data, file: path)
    }

    /// UTF-8 text with a leading byte-order mark (which some editors and spreadsheet exports
    /// add) dropped.
    public static func decode(_ data: Data, file: String) throws -> String {
        var bytes = data[...]
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes = bytes.dropFirst(3) }
        guard let text = String(validating: Array(bytes), as: UTF8.self) else {
            throw CSVError("\(file): not UTF-8 text")
        }
        return text
    }

    /// The lines of `text`, split at LF with a CR before it removed (CRLF files). Split on
    /// bytes: in Swift "\r\n" is a single Character, equal to neither "\r" nor "\n", so
    /// splitting a String on "\n" leaves a CRLF file as one line.
    public static func lines(_ text: String) -> [Substring] {
        text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { raw in
            let line = Substring(raw)
            return line.utf8.last == UInt8(ascii: "\r") ? Substring(line.utf8.dropLast()) : line
        }
    }
}
