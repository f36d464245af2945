import CHDF5
import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim
@testable import ThinKVTrace

/// Changes an existing HDF5 file through the C API, to make the malformed traces that
/// `TraceWriter` (which follows the format) would never produce: attributes removed or of the
/// wrong type, datasets missing, reshaped or retyped, NaN and infinities patched into tensors.
///
/// Every call holds `HDF5.lock`, like the library code, since serial HDF5 is not thread-safe.
final class HDF5Editor {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Writes a scalar int32 attribute on the open file or object `owner` (tests that build a
    /// file from nothing through the C API; the caller holds the library).
    static func writeInt32Attribute(_ owner: hid_t, _ name: String, _ value: Int32) {
        let space = H5Screate(H5S_SCALAR)
        let attribute = H5Acreate2(
            owner, name, thinkv_H5T_STD_I32LE(), space, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT())
        var v = value
        H5Awrite(attribute, thinkv_H5T_NATIVE_INT32(), &v)
        H5Aclose(attribute)
        H5Sclose(space)
    }

    /// Writes a scalar fixed-length string attribute on `owner`, as `writeInt32Attribute`.
    static func writeTextAttribute(_ owner: hid_t, _ name: String, _ value: String) {
        let type = H5Tcopy(thinkv_H5T_C_S1())
        H5Tset_size(type, value.utf8.count)
        let space = H5Screate(H5S_SCALAR)
        let attribute = H5Acreate2(owner, name, type, space, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT())
        var bytes = Array(value.utf8)
        H5Awrite(attribute, type, &bytes)
        H5Aclose(attribute)
        H5Sclose(space)
        H5Tclose(type)
    }

    /// Element types a test dataset or attribute can be stored as.
    enum ElementType {
        case int8, int32, int64, float16, float32, float64

        /// A fresh copy of the file type (closed by the caller).
        func makeFileType() -> hid_t {
            switch self {
            case .int8: return H5Tcopy(thinkv_H5T_STD_I8LE())
            case .int32: return H5Tcopy(thinkv_H5T_STD_I32LE())
            case .int64: return H5Tcopy(thinkv_H5T_STD_I64LE())
            case .float16: return thinkv_create_float16_type()
            case .float32: return H5Tcopy(thinkv_H5T_IEEE_F32LE())
            case .float64: return H5Tcopy(thinkv_H5T_NATIVE_DOUBLE())
            }
        }
    }

    enum AttributeValue {
        case int32(Int32)
        case int64(Int64)
        case float64(Double)
        case string(String)
        /// A one-dimensional array attribute (a scalar is required).
        case int32Array([Int32])
    }

    let path: String
    private let file: hid_t

    private init(path: String) throws {
        self.path = path
        file = H5Fopen(path, thinkv_H5F_ACC_RDWR(), thinkv_H5P_DEFAULT())
        guard file >= 0 else { throw Failure(description: "\(path): cannot open for editing") }
    }

    /// Opens `path` read-write, runs `body`, and closes the file (flushing every change).
    static func edit(_ path: String, _ body: (HDF5Editor) throws -> Void) throws {
        try HDF5.withLibrary {
            let editor = try HDF5Editor(path: path)
            defer { H5Fclose(editor.file) }
            try body(editor)
        }
    }

    private func check(_ status: herr_t, _ what: String) throws {
        guard status >= 0 else { throw Failure(description: "\(path): \(what) failed") }
    }

    private func check(_ id: hid_t, _ what: String) throws -> hid_t {
        guard id >= 0 else { throw Failure(description: "\(path): \(what) failed") }
        return id
    }

    // MARK: Attributes

    func deleteAttribute(_ name: String, of object: String = "/") throws {
        try check(
            H5Adelete_by_name(file, object, name, thinkv_H5P_DEFAULT()), "deleting attribute \(name) of \(object)")
    }

    /// Sets an attribute, replacing any existing one of that name (whatever its type).
    func setAttribute(_ name: String, of object: String = "/", _ value: AttributeValue) throws {
        if H5Aexists_by_name(file, object, name, thinkv_H5P_DEFAULT()) > 0 {
            try deleteAttribute(name, of: object)
        }
        let fileType: hid_t
        let memType: hid_t
        var dims: [hsize_t] = []
        switch value {
        case .int32: (fileType, memType) = (H5Tcopy(thinkv_H5T_STD_I32LE()), H5Tcopy(thinkv_H5T_NATIVE_INT32()))
        case .int64: (fileType, memType) = (H5Tcopy(thinkv_H5T_STD_I64LE()), H5Tcopy(thinkv_H5T_NATIVE_INT64()))
        case .float64: (fileType, memType) = (H5Tcopy(thinkv_H5T_NATIVE_DOUBLE()), H5Tcopy(thinkv_H5T_NATIVE_DOUBLE()))
        case .int32Array(let values):
            (fileType, memType) = (H5Tcopy(thinkv_H5T_STD_I32LE()), H5Tcopy(thinkv_H5T_NATIVE_INT32()))
            dims = [hsize_t(values.count)]
        case .string:
            let t = H5Tcopy(thinkv_H5T_C_S1())
            H5Tset_size(t, Int(bitPattern: UInt(bitPattern: -1)))  // H5T_VARIABLE
            H5Tset_cset(t, H5T_CSET_UTF8)
            (fileType, memType) = (t, H5Tcopy(t))
        }
        defer { H5Tclose(fileType); H5Tclose(memType) }
        let space = try check(dims.isEmpty ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &dims, nil), "dataspace")
        defer { H5Sclose(space) }
        let attribute = try check(
            H5Acreate_by_name(
                file, object, name, fileType, space, thinkv_H5P_DEFAULT(),
                thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT()),
            "creating attribute \(name) on \(object)")
        defer { H5Aclose(attribute) }
        let status: herr_t
        switch value {
        case .int32(var v): status = H5Awrite(attribute, memType, &v)
        case .int64(var v): status = H5Awrite(attribute, memType, &v)
        case .float64(var v): status = H5Awrite(attribute, memType, &v)
        case .int32Array(let values): status = values.withUnsafeBytes { H5Awrite(attribute, memType, $0.baseAddress) }
        case .string(let s):
            status = s.withCString { c -> herr_t in
                var pointer: UnsafePointer<CChar>? = c
                return H5Awrite(attribute, memType, &pointer)
            }
        }
        try check(status, "writing attribute \(name)")
    }

