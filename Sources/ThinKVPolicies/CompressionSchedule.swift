import Foundation

/// When a periodically compressing policy acts. Every rule answers one question for the decode
/// step being processed: does the policy compress the cache after this step's attention?
/// Policies that act after every step (H2O, StreamingLLM's own cache) need none of this.
public enum CompressionSchedule {
    /// The legacy R-KV rule (reference-policies.md 2.3). The reference keeps a running count of
    /// the tokens fed so far (prompt included) and, after every forward, arms compression for
    /// the next forward when that count is a multiple of `divide`. The forward that processes
    /// position p starts with a count of exactly p, so compression happens while processing
    /// every decode position p (p ≥ P) with `p % divide == 0`, the prompt's last forward
    /// included: if P itself is a multiple of `divide`, the first decode step compresses.
    /// Callers add their own size condition (R-KV: the cache holds at least B tokens).
    public static func legacyFires(position: Int, divide: Int) -> Bool {
        precondition(divide > 0, "divide must be positive")
        return position % divide == 0
    }

    /// A fixed interval counted in decode steps only: fires on 0-based decode step t when
    /// `(t + 1) % interval == 0`, i.e. once after every `interval` generated tokens, whatever
    /// the prompt length. `interval == 1` fires on every step.
    public static func everyNFires(step: Int, interval: Int) -> Bool {
        precondition(interval > 0, "interval must be positive")
        return (step + 1) % interval == 0
    }
}
