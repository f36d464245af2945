import CHDF5
import CZlib
import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim
@testable import ThinKVTrace

/// Hostile traces run through the built binary: each must be read with sane numbers or refused
/// in one line, within the time and memory limits of `assertHandled`, leaving the file as it was.
final class HostileTraceTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    /// An fp16 trace with large q·k: the exact logits and the reference's log-sum-exp differ by
    /// float32 rounding, which an uncapped Σ exp(x − lse) turned into mass recall above 1 on the
    /// quantized-key path (kivi, thinkv-tbq). Both paths cap at 1, as docs/metrics.md says.
    func testMassRecallNeverExceedsOneWithLargeLogits() throws {
        let T = 96, P = 16, Hq = 4, Hkv = 2, D = 32
        var layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 31)
        for i in layer.q!.indices { layer.q![i] *= 30 }
        for i in layer.k!.indices { layer.k![i] *= 30 }
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("large-logits.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            layers: [layer], dtype: .float16)
        let before = FileChecksums([path])
        // kivi and thinkv-tbq attend with quantized keys; h2o and snapkv with exact keys.
        for policy in [
            ["kivi", "--k-bits", "4"], ["kivi"], ["thinkv-tbq"], ["h2o", "--budget", "32"],
            ["snapkv", "--budget", "32"]
        ] {
            let outcome = try ChildProcess.thinkv(["replay", path, "--policy"] + policy + ["--json"], in: directory)
            assertHandled(outcome, policy.joined(separator: " "), seconds: 30)
            XCTAssertEqual(outcome.status, 0, outcome.stderr)
            let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as? [String: Any])
            for run in try XCTUnwrap(report["runs"] as? [[String: Any]]) {
                let summary = try XCTUnwrap(run["summary"] as? [String: Any])
                let recall = try XCTUnwrap(summary["mass_recall"] as? [String: Any])
                let max = try XCTUnwrap(recall["max"] as? Double), mean = try XCTUnwrap(recall["mean"] as? Double)
                XCTAssertLessThanOrEqual(max, 1, "\(policy): mass recall max")
                XCTAssertLessThanOrEqual(mean, 1, "\(policy): mass recall mean")
                XCTAssertGreaterThan(mean, 0, "\(policy): mass recall mean")
            }
        }
        XCTAssertEqual(FileChecksums([path]), before, "replay leaves the trace as it was")
    }

    /// A trace with token text (variable-length strings, kept in an HDF5 global heap).
    private func traceWithText(_ name: String) throws -> String {
        let T = 32, P = 8
        let url = directory.appendingPathComponent(name)
        let header = TraceHeader(
            model: "probe-test", numLayers: 1, numQHeads: 2, numKVHeads: 1, headDim: 8,
            promptLength: P, numTokens: T, source: "synthetic", generator: "tests")
        let writer = try TraceWriter(path: url.path, header: header)
        try writer.writeTokens(ids: (0..<T).map { Int32($0) }, text: (0..<T).map { "tok\($0)" }, thought: nil)
        let layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 8, seed: 3)
        try writer.writeTensor(.q, layer: 0, dtype: .float16, layer.q!)
        try writer.writeTensor(.k, layer: 0, dtype: .float16, layer.k!)
        writer.close()
        return url.path
    }

    /// The trace with the free-space object header of its global heap zeroed: an object of
    /// size 0, on which libhdf5 1.10 loops forever while loading the heap.
    private func loopingTrace() throws -> String {
        let path = try traceWithText("looping.h5")
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        func u64(_ at: Int) -> Int { (0..<8).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) } }
        let heap = try XCTUnwrap(Data(bytes).range(of: Data("GCOL".utf8))?.lowerBound, "a global heap")
        let end = heap + u64(heap + 8)
        var object = heap + 16  // signature, version, reserved, collection size
        while object + 16 <= end {
            let index = Int(bytes[object]) | Int(bytes[object + 1]) << 8
            if index == 0 { break }  // the free space
            object += 16 + (u64(object + 8) + 7) / 8 * 8
        }
        XCTAssertLessThan(object + 16, end, "the heap has a free-space object")
        for i in object..<(object + 16) { bytes[i] = 0 }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Processes whose parent is `parent`, from /proc (Linux).
    private func children(of parent: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return false }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == parent
        }
    }

    /// Running, not gone and not a zombie (an orphan's zombie waits for init, which may be slow
    /// in a container; it uses no CPU).
    private func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return state != "Z" && state != "X"
    }

    /// A file that loops the HDF5 library is refused within seconds (it took the 60 s timeout).
    func testLoopingMetadataIsRefusedInSeconds() throws {
        let path = try loopingTrace()
        let before = FileChecksums([path])
        for arguments in [["validate", path], ["replay", path, "--steps", "2"]] {
            let outcome = try ChildProcess.thinkv(arguments, in: directory, seconds: 30)
            assertHandled(outcome, "looping heap \(arguments[0])", seconds: 10)
            XCTAssertEqual(outcome.status, 1)
            XCTAssertTrue(outcome.stderr.contains("did not finish"), outcome.stderr)
        }
        XCTAssertEqual(FileChecksums([path]), before)
        // The valid trace the looping one was made from passes the same probe.
        let valid = try traceWithText("valid.h5")
        XCTAssertEqual(try ChildProcess.thinkv(["validate", valid], in: directory).status, 0)
    }

    /// kill -9 of the command while its probe loops on that file: the probe dies too (it ran on,
    /// at full CPU, forever).
    func testProbeDiesWithTheKilledCommand() throws {
        #if os(Linux)
        let path = try loopingTrace()
        let binary = try XCTUnwrap(CommandRunner.binary).path
        var pid: pid_t = 0
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let words: [String] = [binary, "validate", path]
        let argv = words.map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        XCTAssertEqual(posix_spawn(&pid, binary, &actions, nil, argv, environ), 0)
        // Wait for the probe to start (it then loops until its timeout).
        var probes: [pid_t] = []
        let start = Date()
        while probes.isEmpty && Date().timeIntervalSince(start) < 4 {
            usleep(10_000)
            probes = children(of: pid)
        }
        XCTAssertFalse(probes.isEmpty, "the command forked its probe")
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let killed = Date()
        while probes.contains(where: isRunning) && Date().timeIntervalSince(killed) < 2 { usleep(10_000) }
        let survivors = probes.filter(isRunning)
        XCTAssertEqual(survivors, [], "the probe outlived its killed parent")
        for survivor in survivors { kill(survivor, SIGKILL) }
        #else
        throw XCTSkip("reads /proc (Linux)")
        #endif
    }

    /// A zlib stream of `count` zero bytes (a multiple of 1 MiB), about 1/1000 of that. Each MiB
    /// is compressed after a full flush, so every MiB after the first gives the same bytes:
    /// two are compressed and the second repeated; the Adler-32 of n zeros is (n mod 65521)·2^16 + 1.
    private func zerosStream(count: Int) throws -> [UInt8] {
        let piece = 1 << 20
        precondition(count % piece == 0 && count >= 2 * piece)
        var stream = z_stream()
        XCTAssertEqual(deflateInit_(&stream, 9, zlibVersion(), Int32(MemoryLayout<z_stream>.size)), Z_OK)
        defer { deflateEnd(&stream) }
        var zeros = [UInt8](repeating: 0, count: piece)
        var out = [UInt8](repeating: 0, count: 1 << 16)
        func step(_ input: Int, _ flush: Int32) -> [UInt8] {
            var produced: [UInt8] = []
            zeros.withUnsafeMutableBufferPointer { z in
                stream.next_in = z.baseAddress
                stream.avail_in = UInt32(input)
                repeat {
                    out.withUnsafeMutableBufferPointer { o in
                        stream.next_out = o.baseAddress
                        stream.avail_out = UInt32(o.count)
                        _ = deflate(&stream, flush)
                        produced += o.prefix(o.count - Int(stream.avail_out))
                    }
                } while stream.avail_out == 0 || stream.avail_in > 0
            }
            return produced
        }
        let first = step(piece, Z_FULL_FLUSH), second = step(piece, Z_FULL_FLUSH), third = step(piece, Z_FULL_FLUSH)
        XCTAssertEqual(second, third, "a full flush makes each MiB of zeros compress alike")
        var result = first
        for _ in 1..<(count / piece) { result += second }
        let end = step(0, Z_FINISH)  // the last, empty block, then the Adler-32 of what zlib saw
        result += end.dropLast(4)
        let adler = UInt32(count % 65521) << 16 | 1
        result += [UInt8(adler >> 24), UInt8(adler >> 16 & 0xff), UInt8(adler >> 8 & 0xff), UInt8(adler & 0xff)]
        return result
    }

    /// A 2 MB trace whose /layers/0/k declares one 2 KB chunk but stores a deflate stream of
    /// 2 GiB of zeros (written raw with H5Dwrite_chunk). Its declared size is tiny and its stored
    /// size larger, so neither the inflation ratio nor the chunk size limit saw it; the library's
    /// deflate inflated all 2 GiB (validate, inspect and replay exit 0 at 2080 MiB). Refused now
    /// when the chunk inflates past its declared size, under 1 GiB.
    func testChunkInflatingBeyondItsDeclaredSizeIsRefused() throws {
        let T = 64, D = 8
        let layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: D, seed: 9)
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("chunk-bomb.h5"), T: T, P: 8, Hq: 2, Hkv: 1, D: D,
            layers: [TestTraces.Layer(index: 0, q: layer.q, k: nil, v: nil)])
        let bomb = try zerosStream(count: 2 << 30)
        HDF5.withLibrary {
            let file = H5Fopen(path, thinkv_H5F_ACC_RDWR(), thinkv_H5P_DEFAULT())
            XCTAssertGreaterThanOrEqual(file, 0)
            defer { H5Fclose(file) }
            var dims: [hsize_t] = [hsize_t(T), 1, hsize_t(D)]
            let space = H5Screate_simple(3, &dims, nil)
            defer { H5Sclose(space) }
            let create = H5Pcreate(thinkv_H5P_DATASET_CREATE())
            defer { H5Pclose(create) }
            H5Pset_chunk(create, 3, &dims)
            H5Pset_deflate(create, 9)
            let dataset = H5Dcreate2(
                file, "/layers/0/k", thinkv_H5T_IEEE_F32LE(), space, thinkv_H5P_DEFAULT(), create, thinkv_H5P_DEFAULT())
            XCTAssertGreaterThanOrEqual(dataset, 0)
            defer { H5Dclose(dataset) }
            var offset: [hsize_t] = [0, 0, 0]
            let status = bomb.withUnsafeBytes {
                H5Dwrite_chunk(dataset, thinkv_H5P_DEFAULT(), 0, &offset, $0.count, $0.baseAddress)
            }
            XCTAssertGreaterThanOrEqual(status, 0, "raw chunk written")
        }
        let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        XCTAssertLessThan(size, 3 << 20, "a file of about 2 MB")
        let before = FileChecksums([path])
        for arguments in [["validate", path], ["inspect", path], ["replay", path, "--steps", "4"]] {
            let outcome = try ChildProcess.thinkv(arguments, in: directory, seconds: 60)
            assertHandled(outcome, "chunk bomb \(arguments[0])")
            XCTAssertEqual(outcome.status, 1, "\(arguments[0]) refuses it")
            XCTAssertTrue(outcome.stderr.contains("inflates to more than"), outcome.stderr)
            XCTAssertLessThan(outcome.maxRSSKiB, 256 << 10, "\(arguments[0]): \(outcome.maxRSSKiB / 1024) MiB")
        }
        XCTAssertEqual(FileChecksums([path]), before)
    }

    /// A 6 MB file of nearly constant tensors, inside the inflation limit, that declares 2^18
    /// tokens: a replay of four policies would plan 1.3 GiB. Refused before loading, by a
    /// bound tied to the file's size (a recorded trace plans at most about 12× its file).
    func testSmallFileDeclaringAHugeReplayIsRefused() throws {
        let T = 1 << 18, D = 128
        let path = directory.appendingPathComponent("constant.h5").path
        HDF5.withLibrary {
            let file = H5Fcreate(path, thinkv_H5F_ACC_TRUNC(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT())
            XCTAssertGreaterThanOrEqual(file, 0)
            defer { H5Fclose(file) }
            let type = H5Tcopy(thinkv_H5T_C_S1())
            H5Tset_size(type, 12)
            let scalar = H5Screate(H5S_SCALAR)
            for (name, value) in [("format", "thinkv-trace"), ("model", "constant")] {
                let attribute = H5Acreate2(file, name, type, scalar, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT())
                var bytes = Array(value.utf8) + [UInt8](repeating: 0, count: 12 - value.utf8.count)
                H5Awrite(attribute, type, &bytes)
                H5Aclose(attribute)
            }
            H5Sclose(scalar)
            H5Tclose(type)
            for (name, value) in [
                ("version", 1), ("num_layers", 1), ("num_q_heads", 1), ("num_kv_heads", 1), ("head_dim", Int32(D)),
                ("prompt_len", 16), ("num_tokens", Int32(T))
            ] as [(String, Int32)] {
                HDF5Editor.writeInt32Attribute(file, name, value)
            }
            for group in ["/tokens", "/layers", "/layers/0"] {
                H5Gclose(H5Gcreate2(file, group, thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT()))
            }
            func dataset(_ name: String, _ shape: [Int], _ fileType: hid_t, _ memoryType: hid_t, _ bytes: [UInt8]) {
                var dims = shape.map { hsize_t($0) }
                let space = H5Screate_simple(Int32(dims.count), &dims, nil)
                let create = H5Pcreate(thinkv_H5P_DATASET_CREATE())
                var chunk = dims
                chunk[0] = 4096
                H5Pset_chunk(create, Int32(chunk.count), &chunk)
                H5Pset_deflate(create, 1)
                let id = H5Dcreate2(file, name, fileType, space, thinkv_H5P_DEFAULT(), create, thinkv_H5P_DEFAULT())
                _ = bytes.withUnsafeBytes {
                    H5Dwrite(id, memoryType, thinkv_H5S_ALL(), thinkv_H5S_ALL(), thinkv_H5P_DEFAULT(), $0.baseAddress)
                }
                H5Dclose(id)
                H5Pclose(create)
                H5Sclose(space)
            }
            dataset(
                "/tokens/ids", [T], thinkv_H5T_STD_I32LE(), thinkv_H5T_NATIVE_INT32(),
                (0..<T).map { Int32(truncatingIfNeeded: $0 &* 2_654_435_761) }.withUnsafeBytes { Array($0) })
            // About one value in 150 random, the rest 0: compressed far more than activations,
            // but inside the 200× inflation limit.
            var random = SplitMix64(seed: 77)
            var values = [Float](repeating: 0, count: T * D)
            for _ in 0..<(values.count / 150) {
                values[Int(random.next() % UInt64(values.count))] = random.nextGaussian()
            }
            for name in ["q", "k", "v"] {
                dataset(
                    "/layers/0/\(name)", [T, 1, D], thinkv_H5T_IEEE_F32LE(), thinkv_H5T_NATIVE_FLOAT(),
                    values.withUnsafeBytes { Array($0) })
            }
        }
        let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        XCTAssertLessThan(size, 8 << 20, "a small file")
        let before = FileChecksums([path])
        // Four policies: K and V as float32 and each policy's copies, about 1.3 GiB planned.
        let replay = try ChildProcess.thinkv(
            ["replay", path, "--policy", "full,h2o,snapkv,streaming", "--budget", "64", "--steps", "2"],
            in: directory)
        assertHandled(replay, "constant tensors replay")
        XCTAssertEqual(replay.status, 1)
        XCTAssertTrue(replay.stderr.contains("THINKV_MAX_PLAN_PER_FILE_BYTE"), replay.stderr)
        XCTAssertEqual(FileChecksums([path]), before)
    }

    /// '--' ends the options: a trace named like an option is a path, for every command that
    /// reads one (the Python package relies on it), and --progress after '--' is a path too.
    func testDoubleDashEndsOptions() throws {
        let valid = try traceWithText("valid.h5")
        for name in ["-x.h5", "--progress", "--help"] {
            let path = directory.appendingPathComponent(name).path
            try FileManager.default.copyItem(atPath: valid, toPath: path)
            let before = FileChecksums([path])
            let process = try ChildProcess.run(
                try XCTUnwrap(CommandRunner.binary).path, ["validate", "--", name], in: directory,
                seconds: 30, workingDirectory: directory.path)
            assertHandled(process, "validate -- \(name)")
            XCTAssertEqual(process.status, 0, "\(name): \(process.stderr)")
            XCTAssertTrue(process.stdout.hasPrefix("\(name): ok"), process.stdout)
            XCTAssertEqual(FileChecksums([path]), before)
        }
        let missing = try ChildProcess.run(
            try XCTUnwrap(CommandRunner.binary).path, ["replay", "--", "--version"], in: directory,
            seconds: 30, workingDirectory: directory.path)
        assertHandled(missing, "replay -- --version")
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("--version: no such file"), missing.stderr)
    }
}
