import Foundation
import ThinKVSim

#if canImport(Glibc)
import Glibc
#endif

/// `make bench`: replay timing on synthetic traces of two lengths. Each replay runs in its own
/// process so its peak resident memory is measured alone (generation is excluded).
enum BenchCommand: Subcommand {
    static let spec = CommandSpec(
        name: "bench",
        abstract: "benchmark replay speed, attention GFLOP/s against the machine's fp32 peak, and peak memory",
        options: [
            OptionDefinition("tokens", value: "LIST", help: "trace lengths to benchmark", default: "8192,32768"),
            OptionDefinition("prompt", value: "N", help: "prompt length", default: "512"),
            OptionDefinition("q-heads", value: "N", help: "query heads", default: "14"),
            OptionDefinition("kv-heads", value: "N", help: "key/value heads", default: "2"),
            OptionDefinition("head-dim", value: "N", help: "head dimension", default: "128"),
            OptionDefinition("budget", value: "N", help: "budget of the compressing policies", default: "1024"),
            OptionDefinition(
                "policy", value: "LIST", help: "policies replayed together", default: "full,h2o,rkv,thinkv"),
            OptionDefinition(
                "dir", value: "DIR", help: "where generated traces are kept between runs", default: ".build/bench"),
            OptionDefinition("threads", value: "N", help: "worker threads", default: "all cores"),
            OptionDefinition("json", help: "print the measurements as JSON")
        ],
        discussion: "Traces are generated once (thinkv-sim synth, float16, 1 layer, seed 1) and reused.")

    struct Measurement: Encodable {
        let tokens: Int
        let policies: [String]
        let wallSeconds: Double
        let decodeStepsPerSecond: Double
        let timing: ReplayTiming
        let referenceGFLOPS: Double
        let attentionGFLOPS: Double
        let percentOfPeak: Double
        let peakResidentBytes: Int
    }

    static func run(_ arguments: ParsedArguments) throws {
        let lengths = try listValues([arguments.value("tokens") ?? "8192,32768"], option: "tokens").map { item -> Int in
            guard let v = Int(item), v > 0 else {
                throw UsageError("--tokens takes lengths like 8192,32768, got '\(item)'")
            }
            return v
        }
        let prompt = try arguments.int("prompt", default: 512, min: 1)!
        let qHeads = try arguments.int("q-heads", default: 14, min: 1)!
        let kvHeads = try arguments.int("kv-heads", default: 2, min: 1)!
        let headDim = try arguments.int("head-dim", default: 128, min: 1)!
        let budget = try arguments.int("budget", default: 1024, min: 1)!
        let threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        let requested = try listValues([arguments.value("policy") ?? "full,h2o,rkv,thinkv"], option: "policy")
        let policies = requested.filter { PolicyRegistry.type(named: $0) != nil }
        let missing = requested.filter { PolicyRegistry.type(named: $0) == nil }
        guard !policies.isEmpty else {
            throw UsageError("none of the policies \(requested.joined(separator: ",")) exists")
        }
        let directory = arguments.value("dir") ?? ".build/bench"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)