    // MARK: Links and datasets

    /// Removes a dataset or group (the link to it; HDF5 does not shrink the file).
    func delete(_ object: String) throws {
        try check(H5Ldelete(file, object, thinkv_H5P_DEFAULT()), "deleting \(object)")
    }

    func createGroup(_ object: String) throws {
        let group = try check(
            H5Gcreate2(file, object, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT()),
            "creating group \(object)")
        H5Gclose(group)
    }

    /// Creates (or replaces) a contiguous dataset of `type` and `shape` holding `values`
    /// (row-major, converted by HDF5 from double; zeros when empty).
    func setDataset(_ object: String, type: ElementType, shape: [Int], values: [Double] = []) throws {
        if linkExists(file, object) { try delete(object) }
        let count = shape.reduce(1, *)
        precondition(values.isEmpty || values.count == count, "values must fill the shape")
        var dims = shape.map { hsize_t($0) }
        let space = try check(H5Screate_simple(Int32(dims.count), &dims, nil), "dataspace")
        defer { H5Sclose(space) }
        let fileType = try check(type.makeFileType(), "file type")
        defer { H5Tclose(fileType) }
        let dataset = try check(
            H5Dcreate2(
                file, object, fileType, space, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(),
                thinkv_H5P_DEFAULT()), "creating \(object)")
        defer { H5Dclose(dataset) }
        let data = values.isEmpty ? [Double](repeating: 0, count: count) : values
        if count > 0 {
            try check(
                data.withUnsafeBytes {
                    H5Dwrite(
                        dataset, thinkv_H5T_NATIVE_DOUBLE(), thinkv_H5S_ALL(), thinkv_H5S_ALL(), thinkv_H5P_DEFAULT(),
                        $0.baseAddress)
                }, "writing \(object)")
        }
    }

