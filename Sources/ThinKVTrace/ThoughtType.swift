import Foundation

/// Thought labels of the format: 0 reasoning, 1 execution, 2 transition, -1 prompt/unknown.
public enum ThoughtType: Int8, CaseIterable, Codable, Sendable {
    case reasoning = 0
    case execution = 1
    case transition = 2

    public var letter: Character { ["R", "E", "T"][Int(rawValue)] }
    public var name: String { ["reasoning", "execution", "transition"][Int(rawValue)] }
}
