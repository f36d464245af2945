import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The synthetic generator: format conformance, determinism, labels, and the attention
/// phenomena it promises (per-type sparsity, sinks, recency, revisited anchors, near-duplicate
/// keys), each measured from the written file by an independent float64 computation or by
/// `SparsityProfile`.
final class SyntheticTraceTests: XCTestCase {
    // MARK: One small trace shared by the measurement tests

    /// 3 layers so that layer 0 is blended and layers 1-2 are separated; short enough for debug builds.
    static func smallConfig(seed: UInt64 = 3) -> SyntheticTraceConfig {
        var config = SyntheticTraceConfig()
        config.tokens = 640
        config.promptLength = 64
        config.layers = 3
        config.queryHeads = 4
        config.kvHeads = 2
        config.headDim = 32
        config.seed = seed
        // The per-type levels these tests measure hold at every position only with fixed
        // sparsity; growth with context length has its own tests (SyntheticImportanceTests).
        config.sparsity.growth.strength = 0
        return config
    }

    struct Shared {
        let directory: URL
        let path: String
        let plan: ThoughtPlan
        let config: SyntheticTraceConfig
        let reader: TraceReader
        /// Head-averaged attention of every decode step, [layer][step][0...p], computed in float64.
        let rows: [[[Double]]]
    }

    nonisolated(unsafe) private static var cached: Shared?

    static func shared() throws -> Shared {
        if let cached { return cached }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "thinkv-synth-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("shared.h5").path
        let config = smallConfig()
        let generator = try SyntheticTraceGenerator(config: config)
        try generator.write(to: path)
        let reader = try TraceReader(path: path)
        let rows = try reader.recordedLayerIndices.map { try headAveragedAttention(reader, layer: $0) }
        let shared = Shared(
            directory: directory, path: path, plan: generator.plan, config: config, reader: reader, rows: rows)
        cached = shared
        return shared
    }

    override class func tearDown() {
        if let cached { try? FileManager.default.removeItem(at: cached.directory) }
        cached = nil
        super.tearDown()
    }

    /// softmax(scale·q·k) of each query head over 0...p, averaged over heads, in float64 from the
    /// stored tensors: a computation independent of the generator's and the replay's kernels.
    static func headAveragedAttention(_ reader: TraceReader, layer: Int) throws -> [[Double]] {
        let h = reader.header
        let T = h.numTokens, P = h.promptLength, Hq = h.numQHeads, Hkv = h.numKVHeads, D = h.headDim
        let q = try reader.readRows(.q, layer: layer, rows: 0..<T),
            k = try reader.readRows(.k, layer: layer, rows: 0..<T)
        let scale = Double(h.effectiveSoftmaxScale)
        // Float64 copies read through pointers: unchecked indexing keeps debug builds quick.
        let q64 = q.map(Double.init), k64 = k.map(Double.init)
        var out: [[Double]] = []
        var logits = [Double](repeating: 0, count: T)
        for p in P..<T {
            var average = [Double](repeating: 0, count: p + 1)
            for head in 0..<Hq {
                let g = h.kvHead(ofQueryHead: head)
                var top = -Double.infinity
                q64.withUnsafeBufferPointer { Q in
                    k64.withUnsafeBufferPointer { K in
                        let query = Q.baseAddress! + (p * Hq + head) * D
                        for j in 0...p {
                            let key = K.baseAddress! + (j * Hkv + g) * D
                            var s = 0.0
                            for d in 0..<D { s += query[d] * key[d] }
                            logits[j] = scale * s
                            top = max(top, logits[j])
                        }
                    }
                }
                var z = 0.0
                for j in 0...p {
                    logits[j] = Foundation.exp(logits[j] - top)
                    z += logits[j]
                }
                for j in 0...p { average[j] += logits[j] / z / Double(Hq) }
            }
            out.append(average)
        }
        return out
    }

    /// Decode steps (index into `rows[layer]`) of each thought type.
    private func steps(of type: ThoughtType, _ s: Shared) -> [Int] {
        let P = s.config.promptLength
        return (P..<s.config.tokens).filter { s.plan.labels[$0] == type.rawValue }.map { $0 - P }
    }

    // MARK: Format and provenance

