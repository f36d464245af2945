import Foundation

/// A CSV file that cannot be read: `file: line N: what is wrong`.
public struct CSVError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// RFC 4180 CSV: fields separated by commas, records by CRLF or LF; a field holding a comma,
/// quote, CR or LF is quoted, with quotes doubled. The writer quotes only where needed and ends
/// every record with LF, so reading a file it wrote and writing it again gives the same bytes.
public enum CSV {
    public static func field(_ s: String) -> String {
        // Scalars, not Characters: "\r\n" is one Character equal to neither "\r" nor "\n".
        guard s.unicodeScalars.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else {
            return s
        }
        return "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    public static func record(_ fields: [String]) -> String { fields.map(field).joined(separator: ",") + "\n" }

    /// Parses `text` into records. `complete` is false when the text does not end with a record
    /// terminator (a file cut short): the last record may then be partial.
    public static func parse(_ text: String, file: String) throws -> (records: [[String]], complete: Bool) {
        var records: [[String]] = []
        var record: [String] = []
        var field: [UInt8] = []
        var line = 1
        let bytes = Array(text.utf8)
        var i = 0
        var quoted = false  // inside a quoted field
        var wasQuoted = false  // the current field was quoted (only a separator may follow)
        var fieldStarted = false
        func endField() {
            record.append(String(decoding: field, as: UTF8.self))
            field.removeAll(keepingCapacity: true)
            wasQuoted = false
            fieldStarted = false
        }
        while i < bytes.count {
            let b = bytes[i]
            if quoted {
                if b == UInt8(ascii: "\"") {
                    if i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "\"") {
                        field.append(b)
                        i += 1
                    } else {
                        quoted = false
                        wasQuoted = true
                    }
                } else {
                    if b == UInt8(ascii: "\n") { line += 1 }
                    field.append(b)
                }
            } else if b == UInt8(ascii: ",") {
                endField()
                fieldStarted = true
            } else if b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r") {
                if b == UInt8(ascii: "\r") {
                    guard i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "\n") else {
                        throw CSVError("\(file): line \(line): carriage return outside quotes")
                    }
                    i += 1
                }
                endField()
                records.append(record)
                record.removeAll()
                line += 1
            } else if b == UInt8(ascii: "\"") {
                guard field.isEmpty && !wasQuoted else {
                    throw CSVError("\(file): line \(line): quote inside an unquoted field")
                }
                quoted = true
                fieldStarted = true
            } else {
                guard !wasQuoted else { throw CSVError("\(file): line \(line): text after a closing quote") }
                field.append(b)
                fieldStarted = true
            }
            i += 1
        }
        // Text after the last terminator (or an unterminated quote): a record cut short.
        if quoted || !record.isEmpty || !field.isEmpty || fieldStarted || wasQuoted {
            endField()
            records.append(record)
            return (records, false)
        }
        return (records, true)
    }
}

/// A CSV with a header row, cells kept as text.
public struct CSVTable: Equatable, Sendable {
    public var header: [String]
    public var rows: [[String]]

    public init(header: [String], rows: [[String]] = []) {
        self.header = header
        self.rows = rows
    }

    /// Reads a table; every record must have the header's field count. With
    /// `dropPartialLast`, a last record cut short (no final newline) is dropped and reported in
    /// `droppedPartial` instead of failing: what is left of an interrupted write.
    public static func read(path: String, dropPartialLast: Bool = false) throws -> (
        table: CSVTable, droppedPartial: Bool
    ) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CSVError("\(path): cannot be read")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw CSVError("\(path): not UTF-8 text") }
        return try parse(text, file: path, dropPartialLast: dropPartialLast)
    }

    public static func parse(_ text: String, file: String, dropPartialLast: Bool = false) throws -> (
        table: CSVTable, droppedPartial: Bool
    ) {
        var (records, complete) = try CSV.parse(text, file: file)
        var dropped = false
        if !complete {
            guard dropPartialLast else {
                throw CSVError("\(file): line \(records.count): last record is cut short (no final newline)")
            }
            records.removeLast()
            dropped = true
        }
        guard let header = records.first else {
            if dropped { throw CSVError("\(file): header is cut short") }
            throw CSVError("\(file): empty (no header)")
        }
        if Set(header).count != header.count {
            let repeated = header.filter { name in header.filter { $0 == name }.count > 1 }
            throw CSVError("\(file): header repeats column '\(repeated[0])'")
        }
        let rows = Array(records.dropFirst())
        for (i, row) in rows.enumerated() where row.count != header.count {
            throw CSVError("\(file): line \(i + 2): \(row.count) fields, the header has \(header.count)")
        }
        return (CSVTable(header: header, rows: rows), dropped)
    }

    public func index(of column: String) -> Int? { header.firstIndex(of: column) }

    public func render() -> String {
        var out = CSV.record(header)
        for row in rows { out += CSV.record(row) }
        return out
    }
}
