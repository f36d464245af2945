import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

// MARK: Test-only policies (replayed through PolicySpec(unregistered:), never registered)

/// Evicts every position p with p % stride == offset (never the step's own position), before
/// or after the step's attention; with head >= 0 only from that kv head. Pure eviction: the
/// kept keys are exact, so the identities of docs/metrics.md hold exactly.
final class EvictResidues: CachePolicy {
    static let name = "test-evict-residues"
    static func compressionCadence(_ parameters: PolicyParameters) -> String { "every step (a test policy)" }
    static let summary = "test only: evicts positions with a given residue"
    static let parameters: [PolicyParameter] = [
        .integer("stride", default: 3, min: 1, help: "modulus"),
        .integer("offset", default: 0, help: "residue that is evicted"),
        .choice("when", ["before", "after"], default: "before", help: "evict before or after the step's attention"),
        .integer("head", default: -1, min: -1, help: "only this kv head (-1: all)")
    ]
    let stride: Int, offset: Int, before: Bool, head: Int

    init(parameters: PolicyParameters, setup: PolicySetup) throws {
        stride = parameters.int("stride")!
        offset = parameters.int("offset")!
        before = parameters.string("when") == "before"
        head = parameters.int("head")!
    }

    /// The rule, for tests that rebuild the attended set independently.
    static func keeps(_ j: Int, at position: Int, stride: Int, offset: Int) -> Bool {
        j == position || j % stride != offset
    }

    private func evict(_ context: StepContext, _ cache: LayerCache) {
        for g in 0..<cache.numKVHeads where head < 0 || g == head {
            cache.removeAll(kvHead: g) {
                !EvictResidues.keeps(Int($0), at: context.position, stride: stride, offset: offset)
            }
        }
    }

    func beforeAttention(_ context: StepContext, cache: LayerCache) { if before { evict(context, cache) } }
    func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        if !before { evict(context, cache) }
    }
}

/// Keeps only the newest `window` positions, acting after the step's attention (as H2O,
/// StreamingLLM and R-KV do): the attended set is one larger than the resident one.
final class KeepNewestAfterAttention: CachePolicy {
    static let name = "test-keep-newest"
    static func compressionCadence(_ parameters: PolicyParameters) -> String { "every step (a test policy)" }
    static let summary = "test only: sliding window applied after attention"
    static let parameters: [PolicyParameter] = [.integer("window", default: 4, min: 1, help: "positions kept")]
    let window: Int
    var residentCap: Int? { window }

    init(parameters: PolicyParameters, setup: PolicySetup) throws { window = parameters.int("window")! }

    func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > window {
            cache.keep(kvHead: g, slotIndices: Array((cache.count(kvHead: g) - window)..<cache.count(kvHead: g)))
        }
    }
}

/// Charges the prompt of kv head 0 at 3-bit keys and 2-bit values plus 12 bytes of metadata,
/// without touching the stored vectors: a pure byte-accounting probe.
final class ChargePromptBits: CachePolicy {
    static let name = "test-charge-bits"
    static func compressionCadence(_ parameters: PolicyParameters) -> String { "every step (a test policy)" }
    static let summary = "test only: charges prompt tokens of head 0 at 3/2 bits"
    static let parameters: [PolicyParameter] = []
    init(parameters: PolicyParameters, setup: PolicySetup) throws {}

    func prefill(_ context: PrefillContext, cache: LayerCache) {
        for p in 0..<context.setup.header.promptLength { cache.setBits(kvHead: 0, position: p, key: 3, value: 2) }
        cache.metadataBytes[0] = 12
    }
}

/// Evicts everything (the new token included) before attention, or keeps only position 0.
final class EvictAllButFirst: CachePolicy {
    static let name = "test-evict-all"
    static func compressionCadence(_ parameters: PolicyParameters) -> String { "every step (a test policy)" }
    static let summary = "test only: leaves at most position 0"
    static let parameters: [PolicyParameter] = [.flag("keep-first", help: "keep position 0")]
    let keepFirst: Bool
    init(parameters: PolicyParameters, setup: PolicySetup) throws { keepFirst = parameters.bool("keep-first") }

    func beforeAttention(_ context: StepContext, cache: LayerCache) {
        for g in 0..<cache.numKVHeads { cache.removeAll(kvHead: g) { !(keepFirst && $0 == 0) } }
    }
}

/// Evicts positions p ≡ 1 (mod 3) before attention until decode step `readmit`, then brings
/// them back (as a policy that offloads and recalls tokens would) and evicts p ≡ 2 from then on.
/// The step's own position is always kept.
final class EvictThenReadmit: CachePolicy {
    static let name = "test-evict-readmit"
    static func compressionCadence(_ parameters: PolicyParameters) -> String { "every step (a test policy)" }
    static let summary = "test only: evicts one residue, readmits it, evicts another"
    static let parameters: [PolicyParameter] = [
        .integer("readmit", default: 20, min: 0, help: "decode step of the readmission")
    ]
    let readmit: Int
    init(parameters: PolicyParameters, setup: PolicySetup) throws { readmit = parameters.int("readmit")! }

    static func residue(atStep step: Int, readmit: Int) -> Int { step < readmit ? 1 : 2 }

