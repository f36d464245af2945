import CHDF5
import Foundation
import ThinKVSupport

/// Writes thinkv-trace version 1 files: root attributes, token datasets, and layer tensors
/// chunked along T with shuffle + deflate. Tensors can be written whole or in row ranges, so a
/// generator or recorder never needs a whole trace in memory.
public final class TraceWriter {
    public let path: String
    public let header: TraceHeader
    /// Positions per chunk along the first axis of q/k/v (the format suggests 256).
    public static let chunkRows = 256

    /// nil once `close()` has run.
    private var fileHandle: H5Handle?
    private var file: H5Handle {
        get throws {
            guard let fileHandle else { throw TraceError(file: path, "written after close()") }
            return fileHandle
        }
    }
    private var open: [String: H5Handle] = [:]
    private var openTypes: [String: TraceDType] = [:]

    public init(path: String, header: TraceHeader) throws {
        self.path = path
        self.header = header
        let id = HDF5.withLibrary { () -> hid_t in
            H5Fcreate(path, thinkv_H5F_ACC_TRUNC(), HDF5.defaultProperties, HDF5.defaultProperties)
        }
        fileHandle = try H5Handle(id, .file, TraceError(file: path, "cannot create file").description)
        try writeRootAttributes()
    }

    /// Flushes and closes the file (releasing HDF5's file lock, so other programs can open it at
    /// once); the writer must not be used afterwards. Safe to call more than once.
    public func close() {
        HDF5.withLibrary {
            guard let handle = fileHandle else { return }
            open.removeAll()
            openTypes.removeAll()
            _ = H5Fflush(handle.id, H5F_SCOPE_GLOBAL)
            fileHandle = nil  // the last reference: H5Fclose runs here
        }
    }

    deinit { close() }

    // MARK: Tokens

    public func writeTokens(ids: [Int32], text: [String]? = nil, thought: [Int8]? = nil) throws {
        precondition(ids.count == header.numTokens, "ids must have num_tokens entries")
        try HDF5.withLibrary {
            try ensureGroup("/tokens")
            try writeWhole(
                "/tokens/ids", fileType: thinkv_H5T_STD_I32LE(), memType: thinkv_H5T_NATIVE_INT32(),
                shape: [ids.count], ids)
            if let thought {
                precondition(thought.count == header.numTokens)
                try writeWhole(
                    "/tokens/thought", fileType: thinkv_H5T_STD_I8LE(), memType: thinkv_H5T_NATIVE_INT8(),
                    shape: [thought.count], thought)
            }
            if let text {
                precondition(text.count == header.numTokens)
                let type = try makeVariableStringType()
                var dims = [hsize_t(text.count)]
                let space = try H5Handle(H5Screate_simple(1, &dims, nil), .dataspace, failure("/tokens/text"))
                let dataset = try H5Handle(
                    H5Dcreate2(
                        file.id, "/tokens/text", type.id, space.id, HDF5.defaultProperties,
                        HDF5.defaultProperties, HDF5.defaultProperties), .dataset, failure("/tokens/text"))
                let cStrings = text.map { strdup($0) }
                defer { cStrings.forEach { free($0) } }
                var pointers: [UnsafePointer<CChar>?] = cStrings.map { UnsafePointer($0) }
                guard H5Dwrite(dataset.id, type.id, HDF5.all, HDF5.all, HDF5.defaultProperties, &pointers) >= 0 else {
                    throw TraceError(file: path, object: "/tokens/text", "write failed")
                }
            }
        }
    }

    // MARK: Layers

