import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Kernel density, mode finding, calibration of L*/θ1/θ2, the classification rule, the refresh
/// hold, accuracy, the thresholds file, and `inspect --thoughts` on traces whose sparsity is known.
final class ThoughtCalibrationTests: XCTestCase {
    // MARK: Kernel density

    func testScottBandwidthMatchesHandComputation() {
        // mean 0.3; squared deviations 0.04 + 0.01 + 0 + 0.01 + 0.04 = 0.1; σ̂² = 0.1 / 4 = 0.025,
        // σ̂ = 0.158113883; 5^(−1/5) = 0.724779664; h = 0.114597727 (scipy's gaussian_kde agrees).
        let samples = [0.1, 0.2, 0.3, 0.4, 0.5]
        XCTAssertEqual(KernelDensity.scottBandwidth(samples), 0.114597727, accuracy: 1e-9)
        let kde = KernelDensity(samples: samples)
        XCTAssertEqual(kde.bandwidth, 0.114597727, accuracy: 1e-9)
        XCTAssertEqual(kde.standardDeviation, 0.158113883, accuracy: 1e-9)
    }

    func testDensityValuesMatchHandComputation() {
        // Two samples 0.4, 0.6: σ̂ = √0.02 = 0.141421356, h = σ̂·2^(−1/5) = 0.123114441.
        // f(0.5) = (1/(2h))·2·φ(0.1/h) = φ(0.812252)/h = 0.286842/0.123114 = 2.329900.
        // f(0.4) = (φ(0) + φ(0.2/h))/(2h) = (0.398942 + 0.106585)/0.246229 = 2.053237.
        let kde = KernelDensity(samples: [0.4, 0.6])
        XCTAssertEqual(kde.bandwidth, 0.123114441, accuracy: 1e-9)
        XCTAssertEqual(kde.grid[500], 0.5, accuracy: 1e-12)
        XCTAssertEqual(kde.density[500], 2.329900186, accuracy: 1e-6)
        XCTAssertEqual(kde.density[400], 2.053237204, accuracy: 1e-6)
        // Almost all the mass lies on [0, 1]: the Riemann sum is 1 up to the tails beyond 0 and 1.
        let mass = kde.density.reduce(0, +) * 0.001
        XCTAssertEqual(mass, 1, accuracy: 0.002)
    }

    func testDegenerateSamplesUseTheMinimumBandwidth() {
        let kde = KernelDensity(samples: [0.3, 0.3, 0.3])
        XCTAssertEqual(kde.standardDeviation, 0)
        XCTAssertEqual(kde.bandwidth, KernelDensity.defaultMinimumBandwidth)
        let modes = kde.modes()
        XCTAssertEqual(modes.count, 1)
        XCTAssertEqual(modes[0].position, 0.3, accuracy: 1e-9)
    }

    /// Three evenly filled clusters at 0.2, 0.5, 0.8 (60 points each over ±0.03): three modes,
    /// valleys at 0.35 and 0.65 by symmetry. scipy (gaussian_kde, find_peaks, peak_prominences on
    /// the same grid) gives h = 0.087167, peaks 0.201/0.500/0.799, relative prominences
    /// 0.5174/0.9208/0.5174.
    func testThreeSeparatedClustersGiveThreeModesWithValleysBetween() {
        let samples = clusters([0.2, 0.5, 0.8], perCluster: 60, halfWidth: 0.03)
        let kde = KernelDensity(samples: samples)
        XCTAssertEqual(kde.bandwidth, 0.087167, accuracy: 1e-6)
        let modes = kde.modes()
        XCTAssertEqual(modes.map(\.position), [0.201, 0.5, 0.799], accuracy: 1e-9)
        XCTAssertEqual(modes.map(\.relativeProminence), [0.51742, 0.92077, 0.51742], accuracy: 1e-4)
        let valleys = zip(modes, modes.dropFirst()).map { kde.valley(between: $0.index, and: $1.index) }
        XCTAssertEqual(valleys.map(\.position), [0.35, 0.65], accuracy: 1e-9)
        XCTAssertEqual(valleys[0].density, valleys[1].density, accuracy: 1e-9)
        XCTAssertLessThan(valleys[0].density, modes[0].density)
    }

    func testSingleClusterGivesOneMode() {
        let kde = KernelDensity(samples: (0..<100).map { 0.4 + 0.2 * Double($0) / 99 })
        XCTAssertEqual(kde.bandwidth, 0.023333, accuracy: 1e-6)
        let modes = kde.modes()
        XCTAssertEqual(modes.count, 1)
        XCTAssertEqual(modes[0].position, 0.5, accuracy: 1e-9)
        XCTAssertEqual(modes[0].relativeProminence, 1, accuracy: 1e-12)
    }

    /// One stray sample far from two clusters makes a real but tiny bump at 0.05 (scipy's
    /// gaussian_kde: its height above the valley towards the clusters is 0.010490 of the peak
    /// density): the default filter drops it, a zero filter keeps it.
    func testProminenceFilterDropsNoiseBumps() {
        let samples = clusters([0.5, 0.7], perCluster: 100, halfWidth: 0.02) + [0.05]
        let kde = KernelDensity(samples: samples)
        XCTAssertEqual(kde.modes().map(\.position), [0.5, 0.7], accuracy: 1e-9)
        let all = kde.modes(minRelativeProminence: 0)
        XCTAssertEqual(all.map(\.position), [0.05, 0.5, 0.7], accuracy: 1e-9)
        XCTAssertEqual(all[0].relativeProminence, 0.0104896, accuracy: 1e-6)
    }

