import CHDF5
import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim
@testable import ThinKVTrace

/// `thinkv-sim label` against hostile label files, full disks and kills, through the built
/// binary: the trace ends with exactly its old labels or exactly the new ones, and stays readable.
final class HostileLabelTests: XCTestCase {
    private var directory: URL!
    private let T = 24, P = 8

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    /// Old labels of the test traces: decode step g is g mod 3.
    private var oldLabels: [Int8] { Array(repeating: -1, count: P) + (0..<(T - P)).map { Int8($0 % 3) } }

    /// A small trace with labels, written through the C API with the given library-version
    /// bounds: the earliest format (superblock v0, what TraceWriter makes) or the latest (v3,
    /// h5py's libver='latest'), whose superblock marks a file open for writing.
    private func writeTrace(_ name: String, latestFormat: Bool) throws -> String {
        let path = directory.appendingPathComponent(name).path
        try HDF5.withLibrary {
            let access = H5Pcreate(thinkv_H5P_FILE_ACCESS())
            defer { H5Pclose(access) }
            if latestFormat {
                XCTAssertGreaterThanOrEqual(H5Pset_libver_bounds(access, H5F_LIBVER_V110, H5F_LIBVER_V110), 0)
            }
            let file = H5Fcreate(path, thinkv_H5F_ACC_TRUNC(), thinkv_H5P_DEFAULT(), access)
            guard file >= 0 else { throw HDF5Editor.Failure(description: "cannot create \(path)") }
            defer { H5Fclose(file) }
            func dataset(_ name: String, _ shape: [Int], fileType: hid_t, memoryType: hid_t, _ bytes: [UInt8]) {
                var dims = shape.map { hsize_t($0) }
                let space = H5Screate_simple(Int32(dims.count), &dims, nil)
                let id = H5Dcreate2(
                    file, name, fileType, space, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT())
                XCTAssertGreaterThanOrEqual(id, 0, name)
                XCTAssertGreaterThanOrEqual(
                    bytes.withUnsafeBytes {
                        H5Dwrite(
                            id, memoryType, thinkv_H5S_ALL(), thinkv_H5S_ALL(), thinkv_H5P_DEFAULT(), $0.baseAddress)
                    }, 0)
                H5Dclose(id)
                H5Sclose(space)
            }
            HDF5Editor.writeTextAttribute(file, "format", "thinkv-trace")
            HDF5Editor.writeTextAttribute(file, "model", "label-test")
            for (name, value) in [
                ("version", 1), ("num_layers", 1), ("num_q_heads", 2), ("num_kv_heads", 1), ("head_dim", 8),
                ("prompt_len", Int32(P)), ("num_tokens", Int32(T))
            ] as [(String, Int32)] {
                HDF5Editor.writeInt32Attribute(file, name, value)
            }
            for group in ["/tokens", "/layers", "/layers/0"] {
                H5Gclose(H5Gcreate2(file, group, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT()))
            }
            let ids = (0..<T).map { Int32($0) }.withUnsafeBytes { Array($0) }
            dataset("/tokens/ids", [T], fileType: thinkv_H5T_STD_I32LE(), memoryType: thinkv_H5T_NATIVE_INT32(), ids)
            dataset(
                "/tokens/thought", [T], fileType: thinkv_H5T_STD_I8LE(), memoryType: thinkv_H5T_NATIVE_INT8(),
                oldLabels.map { UInt8(bitPattern: $0) })
            let layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 8, seed: 5)
            for (name, values, heads) in [("q", layer.q!, 2), ("k", layer.k!, 1), ("v", layer.v!, 1)] {
                dataset(
                    "/layers/0/\(name)", [T, heads, 8], fileType: thinkv_H5T_IEEE_F32LE(),
                    memoryType: thinkv_H5T_NATIVE_FLOAT(),
                    values.withUnsafeBytes { Array($0) })
            }
        }
        // Byte 8, after the signature, is the superblock version.
        let version = try XCTUnwrap(FileManager.default.contents(atPath: path))[8]
        XCTAssertEqual(version, latestFormat ? 3 : 0, "superblock version")
        return path
    }

    private func labels(_ path: String) throws -> [Int8]? {
        try TraceReader(path: path).readThoughtLabels()
    }

    private func write(_ text: String, _ name: String) throws -> String {
        let path = directory.appendingPathComponent(name).path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// CRLF line ends ("\r\n" is one Swift Character: splitting on "\n" once read the whole file
    /// as one line, and with the header skipped every label became unknown) and a UTF-8 BOM.
    func testCRLFAndByteOrderMarkAreRead() throws {
        let rows = (0..<(T - P)).map { "\($0),\(["R", "E", "T"][($0 + 1) % 3])" }
        let expected = Array(repeating: Int8(-1), count: P) + (0..<(T - P)).map { Int8(($0 + 1) % 3) }
        for (name, text) in [
            ("crlf.csv", "step,type\r\n" + rows.joined(separator: "\r\n") + "\r\n"),
            ("bom.csv", "\u{FEFF}step,type\n" + rows.joined(separator: "\n")),
            ("bom-crlf.csv", "\u{FEFF}# exported\r\nstep,type\r\n" + rows.joined(separator: "\r\n") + "\r\n")
        ] {
            let trace = try writeTrace("trace-\(name).h5", latestFormat: false)
            let csv = try write(text, name)
            let outcome = try ChildProcess.thinkv(["label", trace, "--from", csv], in: directory)
            assertHandled(outcome, name)
            XCTAssertEqual(outcome.status, 0, "\(name): \(outcome.stderr)")
            XCTAssertTrue(outcome.stdout.contains("16 of 16 decode steps labelled"), outcome.stdout)
            XCTAssertEqual(try labels(trace), expected, name)
        }
    }

    /// Label files that must be refused, leaving the trace (and the label file) as they were:
    /// duplicates, nothing to label, a 5 MB line (echoed cut short), devices and directories.
    func testBadLabelFilesAreRefusedAndTheTraceKept() throws {
        let trace = try writeTrace("trace.h5", latestFormat: false)
        let hugeLine = "0," + String(repeating: "R", count: 5_000_000) + "\n"
        let cases: [(String, String?, String)] = [
            ("dup.csv", "step,type\n0,R\n1,E\n0,T\n", "step 0 is already labelled on line 2"),
            ("empty.csv", "", "no label rows"),
            ("header-only.csv", "\u{FEFF}step,type\r\n", "no label rows"),
            ("comments.csv", "# nothing yet\n\n", "no label rows"),
            ("huge-line.csv", hugeLine, "is not R, E, T"),
            (
                "huge-step.csv", "step,type\n" + String(repeating: "9", count: 3_000_000) + ",R\n",
                "expected 'step,type'"
            ),
            ("lone-cr.csv", "0,R\r1,E\r", "expected 'step,type'"),
            ("latin1.csv", nil, "not UTF-8"),
            ("/dev/zero", nil, "not a regular file"),
            ("/dev/null", nil, "not a regular file"),
            (directory.path, nil, "not a regular file"),
            ("missing.csv", nil, "cannot be read")
        ]
        for (name, text, message) in cases {
            var csv = name.hasPrefix("/") ? name : directory.appendingPathComponent(name).path
            if let text { csv = try write(text, name) }
            if name == "latin1.csv" { try Data([0x30, 0x2C, 0x52, 0xE9, 0x0A]).write(to: URL(fileURLWithPath: csv)) }
            let before = FileChecksums([trace, csv])
            let outcome = try ChildProcess.thinkv(["label", trace, "--from", csv], in: directory)
            assertHandled(outcome, name)
            XCTAssertEqual(outcome.status, 1, "\(name): \(outcome.stderr)")
            XCTAssertTrue(outcome.stderr.contains(message), "\(name): \(outcome.stderr.prefix(300))")
            XCTAssertFalse(outcome.stderr.contains("\u{FEFF}"), "\(name): no invisible character in the message")
            XCTAssertEqual(FileChecksums([trace, csv]), before, "\(name): trace and label file unchanged")
        }
        XCTAssertEqual(try labels(trace), oldLabels)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter {
            $0.contains(".label-")
        }
        XCTAssertEqual(leftovers, [], "no temporary copy left")
    }

    /// plot reads results CSVs saved with CRLF line ends and a BOM (a spreadsheet's export).
    func testPlotReadsCRLFAndByteOrderMark() throws {
        let csv = try write(
            "\u{FEFF}trace,model,num_layers,decode_steps,policy,label,budget,attention_kl_mean,kv_bytes_mean\r\n"
                + "t.h5,m,4,100,h2o,h2o(budget=8),8,0.3,1000\r\nt.h5,m,4,100,h2o,h2o(budget=16),16,0.5,2000\r\n",
            "results.csv")
        let before = FileChecksums([csv])
        let outcome = try ChildProcess.thinkv(
            ["plot", csv, "-o", directory.appendingPathComponent("plots").path, "--format", "svg"],
            in: directory)
        assertHandled(outcome, "plot CRLF+BOM")
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertEqual(FileChecksums([csv]), before)
    }

    /// A full disk (ENOSPC) or a kill at each write `label` makes, on both superblock versions:
    /// the trace still opens and holds exactly its old labels (or, had the run finished, the
    /// new ones). Before, a full disk crashed in libhdf5 after "written" and left a trace nothing
    /// could open; a kill left a superblock-v3 file "already open for write". Needs strace
    /// (its syscall fault injection), skipped without it.
    func testLabelSurvivesFullDiskOrKillAtEveryWrite() throws {
        guard let strace = ChildProcess.which("strace") else {
            throw XCTSkip("strace is not installed (apt-get install strace)")
        }
        let probe = try ChildProcess.run(
            strace, ["-f", "-qq", "-o", "/dev/null", "/bin/true"], in: directory, seconds: 10)
        guard probe.status == 0 else {
            throw XCTSkip("strace cannot trace here (ptrace not permitted): \(probe.stderr.prefix(200))")
        }
        let binary = try XCTUnwrap(CommandRunner.binary).path
        let newLabels = Array(repeating: Int8(-1), count: P) + Array(repeating: Int8(2), count: T - P)
        let csv = try write(
            "step,type\r\n" + (0..<(T - P)).map { "\($0),T" }.joined(separator: "\r\n") + "\r\n", "new.csv")

        for latest in [false, true] {
            let original = try writeTrace("original-v\(latest ? 3 : 0).h5", latestFormat: latest)
            let trace = directory.appendingPathComponent("trace-v\(latest ? 3 : 0).h5").path
            func fresh() throws {
                try? FileManager.default.removeItem(atPath: trace)
                try FileManager.default.copyItem(atPath: original, toPath: trace)
                XCTAssertEqual(chmod(trace, 0o640), 0)
            }
            try fresh()
            let originalSums = FileChecksums([trace])
            // An unfailed run, counting its writes.
            try fresh()
            let log = directory.appendingPathComponent("writes.log").path
            let counted = try ChildProcess.run(
                strace, ["-f", "-qq", "-o", log, "-e", "trace=pwrite64", binary, "label", trace, "--from", csv],
                in: directory, seconds: 30)
            XCTAssertEqual(counted.status, 0, counted.stderr)
            XCTAssertEqual(try labels(trace), newLabels)
            var info = stat()
            XCTAssertEqual(stat(trace, &info), 0)
            XCTAssertEqual(info.st_mode & 0o777, 0o640, "the trace keeps its permissions")
            let writes = try String(contentsOfFile: log, encoding: .utf8).components(separatedBy: "\n").filter {
                $0.contains("pwrite64(")
            }.count
            XCTAssertGreaterThan(writes, 1, "label writes the trace")
            XCTAssertLessThan(writes, 40, "a small trace keeps the loop short")

            for n in 1...writes {
                for fault in ["error=ENOSPC", "signal=SIGKILL"] {
                    try fresh()
                    let what = "superblock v\(latest ? 3 : 0), \(fault) at write \(n) of \(writes)"
                    let outcome = try ChildProcess.run(
                        strace,
                        [
                            "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64",
                            "-e", "inject=pwrite64:\(fault):when=\(n)",
                            binary, "label", trace, "--from", csv
                        ], in: directory, seconds: 30)
                    XCTAssertFalse(outcome.timedOut, what)
                    if fault == "error=ENOSPC" {
                        assertHandled(outcome, what)
                        XCTAssertEqual(outcome.status, 1, "\(what): \(outcome.stderr)")
                        XCTAssertFalse(outcome.stdout.contains("written"), "\(what): no success reported")
                    } else {
                        XCTAssertEqual(outcome.signal, SIGKILL, "\(what): \(outcome.stderr)")
                    }
                    let validate = try ChildProcess.thinkv(["validate", trace], in: directory)
                    XCTAssertEqual(validate.status, 0, "\(what): the trace no longer opens: \(validate.stderr)")
                    let found = try labels(trace)
                    XCTAssertTrue(
                        found == oldLabels || found == newLabels, "\(what): labels \(String(describing: found))")
                    // Every write goes to the copy and the rename comes after the last: the trace is
                    // byte for byte what it was.
                    XCTAssertEqual(FileChecksums([trace]), originalSums, "\(what): the trace is unchanged")
                    var info = stat()
                    XCTAssertEqual(stat(trace, &info), 0)
                    XCTAssertEqual(info.st_mode & 0o777, 0o640, "\(what): permissions")
                    if fault == "error=ENOSPC" {
                        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter {
                            $0.contains(".label-")
                        }
                        XCTAssertEqual(leftovers, [], "\(what): the temporary copy is removed")
                    }
                    for file in try FileManager.default.contentsOfDirectory(atPath: directory.path)
                    where file.contains(".label-") {
                        try FileManager.default.removeItem(atPath: directory.appendingPathComponent(file).path)
                    }
                }
            }
        }
    }
}
