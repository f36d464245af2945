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
    /// Work once per replay (the thought timeline of `@on-thought`); `validationPrepared` is its
    /// cheap stand-in (see `CachePolicy`). Default: nothing.
    static func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (any Sendable)?
    static func validationPrepared(header: TraceHeader) -> (any Sendable)?
    init(parameters: PolicyParameters, prepared: (any Sendable)?) throws
    /// Whether to compress after this step's attention; `overflow`: whether the cache holds
    /// more than its target (per head, or for the layer under Ada-KV).
    func fires(step: Int, overflow: Bool) -> Bool
    /// The most decode steps from one compression to the next while the cache is over target
    /// (nil: no bound).
    var stepsBetween: Int? { get }
    /// The cadence line of the report.
    static func cadence(_ parameters: PolicyParameters) -> String
}

extension CompressionTrigger {
    public static var parameters: [PolicyParameter] { [] }
    public static var example: String { spelling }
    public static var conformanceSettings: [String: String] { [:] }
    public static func parse(_ text: String) -> [String: String]? { text == spelling ? [:] : nil }
    public static func prepare(
        _ reader: TraceReader, parameters: PolicyParameters,
        layers: [Int]
    ) throws -> (any Sendable)? {
        nil
    }
    public static func validationPrepared(header: TraceHeader) -> (any Sendable)? { nil }
}

/// No trigger written: the base policy compresses when it always does.
public struct BaseTrigger: CompressionTrigger {
    public static let spelling = ""
    public static let summary = "the base policy's own trigger"
    public init(parameters: PolicyParameters, prepared: (any Sendable)?) {}
    public func fires(step: Int, overflow: Bool) -> Bool { false }
    public var stepsBetween: Int? { 1 }
    public static func cadence(_ parameters: PolicyParameters) -> String { "" }
}

/// `@every-step`: after every decode step's attention (TOVA's and H2O's rule).
public struct EveryStepTrigger: CompressionTrigger {
    public static let spelling = "every-step"
    public static let summary = "compress after every decode step's attention"
    public init(parameters: PolicyParameters, prepared: (any Sendable)?) {}
    public func fires(step: Int, overflow: Bool) -> Bool { true }
    public var stepsBetween: Int? { 1 }
    public static func cadence(_ parameters: PolicyParameters) -> String { "every decode step (@every-step)" }
}

/// `@every-N`: after every N-th decode step (`CompressionSchedule.everyNFires`, kvpress's
/// `DecodingPress` `compression_interval`): decode step t fires when (t + 1) mod N = 0.
public struct EveryNTrigger: CompressionTrigger {
    public static let spelling = "every-N"
    public static let example = "every-4"
    public static let conformanceSettings = ["every": "4"]
    public static let summary = "compress after every N decode steps (kvpress DecodingPress compression_interval)"
    public static let parameters: [PolicyParameter] = [
        // Set by the name (`@every-64`), hence not required of a config or a command line.
        .integer("every", min: 1, help: "N of @every-N: decode steps between compressions (set by the name)")
    ]

    public static func parse(_ text: String) -> [String: String]? {
        guard text.hasPrefix("every-"), let n = Int(text.dropFirst("every-".count)), n >= 1 else { return nil }
        return ["every": String(n)]
    }

    public let interval: Int
    public init(parameters: PolicyParameters, prepared: (any Sendable)?) throws {
        guard let interval = parameters.int("every") else { throw PolicyError("@every-N: write N, e.g. @every-64") }
        self.interval = interval
    }
    public func fires(step: Int, overflow: Bool) -> Bool {
        CompressionSchedule.everyNFires(step: step, interval: interval)
    }
    public var stepsBetween: Int? { interval }
    public static func cadence(_ parameters: PolicyParameters) -> String {
        let n = parameters.int("every").map(String.init) ?? "N"
        return "every \(n) decode steps (@every-\(n))"
    }
}

/// `@on-overflow`: after a step's attention whenever a kv head holds more than the target (the
/// layer more than heads × target under Ada-KV): the bases here only ever cut heads over
/// target, so this keeps what `@every-step` keeps and skips the call on the other steps.
public struct OverflowTrigger: CompressionTrigger {
    public static let spelling = "on-overflow"
    public static let summary = "compress after a step whenever a kv head holds more than the budget"
    public init(parameters: PolicyParameters, prepared: (any Sendable)?) {}
    public func fires(step: Int, overflow: Bool) -> Bool { overflow }
    public var stepsBetween: Int? { 1 }
    public static func cadence(_ parameters: PolicyParameters) -> String {
        "whenever a head holds more than the target (@on-overflow)"
    }
}

/// `@on-thought`: after the first step of every new thought (a decode step whose thought type
/// differs from the previous step's), ThinKV's moment for compressing older thoughts. The types
/// are ThinKV's thought timeline, made by `thinkv-tbq`'s `prepare` from these parameters (its
/// quantization at its defaults): the sparsity classifier over the full cache under TBQ
/// (`--sparsity-source cache`) or the full cache (`full`), or the trace's labels (`--thoughts
/// labels`). Between thoughts nothing bounds the cache.
public struct ThoughtTransitionTrigger: CompressionTrigger {
    public static let spelling = "on-thought"
    public static let summary = "compress after the first step of every new thought (ThinKV's thought timeline)"
    public static var parameters: [PolicyParameter] {
        ThinKVParameters.thoughts.filter { $0.name != "ct-blocks" }
    }
    public static var conformanceSettings: [String: String] { ["tau": "8"] }

    /// thinkv-tbq's parameters with these values, for its timeline.
    private static func timelineParameters(_ parameters: PolicyParameters) throws -> PolicyParameters {
        try PolicyParameters(
            policy: ThinKVQuantizationOnlyPolicy.name, specs: ThinKVQuantizationOnlyPolicy.parameters,
            values: parameters.given)
    }

    public static func prepare(
        _ reader: TraceReader, parameters: PolicyParameters,
        layers: [Int]
    ) throws -> (any Sendable)? {
        try ThinKVQuantizationOnlyPolicy.prepare(reader, parameters: try timelineParameters(parameters), layers: layers)
    }

    public static func validationPrepared(header: TraceHeader) -> (any Sendable)? {
        ThinKVQuantizationOnlyPolicy.validationPrepared(header: header)
    }

    let types: [ThoughtType]

    public init(parameters: PolicyParameters, prepared: (any Sendable)?) throws {
        guard let timeline = prepared as? ThoughtTimeline else {
            throw PolicyError("@on-thought: no thought timeline; the replay prepares it before the layers")
        }
        types = timeline.types
    }

    public func fires(step: Int, overflow: Bool) -> Bool {
        step > 0 && step < types.count && types[step] != types[step - 1]
    }
    public var stepsBetween: Int? { nil }
    public static func cadence(_ parameters: PolicyParameters) -> String {
        "after the first step of every new thought (@on-thought)"
    }
}
