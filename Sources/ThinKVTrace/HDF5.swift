import CHDF5
import CInflate
import Foundation
import ThinKVSupport

/// A thin, owning layer over the HDF5 C API: identifiers close themselves, failures become
/// `HDF5Failure` values that the trace layer turns into one-line `TraceError`s.
///
/// The serial HDF5 build is not thread-safe, so every call goes through `HDF5.lock`.
enum HDF5 {
    static let lock = NSRecursiveLock()

    private static let initialized: Bool = {
        H5open()
        thinkv_silence_hdf5_errors()
        installBoundedDeflate()
        resetInflateLimit()
        return true
    }()

    /// Puts the bounded deflate filter in place of the library's own, which inflates whatever
    /// the stream holds (2 GiB from a 2 MB chunk whose dataset declares 2 KB). Same zlib format,
    /// so files read and write as before. The public H5Zregister refuses to replace a predefined
    /// filter ("unable to modify predefined filters"); the library's internal H5Z_register, which
    /// it calls, does not, and is looked up at run time so that a library without it (it is not
    /// part of the public API) still works, unbounded.
    private static func installBoundedDeflate() {
        typealias Register = @convention(c) (UnsafePointer<H5Z_class2_t>) -> herr_t
        guard let symbol = dlsym(nil, "H5Z_register") else { return }
        let register = unsafeBitCast(symbol, to: Register.self)
        var deflate = H5Z_class2_t(
            version: Int32(H5Z_CLASS_T_VERS), id: H5Z_filter_t(H5Z_FILTER_DEFLATE), encoder_present: 1,
            decoder_present: 1, name: boundedDeflateName, can_apply: nil, set_local: nil,
            filter: thinkv_deflate_filter)
        _ = register(&deflate)
    }

    private static let boundedDeflateName: UnsafePointer<CChar> = UnsafePointer(strdup("deflate (bounded)")!)

    /// Compressed chunks read from now on may inflate to at most `bytes` each (nil: the
    /// default bound, the largest chunk a trace may have). 4 KiB more are allowed: a filter
    /// applied before deflate on writing can add a few bytes (Fletcher-32 adds 4).
    static func limitInflation(to bytes: Int?) {
        thinkv_reset_inflate_limit_exceeded()
        thinkv_set_inflate_limit((bytes ?? Int(TraceLimits.maxChunkBytes)) + inflationSlack)
    }

    static let inflationSlack = 4096

    /// The chunk size the current inflation bound allows (without the slack), for messages.
    static var declaredChunkLimit: Int { thinkv_inflate_limit() - inflationSlack }

    static func resetInflateLimit() { limitInflation(to: nil) }

    static func withLibrary<R>(_ body: () throws -> R) rethrows -> R {
        _ = initialized
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    static var defaultProperties: hid_t { thinkv_H5P_DEFAULT() }
    static var all: hid_t { thinkv_H5S_ALL() }
}

/// What the executable must know about the HDF5 library's state before it exits.
public enum HDF5Library {
    /// Set when H5Fclose failed (a full disk while the library wrote its metadata): the library
    /// then still holds the file with metadata it could not write, and its exit handler, which
    /// flushes open files again, crashes (SIGSEGV). The executable then leaves with `_exit`.
    public internal(set) nonisolated(unsafe) static var closeFailed = false
}

struct HDF5Failure: Error {
    let message: String
}

/// Owns one HDF5 identifier and closes it with the matching H5?close.
final class H5Handle {
    enum Kind { case file, group, dataset, dataspace, datatype, attribute, propertyList }
    let id: hid_t
    let kind: Kind

    init(_ id: hid_t, _ kind: Kind, _ what: @autoclosure () -> String) throws {
        guard id >= 0 else { throw HDF5Failure(message: what()) }
        self.id = id
        self.kind = kind
    }

