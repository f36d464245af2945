import Foundation
import ThinKVSupport

/// Layer lists as users write them: recorded layer indices, or negative indices counting from
/// the last recorded layer (−1 is the last), as Python indexes a list.
public enum LayerSelection {
    /// Parses "0,3,-1" into integers (no resolution yet: the trace is not open).
    public static func parse(_ text: String, option: String) throws -> [Int] {
        let parts = try CommaList.items(text, of: option, error: UsageError.init)
        let values = parts.compactMap { Int($0) }
        guard values.count == parts.count else {
            throw UsageError(
                "\(option) takes layer indices like 0,3,7 (negative counts from the last recorded layer), got '\(text)'"
            )
        }
        return values
    }

    /// Negative entries become recorded layers counted from the last; every layer must be
    /// recorded, each named once. Errors name the recorded layers.
    public static func resolve(_ requested: [Int], recorded: [Int], option: String, file: String) throws -> [Int] {
        let list = recorded.map(String.init).joined(separator: ", ")
        var layers: [Int] = []
        for layer in requested {
            let resolved: Int
            if layer < 0 {
                guard -layer <= recorded.count else {
                    throw TraceError(
                        file: file, "\(option) \(layer) reaches before the first recorded layer (recorded: \(list))")
                }
                resolved = recorded[recorded.count + layer]
            } else {
                resolved = layer
            }
            guard recorded.contains(resolved) else {
                throw TraceError(file: file, object: "/layers/\(resolved)", "not recorded (recorded: \(list))")
            }
            guard !layers.contains(resolved) else { throw UsageError("\(option) names layer \(resolved) twice") }
            layers.append(resolved)
        }
        return layers
    }
}