    func testProminenceOnHandArrays() {
        // Peak 3 at index 1: nothing higher on either side, lows 0 and 0 → prominence 3.
        // Peak 2 at index 3: left walk stops at the higher 3, passing 1; right low 0 → 2 − 1 = 1.
        let positions = [0.0, 1, 2, 3, 4]
        let modes = DensityModes.find([0, 3, 1, 2, 0], positions: positions, minRelativeProminence: 0)
        XCTAssertEqual(modes.map(\.index), [1, 3])
        XCTAssertEqual(modes.map(\.prominence), [3, 1])
        XCTAssertEqual(modes.map(\.relativeProminence), [1, 1.0 / 3], accuracy: 1e-12)
        // A filter of 0.5 × the maximum keeps only the first.
        XCTAssertEqual(
            DensityModes.find([0, 3, 1, 2, 0], positions: positions, minRelativeProminence: 0.5).map(\.index), [1])
        // A peak at the edge counts with its inner side only: [2, 1, 3, 0] → edge peak 2 − col 1 = 1;
        // the highest peak has no col and stands 3 − min(1, 0) = 3 above the lowest point.
        let edge = DensityModes.find([2, 1, 3, 0], positions: [0, 1, 2, 3], minRelativeProminence: 0)
        XCTAssertEqual(edge.map(\.index), [0, 2])
        XCTAssertEqual(edge.map(\.prominence), [1, 3])
        // A side that runs off the grid sets no base: the peak at index 3 of [5, 6, 1, 4, 3.9]
        // is separated from 6 by the col 1 (prominence 3), not cut to 4 − 3.9 by the right end
        // (scipy would report 0.1).
        let nearEnd = DensityModes.find([5, 6, 1, 4, 3.9], positions: positions, minRelativeProminence: 0)
        XCTAssertEqual(nearEnd.map(\.index), [1, 3])
        XCTAssertEqual(nearEnd[1].prominence, 3, accuracy: 1e-12)
        // A plateau counts once, at its middle; a rising plateau is not a peak.
        XCTAssertEqual(
            DensityModes.find([0, 2, 2, 2, 0], positions: positions, minRelativeProminence: 0).map(\.index), [2])
        XCTAssertEqual(
            DensityModes.find([0, 2, 2, 3, 0], positions: positions, minRelativeProminence: 0).map(\.index), [3])
    }

    func testValleyOfAFlatGapIsItsMiddle() {
        let f: [Double] = [1, 0, 0, 0, 0, 1]
        let valley = DensityModes.valley(f, positions: [0, 1, 2, 3, 4, 5], between: 0, and: 5)
        XCTAssertEqual(valley.position, 2.5)
        XCTAssertEqual(valley.density, 0)
        XCTAssertEqual(
            DensityModes.valley([3, 1, 2, 0.5, 3], positions: [0, 1, 2, 3, 4], between: 0, and: 4).position, 3)
    }

    // MARK: Classification, refresh, accuracy

    func testClassificationAtTheThresholdsIsReasoning() {
        let t = ThoughtThresholds(theta1: 0.4, theta2: 0.7, layers: [0])
        XCTAssertEqual(t.classify(0.4), .reasoning)
        XCTAssertEqual(t.classify(0.7), .reasoning)
        XCTAssertEqual(t.classify(Float(0.4).nextDown), .execution)
        XCTAssertEqual(t.classify(Float(0.7).nextUp), .transition)
        XCTAssertEqual(t.classify(0), .execution)
        XCTAssertEqual(t.classify(1), .transition)
    }

    func testRefreshHoldsTheTypeBetweenRefreshSteps() {
        let s: [Float] = [0.1, 0.9, 0.9, 0.9, 0.1, 0.5, 0.5]
        var t = ThoughtThresholds(theta1: 0.4, theta2: 0.7, layers: [0], refreshInterval: 3)
        // Refresh at steps 0, 3, 6: E (0.1) held for 1–2, T (0.9) held for 4–5, R (0.5).
        XCTAssertEqual(letters(ThoughtClassifier.timeline(averagedSparsity: s, thresholds: t)), "EEETTTR")
        t.refreshInterval = 1
        XCTAssertEqual(letters(ThoughtClassifier.timeline(averagedSparsity: s, thresholds: t)), "ETTTERR")
        t.refreshInterval = 128
        XCTAssertEqual(letters(ThoughtClassifier.timeline(averagedSparsity: s, thresholds: t)), "EEEEEEE")
    }

