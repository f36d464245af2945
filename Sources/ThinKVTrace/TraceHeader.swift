import Foundation
import ThinKVSupport

/// A problem with a trace file, reported as one line: `file: object: what is wrong`.
public struct TraceError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let object: String?
    public let problem: String

    public init(file: String, object: String? = nil, _ problem: String) {
        self.file = file
        self.object = object
        self.problem = problem
    }

    /// One line, whatever the file put in its names and attributes.
    public var description: String {
        if let object { return Format.printable("\(file): \(object): \(problem)") }
        return Format.printable("\(file): \(problem)")
    }
}

/// Storage type of a float tensor in a trace. Readers always hand out Float32.
public enum TraceDType: String, Codable, Sendable, CaseIterable {
    case float16
    case float32

    public var bytes: Int { self == .float16 ? 2 : 4 }
}

/// The four per-layer tensors of format version 1.
public enum LayerTensor: String, CaseIterable, Sendable {
    case q, k, v, attn
}

/// Which heads the rows of a recorded `attn` dataset belong to.
public enum AttentionHeads: String, Codable, Sendable {
    case query = "q"
    case keyValue = "kv"
}

/// Root attributes of a thinkv-trace file (format version 1).
public struct TraceHeader: Equatable, Codable, Sendable {
    public static let formatName = "thinkv-trace"
    public static let supportedVersion = 1

    public var model: String
    public var numLayers: Int
    public var numQHeads: Int
    public var numKVHeads: Int
    public var headDim: Int
    public var promptLength: Int
    public var numTokens: Int
    /// As stored; `nil` means the format's default `1/sqrt(head_dim)`.
    public var softmaxScale: Float?
    public var source: String?
    public var generator: String?
    public var prompt: String?
    public var seed: Int64?

    public init(
        model: String, numLayers: Int, numQHeads: Int, numKVHeads: Int, headDim: Int,
        promptLength: Int, numTokens: Int, softmaxScale: Float? = nil, source: String? = nil,
        generator: String? = nil, prompt: String? = nil, seed: Int64? = nil
    ) {
        self.model = model
        self.numLayers = numLayers
        self.numQHeads = numQHeads
        self.numKVHeads = numKVHeads
        self.headDim = headDim
        self.promptLength = promptLength
        self.numTokens = numTokens
        self.softmaxScale = softmaxScale
        self.source = source
        self.generator = generator
        self.prompt = prompt
        self.seed = seed
    }

    /// G = T - P: the decode steps a replay walks through.
    public var generatedLength: Int { numTokens - promptLength }
    /// Query heads sharing one key/value head.
    public var groupSize: Int { numQHeads / numKVHeads }
    /// The scale attention uses: the stored one or `1/sqrt(D)`.
    public var effectiveSoftmaxScale: Float { softmaxScale ?? 1 / Float(headDim).squareRoot() }
    /// The scale reference scorers (H2O, R-KV) hard-code, whatever the trace says.
    public var referenceScorerScale: Float { 1 / Float(headDim).squareRoot() }
    public func kvHead(ofQueryHead h: Int) -> Int { h / groupSize }
}

/// What one recorded layer group holds.
public struct LayerInfo: Equatable, Sendable {
    public var index: Int
    public var dtypes: [String: TraceDType]  // keyed by LayerTensor.rawValue
    public var attentionHeads: AttentionHeads?

    public init(index: Int, dtypes: [String: TraceDType] = [:], attentionHeads: AttentionHeads? = nil) {
        self.index = index
        self.dtypes = dtypes
        self.attentionHeads = attentionHeads
    }

    public func has(_ tensor: LayerTensor) -> Bool { dtypes[tensor.rawValue] != nil }
    /// q and k present: the replay recomputes attention itself.
    public var hasQueriesAndKeys: Bool { has(.q) && has(.k) }
    public var hasValues: Bool { has(.v) }
    public var hasAttention: Bool { has(.attn) }
}
