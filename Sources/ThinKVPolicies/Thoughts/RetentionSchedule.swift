import Foundation

/// ThinKV's retention schedule: the sizes an old thought segment is cut down to, one step at a
/// time, e.g. 64, 32, 16, 8, 4. The last entry is the floor: the schedule never takes a
/// segment below it, because removing a thought entirely tends to make the model repeat it.
///
/// A segment's *level* counts the steps applied to it (0 = untouched; level i means it was cut
/// to at most `sizes[i − 1]`). Two kinds of step:
/// - at a transition every old segment moves one level down the schedule, whatever its size:
///   the schedule measures how many changes of trajectory ago the thought happened, so a short
///   segment may keep all its tokens for a few transitions;
/// - under budget pressure a segment moves to the first later level whose size is below its
///   current count, so that the step always frees tokens.
public struct RetentionSchedule: Sendable, Equatable, CustomStringConvertible {
    /// Strictly decreasing positive sizes.
    public let sizes: [Int]

    public init(_ sizes: [Int]) throws {
        guard !sizes.isEmpty else { throw PolicyError("retention schedule must hold at least one size") }
        guard sizes.allSatisfy({ $0 >= 1 }) else {
            throw PolicyError(
                "retention schedule sizes must be positive, got \(sizes.map(String.init).joined(separator: ","))")
        }
        guard zip(sizes, sizes.dropFirst()).allSatisfy({ $0 > $1 }) else {
            throw PolicyError(
                "retention schedule sizes must be strictly decreasing, got "
                    + "\(sizes.map(String.init).joined(separator: ","))"
            )
        }
        self.sizes = sizes
    }

    /// Parses a comma list such as `64,32,16,8,4` (spaces allowed).
    public init(parsing text: String) throws {
        let parts = try CommaList.items(text, of: "retention schedule", error: PolicyError.init)
        var sizes: [Int] = []
        for part in parts {
            guard let value = Int(part) else {
                throw PolicyError(
                    "retention schedule must be a comma list of integers such as 64,32,16,8,4, got '\(text)'")
            }
            sizes.append(value)
        }
        try self.init(sizes)
    }

    public static let paperDefault = try! RetentionSchedule([64, 32, 16, 8, 4])

    /// The smallest size the schedule allows (its last entry).
    public var floor: Int { sizes[sizes.count - 1] }

    public var description: String { sizes.map(String.init).joined(separator: ",") }

    /// The transition step from `level`: the new level and the segment's new size (never more
    /// than it holds). At the last level the segment stays at the floor.
    public func transitionStep(level: Int, count: Int) -> (level: Int, size: Int) {
        let next = min(level + 1, sizes.count)
        return (next, min(count, sizes[next - 1]))
    }

    /// The budget-pressure step from `level` for a segment of `count` tokens: the first level
    /// at or after the next one whose size is below `count`; nil when the segment is at or
    /// below the floor (no step can free a token).
    public func pressureStep(level: Int, count: Int) -> (level: Int, size: Int)? {
        var i = level  // sizes[i] is the size of level i + 1
        while i < sizes.count {
            if sizes[i] < count { return (i + 1, sizes[i]) }
            i += 1
        }
        return nil
    }
}