    deinit {
        HDF5.withLibrary {
            switch kind {
            case .file: _ = H5Fclose(id)
            case .group: _ = H5Gclose(id)
            case .dataset: _ = H5Dclose(id)
            case .dataspace: _ = H5Sclose(id)
            case .datatype: _ = H5Tclose(id)
            case .attribute: _ = H5Aclose(id)
            case .propertyList: _ = H5Pclose(id)
            }
        }
    }
}

/// What a stored element type is, as far as traces care.
enum H5ElementClass: Equatable, CustomStringConvertible {
    case float(bytes: Int)
    case integer(bytes: Int, signed: Bool)
    case string(variableLength: Bool)
    case other(String)

    var description: String {
        switch self {
        case .float(let b): return "float\(b * 8)"
        case .integer(let b, let s): return "\(s ? "int" : "uint")\(b * 8)"
        case .string(let v): return v ? "variable-length string" : "fixed-length string"
        case .other(let s): return s
        }
    }

    static func of(type: hid_t) -> H5ElementClass {
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_FLOAT: return .float(bytes: size)
        case H5T_INTEGER: return .integer(bytes: size, signed: H5Tget_sign(type) == H5T_SGN_2)
        case H5T_STRING: return .string(variableLength: H5Tis_variable_str(type) > 0)
        case H5T_COMPOUND: return .other("compound")
        case H5T_ENUM: return .other("enum")
        case H5T_ARRAY: return .other("array")
        case H5T_VLEN: return .other("variable-length sequence")
        case H5T_OPAQUE: return .other("opaque")
        case H5T_BITFIELD: return .other("bitfield")
        case H5T_REFERENCE: return .other("reference")
        default: return .other("unknown type")
        }
    }
}

/// The memory type for variable-length UTF-8 strings (`char *` elements).
func makeVariableStringType() throws -> H5Handle {
    let t = try H5Handle(H5Tcopy(thinkv_H5T_C_S1()), .datatype, "cannot create string type")
    guard H5Tset_size(t.id, Int(bitPattern: UInt(bitPattern: -1))) >= 0,  // H5T_VARIABLE
        H5Tset_cset(t.id, H5T_CSET_UTF8) >= 0
    else { throw HDF5Failure(message: "cannot create string type") }
    return t
}

/// Reads a dataspace's extent; a scalar space has rank 0.
func dataspaceShape(_ space: hid_t) throws -> [Int] {
    let rank = H5Sget_simple_extent_ndims(space)
    guard rank >= 0 else { throw HDF5Failure(message: "unreadable dataspace") }
    if rank == 0 { return [] }
    var dims = [hsize_t](repeating: 0, count: Int(rank))
    guard H5Sget_simple_extent_dims(space, &dims, nil) >= 0 else {
        throw HDF5Failure(message: "unreadable dataspace")
    }
    return dims.map { Int($0) }
}

func linkExists(_ location: hid_t, _ path: String) -> Bool {
    // Check each component: H5Lexists on "a/b" fails (rather than answering) when "a" is missing.
    var prefix = ""
    for component in path.split(separator: "/") {
        prefix += (prefix.isEmpty && !path.hasPrefix("/") ? "" : "/") + component
        if H5Lexists(location, prefix, HDF5.defaultProperties) <= 0 { return false }
    }
    return true
}

func objectIsGroup(_ location: hid_t, _ path: String) -> Bool {
    // H5Gopen fails on datasets; this avoids H5Oget_info, whose signature changed across 1.10/1.12/1.14.
    let id = H5Gopen2(location, path, HDF5.defaultProperties)
    guard id >= 0 else { return false }
    H5Gclose(id)
    return true
}