        var machine = MachineInfo.current()
        machine.measurePeak(threads: threads ?? machine.cores)
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path
        var results: [Measurement] = []
        for tokens in lengths {
            guard tokens > prompt else { throw UsageError("--tokens \(tokens) must exceed --prompt \(prompt)") }
            let trace = "\(directory)/synthetic-T\(tokens)-P\(prompt)-H\(qHeads)x\(kvHeads)-D\(headDim).h5"
            // A kept trace is reused only when it reads and carries the thought labels (one left by
            // an older synth may lack them).
            let reusable =
                FileManager.default.fileExists(atPath: trace)
                && ((try? TraceReader(path: trace).hasThoughtLabels) ?? false)
            if !reusable {
                try? FileManager.default.removeItem(atPath: trace)
                printError("bench: generating \(trace)")
                let made = try runChild(
                    executable,
                    [
                        "synth", "-o", trace, "--tokens", "\(tokens)", "--prompt", "\(prompt)",
                        "--layers", "1", "--q-heads", "\(qHeads)", "--kv-heads", "\(kvHeads)",
                        "--head-dim", "\(headDim)", "--dtype", "float16", "--seed", "1"
                    ])
                guard made.status == 0 else { throw PolicyError("bench: synth failed: \(made.errorText)") }
            }
            var replay = ["replay", trace, "--policy", policies.joined(separator: ","), "--json"]
            if policies.contains(where: { $0 != "full" }) { replay += ["--budget", "\(budget)"] }
            // ThinKV's classifier would need calibrated thresholds (and a second full-attention pass
            // to profile sparsity); synth traces carry the thought labels, so use them.
            if policies.contains(where: { $0.hasPrefix("thinkv") }) { replay += ["--thoughts", "labels"] }
            if let threads { replay += ["--threads", "\(threads)"] }
            printError("bench: replaying \(tokens) tokens through \(policies.joined(separator: ", "))")
            let child = try runChild(executable, replay)
            guard child.status == 0 else { throw PolicyError("bench: replay failed: \(child.errorText)") }
            struct TimingOnly: Decodable {
                let timing: ReplayTiming
                let decodeSteps: Int
                enum CodingKeys: String, CodingKey { case timing, decodeSteps = "decode_steps" }
            }
            let report = try JSONDecoder().decode(TimingOnly.self, from: Data(child.output.utf8))
            let t = report.timing
            let attentionSeconds = t.referenceSeconds + t.policySeconds
            let gflops = (t.referenceFLOPs + t.policyFLOPs) / 1e9 / max(attentionSeconds, 1e-9)
            results.append(
                Measurement(
                    tokens: tokens, policies: policies, wallSeconds: child.seconds,
                    decodeStepsPerSecond: Double(report.decodeSteps) / max(child.seconds, 1e-9), timing: t,
                    referenceGFLOPS: t.referenceFLOPs / 1e9 / max(t.referenceSeconds, 1e-9),
                    attentionGFLOPS: gflops, percentOfPeak: 100 * gflops / max(machine.peakGFLOPS, 1e-9),
                    peakResidentBytes: child.maxResidentKiB * 1024))
        }

        // The reference's kernels alone, in the replay's shape (8 steps of one GQA group against
        // every key of the first length, at most 32768 so its buffers stay small): in cache and
        // from memory.
        printError("bench: timing the reference kernels alone on one core")
        let kernels = KernelBenchmark.measure(
            groupSize: qHeads / kvHeads, tokens: min(lengths[0], 32768), headDim: headDim)

