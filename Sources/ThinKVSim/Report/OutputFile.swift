import Foundation

/// Writes result files atomically (a temporary file renamed into place), so an interrupted or
/// failed run never leaves a half-written file where a good one was.
public enum OutputFile {
    public static func write(_ text: String, to path: String, protecting inputs: [String] = []) throws {
        let target = URL(fileURLWithPath: path).standardizedFileURL
        for input in inputs where URL(fileURLWithPath: input).standardizedFileURL == target {
            throw UsageError("\(path): refusing to overwrite an input file")
        }
        let directory = target.deletingLastPathComponent()
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw UsageError("\(path): directory \(directory.path) does not exist")
        }
        do {
            try Data(text.utf8).write(to: target, options: .atomic)
        } catch {
            throw UsageError("\(path): cannot write (\(error.localizedDescription))")
        }
    }
}
