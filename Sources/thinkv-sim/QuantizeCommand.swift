import Foundation
import ThinKVSim

enum QuantizeCommand: Subcommand {
    /// Raw input larger than this is refused before it is read (the whole file is held in memory).
    static let maxInputBytes = 256 << 20

    static let spec = CommandSpec(
        name: "quantize",
        abstract: "round-trip raw float32 values through one of the policies' quantizers (what a cache would hold)",
        positionals: [("input", "raw little-endian float32 values")],
        options: [
            OptionDefinition(
                "quantizer", value: "NAME",
                help: "int1 ... int8, fp8, nvfp4 or ternary (docs/quantization.md); required"),
            OptionDefinition(
                "group", value: "N", help: "consecutive values per group (the last may be shorter)", default: "16"),
            OptionDefinition(
                "output", short: "o", value: "FILE",
                help: "where the dequantized float32 values go ('-': standard output); required")
        ],
        discussion: """
            Every group of N consecutive values is quantized and dequantized by the same code the
            quantizing policies run (kivi, thinkv, thinkv-tbq): the output is what the cache would hold.
            tools/end_to_end checks its own quantizers against this, bit for bit.

            example:
              thinkv-sim quantize keys.f32 --quantizer nvfp4 --group 16 -o keys-nvfp4.f32
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let input = arguments.positionals[0]
        guard let name = arguments.value("quantizer") else { throw UsageError("--quantizer NAME is required") }
        guard let quantizer = GroupQuantizer(name: name) else {
            throw UsageError("--quantizer: '\(name)' is not int1 ... int8, fp8, nvfp4 or ternary")
        }
        let group = try arguments.int("group", default: 16, min: 1, max: 1 << 20)!
        guard let output = arguments.value("output") else { throw UsageError("-o/--output FILE is required") }
        let claim = try OutputClaim([output], protecting: [input])
        defer { claim.release() }

        var status = stat()
        guard stat(input, &status) == 0 else {
            throw OutputError("\(input): cannot be read (\(String(cString: strerror(errno))))")
        }
        if status.st_mode & S_IFMT == S_IFDIR {
            throw OutputError("\(input): is a directory, not a file of float32 values")
        }
        if status.st_mode & S_IFMT == S_IFREG && Int(status.st_size) > maxInputBytes {
            throw OutputError(
                "\(input): \(status.st_size) bytes is more than the \(maxInputBytes)-byte limit of this command")
        }
        guard let handle = FileHandle(forReadingAtPath: input) else {
            throw OutputError("\(input): cannot be read (\(String(cString: strerror(errno))))")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: maxInputBytes + 1) ?? Data()
        } catch {
            throw OutputError("\(input): cannot be read (\(error.localizedDescription))")
        }
        guard data.count <= maxInputBytes else { throw OutputError("\(input): more than \(maxInputBytes) bytes") }
        guard data.count % 4 == 0 else {
            throw OutputError("\(input): \(data.count) bytes is not a whole number of float32 values")
        }
        var values = [Float](repeating: 0, count: data.count / 4)
        _ = values.withUnsafeMutableBytes { data.copyBytes(to: $0) }
        for i in values.indices { values[i] = Float(bitPattern: UInt32(littleEndian: values[i].bitPattern)) }
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw OutputError("\(input): value \(bad) is not finite")
        }
        values.withUnsafeMutableBufferPointer { buffer in
            var start = 0
            while start < buffer.count {
                let count = min(group, buffer.count - start)
                quantizer.roundTrip(buffer.baseAddress! + start, count: count, stride: 1)
                start += count
            }
        }
        for i in values.indices { values[i] = Float(bitPattern: values[i].bitPattern.littleEndian) }
        try OutputFile.write(values.withUnsafeBytes { Data($0) }, to: output, protecting: [input])
    }
}
