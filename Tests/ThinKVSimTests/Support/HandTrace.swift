import Foundation
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Hand-made q/k for examples that can be checked on paper. D = 4 and the default softmax
/// scale 1/sqrt(4) = 1/2, keys are zero or a basis vector e_d, and a query is given as the
/// weight it puts on each basis direction: its component d is 2·ln(w_d), so against key e_d
/// the logit is ln(w_d) and the unnormalised softmax weight is w_d; a zero key always gets
/// weight 1 (logit 0). A weight of 0 means "no attention": the component is −400, the logit
/// −200, and exp(−200) is exactly 0 in float32.
struct HandTrace {
    static let D = 4
    let T: Int, P: Int, Hq: Int, Hkv: Int
    /// `[T][Hq][D]` and `[T][Hkv][D]`, as the trace format stores them.
    private(set) var q: [Float]
    private(set) var k: [Float]

    init(T: Int, P: Int, Hq: Int = 1, Hkv: Int = 1) {
        self.T = T
        self.P = P
        self.Hq = Hq
        self.Hkv = Hkv
        q = [Float](repeating: 0, count: T * Hq * HandTrace.D)
        k = [Float](repeating: 0, count: T * Hkv * HandTrace.D)
    }

    /// Key of `position` (all kv heads unless one is given) along basis direction `d`.
    mutating func key(_ position: Int, direction d: Int, kvHead: Int? = nil) {
        for g in kvHead.map({ [$0] }) ?? Array(0..<Hkv) {
            let base = (position * Hkv + g) * HandTrace.D
            for i in 0..<HandTrace.D { k[base + i] = i == d ? 1 : 0 }
        }
    }

    /// Query of `position` (all query heads unless one is given): weight w on direction d for
    /// each entry `d: w`; directions not listed keep weight 1.
    mutating func query(_ position: Int, head: Int? = nil, _ weights: [Int: Double]) {
        for h in head.map({ [$0] }) ?? Array(0..<Hq) {
            let base = (position * Hq + h) * HandTrace.D
            for i in 0..<HandTrace.D {
                let w = weights[i] ?? 1
                q[base + i] = w == 0 ? -400 : Float(2 * log(w))
            }
        }
    }

    func write(in dir: URL, name: String = "hand.h5", softmaxScale: Float? = nil) throws -> String {
        try TestTraces.write(
            to: dir.appendingPathComponent(name), T: T, P: P, Hq: Hq, Hkv: Hkv, D: HandTrace.D,
            layers: [TestTraces.Layer(q: q, k: k)], softmaxScale: softmaxScale)
    }
}

/// Kept events reduced to what a test compares: step → kept positions, for one kv head.
func keptByStep(_ events: [KeptEvent], kvHead: Int = 0) -> [Int: [Int32]] {
    var out: [Int: [Int32]] = [:]
    for e in events where e.kvHead == kvHead { out[e.step] = e.kept }
    return out
}
