import Foundation
import ThinKVSim

/// `thinkv-sim serve-policy`: one policy driven step by step over standard input and output by a
/// model that generates with the policy's cache (tools/end_to_end --closed-loop). The protocol is
/// in docs/end-to-end.md ("Closed loop"); every integer and float is little-endian, 4 bytes.
enum ServePolicyCommand: Subcommand {
    static let magic = Array("TKVSERV1".utf8)
    /// Refused before anything is allocated: the layers' keys and values, the caches' copies and
    /// the key panels (about 5 floats per layer, position, kv head and dimension).
    static let maxBytes = 16 << 30

    static let spec = CommandSpec(
        name: "serve-policy",
        abstract:
            "run one policy online: per decode step, read each layer's q/k/v on stdin, answer with what its cache "
            + "attends",
        options: [
            OptionDefinition(
                "policy", short: "p", value: "NAME[:P=V...]",
                help: "the policy (see 'thinkv-sim policies'), parameters after ':' as in replay; "
                    + "required"),
            OptionDefinition(
                "topk", value: "K", help: "k of the top-k recall in the end-of-run summary",
                default: String(TraceLimits.defaultTopK))
        ],
        acceptsExtraOptions: true,
        discussion: """
            Policy parameters (--budget, --window, ...) follow --policy, or are written after its name
            (--policy rkv:budget=128:divide=8), as in replay. The model's process writes binary frames on
            standard input and reads the answers on standard output (little-endian int32/float32):

              header  "TKVSERV1", layers, q heads, kv heads, head dim, prompt length P, max positions T, \
              scale (float32, 0: 1/sqrt(D))
                      answer: int32 0
              prefill int32 1, layer, then q [P][Hq][D], k [P][Hkv][D], v [P][Hkv][D]
                      answer: int32 1, layer
              step    int32 2, layer, step t, then q [Hq][D], k [Hkv][D], v [Hkv][D] of position P + t
                      answer: int32 2, layer, t; per kv head: n, n positions (ascending) the query attends;
                      then the quantizations taking effect at t: count, and per group kv head,
                      tensor (0 key per channel, 1 value, 2 key per token), channel group,
                      quantizer name (8 bytes, NUL-padded), n, n positions
              end     int32 3; answer: int32 3, byte count, a JSON summary (KV memory, attention metrics)

            Layers are prefilled before any step; each layer's steps come in order. A malformed frame, a
            non-finite value or input that ends before the end frame is one line on stderr and exit 1.
            The policy's hooks run exactly as in replay (docs/end-to-end.md, "Closed loop").
            """)

    struct ServeError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    static func run(_ arguments: ParsedArguments) throws {
        guard let name = arguments.value("policy") else { throw UsageError("--policy NAME is required") }
        let items = try PolicyList.items(name)
        guard items.count == 1 else { throw UsageError("--policy takes one policy (one process serves one cache)") }
        let specs = try PolicySpec.specs(
            items: items, options: arguments.extra,
            commandOptions: spec.options.map(\.name))
        let topK = try arguments.int("topk", default: TraceLimits.defaultTopK, min: 1, max: TraceLimits.maxTopK)!
        let input = FrameReader(fd: STDIN_FILENO)
        let output = FrameWriter(fd: STDOUT_FILENO)

        // Header.
        let head = try input.bytes(8, what: "the header")
        guard head == magic else { throw ServeError("input does not start with the TKVSERV1 header") }
        let fields = try input.ints(6, what: "the header")
        let (L, Hq, Hkv, D, P, T) = (fields[0], fields[1], fields[2], fields[3], fields[4], fields[5])
        let scale = try input.floats(1, what: "the header")[0]
        func check(_ ok: Bool, _ message: String) throws { if !ok { throw ServeError("header: \(message)") } }
        try check((1...4096).contains(L), "layers must be 1...4096, got \(L)")
        try check(
            (1...1024).contains(Hq) && (1...1024).contains(Hkv), "head counts must be 1...1024, got \(Hq) and \(Hkv)")
        try check(Hq % Hkv == 0, "q heads (\(Hq)) must be a multiple of kv heads (\(Hkv))")
        try check((1...1024).contains(D), "head dim must be 1...1024, got \(D)")
        try check(P >= 1 && P < T, "need 1 <= prompt length (\(P)) < max positions (\(T))")
        try check(T <= 1 << 20, "max positions \(T) is more than \(1 << 20)")
        try check(scale.isFinite && scale >= 0, "scale must be finite and >= 0, got \(scale)")
        try check(
            5 * L * T * Hkv * D * 4 <= maxBytes,
            "\(L) layers x \(T) positions x \(Hkv) kv heads x \(D) would need more than \(maxBytes >> 30) GiB")
        let header = TraceHeader(
            model: "serve-policy", numLayers: L, numQHeads: Hq, numKVHeads: Hkv, headDim: D,
            promptLength: P, numTokens: T, softmaxScale: scale == 0 ? nil : scale)
        let driver = try OnlinePolicyDriver(spec: specs[0], header: header, topK: topK)
        output.ints([0])
        try output.flush()