        if arguments.flag("json") {
            struct Output: Encodable {
                let machine: MachineInfo; let budget: Int; let results: [Measurement]; let kernels: KernelBenchmark
            }
            print(
                try ReplayReport.encodeJSON(
                    Output(machine: machine, budget: budget, results: results, kernels: kernels)))
            return
        }
        print("machine  \(machine.description)")
        print(
            "shape    prompt \(prompt), 1 layer, \(qHeads) q-heads / \(kvHeads) kv-heads, head dim \(headDim), "
                + "float16; budget \(budget)"
        )
        print(
            "policies \(policies.joined(separator: ", "))"
                + (missing.isEmpty ? "" : " (not available: \(missing.joined(separator: ", ")))"))
        print("")
        let measured = machine.measuredPeakGFLOPS ?? .nan
        var table = TextTable(headers: [
            "tokens", "wall", "steps/s", "reference", "ref GFLOP/s", "ref % peak", "ref % meas",
            "policies", "attention GFLOP", "GFLOP/s", "% peak", "% meas", "peak RSS"
        ])
        for m in results {
            table.add([
                String(m.tokens), String(format: "%.2f s", m.wallSeconds),
                String(format: "%.0f", m.decodeStepsPerSecond),
                String(format: "%.2f s", m.timing.referenceSeconds), String(format: "%.1f", m.referenceGFLOPS),
                String(format: "%.1f", 100 * m.referenceGFLOPS / max(machine.peakGFLOPS, 1e-9)),
                String(format: "%.1f", 100 * m.referenceGFLOPS / measured),
                String(format: "%.2f s", m.timing.policySeconds),
                String(format: "%.1f", (m.timing.referenceFLOPs + m.timing.policyFLOPs) / 1e9),
                String(format: "%.1f", m.attentionGFLOPS), String(format: "%.1f", m.percentOfPeak),
                String(format: "%.1f", 100 * m.attentionGFLOPS / measured),
                Format.bytes(Double(m.peakResidentBytes))
            ])
        }
        print(table.render())
        if results.count >= 2, let a = results.first, let b = results.last, b.tokens > a.tokens {
            let ratio = Double(b.tokens) / Double(a.tokens)
            print("")
            print(
                String(
                    format:
                        "growth %d -> %d tokens (x%.0f): reference time x%.1f (T^2 predicts x%.0f), policy time "
                        + "x%.1f (T x budget predicts x%.0f)",
                    a.tokens, b.tokens, ratio, b.timing.referenceSeconds / max(a.timing.referenceSeconds, 1e-9),
                    ratio * ratio,
                    b.timing.policySeconds / max(a.timing.policySeconds, 1e-9), ratio))
        }
        print("")
        print(
            String(
                format: "kernels  one core, %d query rows x %d keys, head dim %d; FMA loop on one core %.1f GFLOP/s",
                kernels.rows, kernels.tokens, kernels.headDim, kernels.corePeakGFLOPS))
        var kernelTable = TextTable(headers: ["kernel", "in cache GFLOP/s", "% core", "from memory GFLOP/s", "% core"])
        for f in kernels.figures {
            kernelTable.add([
                f.kernel, String(format: "%.1f", f.inCacheGFLOPS),
                String(format: "%.1f", 100 * f.inCacheGFLOPS / kernels.corePeakGFLOPS),
                String(format: "%.1f", f.fromMemoryGFLOPS),
                String(format: "%.1f", 100 * f.fromMemoryGFLOPS / kernels.corePeakGFLOPS)
            ])
        }
        print(kernelTable.render())
        print("")
        print(
            "wall: whole replay process (read, reference, policies, report); GFLOP/s: attention arithmetic (QK and AV,")
        print(
            "reference and policies) over the time spent in it; ref: the full-cache attention kernel alone (QK, "
                + "softmax,"
        )
        print(
            "top-k, AV over every visible position); % peak: of the assumed peak at the nominal clock; % meas: of the")
        print(
            "measured FMA-loop peak (turbo included); peak RSS: the replay process alone. kernels: the reference's "
                + "q.k and"
        )
        print("sum a.v alone, the same call repeated (in cache) or with 64 MiB read before each call (from memory).")
    }

    struct ChildResult {
        let status: Int32
        let output: String
        let errorText: String
        let seconds: Double
        let maxResidentKiB: Int
    }

    /// Runs the tool itself as a child, collecting stdout/stderr through files and the child's
    /// own peak memory through wait4 (Foundation's Process does not report it).
    static func runChild(_ executable: String, _ arguments: [String]) throws -> ChildResult {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("thinkv-bench-\(UUID().uuidString)")
        let outPath = scratch.path + ".out", errPath = scratch.path + ".err"
        defer {
            try? FileManager.default.removeItem(atPath: outPath)
            try? FileManager.default.removeItem(atPath: errPath)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let start = Date()
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard spawned == 0 else { throw PolicyError("bench: cannot start \(executable) (error \(spawned))") }
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        let seconds = Date().timeIntervalSince(start)
        let exitCode: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let output = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let errors = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        return ChildResult(
            status: exitCode, output: output, errorText: errors.trimmingCharacters(in: .whitespacesAndNewlines),
            seconds: seconds, maxResidentKiB: Int(usage.ru_maxrss))
    }
}