    func beforeAttention(_ context: StepContext, cache: LayerCache) {
        if context.step == readmit {
            for p in stride(from: 1, to: context.position, by: 3) { cache.append(position: p) }
        }
        let residue = EvictThenReadmit.residue(atStep: context.step, readmit: readmit)
        for g in 0..<cache.numKVHeads {
            cache.removeAll(kvHead: g) { Int($0) != context.position && Int($0) % 3 == residue }
        }
    }
}

// MARK: Tests

/// The definitions of docs/metrics.md, checked on hand-computed examples and against an
/// independent double-precision computation.
final class MetricIdentityTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func spec(_ type: any CachePolicy.Type, _ values: [String: String] = [:]) throws -> PolicySpec {
        try PolicySpec(unregistered: type, values: values)
    }

    // MARK: The hand-computed example

    /// T = 4 positions (P = 2 prompt), one head, D = 2, softmax scale 1 so logits are plain q·k.
    ///
    ///     k0 = (0,0)  k1 = (1,0)  k2 = (0,0)  k3 = (0,0)
    ///     v0 = (1,0)  v1 = (0,1)  v2 = (1,1)  v3 = (0,0)
    ///     q2 = (ln 3, 0)          q3 = (0, 0)          (q0, q1 are prompt queries, unused)
    ///
    /// Step 0 (position 2): logits (0, ln 3, 0) -> A = (0.2, 0.6, 0.2); O = 0.2 v0 + 0.6 v1 + 0.2 v2
    /// = (0.4, 0.8), |O| = sqrt(0.8).
    /// Step 1 (position 3): logits all 0 -> A = (0.25, 0.25, 0.25, 0.25); O = (0.5, 0.5), |O| = sqrt(0.5).
    private func handTrace() throws -> String {
        let ln3 = Float(log(3.0))
        let layer = TestTraces.Layer(
            index: 0,
            q: [0, 0, 0, 0, ln3, 0, 0, 0],
            k: [0, 0, 1, 0, 0, 0, 0, 0],
            v: [1, 0, 0, 1, 1, 1, 0, 0])
        return try TestTraces.write(
            to: directory.appendingPathComponent("hand.h5"), T: 4, P: 2, Hq: 1, Hkv: 1, D: 2,
            layers: [layer], softmaxScale: 1)
    }

    /// Evicting position 1 before attention (stride 2, offset 1), worked by hand:
    ///
    /// step 0: S = {0, 2}. m = 0.2 + 0.2 = 0.4. Â = (0.5, 0.5).
    ///         KL(Â‖A) = 0.5 ln(0.5/0.2) · 2 = ln 2.5 = 0.916291 = -ln 0.4.
    ///         Ô = 0.5 v0 + 0.5 v2 = (1, 0.5); Ô - O = (0.6, -0.3); |Ô - O| = sqrt(0.45);
    ///         error = sqrt(0.45 / 0.8) = 0.75.
    /// step 1: S = {0, 2, 3}. m = 0.75. Â = 1/3 each. KL = ln((1/3)/(1/4)) = ln(4/3) = 0.287682.
    ///         Ô = (v0 + v2 + v3)/3 = (2/3, 1/3); Ô - O = (1/6, -1/6); error = (sqrt(2)/6)/sqrt(0.5) = 1/3.
    func testHandComputedEvictionBeforeAttention() throws {
        let path = try handTrace()
        let (result, events) = try TestTraces.replay(
            path, [try spec(EvictResidues.self, ["stride": "2", "offset": "1"])], topK: 2)
        let steps = result.runs[0].steps
        XCTAssertEqual(steps.count, 2)
        let expected: [(recall: Float, kl: Float, error: Float, attended: Double)] = [
            (0.4, 0.916291, 0.75, 2),
            (0.75, 0.287682, 1.0 / 3, 3)
        ]
        for (r, e) in zip(steps, expected) {
            XCTAssertEqual(r.massRecall, e.recall, accuracy: 1e-6, "step \(r.step)")
            XCTAssertEqual(r.massRecallMin, e.recall, accuracy: 1e-6)
            XCTAssertEqual(r.attentionKL, e.kl, accuracy: 1e-5)
            XCTAssertEqual(r.attentionKL, -logf(r.massRecall), accuracy: 1e-5, "pure eviction: KL = -ln m")
            XCTAssertEqual(try XCTUnwrap(r.outputError), e.error, accuracy: 1e-6)
            XCTAssertEqual(r.attendedTokens, e.attended)
            XCTAssertEqual(r.residentTokens, e.attended, "evicting before attention: attended = resident")
            XCTAssertEqual(r.sparsity, 0, "no weight below 1% of the row maximum")
        }
        // Top-2 at step 0: position 1 (0.6), then the tie between 0 and 2 (0.2 each) goes to the
        // lower index, 0. Attended {0, 2} holds 0: recall 1/2. Step 1 is uniform: top-2 = {0, 1},
        // attended {0, 2, 3} holds 0: recall 1/2.
        XCTAssertEqual(steps.map(\.topKRecall), [0.5, 0.5])
        XCTAssertEqual(events.map(\.kept), [[0, 2]], "position 1 leaves at step 0, nothing after")

        // The summaries over the two samples, as numpy computes them:
        // np.percentile([0.4, 0.75], [5, 50, 95]) = [0.4175, 0.575, 0.7325].
        let recall = result.runs[0].summary.massRecall
        XCTAssertEqual(recall.count, 2)
        XCTAssertEqual(recall.mean, 0.575, accuracy: 1e-6)
        XCTAssertEqual(recall.p5, 0.4175, accuracy: 1e-6)
        XCTAssertEqual(recall.p50, 0.575, accuracy: 1e-6)
        XCTAssertEqual(recall.p95, 0.7325, accuracy: 1e-6)
        XCTAssertEqual(recall.min, 0.4, accuracy: 1e-6)
        XCTAssertEqual(recall.max, 0.75, accuracy: 1e-6)
        XCTAssertEqual(try XCTUnwrap(result.runs[0].summary.outputError).mean, (0.75 + 1.0 / 3) / 2, accuracy: 1e-6)
    }

    /// k of top-k recall, and k' = p + 1 when fewer than k positions are visible.
    func testHandComputedTopKRecall() throws {
        let path = try handTrace()
        let policy = try spec(EvictResidues.self, ["stride": "2", "offset": "1"])
        // k = 1: step 0's top-1 is position 1, evicted -> 0; step 1's (uniform) is position 0, kept -> 1.
        XCTAssertEqual(try TestTraces.replay(path, [policy], topK: 1).0.runs[0].steps.map(\.topKRecall), [0, 1])
        // k = 32 > visible positions: k' = p + 1, so recall = |S| / (p + 1) = 2/3 and 3/4.
        let wide = try TestTraces.replay(path, [policy], topK: 32).0.runs[0].steps.map(\.topKRecall)
        XCTAssertEqual(wide[0], 2.0 / 3, accuracy: 1e-7)
        XCTAssertEqual(wide[1], 3.0 / 4, accuracy: 1e-7)
        // The default k is 32.
        XCTAssertEqual(ReplayConfiguration(policies: []).topK, 32)
    }

    /// Evicting after attention: the step still attends to everything, then drops position 1.
    ///
    /// step 0: S = {0, 1, 2} = everything: m = 1, KL = 0, error 0; resident afterwards {0, 2}.
    /// step 1: S = {0, 2, 3}: m = 0.75, KL = ln(4/3), error 1/3 (as before attention above).
    func testAttendedAndResidentSetsDifferWhenEvictingAfterAttention() throws {
        let path = try handTrace()
        let (result, _) = try TestTraces.replay(
            path, [try spec(EvictResidues.self, ["stride": "2", "offset": "1", "when": "after"])])
        let steps = result.runs[0].steps
        XCTAssertEqual(steps.map(\.attendedTokens), [3, 3])
        XCTAssertEqual(steps.map(\.residentTokens), [2, 3])
        XCTAssertEqual(steps.map(\.attendedBytes), [3 * 2 * 4, 3 * 2 * 4])
        XCTAssertEqual(steps.map(\.residentBytes), [2 * 2 * 4, 3 * 2 * 4])
        XCTAssertEqual(steps[0].massRecall, 1, accuracy: 1e-6)
        XCTAssertEqual(steps[0].attentionKL, 0, accuracy: 1e-6)
        XCTAssertEqual(try XCTUnwrap(steps[0].outputError), 0, accuracy: 1e-6)
        XCTAssertEqual(steps[1].massRecall, 0.75, accuracy: 1e-6)
        XCTAssertEqual(steps[1].attentionKL, 0.287682, accuracy: 1e-5)
        XCTAssertEqual(try XCTUnwrap(steps[1].outputError), 1.0 / 3, accuracy: 1e-6)
    }

    /// A sliding window applied after attention: every step attends to window + 1 tokens (the
    /// resident window plus the new token) and leaves window tokens resident; mass recall is the
    /// full-cache mass of the attended positions, computed here independently.
    func testSlidingWindowAfterAttentionMeasuresTheAttendedSet() throws {
        let T = 30, P = 8, D = 8, window = 5
        let layer = TestTraces.randomLayer(T: T, Hq: 1, Hkv: 1, D: D, seed: 21)
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("window.h5"), T: T, P: P, Hq: 1, Hkv: 1, D: D,
            layers: [layer])
        let (result, _) = try TestTraces.replay(
            path, [try spec(KeepNewestAfterAttention.self, ["window": "\(window)"])])
        let reference = IndependentReference(layer: layer, T: T, Hq: 1, Hkv: 1, D: D, scale: 1 / Float(D).squareRoot())
        for r in result.runs[0].steps {
            let p = r.position
            XCTAssertEqual(r.attendedTokens, Double(r.step == 0 ? P + 1 : window + 1), "step \(r.step)")
            XCTAssertEqual(r.residentTokens, Double(window))
            let attended = r.step == 0 ? Array(0...p) : Array((p - window)...p)
            let A = reference.attention(position: p, queryHead: 0)
            let mass = attended.reduce(0) { $0 + A[$1] }
            XCTAssertEqual(Double(r.massRecall), mass, accuracy: 1e-5)
            XCTAssertEqual(Double(r.attentionKL), -log(mass), accuracy: 2e-5)
        }
    }

    // MARK: KL = -ln m, per step, on random data

    func testKLEqualsMinusLogMassForPureEvictionOnEveryStep() throws {
        let T = 80, P = 12, D = 16
        let layer = TestTraces.randomLayer(T: T, Hq: 1, Hkv: 1, D: D, seed: 22)
        // The same attention once more as a recorded attention-only layer (the other code path).
        let reference = IndependentReference(layer: layer, T: T, Hq: 1, Hkv: 1, D: D, scale: 1 / Float(D).squareRoot())
        let attnOnly = TestTraces.Layer(index: 1, attn: reference.recordedRows(P: P))
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("kl.h5"), T: T, P: P, Hq: 1, Hkv: 1, D: D,
            numLayers: 2, layers: [layer, attnOnly])
        for when in ["before", "after"] {
            let (result, _) = try TestTraces.replay(path, [try spec(EvictResidues.self, ["stride": "3", "when": when])])
            let steps = result.runs[0].steps
            XCTAssertEqual(steps.count, 2 * (T - P))
            XCTAssertLessThan(steps.map(\.massRecall).min()!, 0.9, "the example must evict real mass")
            for r in steps {
                let expected = -logf(r.massRecall)
                XCTAssertEqual(
                    r.attentionKL, expected, accuracy: 2e-5 + 1e-4 * expected,
                    "\(when), layer \(r.layer), step \(r.step)")
            }
            // Both layers describe the same attention, so they must agree step by step.
            for (a, b) in zip(steps.filter { $0.layer == 0 }, steps.filter { $0.layer == 1 }) {
                XCTAssertEqual(a.massRecall, b.massRecall, accuracy: 1e-5)
                XCTAssertEqual(a.attentionKL, b.attentionKL, accuracy: 1e-4)
                XCTAssertEqual(a.topKRecall, b.topKRecall)
            }
        }
    }

    /// Every metric of every step against a double-precision computation straight from the
    /// definitions, with grouped query heads (4 query heads over 2 kv heads) and step records
    /// holding means over query heads.
    func testEveryStepMatchesAnIndependentComputation() throws {
        let T = 48, P = 10, Hq = 4, Hkv = 2, D = 8, topK = 6
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 23)
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("independent.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv,
            D: D, layers: [layer])
        let (result, _) = try TestTraces.replay(
            path, [try spec(EvictResidues.self, ["stride": "4", "offset": "1", "head": "1"])],
            topK: topK)
        let reference = IndependentReference(
            layer: layer, T: T, Hq: Hq, Hkv: Hkv, D: D, scale: 1 / Float(D).squareRoot())
        var allRecalls: [Double] = []
        for r in result.runs[0].steps {
            let p = r.position
            var recall = 0.0, minRecall = 1.0, top = 0.0, kl = 0.0, error = 0.0
            var averaged = [Double](repeating: 0, count: p + 1)
            for h in 0..<Hq {
                let g = h / (Hq / Hkv)
                // Only kv head 1 evicts (positions 1, 5, 9, ... other than p itself).
                let attended = (0...p).filter { g == 0 || EvictResidues.keeps($0, at: p, stride: 4, offset: 1) }
                let A = reference.attention(position: p, queryHead: h)
                for j in 0...p { averaged[j] += A[j] / Double(Hq) }
                let m = attended.reduce(0) { $0 + A[$1] }
                let policyA = attended.map { A[$0] / m }  // pure eviction: A renormalised over S
                let kPrime = min(topK, p + 1)
                let topSet = Set((0...p).sorted { A[$0] > A[$1] }.prefix(kPrime))
                let O = reference.output(weights: Array(0...p).map { ($0, A[$0]) }, kvHead: g)
                let Ohat = reference.output(weights: zip(attended, policyA).map { ($0, $1) }, kvHead: g)
                let diff = zip(O, Ohat).map { ($0 - $1) * ($0 - $1) }.reduce(0, +).squareRoot()
                recall += m / Double(Hq)
                minRecall = min(minRecall, m)
                top += Double(attended.filter { topSet.contains($0) }.count) / Double(kPrime) / Double(Hq)
                kl += zip(attended, policyA).reduce(0) { $0 + $1.1 * log($1.1 / A[$1.0]) } / Double(Hq)
                error += diff / O.map { $0 * $0 }.reduce(0, +).squareRoot() / Double(Hq)
                allRecalls.append(m)
            }
            XCTAssertEqual(Double(r.massRecall), recall, accuracy: 1e-5, "step \(r.step)")
            XCTAssertEqual(Double(r.massRecallMin), minRecall, accuracy: 1e-5)
            XCTAssertEqual(Double(r.topKRecall), top, accuracy: 1e-6)
            XCTAssertEqual(Double(r.attentionKL), kl, accuracy: 1e-4)
            XCTAssertEqual(Double(try XCTUnwrap(r.outputError)), error, accuracy: 1e-4)
            let maxWeight = averaged.max()!
            let sparsity = Double(averaged.filter { $0 < 0.01 * maxWeight }.count) / Double(p + 1)
            XCTAssertEqual(Double(r.sparsity), sparsity, accuracy: 1e-6)
            // Retained tokens are a mean over kv heads: head 0 holds p+1, head 1 fewer.
            let head1 = (0...p).filter { EvictResidues.keeps($0, at: p, stride: 4, offset: 1) }.count
            XCTAssertEqual(r.attendedTokens, Double(p + 1 + head1) / 2)
        }
        // Summaries run over every (step, layer, query head) sample, not over step means.
        let summary = result.runs[0].summary.massRecall
        XCTAssertEqual(summary.count, (T - P) * Hq)
        XCTAssertEqual(summary.min, allRecalls.min()!, accuracy: 1e-5)
        XCTAssertEqual(summary.mean, allRecalls.reduce(0, +) / Double(allRecalls.count), accuracy: 1e-5)
        XCTAssertEqual(summary.p50, numpyPercentile(allRecalls, 50), accuracy: 1e-5)
        XCTAssertEqual(summary.p5, numpyPercentile(allRecalls, 5), accuracy: 1e-5)
    }

    /// The reference keeps logits only at positions a policy can still attend (what caches held
    /// at the chunk before, plus newer positions). A policy that readmits an evicted position
    /// gets its logits recomputed instead: the same bits as a replay in one chunk, where every
    /// position is kept, and the metrics of an independent computation.
    func testReadmittedPositionsGetTheirLogitsRecomputed() throws {
        let T = 48, P = 10, Hq = 4, Hkv = 2, D = 8
        let layer = TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 31)
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("readmit.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv,
            D: D, layers: [layer])
        let readmit = 21
        func replay(chunkSteps: Int) throws -> ReplayResult {
            var configuration = ReplayConfiguration(
                policies: [try spec(EvictThenReadmit.self, ["readmit": "\(readmit)"])], topK: 6)
            configuration.threads = 1
            configuration.chunkSteps = chunkSteps
            return try ReplayEngine(reader: TraceReader(path: path), configuration: configuration).run()
        }
        let chunked = try replay(chunkSteps: 4), whole = try replay(chunkSteps: 1000)
        // Only the chunked replay recomputed q·k (for the steps after the readmission).
        XCTAssertGreaterThan(chunked.timing.policyFLOPs, whole.timing.policyFLOPs)
        XCTAssertEqual(chunked.runs[0].steps.count, T - P)
        for (a, b) in zip(chunked.runs[0].steps, whole.runs[0].steps) {
            XCTAssertEqual(a.massRecall.bitPattern, b.massRecall.bitPattern, "step \(a.step)")
            XCTAssertEqual(a.attentionKL.bitPattern, b.attentionKL.bitPattern, "step \(a.step)")
            XCTAssertEqual(a.outputError?.bitPattern, b.outputError?.bitPattern, "step \(a.step)")
        }
        let reference = IndependentReference(
            layer: layer, T: T, Hq: Hq, Hkv: Hkv, D: D, scale: 1 / Float(D).squareRoot())
        for r in chunked.runs[0].steps where r.step >= readmit {
            let residue = EvictThenReadmit.residue(atStep: r.step, readmit: readmit)
            let attended = (0...r.position).filter { $0 == r.position || $0 % 3 != residue }
            XCTAssertTrue(attended.contains(1), "position 1 is attended again")
            let recall = (0..<Hq).reduce(0.0) { sum, h in
                let A = reference.attention(position: r.position, queryHead: h)
                return sum + attended.reduce(0) { $0 + A[$1] } / Double(Hq)
            }
            XCTAssertEqual(Double(r.massRecall), recall, accuracy: 1e-5, "step \(r.step)")
        }
    }

    // MARK: Bytes

    /// A 16-bit token costs D·2 bytes for its key and as much for its value in each kv head; the
    /// full cache at position p holds (p+1)·Hkv·D·4 bytes; model bytes scale replayed layers up to
    /// num_layers; % of full compares attended bytes with the full cache at the same step.
    func testByteAccounting() throws {
        let T = 12, P = 4, Hq = 4, Hkv = 2, D = 4, numLayers = 8
        let layers = [
            TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 24, index: 0),
            TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 25, index: 5)
        ]
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("bytes.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            numLayers: numLayers, layers: layers)
        // Head 1 drops even positions before attention; head 0 keeps everything.
        let (result, _) = try TestTraces.replay(
            path, [try spec(EvictResidues.self, ["stride": "2", "offset": "0", "head": "1"])])
        let run = result.runs[0]
        XCTAssertEqual(run.steps.count, 2 * (T - P))
        var perStepPercent: [Double] = []
        for r in run.steps {
            let p = r.position
            let head0 = p + 1, head1 = p / 2 + 1  // odd positions below p, and p itself
            XCTAssertEqual(r.attendedTokens, Double(head0 + head1) / 2)
            XCTAssertEqual(r.attendedBytes, (head0 + head1) * D * 2 * 2)
            XCTAssertEqual(r.residentBytes, r.attendedBytes)
            XCTAssertEqual(r.fullBytes, (p + 1) * Hkv * D * 4)
            if r.layer == 0 { perStepPercent.append(100 * Double(r.attendedBytes) / Double(r.fullBytes)) }
        }
        // Two of eight layers replayed: model bytes are the replayed layers' bytes times 8 / 2.
        let last = T - 1
        let lastAttended = Double((last + 1 + last / 2 + 1) * D * 4)
        let memory = run.summary.memory
        XCTAssertEqual(memory.peakBytes, 2 * lastAttended * 4)
        XCTAssertEqual(memory.finalResidentBytes, 2 * lastAttended * 4)
        XCTAssertEqual(memory.finalFullBytes, Double(2 * T * Hkv * D * 4 * 4))
        XCTAssertEqual(
            memory.meanBytes,
            (P..<T).map { Double(2 * ($0 + 1 + $0 / 2 + 1) * D * 4 * 4) }.reduce(0, +) / Double(T - P),
            accuracy: 1e-9)
        XCTAssertEqual(
            memory.meanPercentOfFull, perStepPercent.reduce(0, +) / Double(perStepPercent.count), accuracy: 1e-9)
        XCTAssertEqual(memory.finalPercentOfFull, 100 * lastAttended / Double(T * Hkv * D * 4), accuracy: 1e-9)
        XCTAssertEqual(memory.finalResidentTokens, Double(last + 1 + last / 2 + 1) / 2)
        XCTAssertEqual(
            memory.meanAttendedTokens, run.steps.map(\.attendedTokens).reduce(0, +) / Double(run.steps.count))
    }

    /// Quantized tokens cost bits/8 per element (summed over a head, rounded up to whole
    /// bytes) plus the metadata the policy declares.
    func testQuantizedByteAccounting() throws {
        let T = 8, P = 3, Hq = 2, Hkv = 2, D = 4
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("bits.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            layers: [TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 26)])
        let (result, _) = try TestTraces.replay(path, [try spec(ChargePromptBits.self)])
        for r in result.runs[0].steps {
            let n = r.position + 1
            // Head 0: 3 prompt tokens at (3 + 2) bits × 4 elements = 60 bits -> 8 bytes (7.5 rounded
            // up), the rest at 16 + 16 bits; plus 12 bytes of metadata. Head 1: all 16-bit.
            let head0 = (P * 5 * D + (n - P) * 32 * D + 7) / 8 + 12
            let head1 = n * 32 * D / 8
            XCTAssertEqual(r.attendedBytes, head0 + head1, "step \(r.step)")
            XCTAssertEqual(r.massRecall, 1, accuracy: 1e-6, "bits alone do not change attention here")
        }
    }

    // MARK: Paging

    private func replay(_ path: String, _ spec: PolicySpec, paging: PagingMode, blockSize: Int) throws -> PolicyRun {
        var configuration = ReplayConfiguration(policies: [spec], threads: 1)
        configuration.paging = paging
        configuration.blockSize = blockSize
        return try ReplayEngine(reader: try TraceReader(path: path), configuration: configuration).run().runs[0]
    }

    /// The hand trace with blocks of 2 slots, evicting even positions (never the current one)
    /// before attention. 16-bit tokens: one slot costs D · 32 bits = 8 bytes.
    ///
    /// prefill: block 0 = [0, 1].
    /// step 0 (p = 2): 0 leaves; its slot is reused in place by 2 (CT): block 0 = [2, 1]:
    ///   1 block, occupancy 2/2, 16 bytes. A dense cache would shift 1 forward: 8 bytes copied.
    /// step 1 (p = 3): 2 leaves and 3 takes its slot: block 0 = [3, 1]; 2 was last in dense
    ///   order, so a gather copies nothing.
    func testHandComputedPaging() throws {
        let path = try handTrace()
        let policy = try spec(EvictResidues.self, ["stride": "2", "offset": "0"])
        for mode in [PagingMode.ct, .compact] {
            let run = try replay(path, policy, paging: mode, blockSize: 2)
            XCTAssertEqual(run.steps.map(\.blocks), [1, 1], "\(mode)")
            XCTAssertEqual(run.steps.map(\.slotOccupancy), [1, 1])
            XCTAssertEqual(run.steps.map(\.pagedBytes), [16, 16])
            XCTAssertEqual(run.steps.map(\.compactionBytes), [8, 0], "measured in every mode")
            XCTAssertEqual(run.summary.memory.peakBlocks, 1)
            XCTAssertEqual(run.summary.memory.peakPagedBytes, 16)
            XCTAssertEqual(run.summary.memory.totalCompactionBytes, 8)
        }
        // Without eviction the blocks fill up: 3 tokens then 4 in blocks of 2.
        let full = try replay(path, try PolicySpec(name: "full"), paging: .ct, blockSize: 2)
        XCTAssertEqual(full.steps.map(\.blocks), [2, 2])
        XCTAssertEqual(full.steps.map(\.slotOccupancy), [0.75, 1])
        XCTAssertEqual(full.summary.memory.meanSlotOccupancy, 0.875)
    }

    /// With --paging none there are no blocks, so nothing is charged to them, metadata included.
    func testNoPagingChargesNothingToBlocks() throws {
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("nopaging.h5"), T: 8, P: 3, Hq: 2, Hkv: 2, D: 4,
            layers: [TestTraces.randomLayer(T: 8, Hq: 2, Hkv: 2, D: 4, seed: 31)])
        let none = try replay(path, try spec(ChargePromptBits.self), paging: .none, blockSize: 4)
        for r in none.steps {
            XCTAssertEqual([r.blocks, r.pagedBytes], [0, 0])
            XCTAssertEqual(r.slotOccupancy, 0)
        }
        XCTAssertEqual(none.summary.memory.peakPagedBytes, 0)
        // With pages, the 12 bytes of metadata come on top of the blocks.
        let ct = try replay(path, try spec(ChargePromptBits.self), paging: .ct, blockSize: 4)
        // 4 tokens per head, one block each; head 0's block is as wide as its widest (16-bit) token
        let first = ct.steps[0]
        XCTAssertEqual(first.blocks, 2)
        XCTAssertEqual(first.pagedBytes, 2 * 4 * 4 * 32 / 8 + 12)
    }

    // MARK: Values, threads, edge cases

    func testOutputErrorIsUnavailableWithoutValues() throws {
        let T = 20, P = 5, D = 4
        let withValues = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: D, seed: 27, index: 0)
        let withoutValues = TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: D, seed: 28, index: 1, values: false)
        let policy = try spec(EvictResidues.self)
        let none = try TestTraces.write(
            to: directory.appendingPathComponent("novalues.h5"), T: T, P: P, Hq: 2, Hkv: 1, D: D,
            numLayers: 2, layers: [withoutValues])
        let (noneResult, _) = try TestTraces.replay(none, [policy])
        XCTAssertNil(noneResult.runs[0].summary.outputError, "unavailable, not zero")
        XCTAssertTrue(noneResult.runs[0].steps.allSatisfy { $0.outputError == nil })
        XCTAssertTrue(noneResult.notes.contains { $0.contains("output error unavailable") })
        XCTAssertTrue(
            ReplayReport.stepCSV(noneResult).split(separator: "\n").dropFirst().allSatisfy { $0.contains(",,") },
            "an unavailable output error is an empty CSV cell")

        let mixed = try TestTraces.write(
            to: directory.appendingPathComponent("mixed.h5"), T: T, P: P, Hq: 2, Hkv: 1, D: D,
            numLayers: 2, layers: [withValues, withoutValues])
        let (mixedResult, _) = try TestTraces.replay(mixed, [policy])
        let error = try XCTUnwrap(mixedResult.runs[0].summary.outputError)
        XCTAssertEqual(error.count, (T - P) * 2, "only the layer with values contributes samples")
        XCTAssertEqual(mixedResult.runs[0].summary.massRecall.count, 2 * (T - P) * 2)
    }

    func testResultsDoNotDependOnThreads() throws {
        let T = 300, P = 40, Hq = 4, Hkv = 2, D = 16
        let layers = [
            TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 29, index: 0),
            TestTraces.randomLayer(T: T, Hq: Hq, Hkv: Hkv, D: D, seed: 30, index: 2)
        ]
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("threads.h5"), T: T, P: P, Hq: Hq, Hkv: Hkv, D: D,
            numLayers: 3, layers: layers)
        let specs = [
            try PolicySpec(name: "full"), try spec(EvictResidues.self, ["stride": "5", "head": "0"]),
            try spec(KeepNewestAfterAttention.self, ["window": "64"])
        ]
        let (one, oneEvents) = try TestTraces.replay(path, specs, threads: 1, topK: 8)
        let (four, fourEvents) = try TestTraces.replay(path, specs, threads: 4, topK: 8)
        XCTAssertFalse(oneEvents.isEmpty)
        XCTAssertEqual(oneEvents, fourEvents)
        for (a, b) in zip(one.runs, four.runs) {
            XCTAssertEqual(a.spec, b.spec)
            XCTAssertEqual(a.steps, b.steps, "bit-identical step records for \(a.spec.label)")
            XCTAssertEqual(a.summary, b.summary)
        }
    }

    /// A head that attends to nothing has no attention to compare: mass recall 0 and an infinite
    /// KL (-ln 0), never the 0 of a perfect score; summaries stay infinite rather than NaN.
    /// 128-step chunks while their logits (128 × Hq × T floats) fit in 64 MiB, else 64; the thread
    /// count plays no part (it would reorder the lines of `--kept`).
    func testAutomaticChunkStepsFollowTheLogitMemory() {
        func steps(Hq: Int, T: Int) -> Int {
            ReplayEngine.automaticChunkSteps(
                header: TraceHeader(
                    model: "m", numLayers: 1, numQHeads: Hq, numKVHeads: 1, headDim: 8,
                    promptLength: 1, numTokens: T))
        }
        XCTAssertEqual(steps(Hq: 14, T: 8192), 128)  // 128 · 14 · 8192 · 4 B = 56 MiB
        XCTAssertEqual(steps(Hq: 14, T: 32768), 64)  // 224 MiB
        XCTAssertEqual(steps(Hq: 1, T: 131_072), 128)  // exactly 64 MiB
        XCTAssertEqual(steps(Hq: 1, T: 131_073), 64)
    }

    func testEmptyAttendedSetHasInfiniteKL() throws {
        let path = try handTrace()
        let (result, _) = try TestTraces.replay(path, [try spec(EvictAllButFirst.self)])
        for r in result.runs[0].steps {
            XCTAssertEqual(r.attendedTokens, 0)
            XCTAssertEqual(r.massRecall, 0)
            XCTAssertEqual(r.topKRecall, 0)
            XCTAssertEqual(r.attentionKL, .infinity)
            XCTAssertEqual(r.outputError, 1, "the output is zero: an error of |O| / |O|")
        }
        let kl = result.runs[0].summary.attentionKL
        XCTAssertEqual([kl.mean, kl.p5, kl.p50, kl.p95, kl.min, kl.max], [Double](repeating: .infinity, count: 6))
        XCTAssertTrue(
            ReplayReport.stepCSV(result).contains(",inf,"), "an infinite KL is written as inf, not as unavailable")

        // Attention-only layer whose recorded rows put no weight on position 0, the only one kept.
        let T = 6, P = 2, G = T - P
        var rows = [Float](repeating: 0, count: G * T)
        for g in 0..<G { rows[g * T + P + g] = 0.5; rows[g * T + P + g - 1] = 0.5 }
        let attnPath = try TestTraces.write(
            to: directory.appendingPathComponent("attn-zero.h5"), T: T, P: P, Hq: 1, Hkv: 1,
            D: 2, layers: [TestTraces.Layer(index: 0, attn: rows)])
        let (attnResult, _) = try TestTraces.replay(attnPath, [try spec(EvictAllButFirst.self, ["keep-first": "true"])])
        for r in attnResult.runs[0].steps {
            XCTAssertEqual(r.attendedTokens, 1)
            XCTAssertEqual(r.massRecall, 0)
            XCTAssertEqual(r.attentionKL, .infinity)
        }
    }

    func testPercentilesInterpolateLikeNumpy() {
        // np.percentile(np.arange(1, 11), [5, 50, 95]) = [1.45, 5.5, 9.55]
        let s = MetricSummary(samples: (1...10).map { Float($0) }.shuffled())
        XCTAssertEqual(s.p5, 1.45, accuracy: 1e-9)
        XCTAssertEqual(s.p50, 5.5, accuracy: 1e-9)
        XCTAssertEqual(s.p95, 9.55, accuracy: 1e-9)
        XCTAssertEqual(s.mean, 5.5)
        XCTAssertEqual([s.min, s.max], [1, 10])
        let single = MetricSummary(samples: [0.25])
        XCTAssertEqual([single.p5, single.p50, single.p95], [0.25, 0.25, 0.25])
        XCTAssertTrue(MetricSummary(samples: []).mean.isNaN, "no samples: no number")
    }

    func testSparsityCountsPositionsBelowOnePercentOfTheMaximum() {
        // Maximum 0.5, cut 0.005: only 0.004 is below it.
        let row: [Float] = [0.5, 0.004, 0.006, 0.49]
        XCTAssertEqual(row.withUnsafeBufferPointer { Sparsity.of(averagedRow: $0.baseAddress!, count: 4) }, 0.25)
        let flat: [Float] = [0.25, 0.25, 0.25, 0.25]
        XCTAssertEqual(flat.withUnsafeBufferPointer { Sparsity.of(averagedRow: $0.baseAddress!, count: 4) }, 0)
    }
}

