import Foundation

/// `thinkv-tbe`: ThinKV's thought-based eviction alone: segments shrink to k-means
/// representatives, every kept token at 16 bits. Same implementation as `thinkv`,
/// quantization switched off.
public final class ThinKVEvictionOnlyPolicy: ThinKVPolicy {
    override public class var name: String { "thinkv-tbe" }
    override public class var summary: String {
        "ThinKV ablation: thought-segment eviction (TBE) only, 16-bit tokens"
    }
    override public class var components: ThinKVComponents { .eviction }
}
