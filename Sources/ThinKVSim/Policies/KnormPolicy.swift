import Foundation

/// KnormPress (Devoto et al., 2024, "A simple and effective L2 norm-based strategy for KV cache
/// compression") as NVIDIA/kvpress runs it at decode time: `DecodingPress(KnormPress)`
/// (kvpress/presses/knorm_press.py `score`, decoding_press.py). The score of a cached token is
/// −‖k‖: keys with the *smallest* norms stay (they draw the most attention, the paper finds).
///
/// Every `interval` decode steps, after that step's attention, each kv head whose cache holds
/// more than the target keeps the target count of lowest-norm keys, in `topk` order (ascending
/// norm, lower slot first among ties); see `KVPressDecoding` for the target. No window is
/// protected: the newest token goes if its key is long. Needs keys only.
///
/// `--score-dtype`: k and ‖k‖ are cast to the dtype (`keys.norm(dim=-1)` in the model dtype).
public final class KnormPolicy: CachePolicy {
    public static let name = "knorm"
    public static let summary = "kvpress KnormPress at decode time: every --interval steps keep the keys with the smallest L2 norm"
    public static func cadenceParameter(_ parameters: PolicyParameters) -> String? { "interval" }
    public static func compressionCadence(_ parameters: PolicyParameters) -> String { KVPressDecoding.cadence(parameters) }
    public static let parameters: [PolicyParameter] = KVPressDecoding.parameters()
    public static let requirements: PolicyRequirements = .queriesAndKeys
    public static let readsAttention = false

    let schedule: KVPressDecoding
    private let header: TraceHeader

    public init(parameters: PolicyParameters, setup: PolicySetup) throws {
        schedule = try KVPressDecoding(parameters: parameters, policy: Self.name)
        header = setup.header
    }

    public var residentCap: Int? { schedule.residentCap(promptLength: header.promptLength) }

    public func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        guard schedule.fires(step: context.step), let keys = context.data.keys else { return }
        let D = header.headDim, dtype = schedule.dtype
        schedule.compressEachHead(context, cache: cache) { g, slots in
            slots.map { p in
                let base = context.data.offset(kvHead: g, position: Int(p))
                var sum = 0.0
                for d in 0..<D {
                    let x = Double(dtype.round(keys[base + d]))
                    sum += x * x
                }
                return -dtype.round(sum.squareRoot())
            }
        }
    }
}
