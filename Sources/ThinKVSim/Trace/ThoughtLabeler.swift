import CHDF5
import Foundation

/// Writes a user's thought labels into a trace's `/tokens/thought`, so recorded traces can be
/// scored (`inspect --thoughts`, `replay --thoughts labels`). Labels come as CSV rows
/// `step,type` (decode step, 0-based; type R/E/T, reasoning/execution/transition or 0/1/2);
/// steps not listed are -1 (unknown), prompt positions always -1.
public enum ThoughtLabeler {
    /// Parses the CSV text; errors name the file and line.
    public static func parse(_ text: String, file: String, decodeSteps: Int) throws -> [Int8] {
        var labels = [Int8](repeating: -1, count: decodeSteps)
        let names: [String: Int8] = ["r": 0, "reasoning": 0, "0": 0, "e": 1, "execution": 1, "1": 1, "t": 2, "transition": 2, "2": 2]
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            if n == 0, fields.first?.lowercased() == "step" { continue }  // a header
            guard fields.count == 2, let step = Int(fields[0]) else {
                throw CSVError("\(file): line \(n + 1): expected 'step,type', got '\(Format.printable(line))'")
            }
            guard (0..<decodeSteps).contains(step) else {
                throw CSVError("\(file): line \(n + 1): step \(step) is not a decode step (0...\(decodeSteps - 1))")
            }
            guard let type = names[fields[1].lowercased()] else {
                throw CSVError("\(file): line \(n + 1): type '\(Format.printable(fields[1]))' is not R, E, T (reasoning, execution, transition)")
            }
            labels[step] = type
        }
        return labels
    }

    /// Replaces (or creates) `/tokens/thought` of the trace at `path` with the prompt at -1 and
    /// `decodeLabels` after it. The file is otherwise untouched.
    public static func write(_ decodeLabels: [Int8], to path: String) throws {
        // The reader (and its read-only handle) is gone before the file is opened for writing.
        let header = try { try TraceReader(path: path).header }()
        precondition(decodeLabels.count == header.generatedLength, "one label per decode step")
        let all = [Int8](repeating: -1, count: header.promptLength) + decodeLabels
        try HDF5.withLibrary {
            let file = H5Fopen(path, thinkv_H5F_ACC_RDWR(), HDF5.defaultProperties)
            guard file >= 0 else { throw TraceError(file: path, "cannot be opened for writing (read-only, or open in another program)") }
            defer { H5Fclose(file) }
            if linkExists(file, "/tokens/thought") {
                guard H5Ldelete(file, "/tokens/thought", HDF5.defaultProperties) >= 0 else {
                    throw TraceError(file: path, object: "/tokens/thought", "cannot be replaced")
                }
            }
            var dims = [hsize_t(all.count)]
            let space = H5Screate_simple(1, &dims, nil)
            defer { H5Sclose(space) }
            let dataset = H5Dcreate2(file, "/tokens/thought", thinkv_H5T_STD_I8LE(), space, HDF5.defaultProperties,
                                     HDF5.defaultProperties, HDF5.defaultProperties)
            guard dataset >= 0 else { throw TraceError(file: path, object: "/tokens/thought", "cannot be created") }
            defer { H5Dclose(dataset) }
            let status = all.withUnsafeBufferPointer {
                H5Dwrite(dataset, thinkv_H5T_NATIVE_INT8(), HDF5.all, HDF5.all, HDF5.defaultProperties, $0.baseAddress)
            }
            guard status >= 0 else { throw TraceError(file: path, object: "/tokens/thought", "write failed") }
        }
    }
}