    /// Creates a layer tensor dataset (its shape follows from the header); fill it with `writeRows`.
    public func createTensor(
        _ tensor: LayerTensor, layer: Int, dtype: TraceDType,
        attentionHeads: AttentionHeads = .query, compress: Bool = true
    ) throws {
        let h = header
        let shape: [Int]
        switch tensor {
        case .q: shape = [h.numTokens, h.numQHeads, h.headDim]
        case .k, .v: shape = [h.numTokens, h.numKVHeads, h.headDim]
        case .attn: shape = [h.generatedLength, attentionHeads == .query ? h.numQHeads : h.numKVHeads, h.numTokens]
        }
        let object = "/layers/\(layer)/\(tensor.rawValue)"
        try HDF5.withLibrary {
            try ensureGroup("/layers")
            try ensureGroup("/layers/\(layer)")
            var dims = shape.map { hsize_t($0) }
            let space = try H5Handle(H5Screate_simple(Int32(dims.count), &dims, nil), .dataspace, failure(object))
            let create = try H5Handle(H5Pcreate(thinkv_H5P_DATASET_CREATE()), .propertyList, failure(object))
            // attn rows are whole sequences wide; keep its chunks a few MB at most.
            let rowsPerChunk = tensor == .attn ? 8 : TraceWriter.chunkRows
            var chunk = dims
            chunk[0] = hsize_t(max(1, min(shape[0], rowsPerChunk)))
            if shape[0] > 0 {
                H5Pset_chunk(create.id, Int32(chunk.count), &chunk)
                if compress {
                    H5Pset_shuffle(create.id)
                    H5Pset_deflate(create.id, 4)
                }
            }
            let fileType =
                try dtype == .float16
                ? H5Handle(thinkv_create_float16_type(), .datatype, failure(object))
                : H5Handle(H5Tcopy(thinkv_H5T_IEEE_F32LE()), .datatype, failure(object))
            let dataset = try H5Handle(
                H5Dcreate2(
                    file.id, object, fileType.id, space.id, HDF5.defaultProperties,
                    create.id, HDF5.defaultProperties), .dataset, failure(object))
            if tensor == .attn {
                try writeStringAttribute(dataset.id, "heads", attentionHeads.rawValue)
            }
            open[object] = dataset
            openTypes[object] = dtype
        }
    }

