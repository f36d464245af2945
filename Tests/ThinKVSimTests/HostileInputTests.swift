import CHDF5
import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Hostile inputs and output faults, each run through the real binary in a child process:
/// every case must end with exit 0, or with an exit status in 1...123 and one line on stderr
/// naming the problem; never a signal (crash), a hang, or a large allocation. Seeds are fixed,
/// so every run tries the same files.
final class HostileInputTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    struct Outcome {
        var status: Int32
        var crashed: Bool
        var timedOut: Bool
        var stderr: String
        var maxRSSKiB: Int
    }

    /// Runs the CLI with a time limit; reports a signal death separately from an exit status.
    private func run(_ arguments: [String], stdout: FileHandle? = nil, seconds: Double = 60) throws -> Outcome {
        let binary = try XCTUnwrap(CommandRunner.binary, "thinkv-sim not built")
        let errURL = directory.appendingPathComponent("stderr-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let err = try FileHandle(forWritingTo: errURL)
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        process.standardOutput = stdout ?? FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = err
        try process.run()
        let deadline = Date().addingTimeInterval(seconds)
        var timedOut = false
        while process.isRunning {
            if Date() > deadline {
                timedOut = true
                process.terminate()
                break
            }
            usleep(5_000)
        }
        process.waitUntilExit()
        try err.close()
        var usage = rusage()
        getrusage(RUSAGE_CHILDREN.rawValue, &usage)
        return Outcome(
            status: process.terminationStatus, crashed: process.terminationReason == .uncaughtSignal,
            timedOut: timedOut, stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self),
            maxRSSKiB: usage.ru_maxrss)
    }

    /// Exit 0, or exit 1...123 with one line (plus, for usage errors, the help pointer).
    private func assertHandled(_ outcome: Outcome, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(
            outcome.crashed, "\(what): killed by a signal: \(outcome.stderr.suffix(300))", file: file, line: line)
        XCTAssertFalse(outcome.timedOut, "\(what): did not finish", file: file, line: line)
        guard outcome.status != 0 else { return }
        XCTAssertTrue((1...123).contains(outcome.status), "\(what): exit \(outcome.status)", file: file, line: line)
        let lines = outcome.stderr.split(separator: "\n").filter { !$0.hasPrefix("Run '") && !$0.hasPrefix("note:") }
        XCTAssertEqual(
            lines.count, 1, "\(what): one line on stderr: \(outcome.stderr.prefix(400))", file: file, line: line)
        XCTAssertTrue(
            lines.first?.hasPrefix("thinkv-sim ") == true, "\(what): \(outcome.stderr.prefix(200))", file: file,
            line: line)
    }

    /// A small valid trace with every optional dataset, token text included.
    private func validTrace() throws -> Data {
        let T = 48, P = 8, Hq = 2, Hkv = 1, D = 8
        let url = directory.appendingPathComponent("valid.h5")
        let header = TraceHeader(
            model: "hostile-test", numLayers: 2, numQHeads: Hq, numKVHeads: Hkv, headDim: D,
            promptLength: P, numTokens: T, source: "synthetic", generator: "tests")
        let writer = try TraceWriter(path: url.path, header: header)
        try writer.writeTokens(
            ids: (0..<T).map { Int32($0) }, text: (0..<T).map { "tok\($0) text" },
            thought: Array(repeating: -1, count: P) + (P..<T).map { Int8($0 % 3) })
        for index in 0..<2 {
            let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 7 + UInt64(index), index: index)
            try writer.writeTensor(.q, layer: index, dtype: .float16, layer.q!)
            try writer.writeTensor(.k, layer: index, dtype: .float16, layer.k!)
            try writer.writeTensor(.v, layer: index, dtype: .float16, layer.v!)
        }
        writer.close()
        return try Data(contentsOf: url)
    }

    /// Bit flips (anywhere, and in the first 4 KiB where the metadata sits) and truncations.
    func testDamagedFilesAreRefusedOrReadNeverCrash() throws {
        let valid = try validTrace()
        var random = SeededRandom(seed: 2026)
        var refused = 0
        for n in 0..<36 {
            var bytes = [UInt8](valid)
            switch n % 3 {
            case 0:
                for _ in 0..<(1 + n % 6) {
                    bytes[random.integer(below: bytes.count)] ^= UInt8(1 << random.integer(below: 8))
                }
            case 1:
                for _ in 0..<(1 + n % 4) {
                    bytes[random.integer(below: min(4096, bytes.count))] ^= UInt8(1 << random.integer(below: 8))
                }
            default:
                bytes = Array(bytes.prefix(random.integer(below: bytes.count)))
            }
            let path = directory.appendingPathComponent("damaged-\(n).h5").path
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            for arguments in [["validate", path], ["replay", path, "--policy", "h2o", "--budget", "16", "--steps", "8"]]
            {
                let outcome = try run(arguments)
                assertHandled(outcome, "case \(n) \(arguments[0])")
                if outcome.status != 0 { refused += 1 }
            }
        }
        XCTAssertGreaterThan(refused, 20, "most damaged files are refused")
    }

    /// Headers that lie about sizes: 2^31 − 1 tokens over a few KB of file, a sparse dataset,
    /// a deflated chunk that would inflate far beyond the file. Refused before any allocation.
    func testSizeLiesAndCompressionBombsAreRefusedWithoutAllocating() throws {
        // A dataset declaring 2^20 tokens whose chunks are never written (the file stays small).
        let sparse = directory.appendingPathComponent("sparse.h5").path
        try writeTrace(sparse, T: 1 << 20, writeData: false, compressed: false)
        // A deflated all-zero dataset: 256 MB of keys in a few hundred KB.
        let bomb = directory.appendingPathComponent("bomb.h5").path
        try writeTrace(bomb, T: 1 << 20, writeData: true, compressed: true)
        for (path, mentions) in [(sparse, "stores none"), (bomb, "larger")] {
            for arguments in [["validate", path], ["replay", path, "--steps", "4"], ["inspect", path]] {
                let outcome = try run(arguments)
                assertHandled(outcome, "\(path) \(arguments[0])")
                XCTAssertEqual(outcome.status, 1)
                XCTAssertTrue(outcome.stderr.contains(mentions), outcome.stderr)
            }
        }
        // The attribute itself may claim up to 2^31 − 1 tokens; the datasets then disagree.
        let path = directory.appendingPathComponent("claims.h5").path
        try Data(validTrace()).write(to: URL(fileURLWithPath: path))
        try HDF5Editor.edit(path) { try $0.setAttribute("num_tokens", .int32(Int32.max)) }
        let outcome = try run(["replay", path])
        assertHandled(outcome, "num_tokens 2^31-1")
        XCTAssertEqual(outcome.status, 1)
        XCTAssertLessThan(outcome.maxRSSKiB, 1 << 20, "under 1 GiB")
    }

    /// T tokens of 1 q / 1 kv head of width 8, keys and queries either never written (sparse) or
    /// all zero and deflated.
    private func writeTrace(_ path: String, T: Int, writeData: Bool, compressed: Bool) throws {
        let file = H5Fcreate(path, thinkv_H5F_ACC_TRUNC(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT())
        XCTAssertGreaterThanOrEqual(file, 0)
        defer { H5Fclose(file) }
        HDF5Editor.writeTextAttribute(file, "format", "thinkv-trace")
        HDF5Editor.writeTextAttribute(file, "model", "hostile")
        for (name, value) in [
            ("version", 1), ("num_layers", 1), ("num_q_heads", 1), ("num_kv_heads", 1), ("head_dim", 8),
            ("prompt_len", 4), ("num_tokens", Int32(T))
        ] as [(String, Int32)] {
            HDF5Editor.writeInt32Attribute(file, name, value)
        }
        func dataset(_ name: String, _ shape: [Int], _ type: hid_t) {
            var dims = shape.map { hsize_t($0) }
            let space = H5Screate_simple(Int32(dims.count), &dims, nil)
            let plist = H5Pcreate(thinkv_H5P_DATASET_CREATE())
            var chunk = dims
            chunk[0] = hsize_t(min(shape[0], 1 << 16))
            H5Pset_chunk(plist, Int32(chunk.count), &chunk)
            if compressed { H5Pset_deflate(plist, 9) }
            let id = H5Dcreate2(file, name, type, space, thinkv_H5P_DEFAULT(), plist, thinkv_H5P_DEFAULT())
            if writeData {
                let count = shape.reduce(1, *)
                var zeros = [UInt8](repeating: 0, count: count * Int(H5Tget_size(type)))
                H5Dwrite(id, type, thinkv_H5S_ALL(), thinkv_H5S_ALL(), thinkv_H5P_DEFAULT(), &zeros)
            }
            H5Dclose(id)
            H5Pclose(plist)
            H5Sclose(space)
        }
        H5Gclose(H5Gcreate2(file, "/tokens", thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT()))
        H5Gclose(H5Gcreate2(file, "/layers", thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT()))
        H5Gclose(H5Gcreate2(file, "/layers/0", thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT(), thinkv_H5P_DEFAULT()))
        dataset("/tokens/ids", [T], thinkv_H5T_STD_I32LE())
        dataset("/layers/0/q", [T, 1, 8], thinkv_H5T_IEEE_F32LE())
        dataset("/layers/0/k", [T, 1, 8], thinkv_H5T_IEEE_F32LE())
    }

    /// Non-finite data and logits that overflow float32 name where they are.
    func testNonFiniteValuesAndOverflowingLogitsAreRefused() throws {
        let T = 24
        var layer = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 8, seed: 4)
        // Finite values (about 1e20), but q·k (about 1e40) overflows float32.
        for i in layer.q!.indices { layer.q![i] *= 1e20 }
        for i in layer.k!.indices { layer.k![i] *= 1e20 }
        let overflow = try TestTraces.write(
            to: directory.appendingPathComponent("overflow.h5"), T: T, P: 4, Hq: 2, Hkv: 1, D: 8,
            layers: [layer])
        let outcome = try run(["replay", overflow])
        assertHandled(outcome, "overflowing logits")
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(outcome.stderr.contains("overflow float32 at decode step"), outcome.stderr)

        let nan = directory.appendingPathComponent("nan.h5").path
        try Data(validTrace()).write(to: URL(fileURLWithPath: nan))
        try HDF5Editor.edit(nan) { try $0.patch("/layers/1/k", element: 77, with: .nan) }
        for arguments in [["validate", nan], ["replay", nan]] {
            let o = try run(arguments)
            assertHandled(o, "NaN \(arguments[0])")
            XCTAssertEqual(o.status, 1)
            XCTAssertTrue(o.stderr.contains("NaN"), o.stderr)
        }
    }

    /// Inputs that are not files, and outputs that cannot be written.
    func testFIFOsDevicesAndFullDisks() throws {
        let valid = directory.appendingPathComponent("ok.h5").path
        try Data(validTrace()).write(to: URL(fileURLWithPath: valid))
        let fifo = directory.appendingPathComponent("fifo").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let fromFIFO = try run(["replay", fifo], seconds: 20)
        assertHandled(fromFIFO, "FIFO as the trace")
        XCTAssertTrue(fromFIFO.stderr.contains("FIFO"), fromFIFO.stderr)
        for device in ["/dev/null", "/dev/zero"] {
            let o = try run(["validate", device], seconds: 20)
            assertHandled(o, device)
            XCTAssertEqual(o.status, 1)
        }

        // The report to a full device is an error, not a silent loss.
        let full = try run(["replay", valid, "--steps", "4"], stdout: FileHandle(forWritingAtPath: "/dev/full"))
        assertHandled(full, "stdout on /dev/full")
        XCTAssertEqual(full.status, 1)
        XCTAssertTrue(full.stderr.contains("No space left"), full.stderr)
        let kept = try run([
            "replay", valid, "--policy", "h2o", "--budget", "12", "--steps", "20", "--kept", "/dev/full"
        ])
        XCTAssertEqual(kept.status, 1)
        XCTAssertTrue(kept.stderr.contains("/dev/full"), kept.stderr)

        // A device named as an output is written through, never replaced by a file.
        let toNull = try run(["replay", valid, "--steps", "4", "--csv", "/dev/null"])
        XCTAssertEqual(toNull.status, 0, toNull.stderr)
        XCTAssertEqual(OutputFile.fileKind("/dev/null"), S_IFCHR, "/dev/null is still a device")
        // A directory or a missing directory as the output fails before the work.
        for output in [directory.path, directory.appendingPathComponent("missing/steps.csv").path] {
            let o = try run(["replay", valid, "--csv", output])
            assertHandled(o, "--csv \(output)")
            XCTAssertEqual(o.status, 2)
        }
        // What was there before a failed run is kept.
        let previous = directory.appendingPathComponent("previous.csv")
        try Data("kept\n".utf8).write(to: previous)
        let failed = try run([
            "replay", valid, "--policy", "h2o", "--budget", "12", "--steps", "20", "--csv", previous.path,
            "--kept", "/dev/full"
        ])
        XCTAssertEqual(failed.status, 1)
        XCTAssertEqual(try String(contentsOf: previous, encoding: .utf8), "kept\n")
    }

    /// Requests that would make the tool do unbounded work are refused in one line.
    func testUnboundedRequestsAreRefused() throws {
        let valid = directory.appendingPathComponent("ok.h5").path
        try Data(validTrace()).write(to: URL(fileURLWithPath: valid))
        for arguments in [
            ["replay", valid, "--topk", "2147483648"], ["replay", valid, "--block-size", "9223372036854775807"],
            ["replay", valid, "--threads", "1000000"]
        ] {
            let o = try run(arguments)
            assertHandled(o, arguments.joined(separator: " "))
            XCTAssertEqual(o.status, 2)
        }
        let grid = directory.appendingPathComponent("grid.json")
        let budgets = (1...200).map(String.init).joined(separator: ",")
        try Data(
            """
            {"traces": ["\(valid)"], "policies": ["h2o", "streaming"], "output": "\(directory.path)/g.csv",
             "parameters": {"budget": [\(budgets)], "sinks": [\(budgets)]}}
            """.utf8
        ).write(to: grid)
        let big = try run(["sweep", grid.path])
        assertHandled(big, "huge grid")
        XCTAssertEqual(big.status, 1)
        XCTAssertTrue(big.stderr.contains("max_runs"), big.stderr)
        let duplicate = directory.appendingPathComponent("dup.json")
        try Data(
            """
            {"traces": ["\(valid)"], "policies": ["h2o"], "output": "\(directory.path)/d.csv",
             "parameters": {"budget": [8], "budget": [16]}}
            """.utf8
        ).write(to: duplicate)
        let dup = try run(["sweep", duplicate.path])
        assertHandled(dup, "duplicate key")
        XCTAssertEqual(dup.status, 1)
        XCTAssertTrue(dup.stderr.contains("appears twice"), dup.stderr)
    }

    /// Attribute text with newlines or terminal escape sequences is shown escaped, on one line.
    func testAttributeTextIsEscapedWhenEchoed() throws {
        let path = directory.appendingPathComponent("escapes.h5").path
        try Data(validTrace()).write(to: URL(fileURLWithPath: path))
        try HDF5Editor.edit(path) {
            try $0.setAttribute("model", .string("evil\nmodel\u{1B}[2J"))
            try $0.setAttribute("format", .string("thinkv-trace\u{1B}]0;x"))
        }
        let outcome = try run(["validate", path])
        assertHandled(outcome, "escaped attribute")
        XCTAssertEqual(outcome.status, 1)
        XCTAssertTrue(outcome.stderr.contains("\\e]0;x"), outcome.stderr)
        XCTAssertFalse(outcome.stderr.contains("\u{1B}"), "no raw escape reaches the terminal")
        XCTAssertEqual(Format.printable("a\nb\u{1B}[2J\u{7}"), "a\\nb\\e[2J\\u{7}")
    }

    /// Damaged results CSVs: counts that are not counts are refused; odd metrics are drawn.
    func testPlotSurvivesDamagedCSVs() throws {
        func csv(_ name: String, layers: String, steps: String, budget: String, kl: String) throws -> String {
            let path = directory.appendingPathComponent(name).path
            try Data(
                """
                trace,model,num_layers,decode_steps,policy,label,budget,attention_kl_mean,kv_bytes_mean
                t.h5,m,\(layers),\(steps),h2o,h2o(budget=8),\(budget),\(kl),1000
                t.h5,m,4,100,h2o,h2o(budget=16),16,0.5,2000

                """.utf8
            ).write(to: URL(fileURLWithPath: path))
            return path
        }
        for (n, (layers, steps, budget)) in [
            ("nan", "100", "8"), ("-5", "100", "8"), ("4", "1e300", "8"), ("4", "100", "9223372036854775807")
        ].enumerated() {
            let o = try run([
                "plot", try csv("bad\(n).csv", layers: layers, steps: steps, budget: budget, kl: "0.3"),
                "-o", directory.appendingPathComponent("plots\(n)").path, "--format", "svg"
            ])
            assertHandled(o, "plot case \(n)")
            XCTAssertEqual(o.status, 1)
            XCTAssertTrue(o.stderr.contains("is not a count"), o.stderr)
        }
        for kl in ["nan", "inf", "-1e308", "1e300"] {
            let o = try run([
                "plot", try csv("odd-\(kl).csv", layers: "4", steps: "100", budget: "8", kl: kl),
                "-o", directory.appendingPathComponent("odd-\(kl)").path, "--format", "svg"
            ])
            assertHandled(o, "plot kl \(kl)")
        }
    }

    /// A layer recording attn beside q and k must agree with them: exact rows pass; the same
    /// rows with two query heads swapped (still causal probabilities) are refused.
    func testRecordedAttentionMustMatchQueriesAndKeys() throws {
        let T = 20, P = 4, Hq = 2, D = 8, G = T - P
        var layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: 1, D: D, seed: 12)
        var attn = [Float](repeating: 0, count: G * Hq * T)
        for g in 0..<G {
            let p = P + g
            for h in 0..<Hq {
                var row = (0...p).map { j in
                    (0..<D).reduce(Float(0)) { $0 + layer.q![(p * Hq + h) * D + $1] * layer.k![j * D + $1] }
                        / Float(D).squareRoot()
                }
                let m = row.max()!
                row = row.map { expf($0 - m) }
                let sum = row.reduce(0, +)
                for j in 0...p { attn[(g * Hq + h) * T + j] = row[j] / sum }
            }
        }
        layer.attn = attn
        let good = try TestTraces.write(
            to: directory.appendingPathComponent("agree.h5"), T: T, P: P, Hq: Hq, Hkv: 1, D: D, layers: [layer])
        XCTAssertEqual(try run(["validate", good]).status, 0)
        for g in 0..<G {
            for j in 0..<T { attn.swapAt((g * Hq) * T + j, (g * Hq + 1) * T + j) }
        }
        layer.attn = attn
        let swapped = try TestTraces.write(
            to: directory.appendingPathComponent("swapped.h5"), T: T, P: P, Hq: Hq, Hkv: 1, D: D, layers: [layer])
        for arguments in [["validate", swapped], ["replay", swapped]] {
            let o = try run(arguments)
            assertHandled(o, "swapped heads \(arguments[0])")
            XCTAssertEqual(o.status, 1)
            XCTAssertTrue(o.stderr.contains("q and k give"), o.stderr)
        }
    }

    /// The per-step CSV carries each step's token text when the trace records it.
    func testPerStepCSVCarriesTokenText() throws {
        let valid = directory.appendingPathComponent("text.h5").path
        try Data(validTrace()).write(to: URL(fileURLWithPath: valid))
        let csv = directory.appendingPathComponent("steps.csv").path
        let outcome = try run(["replay", valid, "--steps", "2", "--csv", csv])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        let table = try CSVTable.read(path: csv).table
        let column = try XCTUnwrap(table.index(of: "token_text"))
        XCTAssertEqual(
            table.rows.prefix(2).map { $0[column] }, ["tok8 text", "tok9 text"], "prompt 8: step 0 is position 8")
    }
}