/// numpy's default ("linear") percentile.
private func numpyPercentile(_ values: [Double], _ q: Double) -> Double {
    let sorted = values.sorted()
    let position = q / 100 * Double(sorted.count - 1)
    let lower = Int(position), upper = min(lower + 1, sorted.count - 1)
    return sorted[lower] + (position - Double(lower)) * (sorted[upper] - sorted[lower])
}

/// Full-cache attention and outputs in double precision, straight from the trace tensors.
private struct IndependentReference {
    let layer: TestTraces.Layer
    let T: Int, Hq: Int, Hkv: Int, D: Int
    let scale: Float

    /// softmax over 0...p of scale · q_p,h · k_j,g.
    func attention(position p: Int, queryHead h: Int) -> [Double] {
        let q = layer.q!, k = layer.k!
        let g = h / (Hq / Hkv)
        let logits = (0...p).map { j -> Double in
            var dot = 0.0
            for d in 0..<D { dot += Double(q[(p * Hq + h) * D + d]) * Double(k[(j * Hkv + g) * D + d]) }
            return Double(scale) * dot
        }
        let top = logits.max()!
        let e = logits.map { exp($0 - top) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    /// Σ weight · v_j over (position, weight) pairs of kv head g.
    func output(weights: [(Int, Double)], kvHead g: Int) -> [Double] {
        let v = layer.v!
        var o = [Double](repeating: 0, count: D)
        for (j, w) in weights { for d in 0..<D { o[d] += w * Double(v[(j * Hkv + g) * D + d]) } }
        return o
    }

    /// The attention rows a recorder would store, `[G][Hq][T]` as float32.
    func recordedRows(P: Int) -> [Float] {
        var rows = [Float](repeating: 0, count: (T - P) * Hq * T)
        for g in 0..<(T - P) {
            for h in 0..<Hq {
                for (j, a) in attention(position: P + g, queryHead: h).enumerated() {
                    rows[(g * Hq + h) * T + j] = Float(a)
                }
            }
        }
        return rows
    }
}
