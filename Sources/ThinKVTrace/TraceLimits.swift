import Foundation
import ThinKVSupport

/// Bounds on what a trace or a request may make the tool do, so that a hostile or damaged file
/// (a header claiming 2^31 tokens, a compression bomb, a sparse dataset) is refused before any
/// large allocation or endless read. docs/limits.md lists them and how to raise them.
public enum TraceLimits {
    /// Logical bytes of a dataset over the bytes it stores. Recorded q/k/v compress about 1.1–2×
    /// and attention rows (half zeros, causally) a few times; deflate reaches ~1000× only on
    /// constant data, which is what a bomb is made of. Override: THINKV_MAX_INFLATION.
    public static var maxInflation: Double { environment("THINKV_MAX_INFLATION") ?? 200 }
    /// Bytes of one HDF5 chunk once decompressed (a chunk is read whole, and a row range of it
    /// converted to float32 beside it: 256 MiB keeps a hostile file under 1 GiB; recorded traces
    /// use chunks of a few MiB). Override: THINKV_MAX_CHUNK_MB.
    public static var maxChunkBytes: Double { (environment("THINKV_MAX_CHUNK_MB") ?? 256) * 1_048_576 }
    /// Bytes a replay of one layer may plan to hold per byte of the trace file, above 768 MiB.
    /// Override: THINKV_MAX_PLAN_PER_FILE_BYTE.
    public static var maxPlanPerFileByte: Double { environment("THINKV_MAX_PLAN_PER_FILE_BYTE") ?? 32 }
    /// Share of physical memory a replay may plan to hold. Override: THINKV_MAX_MEMORY_FRACTION.
    public static var maxMemoryFraction: Double { environment("THINKV_MAX_MEMORY_FRACTION") ?? 0.75 }

    /// Command-line bounds.
    public static let maxThreads = 1024
    public static let maxTopK = 1 << 20
    /// k of the top-k recall metric when none is given (replay, serve-policy, sweep configs).
    public static let defaultTopK = 32
    public static let maxBlockSize = 1 << 16

    private static func environment(_ name: String) -> Double? {
        ProcessInfo.processInfo.environment[name].flatMap(Double.init).flatMap { $0 > 0 ? $0 : nil }
    }

    /// The product of `factors`, or nil on overflow.
    public static func product(_ factors: [Int]) -> Int? {
        var total = 1
        for f in factors {
            let (value, overflow) = total.multipliedReportingOverflow(by: f)
            if overflow { return nil }
            total = value
        }
        return total
    }

    /// Bytes a replay of one layer holds at once: keys and values as Float32 (and a policy's
    /// modified copy of each), a chunk of reference logits, per-position bookkeeping. Throws when
    /// that exceeds the memory allowed.
    public static func checkReplayMemory(_ header: TraceHeader, file: String, policies: Int, chunkSteps: Int) throws {
        let T = header.numTokens, D = header.headDim
        let kv = product([T, header.numKVHeads, D, 4]) ?? Int.max
        let logits = product([chunkSteps, header.numQHeads, T, 4, 2]) ?? Int.max
        let bookkeeping = product([T, header.numKVHeads, 16, max(policies, 1)]) ?? Int.max
        let copies = 2 * (1 + min(policies, 4))
        let planned = Double(kv) * Double(copies) + Double(logits) + Double(bookkeeping)
        let allowed = Double(ProcessInfo.processInfo.physicalMemory) * maxMemoryFraction
        // A recorded trace stores every layer's q, k and v (about 1.2–2× compressed), so one
        // layer's plan is at most about 12× the file. A file whose plan is far beyond that holds
        // tensors of (nearly) constant data inflated within maxInflation: 2 MB declaring 2^19
        // tokens. Such a plan is held to 768 MiB, which keeps the run under 1 GiB.
        var fileInfo = stat()
        if stat(file, &fileInfo) == 0 {
            let fileBytes = Double(fileInfo.st_size)
            let bound = max(768 * 1_048_576, maxPlanPerFileByte * fileBytes)
            guard planned <= bound else {
                throw TraceError(
                    file: file,
                    String(
                        format:
                            "a replay of one layer would need about %.1f GiB (num_tokens %d, num_kv_heads %d, "
                            + "head_dim %d), %.0f× the %@ file: its tensors are nearly constant data that "
                            + "compresses far more than recorded activations; THINKV_MAX_PLAN_PER_FILE_BYTE "
                            + "(default %.0f) raises the limit",
                        planned / 1_073_741_824, T, header.numKVHeads, D, planned / max(fileBytes, 1),
                        Format.bytes(fileBytes), maxPlanPerFileByte))
            }
        }
        guard planned <= allowed else {
            throw TraceError(
                file: file,
                String(
                    format:
                        "a replay of one layer would need about %.1f GiB (num_tokens %d, num_kv_heads %d, head_dim "
                        + "%d), more than %.0f %% of this machine's %.1f GiB; replay fewer --steps or raise "
                        + "THINKV_MAX_MEMORY_FRACTION (docs/limits.md)",
                    planned / 1_073_741_824, T, header.numKVHeads, D, maxMemoryFraction * 100,
                    Double(ProcessInfo.processInfo.physicalMemory) / 1_073_741_824))
        }
    }
}
