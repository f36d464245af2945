import Foundation

/// "Did you mean ...?" for mistyped names: the closest known name by edit distance, when it is
/// close enough to be a typo (or the typed word is a prefix of exactly one name).
public enum Suggestions {
    /// The best candidate for `word`, or nil when nothing is plausibly meant.
    public static func closest(to word: String, among candidates: [String]) -> String? {
        let lowered = word.lowercased()
        let prefixed = candidates.filter { $0.lowercased().hasPrefix(lowered) && $0.count > word.count }
        if !lowered.isEmpty, prefixed.count == 1 { return prefixed[0] }
        let limit = max(1, word.count / 3)
        // A plural of a singular name ("--policies" for --policy) is as likely a slip as a typo,
        // but English plurals are too far from their singular for the edit distance alone.
        let forms = Set([lowered, singular(lowered)])
        let scored = candidates.map { candidate in
            (candidate, forms.map { distance($0, candidate.lowercased()) }.min()!)
        }.filter { $0.1 <= limit }
        return scored.min { ($0.1, $0.0) < ($1.1, $1.0) }?.0
    }

    /// "policies" → "policy", "layers" → "layer", "thresholds" → "threshold"; other words unchanged.
    package static func singular(_ word: String) -> String {
        if word.hasSuffix("ies") && word.count > 4 { return String(word.dropLast(3)) + "y" }
        if word.hasSuffix("s") && !word.hasSuffix("ss") && word.count > 3 { return String(word.dropLast()) }
        return word
    }

    /// " (did you mean X?)" or "".
    public static func hint(for word: String, among candidates: [String], prefix: String = "") -> String {
        closest(to: word, among: candidates).map { " (did you mean \(prefix)\($0)?)" } ?? ""
    }

    /// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
    /// two neighbouring characters each cost 1 ("h20" → "h2o" is 1, "hto" → "h2o" is 1).
    package static func distance(_ a: String, _ b: String) -> Int {
        let x = Array(a), y = Array(b)
        guard !x.isEmpty else { return y.count }
        guard !y.isEmpty else { return x.count }
        var d = Array(repeating: Array(repeating: 0, count: y.count + 1), count: x.count + 1)
        for i in 0...x.count { d[i][0] = i }
        for j in 0...y.count { d[0][j] = j }
        for i in 1...x.count {
            for j in 1...y.count {
                let cost = x[i - 1] == y[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1, j > 1, x[i - 1] == y[j - 2], x[i - 2] == y[j - 1] {
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
                }
            }
        }
        return d[x.count][y.count]
    }
}