    func testGeneratedTracePassesValidationAndRecordsItsProvenance() throws {
        let s = try Self.shared()
        let reader = try TraceReader(path: s.path)
        XCTAssertNoThrow(try reader.checkValues())
        let h = reader.header
        XCTAssertEqual(h.source, "synthetic")
        XCTAssertEqual(h.generator, "thinkv-sim synth \(ThinKVSimVersion.current)")
        XCTAssertEqual(h.seed, 3)
        XCTAssertEqual(h.model, "synthetic-reasoner")
        XCTAssertEqual(
            [h.numTokens, h.promptLength, h.numLayers, h.numQHeads, h.numKVHeads, h.headDim], [640, 64, 3, 4, 2, 32])
        XCTAssertNil(h.softmaxScale, "the default scale 1/sqrt(D) is used, so it is not stored")
        XCTAssertEqual(reader.recordedLayerIndices, [0, 1, 2])
        for layer in reader.layers {
            XCTAssertEqual(layer.dtypes, ["q": .float16, "k": .float16, "v": .float16])
        }
        XCTAssertEqual(try reader.readThoughtLabels(), s.plan.labels)
        XCTAssertEqual(try reader.readTokenIDs(), s.plan.tokenIDs)
    }

    func testAttentionRowsWhenRequestedAreTheSoftmaxOfTheStoredQueriesAndKeys() throws {
        var config = Self.smallConfig()
        config.tokens = 160
        config.promptLength = 32
        config.layers = 1
        config.dtype = .float32
        config.includeValues = false
        config.includeAttention = true
        let path = try TestTraces.directory(self).appendingPathComponent("attn.h5").path
        try SyntheticTraceGenerator(config: config).write(to: path)
        let reader = try TraceReader(path: path)
        XCTAssertNoThrow(try reader.checkValues(), "recorded rows are causal probability rows")
        XCTAssertEqual(reader.layerInfo(0)?.hasValues, false)
        XCTAssertEqual(reader.layerInfo(0)?.attentionHeads, .query)
        let recorded = try reader.readRows(.attn, layer: 0, rows: 0..<128)
        let expected = try Self.headAveragedAttention(reader, layer: 0)
        let Hq = 4, T = 160
        var worst = 0.0
        for (g, row) in expected.enumerated() {
            for (j, weight) in row.enumerated() {
                var average = 0.0
                for h in 0..<Hq { average += Double(recorded[(g * Hq + h) * T + j]) / Double(Hq) }
                worst = max(worst, abs(average - weight))
            }
        }
        XCTAssertLessThan(worst, 1e-5)
    }

    // MARK: Determinism

    private func tensors(_ path: String) throws -> [String: [Float]] {
        let reader = try TraceReader(path: path)
        var out: [String: [Float]] = [:]
        for layer in reader.recordedLayerIndices {
            for tensor in [LayerTensor.q, .k, .v] {
                out["\(layer)/\(tensor.rawValue)"] = try reader.readRows(
                    tensor, layer: layer, rows: 0..<reader.header.numTokens)
            }
        }
        out["labels"] = try reader.readThoughtLabels()!.map(Float.init)
        out["ids"] = try reader.readTokenIDs().map(Float.init)
        return out
    }

    func testSameSeedGivesIdenticalTensorsWhateverTheThreadsAndOtherSeedsDiffer() throws {
        let directory = try TestTraces.directory(self)
        var config = Self.smallConfig(seed: 5)
        config.tokens = 200
        config.promptLength = 32
        config.layers = 2
        config.headDim = 16
        // A small exact limit puts the sampled sparsity estimate on the path too.
        config.exactSparsityPositions = 96
        config.sparsitySampleSize = 64
        config.sparsity.growth = SparsityGrowth()  // the default generator: growth and importance on
        func generate(_ name: String, seed: UInt64, threads: Int) throws -> [String: [Float]] {
            var c = config
            c.seed = seed
            c.threads = threads
            let path = directory.appendingPathComponent(name).path
            try SyntheticTraceGenerator(config: c).write(to: path)
            return try tensors(path)
        }
        let first = try generate("a.h5", seed: 5, threads: 1)
        let again = try generate("b.h5", seed: 5, threads: 3)
        let other = try generate("c.h5", seed: 6, threads: 1)
        XCTAssertEqual(first.keys.sorted(), again.keys.sorted())
        for (name, values) in first {
            XCTAssertEqual(
                values.map(\.bitPattern), again[name]?.map(\.bitPattern), "\(name) differs for the same seed")
        }
        for name in ["0/q", "0/k", "0/v", "1/k", "ids"] {
            XCTAssertNotEqual(first[name], other[name], "\(name) is the same for seeds 5 and 6")
        }
    }

