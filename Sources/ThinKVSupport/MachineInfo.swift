import Foundation

/// What `bench` states about the machine: cores, clock, vector width, and the fp32 peak it
/// assumes (cores × GHz × FMA pipes × lanes × 2 flops per FMA).
public struct MachineInfo: Codable, Sendable {
    public var cpuModel: String
    public var cores: Int
    public var megahertz: Double
    /// fp32 lanes per vector instruction the kernels use (16 in AVX-512 builds, else 8).
    public var lanes: Int
    /// Fused multiply-add pipes per core assumed (2 on current x86 server cores).
    public var fmaPipes: Int
    public var fusedMultiplyAdd: Bool
    public var cpuFlags: [String]
    /// What a register-only FMA loop in the kernels' vector width achieves on every core at
    /// once (`measurePeak`): the clock the cores really run at, turbo included. nil until measured.
    public var measuredPeakGFLOPS: Double?

    public var peakGFLOPS: Double {
        Double(cores) * megahertz / 1000 * Double(fmaPipes) * Double(lanes) * (fusedMultiplyAdd ? 2 : 1)
    }

    public static func current() -> MachineInfo {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        func field(_ name: String) -> String? {
            cpuinfo.split(separator: "\n").first { $0.hasPrefix(name) }
                .flatMap { $0.split(separator: ":", maxSplits: 1).last }
                .map { $0.trimmingCharacters(in: .whitespaces) }
        }
        let flags = Set((field("flags") ?? "").split(separator: " ").map(String.init))
        let vectorFlags = ["avx2", "fma", "avx512f", "f16c"].filter(flags.contains)
        #if THINKV_FMA
        let fused = true
        #else
        let fused = false
        #endif
        #if THINKV_AVX512
        let lanes = 16
        #else
        let lanes = 8
        #endif
        return MachineInfo(
            cpuModel: field("model name") ?? "unknown", cores: ProcessInfo.processInfo.activeProcessorCount,
            megahertz: Double(field("cpu MHz") ?? "") ?? 0, lanes: lanes, fmaPipes: 2,
            fusedMultiplyAdd: fused, cpuFlags: vectorFlags)
    }

    /// Times `iterations` rounds of 12 independent multiply-adds (fused, or a multiply then an
    /// add in the portable build: 2 flops a lane either way) in the kernels' vector type on
    /// `threads` threads at once; the best of `trials` (a shared machine only ever slows it).
    public mutating func measurePeak(threads: Int, iterations: Int = 30_000_000, trials: Int = 3) {
        let flopsPerRound = Double(12 * lanes * 2)
        var best = 0.0
        for _ in 0..<trials {
            var sinks = [Float](repeating: 0, count: threads)
            let start = DispatchTime.now().uptimeNanoseconds
            sinks.withUnsafeMutableBufferPointer { out in
                let sink = out.baseAddress!
                DispatchQueue.concurrentPerform(iterations: threads) {
                    sink[$0] = MachineInfo.fmaLoop(iterations, seed: Float($0))
                }
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            // The sinks keep the loop from being optimised away; they are never NaN for these inputs.
            guard sinks.allSatisfy({ !$0.isNaN }) else { return }
            best = max(best, Double(threads) * Double(iterations) * flopsPerRound / seconds / 1e9)
        }
        measuredPeakGFLOPS = best
    }

    #if THINKV_AVX512
    typealias PeakVector = SIMD16<Float>
    #else
    typealias PeakVector = SIMD8<Float>
    #endif

    @inline(never)
    static func fmaLoop(_ n: Int, seed: Float) -> Float {
        let x = PeakVector(repeating: seed), m = PeakVector(repeating: 0.999_999), c = PeakVector(repeating: 1e-7)
        var a0 = x, a1 = x + 1, a2 = x + 2, a3 = x + 3, a4 = x + 4, a5 = x + 5
        var a6 = x + 6, a7 = x + 7, a8 = x + 8, a9 = x + 9, a10 = x + 10, a11 = x + 11
        for _ in 0..<n {
            step(&a0, m, c); step(&a1, m, c); step(&a2, m, c); step(&a3, m, c); step(&a4, m, c); step(&a5, m, c)
            step(&a6, m, c); step(&a7, m, c); step(&a8, m, c); step(&a9, m, c); step(&a10, m, c); step(&a11, m, c)
        }
        return (a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11).sum()
    }

    /// x = x·m + c: one fused multiply-add (a multiply and an add in the portable build).
    @inline(__always)
    private static func step(_ x: inout PeakVector, _ m: PeakVector, _ c: PeakVector) {
        #if THINKV_FMA
        x = c.addingProduct(x, m)
        #else
        x = x * m + c
        #endif
    }

    public var description: String {
        let build =
            !fusedMultiplyAdd
            ? "portable build (8-lane multiply then add, no FMA)"
            : lanes == 16 ? "AVX-512 build (16-lane fp32 FMA)" : "AVX2+FMA build (8-lane fp32 FMA)"
        var text = String(
            format:
                "%@, %d cores at %.0f MHz, CPU flags %@; %@; assumed fp32 peak %.1f GFLOP/s = %d cores × %.3f GHz × "
                + "%d pipes × %d lanes × %d",
            cpuModel, cores, megahertz, cpuFlags.joined(separator: "/"), build, peakGFLOPS, cores, megahertz / 1000,
            fmaPipes, lanes, fusedMultiplyAdd ? 2 : 1)
        if let measured = measuredPeakGFLOPS {
            let perCycle = Double(cores * fmaPipes * lanes * (fusedMultiplyAdd ? 2 : 1))
            text += String(
                format: "; measured %.1f GFLOP/s (FMA loop on every core: %.2f GHz effective)", measured,
                measured / perCycle)
        }
        return text
    }
}
