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
        return MachineInfo(cpuModel: field("model name") ?? "unknown", cores: ProcessInfo.processInfo.activeProcessorCount,
                           megahertz: Double(field("cpu MHz") ?? "") ?? 0, lanes: lanes, fmaPipes: 2,
                           fusedMultiplyAdd: fused, cpuFlags: vectorFlags)
    }

    public var description: String {
        let build = !fusedMultiplyAdd ? "portable build (8-lane multiply then add, no FMA)"
            : lanes == 16 ? "AVX-512 build (16-lane fp32 FMA)" : "AVX2+FMA build (8-lane fp32 FMA)"
        return String(format: "%@, %d cores at %.0f MHz, CPU flags %@; %@; assumed fp32 peak %.1f GFLOP/s = %d cores × %.3f GHz × %d pipes × %d lanes × %d",
                      cpuModel, cores, megahertz, cpuFlags.joined(separator: "/"), build, peakGFLOPS, cores, megahertz / 1000,
                      fmaPipes, lanes, fusedMultiplyAdd ? 2 : 1)
    }
}