    // MARK: Labels

    func testLabelsFollowTheSegmentsAndThePromptIsUnlabelled() throws {
        let s = try Self.shared()
        let plan = s.plan, P = s.config.promptLength, T = s.config.tokens
        XCTAssertEqual(plan.segments.first, PlannedSegment(type: nil, start: 0, length: P))
        var expectedStart = 0
        for (i, segment) in plan.segments.enumerated() {
            XCTAssertEqual(segment.start, expectedStart, "segments tile the sequence")
            XCTAssertGreaterThan(segment.length, 0)
            expectedStart = segment.end
            if i >= 2 {
                XCTAssertNotEqual(segment.type, plan.segments[i - 1].type, "consecutive thoughts differ in type")
            }
            if let type = segment.type, segment.end < T {
                let minimum = s.config.thoughts.lengths[Int(type.rawValue)].minimum
                XCTAssertGreaterThanOrEqual(segment.length, minimum, "only the last segment may be cut short")
            }
            for p in segment.range { XCTAssertEqual(plan.labels[p], segment.type?.rawValue ?? -1) }
        }
        XCTAssertEqual(expectedStart, T)
        XCTAssertTrue(plan.labels[0..<P].allSatisfy { $0 == -1 })
        XCTAssertTrue(plan.labels[P...].allSatisfy { (0...2).contains($0) })
        XCTAssertEqual(
            Set(plan.segments.compactMap(\.type)), Set(ThoughtType.allCases), "this seed has all three types")
    }

    func testThoughtChainFollowsItsTransitionMatrix() {
        // A chain that must alternate R, E, T, R, ... with fixed lengths.
        var config = Self.smallConfig()
        config.thoughts.initial = [1, 0, 0]
        config.thoughts.transitions = [[0, 1, 0], [0, 0, 1], [1, 0, 0]]
        config.thoughts.lengths = [
            SegmentLength(minimum: 30, mean: 30), SegmentLength(minimum: 20, mean: 20),
            SegmentLength(minimum: 10, mean: 10)
        ]
        let plan = ThoughtPlan(config: config)
        let thoughts = plan.segments.dropFirst()
        XCTAssertEqual(thoughts.map(\.type), thoughts.indices.map { ThoughtType.allCases[($0 - 1) % 3] })
        XCTAssertEqual(
            thoughts.dropLast().map(\.length), thoughts.dropLast().indices.map { [30, 20, 10][($0 - 1) % 3] })
        config.thoughts.lengthScale = 2
        XCTAssertEqual(ThoughtPlan(config: config).segments[1].length, 60)
    }

    // MARK: Sparsity by thought type

    func testSparsityIsOrderedExecutionReasoningTransitionWithClearGapsInSeparatedLayers() throws {
        let s = try Self.shared()
        // The generator aims its sparsity targets at every head's softmax averaged.
        let profile = try SparsityProfile.compute(s.reader, threads: 2, gqa: .meanHeads)
        let decodeLabels = Array(s.plan.labels[s.config.promptLength...])
        func means(_ layer: Int) -> [Double] {
            ThoughtType.allCases.map { t in
                let values = zip(profile.byLayer[layer]!, decodeLabels).filter { $0.1 == t.rawValue }.map {
                    Double($0.0)
                }
                return values.reduce(0, +) / Double(values.count)
            }
        }
        for layer in [1, 2] {
            let m = means(layer)  // R, E, T
            let (r, e, t) = (m[0], m[1], m[2])
            XCTAssertGreaterThan(r - e, 0.15, "layer \(layer): E \(e) vs R \(r)")
            XCTAssertGreaterThan(t - r, 0.12, "layer \(layer): R \(r) vs T \(t)")
            // Tri-modal: thresholds halfway between the means label nearly every step correctly.
            let theta1 = Float((e + r) / 2), theta2 = Float((r + t) / 2)
            let predicted = profile.byLayer[layer]!.map {
                ThoughtThresholds(theta1: theta1, theta2: theta2, layers: [layer]).classify($0)
            }
            let accuracy = ThoughtClassifier.accuracy(predicted: predicted, reference: decodeLabels).accuracy
            XCTAssertGreaterThan(accuracy, 0.95, "layer \(layer)")
        }
        // Layer 0 pulls the three types towards their centre (it keeps 15 % of their distance);
        // with a few segments per type, segment-level noise decides the exact gaps, so compare
        // its spread with the separated layers' rather than with a fixed number.
        let spread = { (m: [Double]) in m.max()! - m.min()! }
        let blended = means(0)
        let separated = min(spread(means(1)), spread(means(2)))
        XCTAssertLessThan(spread(blended), 0.4 * separated, "layer 0 blends the types: \(blended)")
        XCTAssertLessThan(blended[1], blended[2], "even blended, execution stays below transition")
    }

