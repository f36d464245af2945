import Foundation

/// Which family of element formats a quantizing policy uses (`--format`).
public enum QuantFormat: String, CaseIterable, Sendable {
    /// Asymmetric min-max integers at any width 1...8 (KIVI's quantizer).
    case int
    /// The formats ThinKV's TBQ names for each width: 8 = FP8 E4M3, 4 = NVFP4 (E2M1), 2 =
    /// ternary; every group (NVFP4: every 16-element block) shares one FP8 E4M3 scale, 8 bits.
    case paper

    /// Widths the format supports.
    public var supportedBits: [Int] {
        switch self {
        case .int: return Array(1...8)
        case .paper: return [2, 4, 8]
        }
    }
}

/// One element format with its group-level scaling: quantizes a strided group of floats and
/// writes back the dequantized values, returning the bits of metadata the group costs.
public enum GroupQuantizer: Sendable, Equatable, CustomStringConvertible {
    case integer(bits: Int)
    case fp8E4M3
    case nvfp4
    case ternary

    /// The quantizer `format` uses at `bits` bits per element.
    public init(format: QuantFormat, bits: Int) throws {
        guard format.supportedBits.contains(bits) else {
            throw PolicyError(
                "format \(format.rawValue) supports \(format.supportedBits.map(String.init).joined(separator: ", ")) "
                    + "bits, not \(bits)"
            )
        }
        switch (format, bits) {
        case (.int, _): self = .integer(bits: bits)
        case (.paper, 8): self = .fp8E4M3
        case (.paper, 4): self = .nvfp4
        default: self = .ternary
        }
    }

    /// The short name tools use: int<b> (1...8), fp8, nvfp4, ternary.
    public var name: String {
        switch self {
        case .integer(let bits): return "int\(bits)"
        case .fp8E4M3: return "fp8"
        case .nvfp4: return "nvfp4"
        case .ternary: return "ternary"
        }
    }

    /// The quantizer a `name` names, nil for any other text.
    public init?(name: String) {
        switch name {
        case "fp8": self = .fp8E4M3
        case "nvfp4": self = .nvfp4
        case "ternary": self = .ternary
        default:
            guard name.hasPrefix("int"), let bits = Int(name.dropFirst(3)), (1...8).contains(bits) else { return nil }
            self = .integer(bits: bits)
        }
    }

    /// Bits each element is charged (the code width).
    public var elementBits: Int {
        switch self {
        case .integer(let bits): return bits
        case .fp8E4M3: return 8
        case .nvfp4: return 4
        case .ternary: return 2
        }
    }

    /// Metadata bits of one group of `count` elements (scales, zero points).
    public func metadataBits(count: Int) -> Int {
        guard count > 0 else { return 0 }
        switch self {
        case .integer: return IntegerGroupQuantizer.metadataBitsPerGroup
        case .fp8E4M3: return FP8GroupQuantizer.metadataBitsPerGroup
        case .nvfp4: return NVFP4GroupQuantizer.metadataBits(count: count)
        case .ternary: return TernaryGroupQuantizer.metadataBitsPerGroup
        }
    }

    /// Quantize → dequantize `count` elements at `x, x + stride, …` in place; returns the
    /// group's metadata bits (equal to `metadataBits(count:)`).
    @discardableResult
    public func roundTrip(_ x: UnsafeMutablePointer<Float>, count: Int, stride: Int = 1) -> Int {
        switch self {
        case .integer(let bits): return IntegerGroupQuantizer.roundTrip(x, count: count, stride: stride, bits: bits)
        case .fp8E4M3: return FP8GroupQuantizer.roundTrip(x, count: count, stride: stride)
        case .nvfp4: return NVFP4GroupQuantizer.roundTrip(x, count: count, stride: stride)
        case .ternary: return TernaryGroupQuantizer.roundTrip(x, count: count, stride: stride)
        }
    }

    /// Convenience for arrays (tests, small tools): round-trips `values` as one group.
    @discardableResult
    public func roundTrip(_ values: inout [Float]) -> Int {
        let n = values.count
        return values.withUnsafeMutableBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return 0 }
            return roundTrip(base, count: n, stride: 1)
        }
    }

    public var description: String {
        switch self {
        case .integer(let bits): return "int\(bits)"
        case .fp8E4M3: return "fp8-e4m3"
        case .nvfp4: return "nvfp4"
        case .ternary: return "ternary"
        }
    }
}
