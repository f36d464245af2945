import Foundation

/// ThinKV's thought classifier while a model generates (serve-policy): the same rule as the
/// replay's `CacheSparsityClassifier` — the sparsity of each step's attention over the policy's
/// own cache, averaged over L*, read at refresh steps — fed as the layers of each step arrive.
///
/// A model runs its layers one after another, and a step's first layer needs the step's type
/// before any L* layer has attended at that step. So a refresh at step t can read only steps
/// up to t − 1: online ThinKV needs `--type-lag` ≥ 1, and a replay with the same lag makes the
/// same decisions (the closed-loop tests check greedy generation against that replay).
final class OnlineThoughtClassifier {
    let thresholds: ThoughtThresholds
    let window: Int
    let lag: Int
    /// The types the policy instances read (`ThinKVPolicy.thoughtTypes`), one per started step.
    let log: ThoughtTypeLog
    /// Per decode step, the sparsity of each L* layer (in `thresholds.layers` order; NaN until
    /// that layer has attended at the step).
    private var measured: [[Float]] = []
    /// The mean over L*, per step, once every L* layer has been measured.
    private var history: [Float] = []
    private var current = ThoughtType.reasoning
    private var scratch: CacheSparsityClassifier.Scratch

    init(thresholds: ThoughtThresholds, window: Int, lag: Int, header: TraceHeader) {
        self.thresholds = thresholds
        self.window = max(1, window)
        self.lag = lag
        log = ThoughtTypeLog(refreshInterval: thresholds.refreshInterval)
        scratch = CacheSparsityClassifier.Scratch(header: header)
    }

    /// Decides step `t`'s type (once, before any layer's hooks of step `t` run). Every layer
    /// must have finished step t − 1, so that the window the refresh reads is complete.
    func beginStep(_ t: Int) throws {
        guard log.types.count == t else { return }
        if !thresholds.isSingleType {
            if t % max(1, thresholds.refreshInterval) == 0, t - lag >= 0 {
                for u in max(0, t - lag - window + 1)...(t - lag) where u >= history.count || history[u].isNaN {
                    throw PolicyError(
                        "thought type of step \(t): the sparsity of step \(u) is not complete (every layer must "
                            + "finish a step before any starts the next)"
                    )
                }
            }
            if let decided = ThoughtClassifier.refresh(
                at: t, history: history, thresholds: thresholds, window: window, lag: lag)
            {
                current = decided
            }
        }
        log.types.append(current)
    }

    /// Whether `layer` is one of L*.
    func reads(layer: Int) -> Bool { !thresholds.isSingleType && thresholds.layers.contains(layer) }

    /// Measures one L* layer at step `t`: the sparsity of `queries` (`[Hq][D]`) over `cache`
    /// with position `p` just appended, before the policy's pre-attention hook — where the
    /// replay's classifier measures it.
    func measure(
        layer: Int, step t: Int, cache: LayerCache, data: LayerData, queries: UnsafePointer<Float>,
        position p: Int
    ) {
        guard let index = thresholds.layers.firstIndex(of: layer) else { return }
        let L = thresholds.layers.count
        while measured.count <= t { measured.append([Float](repeating: .nan, count: L)) }
        while history.count <= t { history.append(.nan) }
        guard ThoughtClassifier.isRead(step: t, refreshInterval: thresholds.refreshInterval, window: window, lag: lag)
        else {
            history[t] = 0  // no refresh reads this step; the replay leaves it 0 too
            return
        }
        measured[t][index] = scratch.sparsity(
            of: cache, data: data, queries: queries, position: p,
            ratio: thresholds.sparsityRatio, gqa: thresholds.gqa)
        if !measured[t].contains(where: \.isNaN) {
            // Summed in L* order, as the replay's classifier sums its lanes.
            var sum: Float = 0
            for value in measured[t] { sum += value }
            history[t] = sum / Float(L)
        }
    }
}
