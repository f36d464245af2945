import Foundation
import ThinKVSim

enum SynthCommand: Subcommand {
    static let spec = CommandSpec(
        name: "synth",
        abstract: "generate a synthetic reasoning trace (seeded; labelled thoughts with distinct attention sparsity)",
        options: [
            OptionDefinition("output", short: "o", value: "FILE", help: "trace file to write (required)"),
            OptionDefinition("tokens", value: "N", help: "positions in the trace, prompt included", default: "2048"),
            OptionDefinition("prompt", value: "N", help: "prompt (prefill) positions", default: "128"),
            OptionDefinition("layers", value: "N", help: "layers, all recorded", default: "4"),
            OptionDefinition("q-heads", value: "N", help: "query heads per layer", default: "8"),
            OptionDefinition(
                "kv-heads", value: "N", help: "key/value heads per layer; divides --q-heads", default: "2"),
            OptionDefinition("head-dim", value: "N", help: "width of one head", default: "64"),
            OptionDefinition(
                "dtype", value: "float16|float32", help: "storage type of q, k, v and attn", default: "float16"),
            OptionDefinition(
                "seed", value: "N", help: "random seed (0 ... 2^63-1); same seed and options, same tensors",
                default: "1"),
            OptionDefinition(
                "segment-scale", value: "X", help: "multiply every thought segment's minimum and mean length",
                default: "1"),
            OptionDefinition(
                "importance", value: "R=x,E=y,T=z[,P=w]",
                help:
                    "importance of old tokens of each type and of the prompt (P): how often later thoughts revisit "
                    + "them, heavy hitters, salience",
                default: "R=1,E=0.6,T=0.15,P=1"),
            OptionDefinition(
                "legacy-anchors",
                help:
                    "anchors at the start of every transition and reasoning thought, revisited uniformly (the old "
                    + "generator)"
            ),
            OptionDefinition(
                "sparsity-growth", value: "X|off",
                help:
                    "how fast target sparsity rises with context length, times the fit to a recorded trace; off (= "
                    + "0): fixed per type",
                default: "1"),
            OptionDefinition(
                "sparsity-reference", value: "N", help: "position at which each type's sparsity equals its mean",
                default: "512"),
            OptionDefinition("no-values", help: "do not write values (v)"),
            OptionDefinition("attn", help: "also write the exact attention rows (G × q-heads × T per layer: large)"),
            OptionDefinition(
                "threads", value: "N", help: "worker threads; the output does not depend on it", default: "all cores"),
            OptionDefinition("force", short: "f", help: "overwrite FILE if it exists")
        ],
        discussion: """
            The trace is a prompt followed by a chain of reasoning (R), execution (E) and transition (T)
            thoughts laid out by a Markov chain; /tokens/thought holds the labels. Each step's query
            temperature is solved so that its head-averaged attention sparsity matches its thought type
            (E lowest, R middle, T highest; layer 0 blends the three), and all three rise with the
            context length at the per-layer rate fitted to a recorded trace. Keys carry attention sinks,
            a recency drift, salient heavy hitters, old tokens that later thoughts revisit (chosen by
            the importance of their type: transitions least, as ThinKV assumes), and near-duplicate
            runs inside execution thoughts. docs/synthetic-traces.md has the details.

            example:
              thinkv-sim synth -o trace.h5 --tokens 2048 --prompt 128 --layers 4 --q-heads 4 --kv-heads 2 \\
                  --head-dim 32 --seed 1
            the generator before importance and growth (the shipped traces/sample-synthetic.h5, 3.5 MB):
              thinkv-sim synth -o traces/sample-synthetic.h5 --tokens 2048 --prompt 128 --layers 4 \\
                  --q-heads 4 --kv-heads 2 --head-dim 32 --dtype float16 --seed 1 \\
                  --legacy-anchors --sparsity-growth off
            """)