    /// Creates (or replaces) a chunked float32 dataset of zeros whose filter pipeline holds a filter
    /// that is registered only while the data is written: afterwards this process's HDF5 lacks it,
    /// like a file compressed by h5py's `lzf` or a blosc plugin the reader does not have.
    func setDatasetWithForeignFilter(_ object: String, shape: [Int]) throws {
        if linkExists(file, object) { try delete(object) }
        // 256-511 is the range HDF5 sets aside for testing; nothing real uses it.
        let filterID: H5Z_filter_t = 300
        var filterClass = H5Z_class2_t(
            version: Int32(H5Z_CLASS_T_VERS), id: filterID, encoder_present: 1, decoder_present: 1,
            name: HDF5Editor.foreignFilterName, can_apply: nil, set_local: nil,
            filter: { _, _, _, byteCount, _, _ in byteCount })  // identity: keeps the chunk as is
        try check(H5Zregister(&filterClass), "registering the test filter")
        defer { H5Zunregister(filterID) }

        var dims = shape.map { hsize_t($0) }
        let space = try check(H5Screate_simple(Int32(dims.count), &dims, nil), "dataspace")
        defer { H5Sclose(space) }
        let create = try check(H5Pcreate(thinkv_H5P_DATASET_CREATE()), "property list")
        defer { H5Pclose(create) }
        try check(H5Pset_chunk(create, Int32(dims.count), &dims), "chunking")
        try check(H5Pset_filter(create, filterID, UInt32(H5Z_FLAG_MANDATORY), 0, nil), "adding the test filter")
        let fileType = try check(H5Tcopy(thinkv_H5T_IEEE_F32LE()), "file type")
        defer { H5Tclose(fileType) }
        let dataset = try check(
            H5Dcreate2(file, object, fileType, space, thinkv_H5P_DEFAULT(), create, thinkv_H5P_DEFAULT()),
            "creating \(object)")
        defer { H5Dclose(dataset) }
        let zeros = [Float](repeating: 0, count: shape.reduce(1, *))
        try check(
            zeros.withUnsafeBytes {
                H5Dwrite(
                    dataset, thinkv_H5T_NATIVE_FLOAT(), thinkv_H5S_ALL(), thinkv_H5S_ALL(), thinkv_H5P_DEFAULT(),
                    $0.baseAddress)
            }, "writing \(object)")
    }

    private static let foreignFilterName: UnsafePointer<CChar> = UnsafePointer(strdup("test-only filter")!)

    /// A value to patch into a tensor: the non-finite ones cannot occur in a valid trace.
    enum BadValue {
        case nan, positiveInfinity, negativeInfinity
        case number(Float)

        var float: Float {
            switch self {
            case .nan: return .nan
            case .positiveInfinity: return .infinity
            case .negativeInfinity: return -.infinity
            case .number(let x): return x
            }
        }
    }

    /// Overwrites one element (by row-major index) of a float16 or float32 dataset with `bad`,
    /// storing the exact bit pattern so no type conversion can alter it.
    func patch(_ object: String, element: Int, with bad: BadValue) throws {
        let dataset = try check(H5Dopen2(file, object, thinkv_H5P_DEFAULT()), "opening \(object)")
        defer { H5Dclose(dataset) }
        let space = try check(H5Dget_space(dataset), "dataspace of \(object)")
        defer { H5Sclose(space) }
        let shape = try dataspaceShape(space)
        // Row-major index -> coordinates.
        var coordinates = [hsize_t](repeating: 0, count: shape.count)
        var rest = element
        for axis in shape.indices.reversed() {
            coordinates[axis] = hsize_t(rest % shape[axis])
            rest /= shape[axis]
        }
        precondition(rest == 0, "element outside \(object)")
        try check(H5Sselect_elements(space, H5S_SELECT_SET, 1, &coordinates), "selecting an element")
        var one: [hsize_t] = [1]
        let memSpace = try check(H5Screate_simple(1, &one, nil), "memory space")
        defer { H5Sclose(memSpace) }

        let fileType = try check(H5Dget_type(dataset), "type of \(object)")
        defer { H5Tclose(fileType) }
        switch H5Tget_size(fileType) {
        case 2:
            let halfType = try check(thinkv_create_float16_type(), "half type")
            defer { H5Tclose(halfType) }
            var bits: UInt16
            switch bad {
            case .nan: bits = 0x7E00
            case .positiveInfinity: bits = 0x7C00
            case .negativeInfinity: bits = 0xFC00
            case .number(let x): bits = Float16(x).bitPattern
            }
            try check(H5Dwrite(dataset, halfType, memSpace, space, thinkv_H5P_DEFAULT(), &bits), "patching \(object)")
        case 4:
            var value = bad.float
            try check(
                H5Dwrite(dataset, thinkv_H5T_NATIVE_FLOAT(), memSpace, space, thinkv_H5P_DEFAULT(), &value),
                "patching \(object)")
        default:
            throw Failure(description: "\(object) is not float16 or float32")
        }
    }
}
