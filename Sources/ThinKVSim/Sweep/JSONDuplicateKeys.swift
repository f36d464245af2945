import Foundation

/// Finds a key repeated inside one JSON object. JSONDecoder silently keeps the last of two
/// equal keys; in a config that hides a mistake (two "budget" lines, one of them ignored).
enum JSONDuplicateKeys {
    /// The first repeated key and the line it repeats on, or nil. Assumes `data` is valid JSON
    /// (run it after decoding succeeded); it only tracks strings, braces and brackets.
    static func first(in data: Data) -> (key: String, line: Int)? {
        var stack: [Set<String>?] = []  // per open container: the keys of an object, nil for an array
        var line = 1
        var expectingKey = false
        var bytes = data.makeIterator()
        while let b = bytes.next() {
            switch b {
            case UInt8(ascii: "\n"): line += 1
            case UInt8(ascii: "{"):
                stack.append([])
                expectingKey = true
            case UInt8(ascii: "["):
                stack.append(nil)
                expectingKey = false
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = stack.popLast()
                expectingKey = false
            case UInt8(ascii: ","):
                expectingKey = stack.last.map { $0 != nil } ?? false
            case UInt8(ascii: "\""):
                var raw: [UInt8] = []
                while let c = bytes.next(), c != UInt8(ascii: "\"") {
                    raw.append(c)
                    if c == UInt8(ascii: "\\"), let escaped = bytes.next() { raw.append(escaped) }
                }
                if expectingKey, var keys = stack.last ?? nil {
                    let key = String(decoding: raw, as: UTF8.self)
                    if keys.contains(key) { return (key, line) }
                    keys.insert(key)
                    stack[stack.count - 1] = keys
                    expectingKey = false
                }
            default: break
            }
        }
        return nil
    }
}