    static func run(_ arguments: ParsedArguments) throws {
        guard let output = arguments.value("output") else { throw UsageError("missing --output FILE") }
        // The output first: an existing file is the first thing to say, before any option
        // that would also need changing.
        if OutputFile.linkKind(output) != nil && !arguments.flag("force") {
            throw UsageError("\(output) exists; pass --force to overwrite it")
        }
        if let kind = OutputFile.fileKind(output), kind != S_IFREG {
            throw UsageError("\(output): not a regular file (a trace is written as a file and renamed into place)")
        }
        var config = SyntheticTraceConfig()
        config.tokens = try arguments.int("tokens", default: config.tokens, min: 2)!
        config.promptLength = try arguments.int("prompt", default: config.promptLength, min: 1)!
        config.layers = try arguments.int("layers", default: config.layers, min: 1)!
        config.queryHeads = try arguments.int("q-heads", default: config.queryHeads, min: 1)!
        config.kvHeads = try arguments.int("kv-heads", default: config.kvHeads, min: 1)!
        config.headDim = try arguments.int("head-dim", default: config.headDim, min: 8)!
        config.seed = UInt64(try arguments.int("seed", default: Int(config.seed), min: 0)!)
        config.threads = try arguments.int("threads", min: 1, max: TraceLimits.maxThreads)
        if let raw = arguments.value("dtype") {
            guard let dtype = TraceDType(rawValue: raw) else {
                throw UsageError("--dtype must be float16 or float32, got '\(raw)'")
            }
            config.dtype = dtype
        }
        if let raw = arguments.value("segment-scale") {
            guard let scale = Double(raw), scale > 0, scale.isFinite else {
                throw UsageError("--segment-scale must be a positive number, got '\(raw)'")
            }
            config.thoughts.lengthScale = scale
        }
        if arguments.flag("legacy-anchors") {
            guard arguments.value("importance") == nil else {
                throw UsageError(
                    "--importance and --legacy-anchors exclude each other (legacy anchors ignore importance)")
            }
            config.attention.importance.legacyAnchors = true
        }
        if let raw = arguments.value("importance") { try config.attention.importance.parse(raw) }
        if let raw = arguments.value("sparsity-growth") {
            if raw == "off" {
                config.sparsity.growth.strength = 0
            } else {
                guard let strength = Double(raw), strength >= 0, strength.isFinite else {
                    throw UsageError("--sparsity-growth must be 'off' or a non-negative number, got '\(raw)'")
                }
                config.sparsity.growth.strength = strength
            }
        }
        config.sparsity.growth.referencePosition = try arguments.int(
            "sparsity-reference", default: config.sparsity.growth.referencePosition, min: 0)!
        config.includeValues = !arguments.flag("no-values")
        config.includeAttention = arguments.flag("attn")
        let generator = try SyntheticTraceGenerator(config: config)  // validates the options

        // Written next to the target and renamed into place: a failed or interrupted run never
        // leaves a half-written trace under the requested name.
        // Through a link, the file the link leads to is replaced and the link kept, as for every
        // other output (OutputFile); the lock keeps a second synth off the same file.
        let claim = try OutputClaim([output], protecting: [])
        defer { claim.release() }
        let target = URL(fileURLWithPath: OutputFile.resolvedPath(output))
        let directory = target.deletingLastPathComponent()
        let temporary = directory.appendingPathComponent(
            ".\(target.lastPathComponent).\(ProcessInfo.processInfo.processIdentifier).partial")
        generator.progress = TerminalProgress(label: "synth")
        var summary: SyntheticTraceSummary
        do {
            summary = try generator.write(to: temporary.path)
            // rename(2) replaces an existing file atomically.
            guard rename(temporary.path, target.path) == 0 else {
                throw TraceError(
                    file: output, "cannot move the finished trace into place (\(String(cString: strerror(errno))))")
            }
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw error
        }
        summary.path = output
        print(summary.line)
    }
}
