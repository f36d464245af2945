import Foundation

/// When a composed policy compresses (the part after `@` in `snapkv@every-8`): it replaces the
/// base policy's own trigger and calls the base's compression (`CompressibleNow`) after the
/// step's attention when it fires.
public protocol CompressionTrigger {
    /// The spelling after `@`, with N for a number (`every-N`); empty for `BaseTrigger`.
    static var spelling: String { get }
    /// An example spelling, for tests and help.
    static var example: String { get }
    static var summary: String { get }
    static var parameters: [PolicyParameter] { get }
    /// Values for a small test trace (see `CachePolicy.conformanceSettings`).
    static var conformanceSettings: [String: String] { get }
    /// The parameter values a written trigger sets (`every-64` → every=64), or nil when the
    /// text is not this trigger.
    static func parse(_ text: String) -> [String: String]?
    init(parameters: PolicyParameters)
    /// Whether to compress after this step's attention; `overflow`: whether the cache holds
    /// more than its target (per head, or for the layer under Ada-KV).
    func fires(step: Int, overflow: Bool) -> Bool
    /// The most decode steps from one compression to the next while the cache is over target.
    var stepsBetween: Int { get }
    /// The cadence line of the report.
    var cadence: String { get }
}

extension CompressionTrigger {
    public static var parameters: [PolicyParameter] { [] }
    public static var example: String { spelling }
    public static var conformanceSettings: [String: String] { [:] }
    public static func parse(_ text: String) -> [String: String]? { text == spelling ? [:] : nil }
}

/// No trigger written: the base policy compresses when it always does.
public struct BaseTrigger: CompressionTrigger {
    public static let spelling = ""
    public static let summary = "the base policy's own trigger"
    public init(parameters: PolicyParameters) {}
    public func fires(step: Int, overflow: Bool) -> Bool { false }
    public var stepsBetween: Int { 1 }
    public var cadence: String { "" }
}

/// `@every-step`: after every decode step's attention (TOVA's and H2O's rule).
public struct EveryStepTrigger: CompressionTrigger {
    public static let spelling = "every-step"
    public static let summary = "compress after every decode step's attention"
    public init(parameters: PolicyParameters) {}
    public func fires(step: Int, overflow: Bool) -> Bool { true }
    public var stepsBetween: Int { 1 }
    public var cadence: String { "every decode step (@every-step)" }
}

/// `@every-N`: after every N-th decode step (`CompressionSchedule.everyNFires`, kvpress's
/// `DecodingPress` `compression_interval`): decode step t fires when (t + 1) mod N = 0.
public struct EveryNTrigger: CompressionTrigger {
    public static let spelling = "every-N"
    public static let example = "every-4"
    public static let conformanceSettings = ["every": "4"]
    public static let summary = "compress after every N decode steps (kvpress DecodingPress compression_interval)"
    public static let parameters: [PolicyParameter] = [
        .integer("every", min: 1, required: true, help: "N of @every-N: decode steps between compressions (set by the name)"),
    ]

    public static func parse(_ text: String) -> [String: String]? {
        guard text.hasPrefix("every-"), let n = Int(text.dropFirst("every-".count)), n >= 1 else { return nil }
        return ["every": String(n)]
    }

    public let interval: Int
    public init(parameters: PolicyParameters) { interval = parameters.int("every")! }
    public func fires(step: Int, overflow: Bool) -> Bool { CompressionSchedule.everyNFires(step: step, interval: interval) }
    public var stepsBetween: Int { interval }
    public var cadence: String { "every \(interval) decode steps (@every-\(interval))" }
}

/// `@on-overflow`: after a step's attention whenever a kv head holds more than the target (the
/// layer more than heads × target under Ada-KV): the bases here only ever cut heads over
/// target, so this keeps what `@every-step` keeps and skips the call on the other steps.
public struct OverflowTrigger: CompressionTrigger {
    public static let spelling = "on-overflow"
    public static let summary = "compress after a step whenever a kv head holds more than the budget"
    public init(parameters: PolicyParameters) {}
    public func fires(step: Int, overflow: Bool) -> Bool { overflow }
    public var stepsBetween: Int { 1 }
    public var cadence: String { "whenever a head holds more than the target (@on-overflow)" }
}