    func testAccuracyAndConfusionOnAHandExample() {
        // Pairs (predicted, reference): (R,R) hit, (R,E), (E,E) hit, (T,T) hit, (T,unknown) skipped,
        // (E,R): 3 hits of 5 labelled steps.
        let predicted: [ThoughtType] = [.reasoning, .reasoning, .execution, .transition, .transition, .execution]
        let (accuracy, confusion) = ThoughtClassifier.accuracy(predicted: predicted, reference: [0, 1, 1, 2, -1, 0])
        XCTAssertEqual(accuracy, 0.6, accuracy: 1e-12)
        XCTAssertEqual(confusion, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    }

    func testSegmentStatistics() {
        // Runs: R×3, E×1, (unknown), E×2, T×1, R×5.
        let labels: [Int8] = [0, 0, 0, 1, -1, 1, 1, 2, 0, 0, 0, 0, 0]
        let stats = ThoughtInspection.segmentStatistics(labels, refreshInterval: 4)
        let byType = Dictionary(uniqueKeysWithValues: stats.map { ($0.type, $0) })
        XCTAssertEqual(byType["reasoning"]?.count, 2)
        XCTAssertEqual(byType["reasoning"]?.meanLength, 4)
        XCTAssertEqual(byType["reasoning"]?.shorterThanRefresh, 1)
        XCTAssertEqual(byType["execution"]?.count, 2)
        XCTAssertEqual(byType["execution"]?.medianLength, 1.5)
        XCTAssertEqual(byType["transition"]?.maxLength, 1)
        XCTAssertEqual(byType["all"]?.count, 5)
        XCTAssertEqual(byType["all"]?.shorterThanRefresh, 4)
    }

    // MARK: Calibration on profiles with known sparsity

    func testCalibrationPicksTriModalLayersAndAveragesTheirValleys() throws {
        let world = SyntheticSparsity(steps: 1200, seed: 11)
        let profile = world.profile()
        let calibration = try ThoughtCalibration.calibrate(
            [.init(path: "mem", model: "m", profile: profile)], options: .pooledAtLeastThree)
        XCTAssertFalse(calibration.fallback)
        let byLayer = Dictionary(uniqueKeysWithValues: calibration.layers.map { ($0.layer, $0) })
        for layer in world.triModalLayers {
            XCTAssertTrue(byLayer[layer]!.candidate, "layer \(layer): \(byLayer[layer]!.modes)")
        }
        XCTAssertEqual(byLayer[world.bimodalLayer]!.modes.count, 2)
        XCTAssertEqual(byLayer[world.unimodalLayer]!.modes.count, 1)
        XCTAssertEqual(calibration.thresholds.layers, world.triModalLayers)
        // θ1/θ2 are the means of the selected layers' own valleys.
        let selected = calibration.layers.filter(\.selected)
        XCTAssertEqual(
            Double(calibration.thresholds.theta1), selected.map { $0.thresholds![0] }.reduce(0, +) / 4, accuracy: 1e-6)
        XCTAssertEqual(
            Double(calibration.thresholds.theta2), selected.map { $0.thresholds![1] }.reduce(0, +) / 4, accuracy: 1e-6)
        // Between the cluster centres E 0.30, R 0.55, T 0.80.
        XCTAssertGreaterThan(calibration.thresholds.theta1, 0.35)
        XCTAssertLessThan(calibration.thresholds.theta1, 0.50)
        XCTAssertGreaterThan(calibration.thresholds.theta2, 0.60)
        XCTAssertLessThan(calibration.thresholds.theta2, 0.75)
        XCTAssertEqual(calibration.thresholds.refreshInterval, 128)

        // |L*| = 2 keeps the two strongest: the least noisy layers.
        let two = try ThoughtCalibration.calibrate(
            [.init(path: "mem", model: "m", profile: profile)],
            options: CalibrationOptions(layerCount: 2, densities: .pooled, modeRule: .atLeastThree))
        XCTAssertEqual(two.thresholds.layers, [0, 1])
        XCTAssertEqual(Set(two.candidateLayers.prefix(2)), [0, 1])
        // Asking for more than exist uses all candidates and says so.
        let six = try ThoughtCalibration.calibrate(
            [.init(path: "mem", model: "m", profile: profile)],
            options: CalibrationOptions(layerCount: 6, densities: .pooled, modeRule: .atLeastThree))
        XCTAssertEqual(six.thresholds.layers, world.triModalLayers)
        XCTAssertTrue(six.notes.contains { $0.contains("only 4 tri-modal layers of 6") }, "\(six.notes)")
        XCTAssertTrue(six.text.contains("only 4 tri-modal layers"))
    }

    func testPoolingTwoTracesUsesTheLayersBothRecord() throws {
        let a = SyntheticSparsity(steps: 600, seed: 1).profile()
        var b = SyntheticSparsity(steps: 400, seed: 2).profile()
        var byLayer = b.byLayer
        byLayer[3] = nil
        b = SparsityProfile(byLayer: byLayer, layers: b.layers.filter { $0 != 3 })
        let calibration = try ThoughtCalibration.calibrate(
            [.init(path: "a", model: "m", profile: a), .init(path: "b", model: "m", profile: b)],
            options: .pooledAtLeastThree)
        XCTAssertEqual(calibration.layers.map(\.layer), [0, 1, 2, 4, 5])
        XCTAssertEqual(calibration.layers[0].samples, 1000)
        XCTAssertEqual(calibration.steps, [600, 400])
        XCTAssertTrue(
            calibration.notes.contains { $0.contains("layers 3 are not recorded in every trace") },
            "\(calibration.notes)")
        XCTAssertEqual(calibration.thresholds.layers, [0, 1, 2])
    }

    func testFallbackWithoutTriModalLayerSaysSoAndUsesOneType() throws {
        // One unimodal layer: no candidate; the averaged density is unimodal too → one type.
        var rng = SplitMix64(seed: 5)
        let values = (0..<300).map { _ in min(max(0.5 + 0.05 * rng.nextGaussian(), 0), 1) }
        let profile = SparsityProfile(byLayer: [7: values], layers: [7])
        let calibration = try ThoughtCalibration.calibrate(
            [.init(path: "flat", model: "m", profile: profile)], options: .pooledAtLeastThree)
        XCTAssertTrue(calibration.fallback)
        XCTAssertEqual(calibration.fallbackRule, "single-type")
        XCTAssertTrue(
            calibration.fallbackReason!.contains("no recorded layer has a tri-modal sparsity density (layer 7: 1 mode)")
        )
        XCTAssertTrue(calibration.fallbackReason!.contains("only 1 layer is recorded"))
        XCTAssertEqual(calibration.fallbackDensity?.modes.count, 1)
        var singleType = ThoughtThresholds(theta1: 0, theta2: 1, layers: [7])
        singleType.domain = "full"
        XCTAssertEqual(calibration.thresholds, singleType)
        // Every step, including the extremes 0 and the largest possible sparsity, is reasoning.
        let types = ThoughtClassifier.timeline(
            averagedSparsity: values + [0, Float(1).nextDown], thresholds: calibration.thresholds)
        XCTAssertEqual(Set(types), [.reasoning])
        XCTAssertTrue(calibration.text.contains("WARNING: no recorded layer has a tri-modal sparsity density"))
        XCTAssertTrue(calibration.text.contains("one thought type, θ1 = 0, θ2 = 1"))
        let json = try calibration.json()
        XCTAssertTrue(json.contains("\"fallback\" : true"), json)
        XCTAssertTrue(json.contains("\"fallback_reason\" : \"no recorded layer"), json)
        XCTAssertTrue(json.contains("\"fallback_rule\" : \"single-type\""), json)
    }

    func testFallbackUsesTheAveragedDensityWhenItIsTriModal() throws {
        // Two layers, each bimodal, but with the low and high clusters in different steps, so the
        // average over both has three clusters: (0.2+0.2)/2, (0.2+0.8)/2, (0.8+0.8)/2.
        var rng = SplitMix64(seed: 9)
        var a: [Float] = [], b: [Float] = []
        for i in 0..<600 {
            let (x, y): (Float, Float) = [(0.2, 0.2), (0.2, 0.8), (0.8, 0.8)][i % 3]
            a.append(x + 0.02 * rng.nextGaussian())
            b.append(y + 0.02 * rng.nextGaussian())
        }
        let profile = SparsityProfile(byLayer: [0: a, 1: b], layers: [0, 1])
        let calibration = try ThoughtCalibration.calibrate(
            [.init(path: "p", model: "m", profile: profile)], options: .pooledAtLeastThree)
        XCTAssertTrue(calibration.fallback)
        XCTAssertEqual(calibration.layers.map(\.modes.count), [2, 2])
        XCTAssertEqual(calibration.fallbackRule, "averaged-density-valleys")
        XCTAssertEqual(calibration.fallbackDensity?.modes.count, 3)
        XCTAssertEqual(calibration.thresholds.layers, [0, 1])
        XCTAssertEqual(calibration.thresholds.theta1, 0.35, accuracy: 0.03)
        XCTAssertEqual(calibration.thresholds.theta2, 0.65, accuracy: 0.03)
    }

    func testConstantSparsityFallsBackToOneType() throws {
        let profile = SparsityProfile(byLayer: [0: [Float](repeating: 0.25, count: 50)], layers: [0])
        let calibration = try ThoughtCalibration.calibrate(
            [.init(path: "c", model: "m", profile: profile)], options: .pooledAtLeastThree)
        XCTAssertTrue(calibration.fallback)
        XCTAssertEqual(calibration.layers[0].bandwidth, KernelDensity.defaultMinimumBandwidth)
        XCTAssertEqual(calibration.fallbackRule, "single-type")
        XCTAssertEqual(calibration.thresholds.theta1, 0)
        XCTAssertEqual(calibration.thresholds.theta2, 1)
    }

    func testCalibrationRefusesBadSettings() {
        let profile = SyntheticSparsity(steps: 50, seed: 1).profile()
        XCTAssertThrowsError(
            try ThoughtCalibration.calibrate(
                [.init(path: "p", model: "m", profile: profile)],
                options: CalibrationOptions(layerCount: 0)))
        XCTAssertThrowsError(try ThoughtCalibration.calibrate([]))
        let empty = SparsityProfile(byLayer: [0: []], layers: [0])
        XCTAssertThrowsError(
            try ThoughtCalibration.calibrate(
                [.init(path: "e.h5", model: "m", profile: empty)], options: .pooledAtLeastThree)
        ) { error in
            XCTAssertEqual("\(error)", "e.h5: no decode steps to calibrate on")
        }
    }

    // MARK: Per-prompt densities and the mode rule

    /// Two "prompts" with hand-placed clusters (evenly filled, so every density is deterministic):
    /// layer 0 is tri-modal on both, layer 1 on the first only (the second lacks the middle
    /// cluster), layer 2 only when pooled (the first prompt has the low and middle clusters, the
    /// second the high one), layer 3 has four modes on both.
    private func twoPrompts() -> [ThoughtCalibration.Input] {
        func f(_ centres: [Double], _ perCluster: Int = 60) -> [Float] {
            clusters(centres, perCluster: perCluster, halfWidth: 0.03).map(Float.init)
        }
        let first: [Int: [Float]] = [
            0: f([0.2, 0.5, 0.8]), 1: f([0.25, 0.5, 0.75]), 2: f([0.2, 0.5]), 3: f([0.1, 0.37, 0.63, 0.9], 120)
        ]
        let second: [Int: [Float]] = [
            0: f([0.25, 0.55, 0.85]), 1: f([0.25, 0.75]), 2: f([0.8]), 3: f([0.12, 0.4, 0.65, 0.92], 120)
        ]
        return [first, second].enumerated().map { i, byLayer in
            ThoughtCalibration.Input(
                path: "p\(i)", model: "m", profile: SparsityProfile(byLayer: byLayer, layers: [0, 1, 2, 3]))
        }
    }

    /// The valleys between the modes of one input's density of `layer`, as the test reads them.
    private func valleys(_ input: ThoughtCalibration.Input, layer: Int) -> [Double] {
        let kde = KernelDensity(samples: input.profile.byLayer[layer]!.map(Double.init))
        let modes = kde.modes()
        return zip(modes, modes.dropFirst()).map { kde.valley(between: $0.index, and: $1.index).position }
    }

    func testPerPromptKeepsOnlyLayersTriModalOnEveryPrompt() throws {
        let inputs = twoPrompts()
        // The premise: each prompt's own density has the modes described above.
        func modeCount(_ input: ThoughtCalibration.Input, _ layer: Int) -> Int {
            KernelDensity(samples: input.profile.byLayer[layer]!.map(Double.init)).modes().count
        }
        XCTAssertEqual([0, 1, 2, 3].map { modeCount(inputs[0], $0) }, [3, 3, 2, 4])
        XCTAssertEqual([0, 1, 2, 3].map { modeCount(inputs[1], $0) }, [3, 2, 1, 4])

        let calibration = try ThoughtCalibration.calibrate(inputs)
        XCTAssertEqual(calibration.options.densities, .perPrompt)
        XCTAssertEqual(calibration.options.modeRule, .exactlyThree)
        XCTAssertFalse(calibration.fallback)
        XCTAssertEqual(calibration.candidateLayers, [0])
        XCTAssertEqual(calibration.thresholds.layers, [0])
        let byLayer = Dictionary(uniqueKeysWithValues: calibration.layers.map { ($0.layer, $0) })
        XCTAssertEqual(byLayer[1]!.perTrace!.map(\.modeCount), [3, 2])
        XCTAssertEqual(byLayer[1]!.rejectedTraces, 1)
        XCTAssertEqual(byLayer[2]!.modes.count, 3, "layer 2's pooled density is tri-modal")
        XCTAssertFalse(byLayer[2]!.candidate)
        XCTAssertEqual(byLayer[2]!.rejectedTraces, 2)
        XCTAssertFalse(byLayer[3]!.candidate)

        // θ1, θ2 = the per-prompt valleys averaged over the prompts (L* is one layer here).
        let v0 = valleys(inputs[0], layer: 0), v1 = valleys(inputs[1], layer: 0)
        XCTAssertEqual(Double(calibration.thresholds.theta1), (v0[0] + v1[0]) / 2, accuracy: 1e-6)
        XCTAssertEqual(Double(calibration.thresholds.theta2), (v0[1] + v1[1]) / 2, accuracy: 1e-6)
        XCTAssertEqual(byLayer[0]!.perTrace!.map { $0.thresholds! }, [v0, v1])
        // Strength = the mean of the per-prompt strengths.
        let strengths = byLayer[0]!.perTrace!.map { $0.strength! }
        XCTAssertEqual(byLayer[0]!.strength!, (strengths[0] + strengths[1]) / 2, accuracy: 1e-12)
        XCTAssertTrue(calibration.text.contains("modes per trace"), calibration.text)

        // Pooled with three or more modes (the earlier rule) takes layer 2, which no prompt
        // shows as tri-modal, and layer 3 with its four modes.
        let pooled = try ThoughtCalibration.calibrate(inputs, options: .pooledAtLeastThree)
        XCTAssertTrue(Set(pooled.candidateLayers).isSuperset(of: [0, 2, 3]), "\(pooled.candidateLayers)")
    }

    func testPerPromptThresholdsAverageOverPromptsAndLayers() throws {
        // Layers 0 and 4 tri-modal on both prompts: θ = the mean over both layers of the
        // per-layer means over prompts.
        var inputs = twoPrompts()
        let extra: [[Float]] = [
            clusters([0.3, 0.5, 0.7], perCluster: 60, halfWidth: 0.02).map(Float.init),
            clusters([0.28, 0.52, 0.74], perCluster: 80, halfWidth: 0.02).map(Float.init)
        ]
        for i in inputs.indices {
            var byLayer = inputs[i].profile.byLayer
            byLayer[4] = extra[i]
            inputs[i].profile = SparsityProfile(byLayer: byLayer, layers: [0, 1, 2, 3, 4])
        }
        let calibration = try ThoughtCalibration.calibrate(inputs)
        XCTAssertEqual(calibration.thresholds.layers, [0, 4])
        var expected = [0.0, 0.0]
        for layer in [0, 4] {
            let v = inputs.map { valleys($0, layer: layer) }
            expected[0] += (v[0][0] + v[1][0]) / 4
            expected[1] += (v[0][1] + v[1][1]) / 4
        }
        XCTAssertEqual(Double(calibration.thresholds.theta1), expected[0], accuracy: 1e-6)
        XCTAssertEqual(Double(calibration.thresholds.theta2), expected[1], accuracy: 1e-6)
        // |L*| = 1 keeps the one with the larger mean strength.
        let one = try ThoughtCalibration.calibrate(inputs, options: CalibrationOptions(layerCount: 1))
        let strongest = calibration.layers.filter(\.candidate).max { $0.strength! < $1.strength! }!.layer
        XCTAssertEqual(one.thresholds.layers, [strongest])
    }

    func testExactlyThreeRejectsAFourModeLayerThatAtLeastThreeAccepts() throws {
        let inputs = twoPrompts().map { input in
            ThoughtCalibration.Input(
                path: input.path, model: "m",
                profile: SparsityProfile(byLayer: [3: input.profile.byLayer[3]!], layers: [3]))
        }
        for densities in CalibrationDensities.allCases {
            let exactly = try ThoughtCalibration.calibrate(
                inputs, options: CalibrationOptions(densities: densities, modeRule: .exactlyThree))
            XCTAssertTrue(exactly.fallback, "\(densities)")
            XCTAssertFalse(exactly.layers[0].candidate)
            let atLeast = try ThoughtCalibration.calibrate(
                inputs, options: CalibrationOptions(densities: densities, modeRule: .atLeastThree))
            XCTAssertFalse(atLeast.fallback, "\(densities)")
            XCTAssertEqual(atLeast.thresholds.layers, [3])
        }
        // Per prompt, the fallback reason counts each layer's failed prompts.
        let reason = try ThoughtCalibration.calibrate(inputs).fallbackReason ?? ""
        XCTAssertTrue(reason.contains("exactly three modes on every one of the 2 prompts"), reason)
        XCTAssertTrue(reason.contains("layer 3: failed on 2 of 2 prompts, modes per prompt 4/4"), reason)
    }

    func testPerPromptDiagnosticsAndOptionsAreInTheFile() throws {
        let calibration = try ThoughtCalibration.calibrate(twoPrompts())
        let object = try JSONSerialization.jsonObject(with: Data(try calibration.json().utf8)) as! [String: Any]
        let diagnostics = try XCTUnwrap(object["calibration"] as? [String: Any])
        let options = try XCTUnwrap(diagnostics["options"] as? [String: Any])
        XCTAssertEqual(options["densities"] as? String, "per-prompt")
        XCTAssertEqual(options["mode_rule"] as? String, "exactly-3")
        XCTAssertEqual(options["layer_count"] as? Int, 4)
        let layers = try XCTUnwrap(diagnostics["per_layer"] as? [[String: Any]])
        let perTrace = try XCTUnwrap(layers[1]["per_trace"] as? [[String: Any]])
        XCTAssertEqual(perTrace.map { $0["trace"] as? Int }, [0, 1])
        XCTAssertEqual(perTrace.map { $0["mode_count"] as? Int }, [3, 2])
        XCTAssertNotNil(perTrace[0]["strength"] as? Double)
        XCTAssertNil(perTrace[1]["strength"])
        XCTAssertEqual((perTrace[0]["valleys"] as? [Any])?.count, 2)
        // Pooled densities have no per-trace entries.
        let pooled = try ThoughtCalibration.calibrate(twoPrompts(), options: .pooledAtLeastThree)
        let pooledObject = try JSONSerialization.jsonObject(with: Data(try pooled.json().utf8)) as! [String: Any]
        let pooledLayers = (pooledObject["calibration"] as! [String: Any])["per_layer"] as! [[String: Any]]
        XCTAssertNil(pooledLayers[0]["per_trace"])
        XCTAssertEqual(
            ((pooledObject["calibration"] as! [String: Any])["options"] as! [String: Any])["mode_rule"] as? String,
            "at-least-3")
    }

    // MARK: Thresholds file

    func testCalibrationFileRoundTripsThroughLoad() throws {
        let dir = try TestTraces.directory(self)
        let calibration = try ThoughtCalibration.calibrate(
            [.init(path: "mem", model: "m", profile: SyntheticSparsity(steps: 800, seed: 3).profile())],
            options: CalibrationOptions(layerCount: 3, refreshInterval: 64, densities: .pooled, modeRule: .atLeastThree)
        )
        let path = dir.appendingPathComponent("thinkv-m.json").path
        try OutputFile.write(try calibration.json(), to: path)
        let loaded = try ThoughtThresholds.load(path: path)
        XCTAssertEqual(loaded, calibration.thresholds)
        XCTAssertEqual(loaded.refreshInterval, 64)
        XCTAssertEqual(loaded.layers.count, 3)
        // The file is what the policy's plain decoder reads too.
        XCTAssertEqual(
            try JSONDecoder().decode(ThoughtThresholds.self, from: Data(contentsOf: URL(fileURLWithPath: path))), loaded
        )
        // Diagnostics are there for people.
        let object =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        let diagnostics = object["calibration"] as! [String: Any]
        XCTAssertEqual(diagnostics["model"] as? String, "m")
        XCTAssertEqual(diagnostics["fallback"] as? Bool, false)
        XCTAssertEqual((diagnostics["per_layer"] as? [Any])?.count, 6)
        XCTAssertEqual(diagnostics["selected_layers"] as? [Int], loaded.layers)
    }

    func testLoadGivesOneLineErrorsNamingTheFile() throws {
        let dir = try TestTraces.directory(self)
        func attempt(_ text: String?, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
            let path = dir.appendingPathComponent("t-\(UUID().uuidString).json").path
            if let text { try! Data(text.utf8).write(to: URL(fileURLWithPath: path)) }
            XCTAssertThrowsError(try ThoughtThresholds.load(path: path), file: file, line: line) { error in
                let message = "\(error)"
                XCTAssertTrue(message.hasPrefix("\(path): "), message, file: file, line: line)
                XCTAssertTrue(message.contains(expected), message, file: file, line: line)
                XCTAssertFalse(message.contains("\n"), message, file: file, line: line)
            }
        }
        let good = #""theta1": 0.3, "theta2": 0.6, "layers": [1, 2], "refresh_interval": 128, "sparsity_ratio": 0.01"#
        attempt(nil, "no such file")
        attempt("{ not json", "not valid JSON")
        attempt(
            #"{"theta1": 0.3, "layers": [1], "refresh_interval": 128, "sparsity_ratio": 0.01}"#, "missing key 'theta2'")
        attempt(
            #"{"theta1": "low", "theta2": 0.6, "layers": [1], "refresh_interval": 128, "sparsity_ratio": 0.01}"#,
            "'theta1' has the wrong type")
        attempt(
            #"{"theta1": 0.7, "theta2": 0.6, "layers": [1], "refresh_interval": 128, "sparsity_ratio": 0.01}"#,
            "theta1 must be below theta2")
        attempt(
            #"{"theta1": 0.3, "theta2": 1.5, "layers": [1], "refresh_interval": 128, "sparsity_ratio": 0.01}"#,
            "must lie in [0, 1]")
        attempt(
            #"{"theta1": 0.3, "theta2": 0.6, "layers": [], "refresh_interval": 128, "sparsity_ratio": 0.01}"#,
            "layers (L*) is empty")
        attempt(
            #"{"theta1": 0.3, "theta2": 0.6, "layers": [1, 1], "refresh_interval": 128, "sparsity_ratio": 0.01}"#,
            "twice")
        attempt(
            #"{"theta1": 0.3, "theta2": 0.6, "layers": [1], "refresh_interval": 0, "sparsity_ratio": 0.01}"#,
            "refresh_interval must be at least 1")
        attempt(
            #"{"theta1": 0.3, "theta2": 0.6, "layers": [1], "refresh_interval": 8, "sparsity_ratio": 1.5}"#,
            "sparsity_ratio")
        // Extra keys are ignored.
        let path = dir.appendingPathComponent("ok.json").path
        try Data("{\(good), \"calibration\": {\"anything\": [1, 2]}}".utf8).write(to: URL(fileURLWithPath: path))
        // A file without sparsity_gqa predates max-pooling: its thresholds were calibrated on mean-heads.
        XCTAssertEqual(
            try ThoughtThresholds.load(path: path),
            ThoughtThresholds(theta1: 0.3, theta2: 0.6, layers: [1, 2], gqa: .meanHeads))
    }

    // MARK: End to end through a trace file

    /// A trace whose attention rows are built so each step's sparsity is the synthetic value
    /// (see `SyntheticSparsity.writeTrace`): the sparsity pass, calibration and classifier
    /// together recover the labels.
    func testEndToEndCalibrationRecoversLabelsFromATrace() throws {
        let dir = try TestTraces.directory(self)
        let world = SyntheticSparsity(steps: 480, seed: 21)
        let path = try world.writeTrace(in: dir, promptLength: 32)
        let reader = try TraceReader(path: path)
        let profile = try SparsityProfile.compute(reader, threads: 1)
        // The pass measures the constructed sparsity up to the row length's rounding.
        for layer in world.layers {
            let built = world.sparsity[layer]!
            for (t, s) in profile.byLayer[layer]!.enumerated() {
                XCTAssertEqual(s, built[t], accuracy: 0.5 / Float(32 + t + 1) + 1e-6)
            }
        }
        let calibration = try ThoughtCalibration.calibrate(traces: [path], options: .pooledAtLeastThree)
        XCTAssertFalse(calibration.fallback)
        XCTAssertEqual(calibration.thresholds.layers, world.triModalLayers)

        var perStep = calibration.thresholds
        perStep.refreshInterval = 1
        let predicted = ThoughtClassifier.timeline(
            averagedSparsity: profile.averaged(over: perStep.layers), thresholds: perStep)
        let (accuracy, confusion) = ThoughtClassifier.accuracy(predicted: predicted, reference: world.labels)
        XCTAssertGreaterThanOrEqual(accuracy, 0.9, "confusion \(confusion)")

        let inspection = try ThoughtInspection(
            reader: reader, profile: profile, calibrationFile: nil, refreshInterval: nil)
        XCTAssertEqual(inspection.thresholdSource, "self")
        XCTAssertEqual(inspection.evaluations.map(\.refreshInterval), [128, 1])
        XCTAssertEqual(inspection.evaluations[1].accuracy, accuracy, accuracy: 1e-12)
        XCTAssertEqual(inspection.evaluations[1].labelledSteps, 480)
        XCTAssertEqual(inspection.steps.count, 480)
        // τ = 128 holds the type of steps 0, 128, 256, 384: four constant blocks.
        let held = Array(inspection.steps)
        for start in stride(from: 0, to: 480, by: 128) {
            XCTAssertEqual(Set(held[start..<min(start + 128, 480)]).count, 1)
        }
        XCTAssertNotNil(inspection.referenceSegments)
        XCTAssertTrue(inspection.text.contains("confusion at τ = 1"))
    }

    func testFallbackOnRandomQueriesAndKeys() throws {
        let dir = try TestTraces.directory(self)
        let T = 160, P = 32
        let path = try TestTraces.write(
            to: dir.appendingPathComponent("random.h5"), T: T, P: P, Hq: 2, Hkv: 1, D: 8, numLayers: 2,
            layers: [
                TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 8, seed: 4, index: 0, values: false),
                TestTraces.randomLayer(T: T, Hq: 2, Hkv: 1, D: 8, seed: 5, index: 1, values: false)
            ])
        let calibration = try ThoughtCalibration.calibrate(traces: [path], options: .pooledAtLeastThree)
        XCTAssertTrue(calibration.fallback, calibration.text)
        XCTAssertEqual(calibration.thresholds.layers, [0, 1])
        XCTAssertLessThan(calibration.thresholds.theta1, calibration.thresholds.theta2)
        XCTAssertTrue(calibration.text.contains("WARNING: no recorded layer has a tri-modal sparsity density"))
        XCTAssertTrue(calibration.text.contains("only 2 layers are recorded"))
        XCTAssertTrue(calibration.layers.allSatisfy { $0.modes.count < 3 })
    }

    // MARK: Helpers

    private func clusters(_ centres: [Double], perCluster: Int, halfWidth: Double) -> [Double] {
        centres.flatMap { c in
            (0..<perCluster).map { c - halfWidth + 2 * halfWidth * Double($0) / Double(perCluster - 1) }
        }
    }

    private func letters(_ types: [ThoughtType]) -> String { String(types.map(\.letter)) }
}

/// Labels made of segments (R and E 15–45 steps, T 4–10) and per-layer step sparsity drawn around
/// type centres E 0.30, R 0.55, T 0.80: layers 0–3 tri-modal with noise 0.030–0.045 (layer 0
/// the cleanest), layer 4 bimodal (R and T share 0.65), layer 5 unimodal.
struct SyntheticSparsity {
    let labels: [Int8]
    var sparsity: [Int: [Float]] = [:]
    let layers = [0, 1, 2, 3, 4, 5]
    let triModalLayers = [0, 1, 2, 3]
    let bimodalLayer = 4
    let unimodalLayer = 5

