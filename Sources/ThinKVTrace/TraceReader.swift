import CHDF5
import CInflate
import CProcess
import Foundation
import ThinKVSupport

/// Opens a thinkv-trace file, validates its structure against format version 1, and reads
/// tensors in row ranges (hyperslabs along the first axis) so long traces stream.
///
/// Structure (attributes, shapes, dtypes, compression filters) is checked when the file opens;
/// values (NaN, infinities, label range, recorded attention that is not a causal probability row)
/// are checked as they are read, so a bad value stops the run before any number is reported.
public final class TraceReader {
    public let path: String
    public let header: TraceHeader
    /// Recorded layers in ascending index order.
    public let layers: [LayerInfo]
    public let hasTokenText: Bool
    public let hasThoughtLabels: Bool

    private let file: H5Handle
    private let displayName: String

    public init(path: String) throws {
        self.path = path
        let name = path
        self.displayName = name
        func fail(_ object: String?, _ problem: String) -> TraceError {
            TraceError(file: name, object: object, problem)
        }

        // stat first: a FIFO or device given as the trace would block or stream forever in open.
        switch OutputFile.fileKind(path) {
        case nil: throw fail(nil, "no such file")
        case S_IFDIR?: throw fail(nil, "is a directory, not a trace file")
        case S_IFREG?: break
        case S_IFIFO?:
            throw fail(nil, "is a FIFO (named pipe), not a trace file; HDF5 needs a regular file it can seek in")
        default: throw fail(nil, "is not a regular file (a device or socket); give the path of an HDF5 trace file")
        }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw fail(nil, "not readable (permission denied)")
        }
        try TraceReader.probeInChild(path: path, fail: fail)

        let opened: hid_t = HDF5.withLibrary {
            H5Fopen(path, thinkv_H5F_ACC_RDONLY(), HDF5.defaultProperties)
        }
        guard opened >= 0 else {
            if TraceReader.isLockedForWriting(path) {
                throw fail(
                    nil, "is open for writing in another program (HDF5 file lock held); wait for it to close the file")
            }
            if TraceReader.hasHDF5Signature(path) {
                throw fail(nil, "damaged or truncated HDF5 file (the HDF5 library cannot open it)")
            }
            throw fail(nil, "not an HDF5 file")
        }
        let file = try H5Handle(opened, .file, "")
        self.file = file

        let attributes = AttributeReader(location: file.id, fail: fail)
        let format = try attributes.string("format", required: true)!
        guard format == TraceHeader.formatName else {
            throw fail("attribute 'format'", "is '\(Format.excerpt(format))', expected '\(TraceHeader.formatName)'")
        }
        let version = try attributes.integer("version", required: true)!
        guard version == Int64(TraceHeader.supportedVersion) else {
            throw fail(
                "attribute 'version'",
                "unsupported format version \(version); this reader supports version \(TraceHeader.supportedVersion)")
        }
        func positive(_ key: String, allowZero: Bool = false) throws -> Int {
            let value = try attributes.integer(key, required: true)!
            let lowest: Int64 = allowZero ? 0 : 1
            guard value >= lowest, value <= Int64(Int32.max) else {
                throw fail("attribute '\(key)'", "must be between \(lowest) and \(Int32.max), got \(value)")
            }
            return Int(value)
        }
        var header = TraceHeader(
            model: try attributes.string("model", required: true)!,
            numLayers: try positive("num_layers"),
            numQHeads: try positive("num_q_heads"),
            numKVHeads: try positive("num_kv_heads"),
            headDim: try positive("head_dim"),
            promptLength: try positive("prompt_len", allowZero: true),
            numTokens: try positive("num_tokens"))
        if let scale = try attributes.float("softmax_scale") {
            guard scale.isFinite, scale > 0 else {
                throw fail("attribute 'softmax_scale'", "must be a positive finite number, got \(scale)")
            }
            header.softmaxScale = scale
        }
        header.source = try attributes.string("source")
        header.generator = try attributes.string("generator")
        header.prompt = try attributes.string("prompt")
        header.seed = try attributes.integer("seed")

