import Foundation

/// The per-head fidelity metrics of docs/metrics.md ("Fidelity metrics"): one sample per decode
/// step, layer and query head. `PolicyLayerRun.measureGroup` calls them for every query head of a
/// kv head's group; they work in place on the caller's rows, so that measuring allocates nothing,
/// and are inlined into its loops.
///
/// Notation of docs/metrics.md: A is the full-cache attention of the query head (softmax over
/// every visible position of the exact logits s · q·k), S the attended set, Â the attention the
/// policy's cache produces ("softmax over S of s · q_p,h · k̂_j,g, where k̂ are the stored keys"),
/// lse the log-sum-exp of the exact logits over every visible position (from the reference).
enum AttentionFidelity {

    // MARK: Mass recall and attention KL

    /// **Mass recall**: "m = Σ_{j∈S} A_j, the share of the full-cache attention that falls on
    /// positions the policy still attends to. [...] It is computed as exp(lse_S − lse), the
    /// log-sum-exp of the exact logits over S against that over every visible position (the same
    /// number as the sum, without a second pass of exponentials), capped at 1 against rounding."
    @inline(__always)
    static func massRecall(attendedLogSumExp lseS: Float, fullLogSumExp lse: Float) -> Float {
        Swift.min(expf(lseS - lse), 1)
    }

    /// Mass recall and (unclamped) attention KL of a head that attends with the exact keys, where
    /// only the set changes: "For pure eviction (exact keys, only the set changes), Â = A / m on
    /// S. Then **KL = −ln m** exactly." The softmax of the exact logits over S yields lse_S for
    /// the recall and Â for the KL: KL = Σ Â (ln Â − ln A) = (lse − lse_S) · Σ Â.
    /// `logits` (the exact logits over S) are turned into Â in place.
    @inline(__always)
    static func exactKeyFidelity(
        logits y: UnsafeMutablePointer<Float>, count n: Int,
        fullLogSumExp lse: Float
    ) -> (massRecall: Float, attentionKL: Float) {
        let attendedLSE = Kernels.softmaxFast(y, n)
        return (massRecall(attendedLogSumExp: attendedLSE, fullLogSumExp: lse), (lse - attendedLSE) * Kernels.sum(y, n))
    }

    /// Mass recall and (unclamped) attention KL of a head that attends with stored keys that
    /// differ from the exact ones: "With quantized keys, Â also differs in shape from A / m, and
    /// the KL shows it." With x the exact logits over S and y the policy's:
    /// m = exp(lse_S(x) − lse) (the exact attention, "whatever keys the policy attends with"),
    /// KL(Â ‖ A) = Σ Â (y − lse_S(y) − x + lse) = Σ Â (y − x) + (lse − lse_S(y)) · Σ Â.
    /// The exact logits here and the reference's lse can differ by rounding, which with large q·k
    /// is more than exp's argument can absorb (a raw Σ exp(x − lse) gave 65): hence the cap.
    /// `policyLogits` are turned into Â in place; `exactLogits` are overwritten (with y − x).
    @inline(__always)
    static func storedKeyFidelity(
        exactLogits x: UnsafeMutablePointer<Float>,
        policyLogits y: UnsafeMutablePointer<Float>, count n: Int, fullLogSumExp lse: Float
    ) -> (massRecall: Float, attentionKL: Float) {
        let exactAttendedLSE = Kernels.logSumExp(x, n)
        let recall = massRecall(attendedLogSumExp: exactAttendedLSE, fullLogSumExp: lse)
        for i in 0..<n { x[i] = y[i] - x[i] }
        let attendedLSE = Kernels.softmaxFast(y, n)
        return (recall, Kernels.dot(y, x, n) + (lse - attendedLSE) * Kernels.sum(y, n))
    }

    /// Mass recall and (unclamped) attention KL on an attention-only layer: "A is the recorded
    /// `attn` row as stored [...]. It is not renormalised." and "For an attention-only layer the
    /// stored keys are unknown, so Â is A restricted to S and renormalised: A_j / m."
    /// m = Σ_{j∈S} A_j; KL = Σ_{j∈S, Â_j>0} Â_j (ln Â_j − ln A_j).
    /// Writes Â into `probabilities` and ln A_j into `logScratch`, both in slot order.
    @inline(__always)
    static func recordedRowFidelity(
        row: UnsafePointer<Float>, slots: UnsafePointer<Int32>, count n: Int,
        probabilities a: UnsafeMutablePointer<Float>,
        logScratch logA: UnsafeMutablePointer<Float>
    )
        -> (massRecall: Float, attentionKL: Float)
    {
        var m: Float = 0
        for i in 0..<n {
            let v = row[Int(slots[i])]
            m += v
            logA[i] = v > 0 ? logf(v) : -.infinity
            a[i] = v
        }
        let inv: Float = m > 0 ? 1 / m : 0
        for i in 0..<n { a[i] *= inv }
        var divergence: Float = 0
        for i in 0..<n where a[i] > 0 { divergence += a[i] * (logf(a[i]) - logA[i]) }
        return (m, divergence)
    }

    /// The attention KL as reported: "Tiny negative values from float rounding are reported as 0.
    /// If a head attends to nothing, or (on an attention-only layer) only to positions whose
    /// recorded weight is 0, then m = 0 and KL = −ln 0 = **+∞**. It is reported as `inf`, never as
    /// 0." (`hasNoSupport`: the policy's attention has no support in A; the sums above would have
    /// left it at 0, a perfect score.)
    @inline(__always)
    static func reportedKL(_ kl: Float, hasNoSupport: Bool) -> Float {
        hasNoSupport ? .infinity : Swift.max(kl, 0)
    }

    // MARK: Top-k recall

    /// **Top-k recall**: "Let K be the k' = min(k, p + 1) positions with the largest A_j [...].
    /// Top-k recall is |S ∩ K| / k'." `top` holds K (`count` = k'); `attended` is S.
    @inline(__always)
    static func topKRecall(top: UnsafePointer<Int32>, count k: Int, attended: borrowing AttendedSet) -> Float {
        guard k > 0 else { return 1 }
        var hits = 0
        for j in 0..<k where attended.contains(Int(top[j])) { hits += 1 }
        return Float(hits) / Float(k)
    }

    // MARK: Output error

    /// **Output error**: "the relative L2 error of the attention output: ‖Ô − O‖₂ / ‖O‖₂, where
    /// O = Σ_{j≤p} A_j v_j uses the recorded values and Ô = Σ_{j∈S} Â_j v̂_j uses the stored values
    /// v̂ [...]. When ‖O‖₂ = 0, the error is the absolute ‖Ô‖₂."
    @inline(__always)
    static func outputError(
        _ mine: UnsafePointer<Float>, full: UnsafePointer<Float>, fullNorm: Float,
        headDim D: Int
    ) -> Float {
        var diff: Float = 0
        for d in 0..<D {
            let x = mine[d] - full[d]
            diff += x * x
        }
        return fullNorm > 0 ? diff.squareRoot() / fullNorm : diff.squareRoot()
    }
}
