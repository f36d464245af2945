import Foundation

/// The full-cache reference of a trace's layers, kept between engine runs: replaying one
/// policy at many budgets (`MemoryMatching`) then computes the reference once, in the first run,
/// and every later run reads it. Everything a policy or a metric reads from a reference chunk
/// is kept (log-sum-exp, top-k, outputs and norms, sparsity) but the logits, which are
/// Hq × T floats per step; a run that finds its reference here has its policies compute the
/// logits of what they attend (the same bits, see `ReferenceChunk.logits`).
///
/// A store answers only runs of its trace with the same decode steps, top-k and chunk size,
/// and keeps a layer only while the total stays under `byteLimit`; a layer it does not hold is
/// computed as usual.
public final class ReferenceStore: @unchecked Sendable {
    public let tracePath: String
    public let byteLimit: Int
    public private(set) var bytes = 0
    private var topK: Int?
    private var chunkSteps: Int?
    private var decodeSteps: Int?
    private var layers: [Int: [StoredReferenceChunk]] = [:]
    private let lock = NSLock()

    public init(tracePath: String, byteLimit: Int = 2 << 30) {
        self.tracePath = tracePath
        self.byteLimit = byteLimit
    }

    /// Layers held, ascending.
    public var storedLayers: [Int] { lock.withLock { layers.keys.sorted() } }

    /// True when runs of `configuration` on `reader` may use (and fill) this store: the first
    /// run fixes steps, top-k and chunk size.
    func matches(reader: TraceReader, configuration: ReplayConfiguration, chunkSteps chunk: Int, decodeSteps steps: Int)
        -> Bool
    {
        lock.withLock {
            guard reader.path == tracePath else { return false }
            if topK == nil {
                topK = configuration.topK
                chunkSteps = chunk
                decodeSteps = steps
            }
            return topK == configuration.topK && chunkSteps == chunk && decodeSteps == steps
        }
    }

    func chunks(ofLayer layer: Int) -> [StoredReferenceChunk]? { lock.withLock { layers[layer] } }

    func keep(_ chunks: [StoredReferenceChunk], ofLayer layer: Int) {
        let size = chunks.reduce(0) { $0 + $1.bytes }
        lock.withLock {
            guard layers[layer] == nil, bytes + size <= byteLimit else { return }
            layers[layer] = chunks
            bytes += size
        }
    }
}

/// One reference chunk's results, copied out of the `ReferenceChunk` the engine reuses.
struct StoredReferenceChunk {
    let firstStep: Int
    let stepCount: Int
    let logSumExp: [Float]
    let outputs: [Float]
    let outputNorms: [Float]
    let topKPositions: [Int32]
    let topKCount: [Int32]
    let sparsity: [Float]

    init(_ chunk: ReferenceChunk) {
        firstStep = chunk.firstStep
        stepCount = chunk.stepCount
        logSumExp = Self.copy(chunk.logSumExp)
        outputs = Self.copy(chunk.outputs)
        outputNorms = Self.copy(chunk.outputNorms)
        topKPositions = Self.copy(chunk.topKPositions)
        topKCount = Self.copy(chunk.topKCount)
        sparsity = Self.copy(chunk.sparsity)
    }

    /// A copy with its own storage. Sharing the chunk's (copy-on-write) would make the workers
    /// that next fill the chunk in parallel each copy the shared buffer, losing each other's writes.
    static func copy<T>(_ a: [T]) -> [T] { a.withUnsafeBufferPointer { Array($0) } }

    var bytes: Int {
        4
            * (logSumExp.count + outputs.count + outputNorms.count + topKPositions.count + topKCount.count
                + sparsity.count)
    }

    /// Fills a chunk already prepared for the same steps.
    func restore(into chunk: ReferenceChunk) {
        precondition(
            chunk.firstStep == firstStep && chunk.stepCount == stepCount, "stored reference restored into another chunk"
        )
        chunk.logSumExp = Self.copy(logSumExp)
        chunk.outputs = Self.copy(outputs)
        chunk.outputNorms = Self.copy(outputNorms)
        chunk.topKPositions = Self.copy(topKPositions)
        chunk.topKCount = Self.copy(topKCount)
        chunk.sparsity = Self.copy(sparsity)
    }
}
