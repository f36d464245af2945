import Foundation

/// Comma-separated lists as users type them: `--policy h2o,rkv`, `--layers 0,3`, `--schedule
/// 64,32,16`, a sweep config's `"thought-layers": "0,5"`. Every such list is split here, so
/// every one refuses the same mistakes.
public enum CommaList {
    /// The items of `text`, trimmed of spaces. An empty item ("64,128,", "h2o,,rkv", ",0") is
    /// refused rather than dropped: a stray comma usually means a value went missing, and
    /// dropping it would run something other than what was meant without a word.
    /// `name` says whose list it is (`--layers`, `rkv: --newline-ids`); `error` makes the
    /// caller's kind of error (a usage error, a policy error) from the message.
    public static func items(_ text: String, of name: String, error: (String) -> any Error) throws -> [String] {
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        guard !items.contains(where: \.isEmpty) else { throw error(emptyItemMessage(text, of: name)) }
        return items
    }

    /// The refusal of an empty item, e.g. "--policy has an empty item in 'h2o,' (a stray comma?)".
    public static func emptyItemMessage(_ text: String, of name: String) -> String {
        text.trimmingCharacters(in: .whitespaces).isEmpty
            ? "\(name) is empty; give at least one item"
            : "\(name) has an empty item in '\(text)' (a stray comma?)"
    }
}
