import Foundation

/// Per-position token marks R-KV's token-driven options need (reference-policies.md 2.3;
/// Zefan-Cai/R-KV `rkv/modeling.py`, the step-level compression logic after the LM head, and
/// `run_math.py`, which sets the token lists):
/// - `divide_method=newline`: after each forward the model arms compression for the next forward
///   if its predicted token is newline-like; the next forward processes exactly that token, so
///   the step processing position p compresses when token p is newline-like.
/// - `compression_content=think`: once the predicted token is `</think>`, compression stops for
///   good; the forward that processes position p may compress only while none of the generated
///   tokens P…p is `</think>`.
///
/// run_math.py's newline ids are the last token of the encodings of "\n", ".\n", ")\n", "\n\n",
/// ".\n\n" and ")\n\n", and the end-of-think id the last token of "</think>". Without the model's
/// tokenizer, thinkv-sim recognises those tokens by their decoded text in `/tokens/text` (a
/// token whose piece is one of those strings), or takes the ids given with `--newline-ids` /
/// `--think-end-ids`.
struct RKVTriggerTokens: Sendable {
    /// Decoded pieces run_math.py's newline tokens end with.
    static let newlinePieces: Set<String> = ["\n", ".\n", ")\n", "\n\n", ".\n\n", ")\n\n"]
    static let thinkEndPieces: Set<String> = ["</think>"]

    /// newline[p]: token p is newline-like.
    let newline: [Bool]
    /// afterThink[p]: a generated token at or before p (from P on) is `</think>`.
    let afterThink: [Bool]

    /// Reads `/tokens/ids` (and `/tokens/text` when a needed list is not given); marks that are
    /// not needed stay all false.
    static func read(
        _ reader: TraceReader, newline needsNewline: Bool, newlineIDs: String?,
        thinkEnd needsThinkEnd: Bool, thinkEndIDs: String?, policy: String
    ) throws -> RKVTriggerTokens {
        let ids = try reader.readTokenIDs()
        let text =
            (needsNewline && newlineIDs == nil) || (needsThinkEnd && thinkEndIDs == nil)
            ? try reader.readTokenText() : nil
        func marks(_ list: String?, pieces: Set<String>, option: String) throws -> [Bool] {
            if let list {
                let parsed = try CommaList.items(list, of: "\(policy): --\(option)", error: PolicyError.init).map {
                    item -> Int32 in
                    guard let id = Int32(item) else {
                        throw PolicyError(
                            "\(policy): --\(option) must be a comma-separated list of token ids, got '\(list)'")
                    }
                    return id
                }
                let set = Set(parsed)
                return ids.map { set.contains($0) }
            }
            guard let text else {
                throw PolicyError(
                    "\(reader.path): policy \(policy) needs /tokens/text to find its trigger tokens, which this "
                        + "trace does not record (give --\(option))"
                )
            }
            return text.map { pieces.contains($0) }
        }
        let none = [Bool](repeating: false, count: ids.count)
        let newline = needsNewline ? try marks(newlineIDs, pieces: newlinePieces, option: "newline-ids") : none
        let thinkEnd = needsThinkEnd ? try marks(thinkEndIDs, pieces: thinkEndPieces, option: "think-end-ids") : none
        let P = reader.header.promptLength
        var after = [Bool](repeating: false, count: ids.count)
        var seen = false
        for p in P..<ids.count {
            seen = seen || thinkEnd[p]
            after[p] = seen
        }
        return RKVTriggerTokens(newline: newline, afterThink: after)
    }
}
