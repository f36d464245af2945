import Foundation

/// `thinkv-tbq`: ThinKV's thought-based quantization alone (no eviction): every token stays,
/// at its thought type's precision. Same implementation as `thinkv`, eviction switched off.
public final class ThinKVQuantizationOnlyPolicy: ThinKVPolicy {
    override public class var name: String { "thinkv-tbq" }
    override public class var summary: String {
        "ThinKV ablation: thought-typed precision (TBQ) only, every token kept"
    }
    override public class var components: ThinKVComponents { .quantization }
}