        guard header.numQHeads % header.numKVHeads == 0 else {
            throw fail(
                "attribute 'num_q_heads'", "\(header.numQHeads) is not a multiple of num_kv_heads \(header.numKVHeads)")
        }
        guard header.promptLength <= header.numTokens else {
            throw fail("attribute 'prompt_len'", "\(header.promptLength) exceeds num_tokens \(header.numTokens)")
        }
        self.header = header

        let T = header.numTokens
        try TraceReader.checkDataset(file.id, "/tokens/ids", shape: [T], kind: .integer, required: true, fail: fail)
        hasTokenText = try TraceReader.checkDataset(
            file.id, "/tokens/text", shape: [T], kind: .string, required: false, fail: fail)
        hasThoughtLabels = try TraceReader.checkDataset(
            file.id, "/tokens/thought", shape: [T], kind: .integer, required: false, fail: fail)

        guard HDF5.withLibrary({ linkExists(file.id, "/layers") }) else {
            throw fail("/layers", "missing: a trace records at least one layer")
        }
        guard HDF5.withLibrary({ objectIsGroup(file.id, "/layers") }) else {
            throw fail("/layers", "is not a group")
        }
        let memberNames: [String] = try HDF5.withLibrary {
            let group = try H5Handle(H5Gopen2(file.id, "/layers", HDF5.defaultProperties), .group, "")
            return groupMemberNames(group.id)
        }
        var layers: [LayerInfo] = []
        for member in memberNames {
            let object = "/layers/\(member)"
            guard let index = Int(member), String(index) == member, index >= 0 else {
                throw fail(object, "layer group names must be decimal layer indices")
            }
            guard index < header.numLayers else {
                throw fail(object, "layer index \(index) is not below num_layers \(header.numLayers)")
            }
            guard HDF5.withLibrary({ objectIsGroup(file.id, object) }) else {
                throw fail(object, "is not a group")
            }
            layers.append(try TraceReader.inspectLayer(file.id, index: index, header: header, fail: fail))
        }
        guard !layers.isEmpty else { throw fail("/layers", "holds no recorded layer") }
        self.layers = layers.sorted { $0.index < $1.index }
    }

    public var recordedLayerIndices: [Int] { layers.map(\.index) }

    // MARK: Isolation

    /// Set in the child of `probeInChild`, which must not probe again.
    nonisolated(unsafe) private static var isProbeChild = false

    /// Seconds the metadata probe may take on a file of `fileBytes` (THINKV_PROBE_SECONDS
    /// overrides). The probe reads the metadata and the token datasets, not the layer tensors:
    /// on the shipped traces (3.6 and 8 MB) it takes about 7 ms, on a 181 MB trace of 65,536
    /// tokens with token text and 8 layers 35–95 ms (debug build). 5 s plus 2 s per GiB of file
    /// leaves room for traces far larger, while a damaged file that sends the library into an
    /// endless loop is refused in seconds rather than a minute.
    static func probeSeconds(fileBytes: Int64) -> Double {
        if let raw = ProcessInfo.processInfo.environment["THINKV_PROBE_SECONDS"], let seconds = Double(raw), seconds > 0
        {
            return seconds
        }
        return 5 + 2 * Double(max(fileBytes, 0)) / Double(1 << 30)
    }

    /// Opens the file and reads its metadata, token datasets and the first and last rows of each
    /// layer tensor in a forked child first: on a
    /// damaged file the HDF5 library itself can crash (corrupt variable-length strings) or loop
    /// forever (corrupt metadata), which no check in this process could survive. The child's
    /// death or a timeout becomes a one-line error; a child that fails cleanly is left to the
    /// parent, which meets the same problem and reports it with its usual message.
    private static func probeInChild(path: String, fail: (String?, String) -> TraceError) throws {
        guard !isProbeChild, ProcessInfo.processInfo.environment["THINKV_NO_PROBE"] == nil else { return }
        // Anything buffered would be written twice, once by each process.
        fflush(stdout)
        fflush(stderr)
        var info = stat()
        let seconds = probeSeconds(fileBytes: stat(path, &info) == 0 ? Int64(info.st_size) : 0)
        let parent = getpid()
        #if !os(Linux)
        // Without PR_SET_PDEATHSIG: the child watches a pipe whose write end only the parent
        // holds; it reads end-of-file when the parent is gone.
        var watch: [Int32] = [-1, -1]
        guard pipe(&watch) == 0 else { return }
        _ = fcntl(watch[1], F_SETFD, FD_CLOEXEC)  // no other child may hold the parent's end
        #endif
        let pid = fork()
        if pid < 0 { return }  // cannot fork: read without the safety net
        if pid == 0 {
            isProbeChild = true
            // The probe must die with the command: a killed command (a scheduler cancelling a
            // job) would otherwise leave it running, forever on a file that loops the library.
            #if os(Linux)
            _ = thinkv_set_parent_death_signal(SIGKILL)
            #else
            close(watch[1])
            let readEnd = watch[0]
            Thread.detachNewThread {
                var byte: UInt8 = 0
                while read(readEnd, &byte, 1) < 0 && errno == EINTR {}
                _exit(0)
            }
            #endif
            // The parent may have died before the request took effect.
            if getppid() != parent { _exit(0) }
            // Quiet: the parent reports. Exit 0 whether the file is good or cleanly refused.
            let devnull = open("/dev/null", O_WRONLY)
            if devnull >= 0 { dup2(devnull, STDERR_FILENO); dup2(devnull, STDOUT_FILENO) }
            if let reader = try? TraceReader(path: path) {
                _ = try? reader.readTokenIDs()
                _ = try? reader.readThoughtLabels()
                _ = try? reader.readTokenText()
                // The first and last rows of every layer tensor, in the blocks validate and replay
                // read (256 rows; 8 of attn, whose rows are whole sequences): a damaged chunk key
                // (a bit flip in a B-tree coordinate) passes every metadata call of libhdf5 1.10
                // but makes a read of its chunk copy past a buffer (SIGSEGV). Two blocks per
                // tensor keep this cheap; a damaged chunk elsewhere is met by the read itself.
                for info in reader.layers {
                    for tensor in LayerTensor.allCases where info.has(tensor) {
                        let rows = reader.shape(of: tensor, layer: info.index)[0]
                        let block = min(rows, tensor == .attn ? 8 : 256)
                        for start in Set([0, rows - block]) where block > 0 {
                            _ = try? reader.readRows(tensor, layer: info.index, rows: start..<(start + block))
                        }
                    }
                }
            }
            _exit(0)
        }
        #if !os(Linux)
        close(watch[0])
        defer { close(watch[1]) }
        #endif
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0 && errno != EINTR { return }
            if Date() > deadline {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                throw fail(
                    nil,
                    String(
                        format:
                            "reading its metadata did not finish in %.0f s (a damaged HDF5 file can send the library "
                            + "into an endless loop); THINKV_PROBE_SECONDS raises the limit",
                        seconds))
            }
            usleep(2_000)
        }
        let signal = status & 0x7f
        if signal != 0 {
            throw fail(
                nil,
                "damaged HDF5 file: reading its metadata, token datasets or a layer's first or last rows crashed the "
                    + "HDF5 library (signal \(signal))"
            )
        }
    }

    public func layerInfo(_ index: Int) -> LayerInfo? { layers.first { $0.index == index } }

    // MARK: Token datasets

    public func readTokenIDs() throws -> [Int32] {
        try readIntegers("/tokens/ids").map { Int32(truncatingIfNeeded: $0) }
    }

    public func readThoughtLabels() throws -> [Int8]? {
        guard hasThoughtLabels else { return nil }
        let values = try readIntegers("/tokens/thought")
        if let bad = values.firstIndex(where: { $0 < -1 || $0 > 2 }) {
            throw TraceError(
                file: displayName, object: "/tokens/thought",
                "value \(values[bad]) at position \(bad); labels are -1, 0, 1 or 2")
        }
        return values.map { Int8($0) }
    }

    public func readTokenText() throws -> [String]? {
        guard hasTokenText else { return nil }
        return try HDF5.withLibrary {
            let (dataset, _) = try openDataset("/tokens/text")
            defer { HDF5.resetInflateLimit() }
            let fileType = try H5Handle(H5Dget_type(dataset.id), .datatype, "")
            let count = header.numTokens
            if H5Tis_variable_str(fileType.id) > 0 {
                let memType = try makeVariableStringType()
                var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: count)
                guard H5Dread(dataset.id, memType.id, HDF5.all, HDF5.all, HDF5.defaultProperties, &pointers) >= 0 else {
                    throw readFailure("/tokens/text")
                }
                defer { for p in pointers where p != nil { H5free_memory(p) } }
                return pointers.map { $0.map { String(cString: $0) } ?? "" }
            }
            let width = H5Tget_size(fileType.id)
            let memType = try H5Handle(H5Tcopy(thinkv_H5T_C_S1()), .datatype, "")
            H5Tset_size(memType.id, width)
            var buffer = [UInt8](repeating: 0, count: width * count)
            guard H5Dread(dataset.id, memType.id, HDF5.all, HDF5.all, HDF5.defaultProperties, &buffer) >= 0 else {
                throw readFailure("/tokens/text")
            }
            return (0..<count).map { i in
                let bytes = buffer[(i * width)..<((i + 1) * width)].prefix { $0 != 0 }
                return String(decoding: bytes, as: UTF8.self)
            }
        }
    }

    // MARK: Layer tensors

    /// Shape of a layer tensor as the format defines it.
    public func shape(of tensor: LayerTensor, layer: Int) -> [Int] {
        let h = header
        switch tensor {
        case .q: return [h.numTokens, h.numQHeads, h.headDim]
        case .k, .v: return [h.numTokens, h.numKVHeads, h.headDim]
        case .attn:
            let heads = layerInfo(layer)?.attentionHeads == .keyValue ? h.numKVHeads : h.numQHeads
            return [h.generatedLength, heads, h.numTokens]
        }
    }

    /// Reads rows `rows` (along the first axis) of a layer tensor as Float32, row-major, and
    /// checks every value is finite.
    public func readRows(_ tensor: LayerTensor, layer: Int, rows: Range<Int>) throws -> [Float] {
        var out = [Float]()
        try readRows(tensor, layer: layer, rows: rows, into: &out)
        return out
    }

    /// As `readRows`, reusing `buffer`'s storage (resized to fit) to keep allocation out of loops.
    public func readRows(_ tensor: LayerTensor, layer: Int, rows: Range<Int>, into buffer: inout [Float]) throws {
        let object = "/layers/\(layer)/\(tensor.rawValue)"
        guard let info = layerInfo(layer), let dtype = info.dtypes[tensor.rawValue] else {
            throw TraceError(file: displayName, object: object, "missing")
        }
        let shape = self.shape(of: tensor, layer: layer)
        precondition(rows.lowerBound >= 0 && rows.upperBound <= shape[0], "row range outside the dataset")
        let rowWidth = shape.dropFirst().reduce(1, *)
        let count = rows.count * rowWidth
        if buffer.count != count { buffer = [Float](repeating: 0, count: count) }
        if count == 0 { return }
        try HDF5.withLibrary {
            let (dataset, space) = try openDataset(object)
            defer { HDF5.resetInflateLimit() }
            var start: [hsize_t] = [hsize_t(rows.lowerBound)] + shape.dropFirst().map { _ in 0 }
            var extent: [hsize_t] = [hsize_t(rows.count)] + shape.dropFirst().map { hsize_t($0) }
            guard H5Sselect_hyperslab(space.id, H5S_SELECT_SET, &start, nil, &extent, nil) >= 0 else {
                throw readFailure(object)
            }
            let memSpace = try H5Handle(H5Screate_simple(Int32(extent.count), &extent, nil), .dataspace, "")
            switch dtype {
            case .float32:
                let status = buffer.withUnsafeMutableBytes {
                    H5Dread(
                        dataset.id, thinkv_H5T_NATIVE_FLOAT(), memSpace.id, space.id, HDF5.defaultProperties,
                        $0.baseAddress)
                }
                guard status >= 0 else { throw readFailure(object) }
            case .float16:
                let halfType = try H5Handle(thinkv_create_float16_type(), .datatype, "")
                var halves = [UInt16](repeating: 0, count: count)
                guard H5Dread(dataset.id, halfType.id, memSpace.id, space.id, HDF5.defaultProperties, &halves) >= 0
                else {
                    throw readFailure(object)
                }
                buffer.withUnsafeMutableBufferPointer { out in
                    halves.withUnsafeBufferPointer { src in
                        for i in 0..<count { out[i] = Float(Float16(bitPattern: src[i])) }
                    }
                }
            }
        }
        if let bad = buffer.firstIndex(where: { !$0.isFinite }) {
            let row = rows.lowerBound + bad / rowWidth
            let what = buffer[bad].isNaN ? "NaN" : "infinite value"
            throw TraceError(file: displayName, object: object, "\(what) in row \(row)")
        }
        if tensor == .attn { try checkAttentionRows(buffer, rows: rows, shape: shape, object: object) }
    }

    /// Recorded attention must hold probabilities, and row g (the query at position P+g) must be
    /// 0 after position P+g. A row misaligned by a step or a non-causal recording fails here
    /// instead of turning into plausible-looking recall numbers.
    private func checkAttentionRows(_ values: [Float], rows: Range<Int>, shape: [Int], object: String) throws {
        let H = shape[1], T = shape[2], P = header.promptLength
        // float32 softmax can overshoot 1 by a rounding step; anything more is not a probability.
        let ceiling: Float = 1.001
        for (i, row) in rows.enumerated() {
            for head in 0..<H {
                let base = (i * H + head) * T

                for j in 0..<T {
                    let x = values[base + j]
                    if x < 0 || x > ceiling {
                        throw TraceError(
                            file: displayName, object: object,
                            "value \(x) in row \(row), head \(head), position \(j) is not a probability")
                    }
                    if j > P + row && x != 0 {
                        throw TraceError(
                            file: displayName, object: object,
                            "row \(row), head \(head) gives weight \(x) to position \(j), after its own position "
                                + "\(P + row); entries after P+g must be 0"
                        )
                    }
                }
                // A probability row sums to 1 (float16 storage leaves ~1e-3 of rounding).
                var sum: Double = 0
                for j in 0..<T { sum += Double(values[base + j]) }
                if abs(sum - 1) > 0.01 {
                    throw TraceError(
                        file: displayName, object: object,
                        String(
                            format: "row %d, head %d sums to %.4g, not 1: not attention probabilities", row, head, sum))
                }
            }
        }
    }

    /// Reads every value of a layer tensor once to check it is finite (what `validate` does).
    public func checkValues(progress: ((Double) -> Void)? = nil) throws {
        _ = try readTokenIDs()
        _ = try readThoughtLabels()
        _ = try readTokenText()
        let tensors = layers.flatMap { info in LayerTensor.allCases.filter(info.has).map { (info.index, $0) } }
        var buffer = [Float]()
        for (n, (layer, tensor)) in tensors.enumerated() {
            let rows = shape(of: tensor, layer: layer)[0]
            let chunk = 256
            for start in stride(from: 0, to: rows, by: chunk) {
                try readRows(tensor, layer: layer, rows: start..<min(rows, start + chunk), into: &buffer)
                progress?((Double(n) + Double(start) / Double(max(rows, 1))) / Double(tensors.count))
            }
        }
    }

    // MARK: Internals

    private func readFailure(_ object: String) -> TraceError {
        if thinkv_inflate_limit_exceeded() != 0 {
            return TraceError(
                file: displayName, object: object,
                "a compressed chunk inflates to more than the \(HDF5.declaredChunkLimit) bytes its dataset declares "
                    + "for it (a compression bomb); refused before inflating further"
            )
        }
        return TraceError(file: displayName, object: object, "read failed (damaged or truncated file)")
    }

    /// Opens a dataset with a chunk cache large enough for row-range reads of 256-row chunks,
    /// and bounds what each of its compressed chunks may inflate to by the chunk size it declares
    /// (callers reset the bound with `HDF5.resetInflateLimit()` when done).
    private func openDataset(_ object: String) throws -> (H5Handle, H5Handle) {
        let access = try H5Handle(H5Pcreate(thinkv_H5P_DATASET_ACCESS()), .propertyList, "")
        H5Pset_chunk_cache(access.id, 12_421, 64 << 20, 0.75)
        let dataset = try H5Handle(H5Dopen2(file.id, object, access.id), .dataset, readFailure(object).description)
        let space = try H5Handle(H5Dget_space(dataset.id), .dataspace, readFailure(object).description)
        HDF5.limitInflation(to: declaredChunkBytes(dataset.id))
        return (dataset, space)
    }

    private func readIntegers(_ object: String) throws -> [Int64] {
        try HDF5.withLibrary {
            let (dataset, space) = try openDataset(object)
            defer { HDF5.resetInflateLimit() }
            let count = try dataspaceShape(space.id).reduce(1, *)
            var values = [Int64](repeating: 0, count: count)
            guard
                count == 0
                    || H5Dread(
                        dataset.id, thinkv_H5T_NATIVE_INT64(), HDF5.all, HDF5.all, HDF5.defaultProperties, &values) >= 0
            else {
                throw readFailure(object)
            }
            return values
        }
    }

    private enum ExpectedKind { case integer, string, float }

    @discardableResult
    private static func checkDataset(
        _ file: hid_t, _ object: String, shape: [Int], kind: ExpectedKind,
        required: Bool, fail: (String?, String) -> TraceError
    ) throws -> Bool {
        try HDF5.withLibrary {
            guard linkExists(file, object) else {
                if required { throw fail(object, "missing required dataset") }
                return false
            }
            guard let dataset = try? H5Handle(H5Dopen2(file, object, HDF5.defaultProperties), .dataset, "") else {
                throw fail(object, "is not a readable dataset")
            }
            try checkFilters(dataset.id, object, fail: fail)
            let space = try H5Handle(H5Dget_space(dataset.id), .dataspace, "")
            let actual = try dataspaceShape(space.id)
            guard actual == shape else {
                throw fail(object, "shape \(actual) disagrees with the root attributes, expected \(shape)")
            }
            let type = try H5Handle(H5Dget_type(dataset.id), .datatype, "")
            let cls = H5ElementClass.of(type: type.id)
            if kind != .string,
                let problem = storageProblem(dataset.id, shape: actual, elementBytes: max(1, H5Tget_size(type.id)))
            {
                throw fail(object, problem)
            }
            switch (kind, cls) {
            case (.integer, .integer), (.string, .string): return true
            case (.float, .float(let bytes)) where bytes == 2 || bytes == 4: return true
            default:
                let expected = kind == .integer ? "an integer type" : kind == .string ? "strings" : "float16 or float32"
                throw fail(object, "has dtype \(cls), expected \(expected)")
            }
        }
    }

    private static func inspectLayer(
        _ file: hid_t, index: Int, header: TraceHeader,
        fail: @escaping (String?, String) -> TraceError
    ) throws -> LayerInfo {
        var info = LayerInfo(index: index)
        let T = header.numTokens, D = header.headDim
        for tensor in LayerTensor.allCases {
            let object = "/layers/\(index)/\(tensor.rawValue)"
            let found: (shape: [Int], cls: H5ElementClass, heads: String?)? = try HDF5.withLibrary {
                guard linkExists(file, object) else { return nil }
                guard let dataset = try? H5Handle(H5Dopen2(file, object, HDF5.defaultProperties), .dataset, "") else {
                    throw fail(object, "is not a readable dataset")
                }
                let space = try H5Handle(H5Dget_space(dataset.id), .dataspace, "")
                let type = try H5Handle(H5Dget_type(dataset.id), .datatype, "")
                // Problems with the attribute are reported against the dataset, naming the attribute.
                let heads = try AttributeReader(location: dataset.id) { attribute, problem in
                    fail(object, [attribute, problem].compactMap { $0 }.joined(separator: " "))
                }.string("heads")
                try checkFilters(dataset.id, object, fail: fail)
                let shape = try dataspaceShape(space.id)
                if let problem = storageProblem(dataset.id, shape: shape, elementBytes: max(1, H5Tget_size(type.id))) {
                    throw fail(object, problem)
                }
                return (shape, H5ElementClass.of(type: type.id), heads)
            }
            guard let found else { continue }
            let dtype: TraceDType
            switch found.cls {
            case .float(bytes: 2): dtype = .float16
            case .float(bytes: 4): dtype = .float32
            default: throw fail(object, "unknown dtype \(found.cls); expected float16 or float32")
            }
            let expected: [Int]
            switch tensor {
            case .q: expected = [T, header.numQHeads, D]
            case .k, .v: expected = [T, header.numKVHeads, D]
            case .attn:
                let G = header.generatedLength
                let heads: AttentionHeads
                switch found.heads {
                case "q": heads = .query
                case "kv": heads = .keyValue
                case nil:
                    // Without the attribute the head count decides, when it can.
                    heads =
                        (found.shape.count == 3 && found.shape[1] == header.numKVHeads
                            && header.numKVHeads != header.numQHeads)
                        ? .keyValue : .query
                case let other?:
                    throw fail(object, "attribute 'heads' is '\(Format.excerpt(other))', expected 'q' or 'kv'")
                }
                info.attentionHeads = heads
                expected = [G, heads == .query ? header.numQHeads : header.numKVHeads, T]
            }
            guard found.shape == expected else {
                throw fail(object, "shape \(found.shape) disagrees with the root attributes, expected \(expected)")
            }
            info.dtypes[tensor.rawValue] = dtype
        }
        if info.has(.q) != info.has(.k) && !info.hasAttention {
            let missing = info.has(.q) ? "k" : "q"
            throw fail("/layers/\(index)", "has \(info.has(.q) ? "q" : "k") but no \(missing) (and no attn)")
        }
        guard info.hasQueriesAndKeys || info.hasAttention else {
            throw fail("/layers/\(index)", "holds neither q+k nor attn")
        }
        return info
    }

    /// A dataset compressed with a filter this HDF5 library lacks (h5py's `lzf`, or a plugin such
    /// as blosc) opens but cannot be read; say so rather than calling the file damaged.
    private static func checkFilters(_ dataset: hid_t, _ object: String, fail: (String?, String) -> TraceError) throws {
        if let (id, name) = unavailableFilter(dataset) {
            throw fail(
                object,
                "compressed with HDF5 filter \(id)\(name.isEmpty ? "" : " '\(name)'"), which this HDF5 library does "
                    + "not provide; rewrite the file with gzip (deflate) or no compression"
            )
        }
    }

    /// HDF5 1.10+ takes an exclusive flock() on a file it writes; a reader then cannot open it,
    /// which is not damage.
    private static func isLockedForWriting(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return false
        }
        return errno == EWOULDBLOCK
    }

    private static func hasHDF5Signature(_ path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]
        // The superblock may sit at 0, 512, 1024, 2048, ... (a user block precedes it).
        var offset: UInt64 = 0
        while offset < 1 << 20 {
            try? handle.seek(toOffset: offset)
            guard let data = try? handle.read(upToCount: 8), data.count == 8 else { return false }
            if Array(data) == signature { return true }
            offset = offset == 0 ? 512 : offset * 2
        }
        return false
    }
}