    init(steps: Int, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        func uniform(_ lo: Int, _ hi: Int) -> Int { lo + Int(rng.next() % UInt64(hi - lo + 1)) }
        var labels: [Int8] = []
        var type: Int8 = 0
        while labels.count < steps {
            let length = type == 2 ? uniform(4, 10) : uniform(15, 45)
            labels += [Int8](repeating: type, count: length)
            // Move to a different type.
            type = Int8((Int(type) + uniform(1, 2)) % 3)
        }
        self.labels = Array(labels.prefix(steps))
        let centres: [Float] = [0.55, 0.30, 0.80]  // R, E, T
        for (layer, noise) in zip(triModalLayers, [Float(0.030), 0.035, 0.040, 0.045]) {
            sparsity[layer] = self.labels.map { min(max(centres[Int($0)] + noise * rng.nextGaussian(), 0), 1) }
        }
        sparsity[bimodalLayer] = self.labels.map { min(max(($0 == 1 ? 0.35 : 0.65) + 0.04 * rng.nextGaussian(), 0), 1) }
        sparsity[unimodalLayer] = self.labels.map { _ in min(max(0.5 + 0.08 * rng.nextGaussian(), 0), 1) }
    }

    func profile() -> SparsityProfile { SparsityProfile(byLayer: sparsity, layers: layers) }