/// Names of the links directly inside a group, in name order.
func groupMemberNames(_ group: hid_t) -> [String] {
    var names: [String] = []
    var info = H5G_info_t()
    guard H5Gget_info(group, &info) >= 0 else { return [] }
    for i in 0..<info.nlinks {
        let len = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nil, 0, HDF5.defaultProperties)
        guard len >= 0 else { continue }
        var buffer = [CChar](repeating: 0, count: Int(len) + 1)
        _ = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, &buffer, Int(len) + 1, HDF5.defaultProperties)
        names.append(String(decoding: buffer.prefix(Int(len)).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return names
}

/// The first filter in a dataset's pipeline that this HDF5 library cannot apply, if any.
func unavailableFilter(_ dataset: hid_t) -> (id: Int32, name: String)? {
    let plist = H5Dget_create_plist(dataset)
    guard plist >= 0 else { return nil }
    defer { H5Pclose(plist) }
    let count = H5Pget_nfilters(plist)
    guard count > 0 else { return nil }
    for index in 0..<UInt32(count) {
        var flags: UInt32 = 0
        var valueCount = 8
        var values = [UInt32](repeating: 0, count: valueCount)
        var name = [CChar](repeating: 0, count: 256)
        var config: UInt32 = 0
        let id = H5Pget_filter2(plist, index, &flags, &valueCount, &values, name.count, &name, &config)
        guard id >= 0 else { continue }
        if H5Zfilter_avail(id) <= 0 {
            return (id, String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }
    return nil
}

/// Bytes one chunk of `dataset` holds once decompressed, as its creation properties declare
/// (nil for a dataset that is not chunked). Variable-length elements are counted at 16 bytes,
/// their size inside a chunk (length and global-heap reference).
func declaredChunkBytes(_ dataset: hid_t) -> Int? {
    let plist = H5Dget_create_plist(dataset)
    guard plist >= 0 else { return nil }
    defer { H5Pclose(plist) }
    guard H5Pget_layout(plist) == H5D_CHUNKED else { return nil }
    var dims = [hsize_t](repeating: 0, count: 32)
    let rank = H5Pget_chunk(plist, Int32(dims.count), &dims)
    guard rank > 0 else { return nil }
    let type = H5Dget_type(dataset)
    guard type >= 0 else { return nil }
    defer { H5Tclose(type) }
    let variable = H5Tis_variable_str(type) > 0 || H5Tget_class(type) == H5T_VLEN
    let elementBytes = variable ? max(H5Tget_size(type), 16) : H5Tget_size(type)
    return TraceLimits.product(dims.prefix(Int(rank)).map { Int($0) } + [elementBytes])
}

/// Why reading a dataset in full would be unsafe: its declared size is far larger than what the
/// file stores (a compression bomb, or a sparse dataset of unwritten chunks that reads as fill
/// values), or one of its chunks, read whole, is too large. nil when it is safe.
func storageProblem(_ dataset: hid_t, shape: [Int], elementBytes: Int) -> String? {
    guard let elements = TraceLimits.product(shape), let logical = TraceLimits.product([elements, elementBytes]) else {
        return "declared shape \(shape) overflows"
    }
    guard logical > 0 else { return nil }
    let stored = Double(H5Dget_storage_size(dataset))
    if stored == 0 {
        return "declares \(logical) bytes but stores none (unwritten chunks)"
    }
    let ratio = Double(logical) / stored
    if ratio > TraceLimits.maxInflation {
        return String(
            format:
                "declares %d bytes but stores %.0f (%.0f× larger, the limit is %.0f×: a compression bomb or sparse "
                + "dataset; THINKV_MAX_INFLATION raises it)",
            logical, stored, ratio, TraceLimits.maxInflation)
    }
    let plist = H5Dget_create_plist(dataset)
    guard plist >= 0 else { return nil }
    defer { H5Pclose(plist) }
    guard H5Pget_layout(plist) == H5D_CHUNKED else { return nil }
    var dims = [hsize_t](repeating: 0, count: max(shape.count, 1))
    let rank = H5Pget_chunk(plist, Int32(dims.count), &dims)
    guard rank > 0 else { return nil }
    let chunk = dims.prefix(Int(rank)).reduce(Double(elementBytes)) { $0 * Double($1) }
    if chunk > TraceLimits.maxChunkBytes {
        return String(
            format: "has chunks of %.0f MiB once decompressed (limit %.0f MiB; THINKV_MAX_CHUNK_MB raises it)",
            chunk / 1_048_576, TraceLimits.maxChunkBytes / 1_048_576)
    }
    return nil
}
