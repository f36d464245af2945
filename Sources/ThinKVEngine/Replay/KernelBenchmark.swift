import Foundation

/// Times the reference's two kernels alone on one core, in the shape the replay calls them
/// (one block of `rows` query rows, the steps of a step block times a GQA group, against all
/// `tokens` keys of one kv head), twice: with their data in the caches (the same call repeated)
/// and with the caches emptied before each call (a buffer larger than the last-level cache is
/// read in between), as in a replay, where other heads' keys and values, the logits and the
/// policies' caches pass through between two calls over the same keys. The gap between the two
/// is what the kernels lose waiting for memory rather than in their own arithmetic.
public struct KernelBenchmark: Codable, Sendable {
    public struct Figure: Codable, Sendable {
        public let kernel: String
        public let inCacheGFLOPS: Double
        public let fromMemoryGFLOPS: Double
    }

    public let rows: Int
    public let tokens: Int
    public let headDim: Int
    /// A register-only FMA loop on one core (`MachineInfo.measurePeak(threads: 1)`).
    public let corePeakGFLOPS: Double
    public let figures: [Figure]

    /// Bytes read between two timed calls for the "from memory" figures.
    public static let evictionBytes = 64 << 20

    /// - Parameters:
    ///   - groupSize: query heads per kv head; a call has the rows of one step block of them.
    ///   - tokens: keys and values per call (a trace's length, the longest row the replay meets).
    ///   - trials: timed calls per figure; the fastest counts (a shared machine only slows).
    public static func measure(groupSize: Int, tokens: Int, headDim D: Int, trials: Int = 5) -> KernelBenchmark {
        let rows = ReferenceAttention.defaultStepBlock * max(1, groupSize)
        var generator = SeededRandom(seed: 1)
        func random(_ n: Int, _ range: ClosedRange<Float>) -> [Float] {
            (0..<n).map { _ in range.lowerBound + (range.upperBound - range.lowerBound) * Float(generator.uniform()) }
        }
        let queries = random(rows * D, -1...1)
        let keys = random(tokens * D, -1...1)
        let values = random(tokens * D, -1...1)
        let probs = random(rows * tokens, 0...(2 / Float(tokens)))
        let identity = (0..<tokens).map { Int32($0) }
        var panels = [Float](repeating: 0, count: tokens * D)
        keys.withUnsafeBufferPointer { K in
            panels.withUnsafeMutableBufferPointer {
                Kernels.packKeyPanels(keys: K.baseAddress!, count: tokens, headDim: D, into: $0.baseAddress!)
            }
        }
        var logits = [Float](repeating: 0, count: rows * tokens)
        var outputs = [Float](repeating: 0, count: rows * D)
        var eviction = [UInt8](repeating: 1, count: evictionBytes)

        // One write per cache line: the line is read, then owned dirty, pushing the kernels'
        // data out of every cache level.
        func evict() {
            eviction.withUnsafeMutableBufferPointer { buffer in
                var i = 0
                while i < buffer.count { buffer[i] &+= 1; i &+= 64 }
            }
        }
        func best(_ cold: Bool, _ call: () -> Void) -> Double {
            call()  // first touch, page faults
            var fastest = Double.infinity
            for _ in 0..<trials {
                if cold { evict() }
                let start = DispatchTime.now().uptimeNanoseconds
                call()
                fastest = min(fastest, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
            }
            return fastest
        }
        let flops = Double(rows) * Double(tokens) * Double(2 * D)
        let scores = {
            queries.withUnsafeBufferPointer { Q in
                panels.withUnsafeBufferPointer { P in
                    keys.withUnsafeBufferPointer { K in
                        identity.withUnsafeBufferPointer { I in
                            logits.withUnsafeMutableBufferPointer { L in
                                Kernels.scoresPanels(
                                    queries: Q.baseAddress!, rows: rows, headDim: D, panels: P.baseAddress!,
                                    keys: K.baseAddress!,
                                    identity: I.baseAddress!, count: tokens, scale: 1, out: L.baseAddress!,
                                    outStride: tokens)
                            }
                        }
                    }
                }
            }
        }
        let weightedSum = {
            probs.withUnsafeBufferPointer { A in
                values.withUnsafeBufferPointer { V in
                    identity.withUnsafeBufferPointer { I in
                        outputs.withUnsafeMutableBufferPointer { O in
                            Kernels.weightedSum(
                                probs: A.baseAddress!, probStride: tokens, rows: rows, values: V.baseAddress!,
                                indices: I.baseAddress!, count: tokens, headDim: D, out: O.baseAddress!)
                        }
                    }
                }
            }
        }
        var figures: [Figure] = []
        for (name, call) in [("q·k panels", scores), ("Σ a·v", weightedSum)] {
            let warm = best(false, call), cold = best(true, call)
            figures.append(
                Figure(kernel: name, inCacheGFLOPS: flops / warm / 1e9, fromMemoryGFLOPS: flops / cold / 1e9))
        }
        var core = MachineInfo.current()
        core.measurePeak(threads: 1)
        return KernelBenchmark(
            rows: rows, tokens: tokens, headDim: D, corePeakGFLOPS: core.measuredPeakGFLOPS ?? .nan,
            figures: figures)
    }
}