    func testSampledSparsityEstimateStillHitsTheTargets() throws {
        // Exact evaluation only up to 128 visible positions: the rest of the trace relies on
        // the sampled estimate. What the file measures must still be near each type's target.
        var config = Self.smallConfig(seed: 3)
        config.layers = 1  // a lone layer is never blended
        config.exactSparsityPositions = 128
        config.sparsitySampleSize = 96
        let path = try TestTraces.directory(self).appendingPathComponent("sampled.h5").path
        let generator = try SyntheticTraceGenerator(config: config)
        let summary = try generator.write(to: path)
        let profile = try SparsityProfile.compute(TraceReader(path: path), threads: 2)
        let labels = Array(generator.plan.labels[config.promptLength...])
        let layer = summary.layers[0]
        for t in ThoughtType.allCases {
            let measured = zip(profile.byLayer[0]!, labels).filter { $0.1 == t.rawValue }.map(\.0)
            let mean = measured.reduce(0, +) / Float(measured.count)
            XCTAssertEqual(mean, layer.targetMeans[Int(t.rawValue)], accuracy: 0.05, "\(t.name)")
        }
    }

    // MARK: Attention structure

    func testSinksReceiveHighAttentionMass() throws {
        let s = try Self.shared()
        let sinks = s.config.attention.sinkCount
        for (layer, rows) in s.rows.enumerated() {
            var mass = 0.0, share = 0.0
            for row in rows {
                mass += row[0..<sinks].reduce(0, +)
                share += Double(sinks) / Double(row.count)
            }
            mass /= Double(rows.count)
            share /= Double(rows.count)
            XCTAssertGreaterThan(mass, 0.08, "layer \(layer): mean attention mass on the sinks")
            XCTAssertGreaterThan(mass / share, 8, "layer \(layer): sinks get \(mass / share)× their uniform share")
            let transition = steps(of: .transition, s).map { rows[$0][0..<sinks].reduce(0, +) }
            XCTAssertGreaterThan(
                transition.reduce(0, +) / Double(transition.count), 0.15,
                "layer \(layer): sparse transition steps lean on the sinks")
        }
    }

    func testRecentPositionsGetMoreAttentionThanOldOnes() throws {
        let s = try Self.shared()
        let sinks = s.config.attention.sinkCount
        // Recency lives in the keys' drift and the queries' share of it, in every layer (layer 0
        // blends only the sparsity targets). Compare the newest 8 positions with those more than
        // 128 positions back, on execution steps that have at least 64 such old positions.
        let window = 8, age = 128, minimumOld = 64
        for (layer, rows) in s.rows.enumerated() {
            var recent = 0.0, old = 0.0, counted = 0
            for step in steps(of: .execution, s) {
                let row = rows[step], n = row.count
                guard n - age - sinks >= minimumOld else { continue }
                recent += row[(n - window)..<n].reduce(0, +) / Double(window)
                let far = sinks..<(n - age)
                old += row[far].reduce(0, +) / Double(far.count)
                counted += 1
            }
            XCTAssertGreaterThan(counted, 50, "layer \(layer): execution steps with old context")
            // Over 4 with uniform token importance; important old reasoning tokens (more salient)
            // take a little from recency in the blended layer.
            XCTAssertGreaterThan(recent / old, 3.5, "layer \(layer): weight per recent position vs per old position")
        }
    }