        var prefilled = 0
        while true {
            guard let kind = try input.intOrEnd() else {
                throw ServeError("input ended before the end frame (the model's process went away?)")
            }
            switch kind {
            case 1:
                let layer = try input.ints(1, what: "a prefill frame")[0]
                guard layer == prefilled else {
                    throw ServeError("prefill of layer \(layer) where layer \(prefilled) was due")
                }
                let q = try input.floats(P * Hq * D, what: "layer \(layer)'s prefill q")
                let k = try input.floats(P * Hkv * D, what: "layer \(layer)'s prefill k")
                let v = try input.floats(P * Hkv * D, what: "layer \(layer)'s prefill v")
                try driver.prefill(layer: layer, queries: q, keys: k, values: v)
                prefilled += 1
                output.ints([1, layer])
            case 2:
                let at = try input.ints(2, what: "a step frame")
                let (layer, step) = (at[0], at[1])
                guard prefilled == L else {
                    throw ServeError("step frame before every layer was prefilled (\(prefilled) of \(L))")
                }
                let q = try input.floats(Hq * D, what: "layer \(layer) step \(step)'s q")
                let k = try input.floats(Hkv * D, what: "layer \(layer) step \(step)'s k")
                let v = try input.floats(Hkv * D, what: "layer \(layer) step \(step)'s v")
                let answer = try driver.step(layer: layer, step: step, queries: q, keys: k, values: v)
                output.ints([2, layer, step])
                for positions in answer.attended {
                    output.ints([positions.count])
                    output.int32s(positions)
                }
                output.ints([answer.groups.count])
                for (kvHead, group) in answer.groups {
                    let tensor = group.tensor == .key ? 0 : group.tensor == .value ? 1 : 2
                    output.ints([kvHead, tensor, group.channelGroup])
                    var name = Array(group.quantizer.name.utf8.prefix(8))
                    name += [UInt8](repeating: 0, count: 8 - name.count)
                    output.bytes(name)
                    output.ints([group.positions.count])
                    output.int32s(group.positions)
                    if group.tensor == .keyPerToken {
                        let scale = group.channelScale ?? []
                        output.ints([scale.count])
                        output.floats(scale)
                    }
                }
            case 3:
                let json = Array(summaryJSON(driver).utf8)
                output.ints([3, json.count])
                output.bytes(json)
                try output.flush()
                return
            default:
                throw ServeError("unknown frame kind \(kind) (1 prefill, 2 step, 3 end)")
            }
            try output.flush()
        }
    }

    static func summaryJSON(_ driver: OnlinePolicyDriver) -> String {
        let s = driver.summary()
        func number(_ x: Double) -> String { x.isFinite ? String(format: "%.9g", x) : "null" }
        var fields = [
            "\"policy\":\(Format.jsonString(driver.spec.label))",
            "\"steps\":\(driver.completedSteps)",
            "\"kv_percent_mean\":\(number(s.memory.meanPercentOfFull))",
            "\"kv_bytes_mean\":\(number(s.memory.meanBytes))",
            "\"kv_bytes_peak\":\(number(s.memory.peakBytes))",
            "\"attention_kl_mean\":\(number(Double(s.attentionKL.mean)))",
            "\"mass_recall_mean\":\(number(Double(s.massRecall.mean)))"
        ]
        if let e = s.outputError { fields.append("\"output_error_mean\":\(number(Double(e.mean)))") }
        return "{" + fields.joined(separator: ",") + "}"
    }
}

/// Reads exact byte counts from a file descriptor (a pipe gives partial reads).
final class FrameReader {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }

    /// Fills `buffer`; returns the bytes read before end of input.
    private func fill(_ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = read(fd, buffer.baseAddress! + done, buffer.count - done)
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw ServePolicyCommand.ServeError("cannot read standard input (\(String(cString: strerror(errno))))")
            }
            done += n
        }
        return done
    }

    func bytes(_ count: Int, what: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let got = try out.withUnsafeMutableBytes { try fill($0) }
        guard got == count else {
            throw ServePolicyCommand.ServeError("input ended inside \(what) (\(got) of \(count) bytes)")
        }
        return out
    }

    func ints(_ count: Int, what: String) throws -> [Int] {
        var raw = [Int32](repeating: 0, count: count)
        let got = try raw.withUnsafeMutableBytes { try fill($0) }
        guard got == 4 * count else { throw ServePolicyCommand.ServeError("input ended inside \(what)") }
        return raw.map { Int(Int32(littleEndian: $0)) }
    }

    /// One int32, or nil at a clean end of input (between frames).
    func intOrEnd() throws -> Int? {
        var raw: Int32 = 0
        let got = try withUnsafeMutableBytes(of: &raw) { try fill($0) }
        if got == 0 { return nil }
        guard got == 4 else { throw ServePolicyCommand.ServeError("input ended inside a frame's kind") }
        return Int(Int32(littleEndian: raw))
    }

    func floats(_ count: Int, what: String) throws -> [Float] {
        var out = [Float](repeating: 0, count: count)
        let got = try out.withUnsafeMutableBytes { try fill($0) }
        guard got == 4 * count else {
            throw ServePolicyCommand.ServeError("input ended inside \(what) (\(got) of \(4 * count) bytes)")
        }
        for i in out.indices {
            out[i] = Float(bitPattern: UInt32(littleEndian: out[i].bitPattern))
            if !out[i].isFinite { throw ServePolicyCommand.ServeError("\(what): value \(i) is not finite") }
        }
        return out
    }
}

/// Buffers an answer and writes it whole.
final class FrameWriter {
    let fd: Int32
    private var pending: [UInt8] = []
    init(fd: Int32) { self.fd = fd }

    func bytes(_ b: [UInt8]) { pending += b }
    func ints(_ values: [Int]) { for v in values { withUnsafeBytes(of: Int32(v).littleEndian) { pending += $0 } } }
    func int32s(_ values: [Int32]) { for v in values { withUnsafeBytes(of: v.littleEndian) { pending += $0 } } }
    func floats(_ values: [Float]) {
        for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { pending += $0 } }
    }

    func flush() throws {
        try OutputFile.writeAll(Data(pending), to: fd, path: "standard output")
        pending.removeAll(keepingCapacity: true)
    }
}
