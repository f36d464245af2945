import Foundation

/// The floating-point type a reference implementation scores in (`--score-dtype`): the authors
/// run their scorers in the model's dtype (R-KV casts its importance with
/// `.to(query_states.dtype)`, bf16 in their runs; H2O casts the probabilities it accumulates to
/// fp16), so "what did their run keep" depends on where their code rounds.
///
/// `float32` rounds nothing: scores are computed exactly as they always were (float32 for H2O,
/// float64 for the window scorers), so its results are those of a replay without the option.
/// `bfloat16` and `float16` round each intermediate the reference holds in the model dtype to
/// that dtype (round to nearest, ties to even, as a cast on the GPU does) and back to a wider
/// float; intermediates the reference keeps in float32 (a softmax with `dtype=torch.float32`)
/// are rounded to float32. Each policy's docs list its rounding points.
public enum ScoreDType: String, CaseIterable, Sendable {
    case float32
    case bfloat16
    case float16

    /// The `--score-dtype` parameter every baseline that supports it declares.
    static let parameter = PolicyParameter.choice(
        "score-dtype", allCases.map(\.rawValue), default: ScoreDType.float32.rawValue,
        help:
            "dtype the reference scores in: float32 (no rounding, default), bfloat16 or float16 (every intermediate "
            + "the authors' code holds in the model dtype is rounded to it)"
    )

    /// Whether anything is rounded.
    public var rounds: Bool { self != .float32 }

    /// `x` rounded to this dtype (nearest, ties to even) and widened back; identity for float32.
    @inline(__always)
    public func round(_ x: Float) -> Float {
        switch self {
        case .float32: return x
        case .float16: return Float(Float16(x))
        case .bfloat16: return ScoreDType.bfloat16Rounded(x)
        }
    }

    /// A double rounded as the GPU would round a float32 result of the same operation: first to
    /// float32 (the operation's precision), then to this dtype. Identity for float32.
    @inline(__always)
    public func round(_ x: Double) -> Double {
        rounds ? Double(round(Float(x))) : x
    }

    /// bfloat16 keeps the top 16 bits of a float32: add half a unit of the dropped bits (less
    /// one when the kept part is even, so exact halves go to even) and truncate. NaN stays NaN;
    /// values beyond bfloat16's range become infinities, as in a cast.
    @inline(__always)
    static func bfloat16Rounded(_ x: Float) -> Float {
        guard !x.isNaN else { return x }
        let bits = x.bitPattern
        let lsb = (bits >> 16) & 1
        let rounded = (bits &+ 0x7FFF &+ lsb) & 0xFFFF_0000
        return Float(bitPattern: rounded)
    }
}