    func testRevisitedAnchorsRegainAttentionLongAfterTheyWereWritten() throws {
        let s = try Self.shared()
        let P = s.config.promptLength
        var checked = 0
        func median(_ x: [Double]) -> Double { x.sorted()[x.count / 2] }
        for (layer, rows) in s.rows.enumerated() {
            for (index, segment) in s.plan.segments.enumerated()
            where segment.type == .transition && !segment.revisits.isEmpty {
                let before = s.plan.segments[index - 1]
                XCTAssertTrue(before.revisits.isEmpty, "the preceding segment is a baseline that does not revisit")
                for anchor in segment.revisits.map({ s.plan.anchors[$0] }) {
                    XCTAssertGreaterThanOrEqual(segment.start - anchor, s.config.attention.revisitMinimumAge)
                    // Weight on the anchor relative to the average position of the row (1/n).
                    let relative = { (p: Int) -> Double in rows[p - P][anchor] * Double(p + 1) }
                    let during = median(segment.range.map(relative))
                    let earlier = median(before.range.filter { $0 >= P }.map(relative))
                    let message =
                        "layer \(layer): anchor \(anchor) revisited from \(segment.start) (\(earlier) before, "
                        + "\(during) during)"
                    XCTAssertGreaterThan(during, 3, message)
                    XCTAssertGreaterThan(during, 10 * earlier, message)
                    checked += 1
                }
            }
        }
        XCTAssertGreaterThan(checked, 0, "this seed has revisiting transitions")
    }

    func testOldTransitionTokensDrawLessAttentionThanOldReasoningTokens() throws {
        // The default token importance (R 1, E 0.6, T 0.15): per token, old transition tokens
        // get clearly less of later steps' attention than old reasoning tokens, in every layer.
        let s = try Self.shared()
        var ratios: [Double] = []
        for (layer, rows) in s.rows.enumerated() {
            let attention = SyntheticImportanceTests.oldTokenAttention(
                rows, labels: s.plan.labels, prompt: s.config.promptLength)
            XCTAssertLessThan(
                attention[2], 0.8 * attention[0], "layer \(layer): old T \(attention[2]) vs old R \(attention[0])")
            ratios.append(attention[2] / attention[0])
        }
        XCTAssertLessThan(
            ratios.reduce(0, +) / Double(ratios.count), 0.65, "old T / old R per token by layer: \(ratios)")
    }

    func testExecutionRunsHaveNearDuplicateKeys() throws {
        let s = try Self.shared()
        let reader = s.reader, h = reader.header
        let T = h.numTokens, Hkv = h.numKVHeads, D = h.headDim
        for layer in reader.recordedLayerIndices {
            let k = try reader.readRows(.k, layer: layer, rows: 0..<T)
            func cosine(_ a: Int, _ b: Int, _ g: Int) -> Double {
                var ab = 0.0, aa = 0.0, bb = 0.0
                for d in 0..<D {
                    let x = Double(k[(a * Hkv + g) * D + d]), y = Double(k[(b * Hkv + g) * D + d])
                    ab += x * y
                    aa += x * x
                    bb += y * y
                }
                return ab / (aa * bb).squareRoot()
            }
            // Pairs of neighbours inside one thought, by type; execution pairs that involve a
            // heavy hitter apart: its salience boost deliberately makes it stand out of the run.
            var byType: [ThoughtType: [Double]] = [:]
            var heavyExecution: [Double] = []
            for p in 1..<T where s.plan.labels[p] >= 0 && s.plan.segmentOfPosition[p] == s.plan.segmentOfPosition[p - 1]
            {
                let type = ThoughtType(rawValue: s.plan.labels[p])!
                let heavy = s.plan.isHeavyHitter[p] || s.plan.isHeavyHitter[p - 1]
                for g in 0..<Hkv {
                    if type == .execution && heavy {
                        heavyExecution.append(cosine(p, p - 1, g))
                    } else {
                        byType[type, default: []].append(cosine(p, p - 1, g))
                    }
                }
            }
            let execution = byType[.execution]!, reasoning = byType[.reasoning]!
            let meanE = execution.reduce(0, +) / Double(execution.count)
            let meanR = reasoning.reduce(0, +) / Double(reasoning.count)
            XCTAssertGreaterThan(meanE, 0.8, "layer \(layer): neighbouring execution keys")
            XCTAssertGreaterThan(
                execution.min()!, 0.5, "layer \(layer): every neighbouring execution pair without a heavy hitter")
            XCTAssertGreaterThan(meanE - meanR, 0.25, "layer \(layer): execution is more redundant than reasoning")
            XCTAssertFalse(heavyExecution.isEmpty, "this seed has heavy hitters inside execution runs")
            let meanHeavy = heavyExecution.reduce(0, +) / Double(heavyExecution.count)
            XCTAssertLessThan(meanHeavy, meanE - 0.05, "layer \(layer): a heavy hitter stands out of its execution run")
        }
    }