/// Reads root or dataset attributes, accepting any integer width and both string forms
/// (h5py writes Python ints as int64 and str as variable-length UTF-8).
struct AttributeReader {
    let location: hid_t
    let fail: (String?, String) -> TraceError

    private func open(_ name: String, required: Bool) throws -> (H5Handle, H5ElementClass, H5Handle)? {
        try HDF5.withLibrary {
            guard H5Aexists(location, name) > 0 else {
                if required { throw fail("attribute '\(name)'", "missing (a required root attribute)") }
                return nil
            }
            let attribute = try H5Handle(
                H5Aopen(location, name, HDF5.defaultProperties), .attribute,
                fail("attribute '\(name)'", "unreadable").description)
            let type = try H5Handle(H5Aget_type(attribute.id), .datatype, "")
            let space = try H5Handle(H5Aget_space(attribute.id), .dataspace, "")
            let count = H5Sget_simple_extent_npoints(space.id)
            guard count == 1 else { throw fail("attribute '\(name)'", "must be a single value, has \(count)") }
            return (attribute, H5ElementClass.of(type: type.id), type)
        }
    }

    func string(_ name: String, required: Bool = false) throws -> String? {
        guard let (attribute, cls, fileType) = try open(name, required: required) else { return nil }
        guard case .string(let variable) = cls else {
            throw fail("attribute '\(name)'", "has type \(cls), expected a string")
        }
        return try HDF5.withLibrary {
            if variable {
                let memType = try makeVariableStringType()
                var pointer: UnsafeMutablePointer<CChar>? = nil
                guard H5Aread(attribute.id, memType.id, &pointer) >= 0 else {
                    throw fail("attribute '\(name)'", "unreadable")
                }
                defer { if pointer != nil { H5free_memory(pointer) } }
                return pointer.map { String(cString: $0) } ?? ""
            }
            let width = H5Tget_size(fileType.id)
            let memType = try H5Handle(H5Tcopy(thinkv_H5T_C_S1()), .datatype, "")
            H5Tset_size(memType.id, width)
            var buffer = [UInt8](repeating: 0, count: width + 1)
            guard H5Aread(attribute.id, memType.id, &buffer) >= 0 else {
                throw fail("attribute '\(name)'", "unreadable")
            }
            return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    func integer(_ name: String, required: Bool = false) throws -> Int64? {
        guard let (attribute, cls, _) = try open(name, required: required) else { return nil }
        guard case .integer = cls else {
            throw fail("attribute '\(name)'", "has type \(cls), expected an integer")
        }
        var value: Int64 = 0
        let status = HDF5.withLibrary { H5Aread(attribute.id, thinkv_H5T_NATIVE_INT64(), &value) }
        guard status >= 0 else { throw fail("attribute '\(name)'", "unreadable") }
        return value
    }

    func float(_ name: String) throws -> Float? {
        guard let (attribute, cls, _) = try open(name, required: false) else { return nil }
        switch cls {
        case .float, .integer: break
        default: throw fail("attribute '\(name)'", "has type \(cls), expected a number")
        }
        var value: Double = 0
        let status = HDF5.withLibrary { H5Aread(attribute.id, thinkv_H5T_NATIVE_DOUBLE(), &value) }
        guard status >= 0 else { throw fail("attribute '\(name)'", "unreadable") }
        return Float(value)
    }
}
