import CHDF5
import Foundation
import ThinKVSupport

/// Writes a user's thought labels into a trace's `/tokens/thought`, so recorded traces can be
/// scored (`inspect --thoughts`, `replay --thoughts labels`). Labels come as CSV rows
/// `step,type` (decode step, 0-based; type R/E/T, reasoning/execution/transition or 0/1/2);
/// steps not listed are -1 (unknown), prompt positions always -1.
public enum ThoughtLabeler {
    /// Parses the CSV text (LF or CRLF lines; a byte-order mark is dropped by `TextFile`);
    /// errors name the file and line. Refused: a step listed twice (which label was meant?) and
    /// a file with no label rows (it would silently set every step to unknown).
    public static func parse(_ text: String, file: String, decodeSteps: Int) throws -> [Int8] {
        var labels = [Int8](repeating: -1, count: decodeSteps)
        var firstLine = [Int: Int]()  // step -> the line that labelled it
        var sawRow = false
        let names: [String: Int8] = [
            "r": 0, "reasoning": 0, "0": 0, "e": 1, "execution": 1, "1": 1, "t": 2, "transition": 2, "2": 2
        ]
        for (n, raw) in TextFile.lines(text).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            // A header may come first (after comments and blank lines).
            if !sawRow, fields.first?.lowercased() == "step" {
                sawRow = true
                continue
            }
            sawRow = true
            guard fields.count == 2, let step = Int(fields[0]) else {
                throw CSVError("\(file): line \(n + 1): expected 'step,type', got '\(Format.excerpt(line))'")
            }
            guard (0..<decodeSteps).contains(step) else {
                throw CSVError("\(file): line \(n + 1): step \(step) is not a decode step (0...\(decodeSteps - 1))")
            }
            guard let type = names[fields[1].lowercased()] else {
                throw CSVError(
                    "\(file): line \(n + 1): type '\(Format.excerpt(fields[1]))' is not R, E, T (reasoning, "
                        + "execution, transition)"
                )
            }
            if let earlier = firstLine[step] {
                throw CSVError(
                    "\(file): line \(n + 1): step \(step) is already labelled on line \(earlier); list each step once")
            }
            firstLine[step] = n + 1
            labels[step] = type
        }
        guard !firstLine.isEmpty else {
            throw CSVError("\(file): no label rows ('step,type'); an empty file would set every step to unknown")
        }
        return labels
    }

    /// Replaces (or creates) `/tokens/thought` of the trace at `path` with the prompt at -1 and
    /// `decodeLabels` after it. The file is otherwise unchanged.
    ///
    /// The trace is never written in place: a full disk or a kill in the middle of an HDF5 write
    /// leaves a file the library cannot open again (and a superblock-v3 file marked "open for
    /// write"). Instead the labels go into a copy, a hidden temporary beside the trace, which is
    /// closed (its result checked), synced and renamed over the trace, and the directory synced.
    /// A failure or kill at any point leaves the trace as it was (old labels) or replaced whole
    /// (new labels); a failure removes the temporary, a kill can leave it (`.NAME.label-PID.tmp`).
    public static func write(_ decodeLabels: [Int8], to path: String) throws {
        // The reader (and its read-only handle) is gone before the copy is made.
        let header = try { try TraceReader(path: path).header }()
        precondition(decodeLabels.count == header.generatedLength, "one label per decode step")
        let all = [Int8](repeating: -1, count: header.promptLength) + decodeLabels

        // A link is followed: the file it names gets the labels, the link stays a link.
        let target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        let directory = URL(fileURLWithPath: target).deletingLastPathComponent().path
        var info = stat()
        guard stat(target, &info) == 0 else {
            throw TraceError(file: path, "cannot be read (\(String(cString: strerror(errno))))")
        }
        guard access(target, W_OK) == 0 else {
            throw TraceError(file: path, "not writable (permission denied); labels are written into the trace")
        }
        try checkFreeSpace(in: directory, for: Int64(info.st_size) + Int64(all.count) + (1 << 20), trace: path)

        let temporary = directory + "/." + URL(fileURLWithPath: target).lastPathComponent + ".label-\(getpid()).tmp"
        do {
            try copyFile(
                target, to: temporary, owner: (info.st_uid, info.st_gid), mode: info.st_mode & 0o7777, trace: path)
            try writeLabels(all, into: temporary, trace: path)
            try syncFile(temporary, trace: path)
            guard rename(temporary, target) == 0 else {
                throw TraceError(
                    file: path, "cannot replace it with the labelled copy (\(String(cString: strerror(errno))))")
            }
        } catch {
            unlink(temporary)
            throw error
        }
        // The rename is durable once the directory is synced; failing that the labels are
        // written already, so it is not an error.
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            _ = fsync(directoryFD)
            close(directoryFD)
        }
    }

    private static func checkFreeSpace(in directory: String, for bytes: Int64, trace: String) throws {
        var fs = statvfs()
        guard statvfs(directory, &fs) == 0 else { return }  // unknown: the writes themselves are checked
        let free = Int64(fs.f_bavail) * Int64(fs.f_frsize)
        if free < bytes {
            throw TraceError(
                file: trace,
                "not enough free space in \(directory) for the labelled copy (needs \(Format.bytes(Double(bytes))), "
                    + "\(Format.bytes(Double(free))) free)"
            )
        }
    }

    /// Copies `source` to a new file `destination` (created exclusively, with `mode`, and the
    /// owner where this process may set it), every write checked.
    private static func copyFile(
        _ source: String, to destination: String, owner: (uid_t, gid_t), mode: mode_t, trace: String
    ) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw TraceError(file: trace, "cannot be read (\(String(cString: strerror(errno))))") }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard output >= 0 else {
            throw TraceError(
                file: trace, "cannot create the temporary copy \(destination) (\(String(cString: strerror(errno))))")
        }
        defer { close(output) }
        // open() applies the umask; the copy gets the trace's own permissions (and, run as
        // root, its owner; otherwise the copy belongs to whoever labels it).
        _ = fchown(output, owner.0, owner.1)
        _ = fchmod(output, mode)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset: off_t = 0
        while true {
            let got = buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, $0.count, offset) }
            if got < 0 {
                if errno == EINTR { continue }
                throw TraceError(file: trace, "cannot be read (\(String(cString: strerror(errno))))")
            }
            if got == 0 { break }
            var done = 0
            while done < got {
                let wrote = buffer.withUnsafeBytes {
                    pwrite(output, $0.baseAddress! + done, got - done, offset + off_t(done))
                }
                if wrote < 0 {
                    if errno == EINTR { continue }
                    throw TraceError(
                        file: trace,
                        "cannot write the temporary copy \(destination) (\(String(cString: strerror(errno))))")
                }
                done += wrote
            }
            offset += off_t(got)
        }
    }

    /// Replaces `/tokens/thought` in the HDF5 file at `copy`; every close is checked, since the
    /// library writes its metadata when the file closes.
    private static func writeLabels(_ all: [Int8], into copy: String, trace path: String) throws {
        try HDF5.withLibrary {
            let file = H5Fopen(copy, thinkv_H5F_ACC_RDWR(), HDF5.defaultProperties)
            guard file >= 0 else {
                throw TraceError(
                    file: path,
                    "its temporary copy \(copy) cannot be opened for writing (out of disk space, or an I/O error)")
            }
            var failure: TraceError?
            func fail(_ problem: String) {
                if failure == nil { failure = TraceError(file: path, object: "/tokens/thought", problem) }
            }
            if linkExists(file, "/tokens/thought"), H5Ldelete(file, "/tokens/thought", HDF5.defaultProperties) < 0 {
                fail("cannot be replaced")
            }
            if failure == nil {
                var dims = [hsize_t(all.count)]
                let space = H5Screate_simple(1, &dims, nil)
                let dataset =
                    space < 0
                    ? -1
                    : H5Dcreate2(
                        file, "/tokens/thought", thinkv_H5T_STD_I8LE(), space, HDF5.defaultProperties,
                        HDF5.defaultProperties, HDF5.defaultProperties)
                if dataset < 0 {
                    fail("cannot be created")
                } else {
                    let status = all.withUnsafeBufferPointer {
                        H5Dwrite(
                            dataset, thinkv_H5T_NATIVE_INT8(), HDF5.all, HDF5.all, HDF5.defaultProperties,
                            $0.baseAddress)
                    }
                    if status < 0 { fail("write failed") }
                    if H5Dclose(dataset) < 0 { fail("write failed (closing the dataset)") }
                }
                if space >= 0 { H5Sclose(space) }
            }
            // Metadata reaches the disk here: a full disk shows as a failed close.
            if H5Fclose(file) < 0 {
                HDF5Library.closeFailed = true
                fail("write failed (closing the file: out of disk space, or an I/O error)")
            }
            if let failure { throw failure }
        }
    }

    private static func syncFile(_ copy: String, trace: String) throws {
        let fd = open(copy, O_RDONLY | O_CLOEXEC)
        guard fd >= 0, fsync(fd) == 0 else {
            let reason = String(cString: strerror(errno))
            if fd >= 0 { close(fd) }
            throw TraceError(file: trace, "cannot sync the labelled copy (\(reason))")
        }
        close(fd)
    }
}