    // MARK: Configuration and randomness

    func testInvalidConfigurationsAreRefused() {
        func refused(_ change: (inout SyntheticTraceConfig) -> Void, _ mentions: String, line: UInt = #line) {
            var config = Self.smallConfig()
            change(&config)
            XCTAssertThrowsError(try SyntheticTraceGenerator(config: config), line: line) { error in
                XCTAssertTrue("\(error)".contains(mentions), "\(error)", line: line)
            }
        }
        refused(
            {
                $0.queryHeads = 6; $0.kvHeads = 4
            }, "multiple of --kv-heads")
        refused({ $0.promptLength = 640 }, "--prompt")
        refused({ $0.promptLength = 0 }, "--prompt")
        refused({ $0.headDim = 4 }, "--head-dim")
        refused({ $0.thoughts.transitions[1] = [0, 0, 0] }, "positive sum")
        refused({ $0.sparsity.means = [0.7, 0.4, 1.2] }, "(0, 1)")
    }

    func testPortableMathMatchesTheSystemLibrary() {
        for x in [1e-300, 1e-12, 0.001, 0.5, 0.999_999, 1, 1.5, 2, 10, 12345.678, 1e200] {
            XCTAssertEqual(
                PortableMath.log(x), Foundation.log(x), accuracy: 4e-16 * max(1, abs(Foundation.log(x))), "log \(x)")
        }
        for x: Double in [-30, -1, -0.03125, 0, 0.25, 1, 5] {
            XCTAssertEqual(PortableMath.exp(x), Foundation.exp(x), accuracy: 1e-14 * Foundation.exp(x), "exp \(x)")
        }
        var rng = SeededRandom(seed: 9)
        let draws = (0..<20_000).map { _ in Double(rng.gaussian()) }
        let mean = draws.reduce(0, +) / Double(draws.count)
        let variance = draws.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(draws.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03)
        XCTAssertEqual(variance, 1, accuracy: 0.04)
        var a = SeededRandom(seed: 9, stream: [1, 2]), b = SeededRandom(seed: 9, stream: [2, 1])
        XCTAssertNotEqual(a.next(), b.next(), "stream paths are ordered")
    }

    // MARK: Command line

    func testSynthCommandWritesAValidTraceAndRefusesToOverwrite() throws {
        let directory = try TestTraces.directory(self)
        let path = directory.appendingPathComponent("cli.h5").path
        func run(_ arguments: [String]) throws -> CommandRunner.Outcome {
            try CommandRunner.run(arguments, in: directory)
        }
        let arguments = [
            "synth", "-o", path, "--tokens", "96", "--prompt", "16", "--layers", "2", "--q-heads", "2",
            "--kv-heads", "1", "--head-dim", "16", "--seed", "42"
        ]
        let first = try run(arguments)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertEqual(first.stdout.split(separator: "\n").count, 1, "one summary line: \(first.stdout)")
        XCTAssertTrue(first.stdout.hasPrefix("\(path): 96 tokens (16 prompt + 80 generated), 2 layers"), first.stdout)
        XCTAssertTrue(first.stdout.contains("seed 42"), first.stdout)
        let reader = try TraceReader(path: path)
        XCTAssertEqual(reader.header.seed, 42)
        XCTAssertNoThrow(try reader.checkValues())
        let written = try tensors(path)

        let refused = try run(arguments)
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("exists; pass --force"), refused.stderr)
        XCTAssertEqual(refused.stdout, "")

        var forced = arguments
        forced[forced.count - 1] = "43"
        XCTAssertEqual(try run(forced + ["--force"]).status, 0)
        XCTAssertNotEqual(try tensors(path)["0/k"], written["0/k"], "--force replaced the file")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter {
            $0.hasSuffix(".partial")
        }
        XCTAssertEqual(leftovers, [], "no temporary file is left behind")

        XCTAssertEqual(try run(["synth", "-o", path, "--q-heads", "3", "--kv-heads", "2", "--force"]).status, 2)
        XCTAssertEqual(try run(["synth", "--tokens", "10"]).status, 2, "--output is required")
    }
}