    /// Writes a trace with one head and attention-only layers: in the row of decode step t
    /// (n = P + t + 1 visible positions), round(s·n) positions get weight 10⁻⁴ and the rest 1,
    /// normalised, so exactly that many positions sit below 1 % of the row maximum.
    func writeTrace(in dir: URL, promptLength P: Int) throws -> String {
        let G = labels.count, T = P + G
        var layerData: [TestTraces.Layer] = []
        for layer in layers {
            var attn = [Float](repeating: 0, count: G * T)
            for t in 0..<G {
                let n = P + t + 1
                let sparse = min(n - 1, Int((sparsity[layer]![t] * Float(n)).rounded()))
                let total = Float(sparse) * 1e-4 + Float(n - sparse)
                for j in 0..<n { attn[t * T + j] = (j < sparse ? 1e-4 : 1) / total }
            }
            layerData.append(TestTraces.Layer(index: layer, attn: attn))
        }
        return try TestTraces.write(
            to: dir.appendingPathComponent("sparsity.h5"), T: T, P: P, Hq: 1, Hkv: 1, D: 4,
            numLayers: layers.count, layers: layerData,
            thought: [Int8](repeating: -1, count: P) + labels)
    }
}

private func XCTAssertEqual(
    _ a: [Double], _ b: [Double], accuracy: Double, file: StaticString = #filePath, line: UInt = #line
) {
    XCTAssertEqual(a.count, b.count, "\(a) vs \(b)", file: file, line: line)
    for (x, y) in zip(a, b) { XCTAssertEqual(x, y, accuracy: accuracy, "\(a) vs \(b)", file: file, line: line) }
}

/// `thinkv-sim calibrate` and `inspect --thoughts` as a user runs them: exit statuses, the file
/// written, the summary, one-line errors.
final class ThoughtCalibrationCLITests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    private func run(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws
        -> CommandRunner.Outcome
    {
        try CommandRunner.run(arguments, in: directory, file: file, line: line)
    }

    func testCalibrateWritesThresholdsAndInspectUsesThem() throws {
        let trace = try SyntheticSparsity(steps: 480, seed: 21).writeTrace(in: directory, promptLength: 32)
        let config = directory.appendingPathComponent("thinkv-test.json").path
        let calibrate = try run(["calibrate", trace, "-o", config, "--layers-count", "3", "--tau", "16"])
        XCTAssertEqual(calibrate.status, 0, calibrate.stderr)
        XCTAssertTrue(calibrate.stdout.contains("L* = "), calibrate.stdout)
        XCTAssertTrue(calibrate.stdout.contains("wrote \(config)"))
        let thresholds = try ThoughtThresholds.load(path: config)
        XCTAssertEqual(thresholds.layers.count, 3)
        XCTAssertEqual(thresholds.refreshInterval, 16)

        let inspect = try run(["inspect", trace, "--thoughts", "--calibration", config, "--json"])
        XCTAssertEqual(inspect.status, 0, inspect.stderr)
        let object = try JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as! [String: Any]
        let thoughts = try XCTUnwrap(object["thoughts"] as? [String: Any])
        XCTAssertEqual(thoughts["threshold_source"] as? String, "file")
        let evaluations = try XCTUnwrap(thoughts["evaluations"] as? [[String: Any]])
        XCTAssertEqual(evaluations.map { $0["refresh_interval"] as? Int }, [16, 1])
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(evaluations[1]["accuracy"] as? Double), 0.9)
        XCTAssertEqual((thoughts["steps"] as? String)?.count, 480)

        let text = try run(["inspect", trace, "--thoughts"])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("thresholds calibrated on this trace itself"))
        XCTAssertTrue(text.stdout.contains("confusion at τ = 128"))
        XCTAssertTrue(text.stdout.contains("τ = 1: "))
    }

    func testKDEAndModesOptionsReachTheFile() throws {
        let trace = try SyntheticSparsity(steps: 480, seed: 21).writeTrace(in: directory, promptLength: 32)
        let config = directory.appendingPathComponent("pooled.json").path
        let outcome = try run(["calibrate", trace, "-o", config, "--kde", "pooled", "--modes", "at-least-3", "--json"])
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        let object = try JSONSerialization.jsonObject(with: Data(outcome.stdout.utf8)) as! [String: Any]
        let options = try XCTUnwrap((object["calibration"] as? [String: Any])?["options"] as? [String: Any])
        XCTAssertEqual(options["densities"] as? String, "pooled")
        XCTAssertEqual(options["mode_rule"] as? String, "at-least-3")
        // The same thresholds as the library with the same options.
        let library = try ThoughtCalibration.calibrate(traces: [trace], options: .pooledAtLeastThree)
        XCTAssertEqual(try ThoughtThresholds.load(path: config), library.thresholds)
    }

    func testUsageMistakesExitTwoBeforeAnyWork() throws {
        let trace = try SyntheticSparsity(steps: 60, seed: 2).writeTrace(in: directory, promptLength: 8)
        for arguments in [
            ["calibrate", trace],
            ["calibrate", trace, "-o", "/nonexistent-dir/x.json"],
            ["calibrate", trace, "-o", trace],
            ["calibrate", trace, "-o", "x.json", "--tau", "0"],
            ["calibrate", trace, "-o", "x.json", "--min-prominence", "2"],
            ["calibrate", trace, "-o", "x.json", "--kde", "both"],
            ["calibrate", trace, "-o", "x.json", "--modes", "4"],
            ["inspect", trace, "--calibration", "x.json"],
            ["inspect", trace, "--thoughts", "--no-sparsity"]
        ] {
            let outcome = try run(arguments)
            XCTAssertEqual(outcome.status, 2, "\(arguments): \(outcome.stderr)")
            XCTAssertEqual(outcome.stdout, "")
        }
    }

    func testBadInputsGiveOneLineAndExitOne() throws {
        let trace = try SyntheticSparsity(steps: 60, seed: 2).writeTrace(in: directory, promptLength: 8)
        let missing = directory.appendingPathComponent("missing.h5").path
        let config = directory.appendingPathComponent("c.json").path
        let badTrace = try run(["calibrate", missing, "-o", config])
        XCTAssertEqual(badTrace.status, 1)
        XCTAssertTrue(badTrace.stderr.hasPrefix("thinkv-sim calibrate: \(missing): "), badTrace.stderr)
        XCTAssertEqual(badTrace.stderr.split(separator: "\n").count, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: config), "no file written for a failed run")

        try Data(
            #"{"theta1": 0.3, "theta2": 0.6, "layers": [9], "refresh_interval": 128, "sparsity_ratio": 0.01}"#.utf8
        )
        .write(to: URL(fileURLWithPath: config))
        // A layer the trace lacks maps to the nearest recorded one, as in replay, and says so.
        let wrongLayer = try run(["inspect", trace, "--thoughts", "--calibration", config])
        XCTAssertEqual(wrongLayer.status, 0, wrongLayer.stderr)
        XCTAssertTrue(
            wrongLayer.stdout.contains(
                "c.json: L* layers not recorded in this trace mapped to the nearest recorded ones (9→5); L* = 5"),
            wrongLayer.stdout)
        try Data("[]".utf8).write(to: URL(fileURLWithPath: config))
        let notThresholds = try run(["inspect", trace, "--thoughts", "--calibration", config])
        XCTAssertEqual(notThresholds.status, 1)
        XCTAssertEqual(
            notThresholds.stderr,
            "thinkv-sim inspect: \(config): not a JSON object with theta1, theta2, layers, refresh_interval, "
                + "sparsity_ratio\n"
        )
    }
}