    /// Writes rows `start ..< start + values.count / rowWidth` of a tensor made by `createTensor`.
    ///
    /// Refuses values no reader would accept (NaN, infinities, and for float16 anything that
    /// rounds beyond its largest finite value, 65504), so a bad value is caught where it is made.
    /// float16 storage rounds to nearest, ties to even (IEEE, as numpy and GPUs round).
    public func writeRows(_ tensor: LayerTensor, layer: Int, start: Int, _ values: [Float]) throws {
        let object = "/layers/\(layer)/\(tensor.rawValue)"
        try HDF5.withLibrary {
            guard let dataset = open[object], let dtype = openTypes[object] else {
                throw TraceError(file: path, object: object, "written before createTensor")
            }
            let space = try H5Handle(H5Dget_space(dataset.id), .dataspace, failure(object))
            let shape = try dataspaceShape(space.id)
            let rowWidth = shape.dropFirst().reduce(1, *)
            precondition(rowWidth > 0 && values.count % rowWidth == 0, "values must be whole rows")
            let rows = values.count / rowWidth
            precondition(start >= 0 && start + rows <= shape[0], "rows outside the dataset")
            if rows == 0 { return }
            var offset = [hsize_t(start)] + shape.dropFirst().map { _ in hsize_t(0) }
            var extent = [hsize_t(rows)] + shape.dropFirst().map { hsize_t($0) }
            H5Sselect_hyperslab(space.id, H5S_SELECT_SET, &offset, nil, &extent, nil)
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw TraceError(
                    file: path, object: object,
                    "cannot write \(values[bad].isNaN ? "NaN" : "an infinite value") (row "
                        + "\(start + bad / rowWidth)); traces hold finite values only"
                )
            }
            let memSpace = try H5Handle(
                H5Screate_simple(Int32(extent.count), &extent, nil), .dataspace, failure(object))
            let status: herr_t
            switch dtype {
            case .float32:
                status = values.withUnsafeBytes {
                    H5Dwrite(
                        dataset.id, thinkv_H5T_NATIVE_FLOAT(), memSpace.id, space.id, HDF5.defaultProperties,
                        $0.baseAddress)
                }
            case .float16:
                // Rounded here rather than by HDF5, whose float->half conversion rounds ties up,
                // truncates some subnormals and turns overflow into infinity without a word.
                var halves = [UInt16](repeating: 0, count: values.count)
                for (i, x) in values.enumerated() {
                    let half = Float16(x)
                    guard half.isFinite else {
                        throw TraceError(
                            file: path, object: object,
                            "value \(x) (row \(start + i / rowWidth)) is beyond float16's range (largest finite "
                                + "value 65504)"
                        )
                    }
                    halves[i] = half.bitPattern
                }
                let halfType = try H5Handle(thinkv_create_float16_type(), .datatype, failure(object))
                status = H5Dwrite(dataset.id, halfType.id, memSpace.id, space.id, HDF5.defaultProperties, &halves)
            }
            guard status >= 0 else { throw TraceError(file: path, object: object, "write failed") }
        }
    }

    /// Creates and fills a tensor in one call.
    public func writeTensor(
        _ tensor: LayerTensor, layer: Int, dtype: TraceDType, _ values: [Float],
        attentionHeads: AttentionHeads = .query
    ) throws {
        try createTensor(tensor, layer: layer, dtype: dtype, attentionHeads: attentionHeads)
        try writeRows(tensor, layer: layer, start: 0, values)
    }

    // MARK: Internals

    private func failure(_ object: String) -> String {
        TraceError(file: path, object: object, "cannot create").description
    }

    private func ensureGroup(_ name: String) throws {
        if linkExists(try file.id, name) { return }
        _ = try H5Handle(
            H5Gcreate2(file.id, name, HDF5.defaultProperties, HDF5.defaultProperties, HDF5.defaultProperties),
            .group, failure(name))
    }

    private func writeWhole<T>(_ object: String, fileType: hid_t, memType: hid_t, shape: [Int], _ values: [T]) throws {
        var dims = shape.map { hsize_t($0) }
        let space = try H5Handle(H5Screate_simple(Int32(dims.count), &dims, nil), .dataspace, failure(object))
        let dataset = try H5Handle(
            H5Dcreate2(
                file.id, object, fileType, space.id, HDF5.defaultProperties,
                HDF5.defaultProperties, HDF5.defaultProperties), .dataset, failure(object))
        let status = values.withUnsafeBytes {
            H5Dwrite(dataset.id, memType, HDF5.all, HDF5.all, HDF5.defaultProperties, $0.baseAddress)
        }
        guard status >= 0 else { throw TraceError(file: path, object: object, "write failed") }
    }

    private func writeRootAttributes() throws {
        let h = header
        try HDF5.withLibrary {
            try writeStringAttribute(file.id, "format", TraceHeader.formatName)
            try writeScalarAttribute(file.id, "version", Int32(TraceHeader.supportedVersion))
            try writeStringAttribute(file.id, "model", h.model)
            for (name, value) in [
                ("num_layers", h.numLayers), ("num_q_heads", h.numQHeads), ("num_kv_heads", h.numKVHeads),
                ("head_dim", h.headDim), ("prompt_len", h.promptLength), ("num_tokens", h.numTokens)
            ] {
                try writeScalarAttribute(file.id, name, Int32(value))
            }
            if let scale = h.softmaxScale { try writeScalarAttribute(file.id, "softmax_scale", scale) }
            if let source = h.source { try writeStringAttribute(file.id, "source", source) }
            if let generator = h.generator { try writeStringAttribute(file.id, "generator", generator) }
            if let prompt = h.prompt { try writeStringAttribute(file.id, "prompt", prompt) }
            if let seed = h.seed { try writeScalarAttribute(file.id, "seed", seed) }
        }
    }

    private func writeStringAttribute(_ location: hid_t, _ name: String, _ value: String) throws {
        let type = try makeVariableStringType()
        let space = try H5Handle(H5Screate(H5S_SCALAR), .dataspace, failure("attribute '\(name)'"))
        let attribute = try H5Handle(
            H5Acreate2(location, name, type.id, space.id, HDF5.defaultProperties, HDF5.defaultProperties),
            .attribute, failure("attribute '\(name)'"))
        let status = value.withCString { cString -> herr_t in
            var pointer: UnsafePointer<CChar>? = cString
            return H5Awrite(attribute.id, type.id, &pointer)
        }
        guard status >= 0 else { throw TraceError(file: path, object: "attribute '\(name)'", "write failed") }
    }

    private func writeScalarAttribute<T: BitwiseCopyable>(_ location: hid_t, _ name: String, _ value: T) throws {
        let (fileType, memType): (hid_t, hid_t)
        switch value {
        case is Int32: (fileType, memType) = (thinkv_H5T_STD_I32LE(), thinkv_H5T_NATIVE_INT32())
        case is Int64: (fileType, memType) = (thinkv_H5T_STD_I64LE(), thinkv_H5T_NATIVE_INT64())
        case is Float: (fileType, memType) = (thinkv_H5T_IEEE_F32LE(), thinkv_H5T_NATIVE_FLOAT())
        default: preconditionFailure("unsupported attribute type \(T.self)")
        }
        let space = try H5Handle(H5Screate(H5S_SCALAR), .dataspace, failure("attribute '\(name)'"))
        let attribute = try H5Handle(
            H5Acreate2(location, name, fileType, space.id, HDF5.defaultProperties, HDF5.defaultProperties),
            .attribute, failure("attribute '\(name)'"))
        let status = withUnsafeBytes(of: value) { H5Awrite(attribute.id, memType, $0.baseAddress) }
        guard status >= 0 else {
            throw TraceError(file: path, object: "attribute '\(name)'", "write failed")
        }
    }
}
