import Foundation

/// Which densities calibration estimates (`--kde`).
public enum CalibrationDensities: String, Sendable, Equatable, CaseIterable {
    /// One KDE per (trace, layer), as ThinKV describes: a layer qualifies only if every
    /// prompt's density does, and its valleys are averaged over prompts.
    case perPrompt = "per-prompt"
    /// One KDE per layer over all traces' steps pooled (this project's first rule).
    case pooled
}

/// How many density modes make a layer a candidate (`--modes`).
public enum CalibrationModeRule: String, Sendable, Equatable, CaseIterable {
    /// Exactly three modes after the prominence filter, as ThinKV states (|T| = 3 modes).
    case exactlyThree = "exactly-3"
    /// Three or more; the three most prominent are used (this project's first rule).
    case atLeastThree = "at-least-3"

    func accepts(modeCount: Int) -> Bool {
        switch self {
        case .exactlyThree: return modeCount == 3
        case .atLeastThree: return modeCount >= 3
        }
    }
}

/// Settings of `ThoughtCalibration`.
public struct CalibrationOptions: Sendable, Equatable {
    /// |L*|: how many tri-modal layers to average (ThinKV: 4).
    public var layerCount = 4
    /// τ written into the thresholds (ThinKV: 128).
    public var refreshInterval = 128
    /// Mode filter: see `DensityModes.find`.
    public var minRelativeProminence = DensityModes.defaultMinRelativeProminence
    public var gridPoints = KernelDensity.defaultGridPoints
    /// How a GQA group's query heads make one attention row (ThinKV: max-pooled logits).
    public var gqa = GQASparsity.maxPool
    /// One density per prompt and layer (ThinKV), or one per layer over all prompts pooled.
    public var densities: CalibrationDensities = .perPrompt
    /// Exactly three modes (ThinKV) or at least three.
    public var modeRule: CalibrationModeRule = .exactlyThree

    public init(
        layerCount: Int = 4, refreshInterval: Int = 128,
        minRelativeProminence: Double = DensityModes.defaultMinRelativeProminence,
        densities: CalibrationDensities = .perPrompt, modeRule: CalibrationModeRule = .exactlyThree
    ) {
        self.layerCount = layerCount
        self.refreshInterval = refreshInterval
        self.minRelativeProminence = minRelativeProminence
        self.densities = densities
        self.modeRule = modeRule
    }

    /// The rules this project used before per-prompt densities: one pooled KDE per layer,
    /// three or more modes.
    public static var pooledAtLeastThree: CalibrationOptions {
        CalibrationOptions(densities: .pooled, modeRule: .atLeastThree)
    }
}

/// One trace's density of one layer's sparsity (per-prompt calibration) and what it gave.
public struct TraceSparsityDensity: Codable, Equatable, Sendable {
    /// Index of the trace among the calibration inputs.
    public var trace: Int
    public var samples: Int
    public var bandwidth: Double
    public var modeCount: Int
    public var modes: [DensityMode]
    /// Minimum of the density between each pair of consecutive kept modes.
    public var valleys: [DensityValley]
    /// When the mode rule accepts this density: the valleys between its three most prominent modes.
    public var thresholds: [Double]?
    /// When the mode rule accepts this density: the smallest relative prominence of those three modes.
    public var strength: Double?

    init(trace: Int, sparsity: [Float], options: CalibrationOptions) {
        self.trace = trace
        samples = sparsity.count
        guard !sparsity.isEmpty else {
            // No steps of this layer in this trace: no density, so no modes.
            bandwidth = 0
            modeCount = 0
            modes = []
            valleys = []
            return
        }
        let reading = DensityReading(sparsity: sparsity, options: options)
        bandwidth = reading.kde.bandwidth
        modes = reading.modes
        modeCount = modes.count
        valleys = reading.valleys
        thresholds = reading.thresholds
        strength = reading.strength
    }
}

/// What calibration reads from one density: its kept modes, the valleys between them and, when
/// the mode rule accepts the density, the valleys between its three most prominent modes and the
/// weakest of those three modes' relative prominences.
struct DensityReading {
    let kde: KernelDensity
    let modes: [DensityMode]
    let valleys: [DensityValley]
    let accepted: Bool
    let thresholds: [Double]?
    let strength: Double?

    init(sparsity: [Float], options: CalibrationOptions) {
        let kde = KernelDensity(samples: sparsity.map(Double.init), gridPoints: options.gridPoints)
        let modes = kde.modes(minRelativeProminence: options.minRelativeProminence)
        self.kde = kde
        self.modes = modes
        valleys = zip(modes, modes.dropFirst()).map { kde.valley(between: $0.index, and: $1.index) }
        accepted = options.modeRule.accepts(modeCount: modes.count)
        if accepted {
            let three = LayerSparsityDensity.strongestThree(modes)
            thresholds = [
                kde.valley(between: three[0].index, and: three[1].index).position,
                kde.valley(between: three[1].index, and: three[2].index).position
            ]
            strength = three.map(\.relativeProminence).min()
        } else {
            thresholds = nil
            strength = nil
        }
    }
}

/// The density of one layer's per-step sparsity and what calibration read from it.
public struct LayerSparsityDensity: Codable, Equatable, Sendable {
    public var layer: Int
    /// The density of the layer's steps pooled over all traces (with per-prompt densities it is
    /// kept for reference: the selection reads `perTrace`).
    public var samples: Int
    public var mean: Double
    public var standardDeviation: Double
    public var bandwidth: Double
    /// Modes kept by the prominence filter, by position.
    public var modes: [DensityMode]
    /// Minimum of the density between each pair of consecutive kept modes.
    public var valleys: [DensityValley]
    /// The layer can separate E, R and T: its density has three modes (or at least three, by
    /// the mode rule); with per-prompt densities, every trace's density does.
    public var candidate: Bool
    /// For candidates: the valleys between the three most prominent modes (in position order),
    /// i.e. this layer's own θ1 and θ2; with per-prompt densities, averaged over the traces.
    public var thresholds: [Double]?
    /// For candidates: the smallest relative prominence among the three most prominent modes
    /// (with per-prompt densities, its mean over the traces). A layer is only as good as its
    /// weakest of the three thought clusters.
    public var strength: Double?
    /// In L*.
    public var selected: Bool
    /// Per-prompt densities only: each trace's density of this layer.
    public var perTrace: [TraceSparsityDensity]?

    /// Analyses `sparsity` (the layer's per-step values, pooled over traces).
    public init(layer: Int, sparsity: [Float], options: CalibrationOptions) {
        let reading = DensityReading(sparsity: sparsity, options: options)
        self.layer = layer
        samples = reading.kde.sampleCount
        mean = reading.kde.mean
        standardDeviation = reading.kde.standardDeviation
        bandwidth = reading.kde.bandwidth
        modes = reading.modes
        valleys = reading.valleys
        candidate = reading.accepted
        thresholds = reading.thresholds
        strength = reading.strength
        selected = false
    }

    /// Analyses each trace's steps of the layer on their own (`sparsityByTrace`, in input order):
    /// a candidate when the mode rule accepts every trace's density; θs and strength are the
    /// means over the traces. The pooled density is kept as the layer-level summary.
    public init(layer: Int, sparsityByTrace: [[Float]], options: CalibrationOptions) {
        self.init(layer: layer, sparsity: sparsityByTrace.flatMap { $0 }, options: options)
        let traces = sparsityByTrace.enumerated().map {
            TraceSparsityDensity(trace: $0.offset, sparsity: $0.element, options: options)
        }
        perTrace = traces
        candidate = !traces.isEmpty && traces.allSatisfy { $0.thresholds != nil }
        if candidate {
            let n = Double(traces.count)
            thresholds = [
                traces.map { $0.thresholds![0] }.reduce(0, +) / n, traces.map { $0.thresholds![1] }.reduce(0, +) / n
            ]
            strength = traces.map { $0.strength! }.reduce(0, +) / n
        } else {
            thresholds = nil
            strength = nil
        }
    }

    /// Per-prompt densities: how many traces the mode rule rejected.
    public var rejectedTraces: Int { perTrace?.filter { $0.thresholds == nil }.count ?? 0 }

    /// The three most prominent modes, by position (ties: the lower position wins).
    static func strongestThree(_ modes: [DensityMode]) -> [DensityMode] {
        let ranked = modes.enumerated().sorted { a, b in
            a.element.prominence != b.element.prominence
                ? a.element.prominence > b.element.prominence : a.offset < b.offset
        }
        return ranked.prefix(3).map(\.element).sorted { $0.position < $1.position }
    }
}

/// ThinKV's offline calibration of the thought classifier: per recorded layer, Gaussian KDEs
/// of the per-step full-cache sparsity. With per-prompt densities (the default, as ThinKV
/// describes) there is one KDE per (trace, layer); a layer whose density has exactly three modes
/// on every trace is a candidate, with the valleys and strength averaged over the traces. With
/// pooled densities there is one KDE per layer over all traces. `modeRule` can relax "exactly
/// three" to "at least three". L* is the |L*| candidates with the strongest modes; θ1 and θ2
/// are the layers' valleys averaged over L* (so, per prompt, over prompts and L*).
///
/// When no layer is a candidate, calibration says so (`fallback`, `fallbackReason`) and falls back
/// to L* = every pooled layer and:
/// - θ1, θ2 = the valleys of the density of the sparsity averaged over L*, if that density has
///   three modes (averaging can separate what single layers blur);
/// - else a single thought type: θ1 = 0, θ2 = 1. Sparsity lies in [0, 1) (a row's maximum is
///   never below 1 % of itself), so no step is below θ1 or above θ2 and every step is reasoning.
///   ThinKV reports the same collapse to one type for output without thought structure; a forced
///   three-way split (e.g. at terciles) would invent transitions, and each transition makes TBE
///   shrink every earlier segment.
public struct ThoughtCalibration: Encodable, Sendable {
    public var thresholds: ThoughtThresholds
    public var model: String
    public var traces: [String]
    /// Decode steps profiled per trace.
    public var steps: [Int]
    public var options: CalibrationOptions
    public var layers: [LayerSparsityDensity]
    /// No layer was tri-modal; see `fallbackReason` and `fallbackRule`.
    public var fallback: Bool
    public var fallbackReason: String?
    /// How θ1/θ2 were found in the fallback: "averaged-density-valleys" or "single-type".
    public var fallbackRule: String?
    /// In the fallback: the density of the sparsity averaged over every pooled layer.
    public var fallbackDensity: LayerSparsityDensity?
    /// Other remarks worth reading (fewer tri-modal layers than asked, layers not in every trace, ...).
    public var notes: [String]

    /// One trace's profile, as calibration takes it.
    public struct Input {
        public var path: String
        public var model: String
        public var profile: SparsityProfile
        public init(path: String, model: String, profile: SparsityProfile) {
            self.path = path
            self.model = model
            self.profile = profile
        }
    }

    /// Profiles every recorded layer of each trace (first `maxSteps` decode steps) and calibrates.
    public static func calibrate(
        traces paths: [String], options: CalibrationOptions = CalibrationOptions(), maxSteps: Int? = nil,
        threads: Int? = nil, progress: ThinKVEngine.ProgressReporting? = nil
    ) throws -> ThoughtCalibration {
        defer { progress?.finish() }
        var inputs: [Input] = []
        for (i, path) in paths.enumerated() {
            let reader = try TraceReader(path: path)
            let part = progress.map {
                SubProgress(
                    $0, offset: Double(i) / Double(paths.count), scale: 1 / Double(paths.count),
                    prefix: paths.count > 1 ? "trace \(i + 1)/\(paths.count) " : "")
            }
            let profile = try SparsityProfile.compute(
                reader, maxSteps: maxSteps, threads: threads, progress: part, gqa: options.gqa)
            inputs.append(Input(path: path, model: reader.header.model, profile: profile))
        }
        return try calibrate(inputs, options: options)
    }

    /// Calibrates on profiles already computed.
    public static func calibrate(_ inputs: [Input], options: CalibrationOptions = CalibrationOptions()) throws
        -> ThoughtCalibration
    {
        guard !inputs.isEmpty else { throw CalibrationError("calibration needs at least one trace") }
        guard options.layerCount >= 1 else {
            throw CalibrationError("|L*| must be at least 1, got \(options.layerCount)")
        }
        guard options.refreshInterval >= 1 else {
            throw CalibrationError("τ must be at least 1, got \(options.refreshInterval)")
        }
        guard Set(inputs.map(\.profile.gqa)).count == 1 else {
            throw CalibrationError(
                "the traces' sparsity profiles combine GQA heads differently "
                    + "(\(Set(inputs.map(\.profile.gqa.rawValue)).sorted().joined(separator: ", ")))"
            )
        }
        var notes: [String] = []
        let models = inputs.map(\.model).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        if models.count > 1 {
            notes.append(
                "the traces come from different models (\(models.joined(separator: ", "))); their sparsity is pooled "
                    + "anyway"
            )
        }
        // Only layers every trace records can be pooled, and only they can be averaged at replay.
        var shared = Set(inputs[0].profile.layers)
        for input in inputs.dropFirst() { shared.formIntersection(input.profile.layers) }
        let allLayers = Set(inputs.flatMap(\.profile.layers))
        let layerIndices = shared.sorted()
        if shared.count < allLayers.count {
            let left = allLayers.subtracting(shared).sorted().map(String.init).joined(separator: ",")
            notes.append("layers \(left) are not recorded in every trace and were left out")
        }
        guard !layerIndices.isEmpty else {
            let recorded = inputs.map { "\($0.path): \($0.profile.layers.map(String.init).joined(separator: ","))" }
            throw CalibrationError("the traces share no recorded layer (\(recorded.joined(separator: "; ")))")
        }
        for input in inputs where (input.profile.byLayer[layerIndices[0]]?.count ?? 0) == 0 {
            throw CalibrationError("\(input.path): no decode steps to calibrate on")
        }
        func pooled(_ layer: Int) -> [Float] { inputs.flatMap { $0.profile.byLayer[layer] ?? [] } }

        var layers = layerIndices.map { layer in
            switch options.densities {
            case .pooled:
                return LayerSparsityDensity(layer: layer, sparsity: pooled(layer), options: options)
            case .perPrompt:
                return LayerSparsityDensity(
                    layer: layer, sparsityByTrace: inputs.map { $0.profile.byLayer[layer] ?? [] }, options: options)
            }
        }
        let candidates = layers.filter(\.candidate).sorted { a, b in
            a.strength! != b.strength! ? a.strength! > b.strength! : a.layer < b.layer
        }
        var fallback = false, fallbackReason: String?, fallbackRule: String?, fallbackDensity: LayerSparsityDensity?
        let chosen: [Int]
        var theta1: Double, theta2: Double
        if !candidates.isEmpty {
            let best = Array(candidates.prefix(options.layerCount))
            chosen = best.map(\.layer).sorted()
            theta1 = best.map { $0.thresholds![0] }.reduce(0, +) / Double(best.count)
            theta2 = best.map { $0.thresholds![1] }.reduce(0, +) / Double(best.count)
            if best.count < options.layerCount {
                notes.append(
                    "only \(candidates.count) tri-modal layer\(candidates.count == 1 ? "" : "s") of \(layers.count); "
                        + "L* has \(best.count) instead of \(options.layerCount)"
                )
            }
        } else {
            fallback = true
            fallbackReason = ThoughtCalibration.noCandidateReason(layers, options: options, traceCount: inputs.count)
            chosen = layerIndices
            // The fallback keeps its first rule whatever the options: one density of the
            // averaged sparsity pooled over the traces, three or more modes.
            let averaged = inputs.flatMap { $0.profile.averaged(over: chosen) }
            var fallbackOptions = options
            fallbackOptions.modeRule = .atLeastThree
            let summary = LayerSparsityDensity(layer: -1, sparsity: averaged, options: fallbackOptions)
            fallbackDensity = summary
            if let t = summary.thresholds {
                fallbackRule = "averaged-density-valleys"
                theta1 = t[0]
                theta2 = t[1]
            } else {
                fallbackRule = "single-type"
                theta1 = 0
                theta2 = 1
            }
        }
        for i in layers.indices { layers[i].selected = chosen.contains(layers[i].layer) }
        // Valleys lie strictly between ordered modes, so θ1 < θ2 holds for every rule above.
        var thresholds = ThoughtThresholds(
            theta1: Float(theta1), theta2: Float(theta2), layers: chosen,
            refreshInterval: options.refreshInterval, gqa: inputs[0].profile.gqa)
        thresholds.domain = "full"  // `CacheDomainCalibration` relabels its own
        return ThoughtCalibration(
            thresholds: thresholds, model: models.joined(separator: ", "), traces: inputs.map(\.path),
            steps: inputs.map { $0.profile.byLayer[layerIndices[0]]?.count ?? 0 }, options: options,
            layers: layers, fallback: fallback, fallbackReason: fallbackReason,
            fallbackRule: fallbackRule, fallbackDensity: fallbackDensity, notes: notes)
    }

    /// Why no layer is a candidate: each layer's mode count (pooled) or, per prompt, on how
    /// many prompts its density failed the mode rule and the mode counts per prompt.
    static func noCandidateReason(_ layers: [LayerSparsityDensity], options: CalibrationOptions, traceCount: Int)
        -> String
    {
        let tooFew =
            layers.count < 3 ? "; only \(layers.count) layer\(layers.count == 1 ? " is" : "s are") recorded" : ""
        let wanted = options.modeRule == .exactlyThree ? "exactly three modes" : "three or more modes"
        guard options.densities == .perPrompt, let first = layers.first?.perTrace, first.count > 1 else {
            let modeCounts = layers.map { layer -> String in
                let count = layer.perTrace?.first?.modeCount ?? layer.modes.count
                return "layer \(layer.layer): \(count) mode\(count == 1 ? "" : "s")"
            }
            return "no recorded layer has a tri-modal sparsity density (\(modeCounts.joined(separator: ", ")))" + tooFew
        }
        let perLayer = layers.map { layer -> String in
            let traces = layer.perTrace ?? []
            return
                "layer \(layer.layer): failed on \(layer.rejectedTraces) of \(traces.count) prompts, modes per "
                + "prompt \(traces.map { String($0.modeCount) }.joined(separator: "/"))"
        }
        return
            "no recorded layer has a sparsity density with \(wanted) on every one of the \(traceCount) prompts "
            + "(\(perLayer.joined(separator: "; ")))"
            + tooFew
    }

    // MARK: Output

    enum CodingKeys: String, CodingKey {
        case theta1, theta2, layers, refreshInterval = "refresh_interval", sparsityRatio = "sparsity_ratio"
        case gqa = "sparsity_gqa", domain = "sparsity_domain", calibration
    }

    /// Diagnostics nested under "calibration"; readers of thresholds ignore them.
    struct Diagnostics: Encodable {
        var model: String
        var traces: [String]
        var decodeSteps: [Int]
        var generator: String
        var method: Method
        var options: Options
        var layerCountRequested: Int
        var candidates: [Int]
        var selectedLayers: [Int]
        var fallback: Bool
        var fallbackReason: String?
        var fallbackRule: String?
        /// Modes and valleys of the sparsity averaged over all layers (fallback only; layer -1).
        var fallbackDensity: LayerSparsityDensity?
        var notes: [String]
        var perLayer: [LayerSparsityDensity]
    }

    struct Method: Encodable {
        var kernel = "gaussian"
        var bandwidthRule = "scott: h = sample_std (n-1 denominator) * n^(-1/5)"
        var gridPoints: Int
        var gridRange = [0.0, 1.0]
        var minRelativeProminence: Double
        var strength: String
    }

    /// The calibration options as the file records them (`calibration.options`).
    struct Options: Encodable {
        var densities: String
        var modeRule: String
        var layerCount: Int
        var refreshInterval: Int
        var minRelativeProminence: Double
        var gridPoints: Int
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(thresholds.theta1, forKey: .theta1)
        try c.encode(thresholds.theta2, forKey: .theta2)
        try c.encode(thresholds.layers, forKey: .layers)
        try c.encode(thresholds.refreshInterval, forKey: .refreshInterval)
        try c.encode(thresholds.sparsityRatio, forKey: .sparsityRatio)
        try c.encode(thresholds.gqa, forKey: .gqa)
        try c.encode(thresholds.domain ?? "full", forKey: .domain)
        let diagnostics = Diagnostics(
            model: model, traces: traces, decodeSteps: steps, generator: "thinkv-sim \(ThinKVSimVersion.current)",
            method: Method(
                gridPoints: options.gridPoints, minRelativeProminence: options.minRelativeProminence,
                strength: strengthDefinition),
            options: Options(
                densities: options.densities.rawValue, modeRule: options.modeRule.rawValue,
                layerCount: options.layerCount, refreshInterval: options.refreshInterval,
                minRelativeProminence: options.minRelativeProminence, gridPoints: options.gridPoints),
            layerCountRequested: options.layerCount, candidates: candidateLayers, selectedLayers: thresholds.layers,
            fallback: fallback, fallbackReason: fallbackReason, fallbackRule: fallbackRule,
            fallbackDensity: fallbackDensity?.rounded, notes: notes, perLayer: layers.map(\.rounded))
        try c.encode(diagnostics, forKey: .calibration)
    }

    private var strengthDefinition: String {
        let one = "smallest relative prominence among the three most prominent modes"
        return options.densities == .perPrompt ? "mean over prompts of the \(one)" : one
    }

    /// Tri-modal layers, strongest first.
    public var candidateLayers: [Int] {
        layers.filter(\.candidate).sorted { ($0.strength!, -$0.layer) > ($1.strength!, -$1.layer) }.map(\.layer)
    }

    /// The calibration file: thresholds at the top level (what `ThoughtThresholds.load` reads),
    /// diagnostics under "calibration".
    public func json() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }

    /// A readable summary: the per-layer densities, L*, θ1/θ2, and any fallback.
    public var text: String {
        var out: [String] = []
        let stepText =
            Set(steps).count == 1
            ? "\(steps[0]) decode steps\(traces.count > 1 ? " each" : "")"
            : "\(steps.map(String.init).joined(separator: "/")) decode steps"
        out.append(
            "calibrated on \(traces.count) trace\(traces.count == 1 ? "" : "s") of \(model): \(stepText), "
                + "\(layers.count) layer\(layers.count == 1 ? "" : "s") (samples per layer: \(steps.reduce(0, +)))"
        )
        let perPrompt = options.densities == .perPrompt && traces.count > 1
        let where_ = options.densities == .perPrompt ? "one per (trace, layer)" : "one per layer over the traces pooled"
        out.append(
            "density: Gaussian KDE (\(where_)), Scott's bandwidth h = σ̂·n^(-1/5), \(options.gridPoints)-point grid "
                + "on [0, 1]; modes kept when their prominence is ≥ "
                + "\(Format.fixed(options.minRelativeProminence * 100, 1))% of the peak density"
        )
        let rule = options.modeRule == .exactlyThree ? "exactly three modes" : "three or more modes"
        let pooling =
            options.densities == .perPrompt ? " on every trace; valleys and strength averaged over the traces" : ""
        out.append("candidate: \(rule)\(pooling)")
        out.append("")
        out.append(ThoughtCalibration.layerTable(layers, showSelection: true))
        if perPrompt {
            out.append(
                "modes per trace: kept mode counts in trace order; valleys: the layer's θ1 θ2 (means over the "
                    + "traces); strength: mean over the traces of the weakest of the three most prominent modes"
            )
        } else {
            out.append("modes: sparsity (relative prominence); strength: the weakest of the three most prominent modes")
        }
        out.append("")
        if fallback {
            out.append("WARNING: \(fallbackReason ?? "no tri-modal layer")")
            let layerText = "L* = all \(thresholds.layers.count) pooled layer\(thresholds.layers.count == 1 ? "" : "s")"
            let averagedModes = (fallbackDensity?.modes ?? []).map { Format.fixed($0.position, 3) }.joined(
                separator: " ")
            if fallbackRule == "averaged-density-valleys" {
                out.append(
                    "fallback: \(layerText); the density of their averaged sparsity is tri-modal (modes "
                        + "\(averagedModes)), θ1, θ2 = its valleys"
                )
            } else {
                out.append(
                    "fallback: \(layerText); their averaged sparsity is not tri-modal either (modes "
                        + "\(averagedModes)): one thought type, θ1 = 0, θ2 = 1, every step is classified reasoning"
                )
            }
        } else {
            let cands = candidateLayers
            out.append(
                "L* = \(thresholds.layers.map(String.init).joined(separator: ", ")): the \(thresholds.layers.count) "
                    + "tri-modal layer\(thresholds.layers.count == 1 ? "" : "s") with the strongest modes "
                    + "(tri-modal: \(cands.count) of \(layers.count))"
            )
        }
        for note in notes { out.append("note: \(note)") }
        out.append("θ1 = \(Format.fixed(Double(thresholds.theta1), 4))  (sparsity below: execution)")
        let valleys =
            fallback ? "" : perPrompt ? "; valleys averaged over the traces and L*" : "; valleys averaged over L*"
        let theta2 = Format.fixed(Double(thresholds.theta2), 4)
        out.append("θ2 = \(theta2)  (sparsity above: transition; between: reasoning)\(valleys)")
        out.append("τ  = \(thresholds.refreshInterval) decode steps; sparsity ratio \(thresholds.sparsityRatio)")
        return out.joined(separator: "\n")
    }

    /// Per-layer modes and valleys as a table (shared with `inspect --thoughts`). Layers with
    /// densities of several traces get the per-prompt table; otherwise the single density's
    /// modes are listed.
    public static func layerTable(_ layers: [LayerSparsityDensity], showSelection: Bool) -> String {
        if layers.contains(where: { ($0.perTrace?.count ?? 0) > 1 }) {
            return perPromptTable(layers, showSelection: showSelection)
        }
        var headers = ["layer", "samples", "bandwidth", "modes", "valleys", "tri-modal", "strength"]
        if showSelection { headers.append("L*") }
        var table = TextTable(headers: headers)
        for l in layers {
            var row = [
                String(l.layer), String(l.samples), Format.fixed(l.bandwidth, 4),
                l.modes.map { "\(Format.fixed($0.position, 3)) (\(Format.fixed($0.relativeProminence, 2)))" }.joined(
                    separator: " "),
                l.valleys.map { Format.fixed($0.position, 3) }.joined(separator: " "),
                l.candidate ? "yes" : "no", l.strength.map { Format.fixed($0, 3) } ?? "-"
            ]
            if showSelection { row.append(l.selected ? "*" : "") }
            table.add(row)
        }
        table.leftAligned = [0, 3, 4, 5, 7]
        return table.render()
    }

    /// One row per layer: mode counts per trace, how many traces the mode rule accepted, the
    /// averaged valleys and strength of candidates.
    static func perPromptTable(_ layers: [LayerSparsityDensity], showSelection: Bool) -> String {
        var headers = ["layer", "samples", "modes per trace", "accepted", "valleys", "tri-modal", "strength"]
        if showSelection { headers.append("L*") }
        var table = TextTable(headers: headers)
        for l in layers {
            let traces = l.perTrace ?? []
            var row = [
                String(l.layer), String(l.samples), traces.map { String($0.modeCount) }.joined(separator: " "),
                "\(traces.count - l.rejectedTraces)/\(traces.count)",
                l.thresholds.map { $0.map { Format.fixed($0, 3) }.joined(separator: " ") } ?? "-",
                l.candidate ? "yes" : "no", l.strength.map { Format.fixed($0, 3) } ?? "-"
            ]
            if showSelection { row.append(l.selected ? "*" : "") }
            table.add(row)
        }
        table.leftAligned = [0, 2, 4, 5, 7]
        return table.render()
    }
}

extension LayerSparsityDensity {
    /// The same with numbers rounded to 6 decimals, for a tidy file.
    var rounded: LayerSparsityDensity {
        func r(_ x: Double) -> Double { (x * 1e6).rounded() / 1e6 }
        var c = self
        c.mean = r(mean)
        c.standardDeviation = r(standardDeviation)
        c.bandwidth = r(bandwidth)
        c.modes = modes.map {
            DensityMode(
                position: r($0.position), index: $0.index, density: r($0.density),
                prominence: r($0.prominence), relativeProminence: r($0.relativeProminence))
        }
        c.valleys = valleys.map { DensityValley(position: r($0.position), index: $0.index, density: r($0.density)) }
        c.thresholds = thresholds?.map(r)
        c.strength = strength.map(r)
        c.perTrace = perTrace?.map { t in
            var u = t
            u.bandwidth = r(t.bandwidth)
            u.modes = t.modes.map {
                DensityMode(
                    position: r($0.position), index: $0.index, density: r($0.density),
                    prominence: r($0.prominence), relativeProminence: r($0.relativeProminence))
            }
            u.valleys = t.valleys.map {
                DensityValley(position: r($0.position), index: $0.index, density: r($0.density))
            }
            u.thresholds = t.thresholds?.map(r)
            u.strength = t.strength.map(r)
            return u
        }
        return c
    }
}

/// A calibration problem (no usable layer, bad settings) or a bad thresholds file.
public struct CalibrationError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension ThoughtThresholds {
    /// Reads thresholds from a calibration file (or any JSON object with `theta1`, `theta2`,
    /// `layers`, `refresh_interval`, `sparsity_ratio`); other keys, such as the diagnostics
    /// `thinkv-sim calibrate` writes, are ignored. Errors are one line naming the file.
    public static func load(path: String) throws -> ThoughtThresholds {
        func fail(_ problem: String) -> CalibrationError { CalibrationError("\(path): \(problem)") }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            let exists = FileManager.default.fileExists(atPath: path)
            throw fail(exists ? "cannot read the file" : "no such file")
        }
        let t: ThoughtThresholds
        do {
            t = try JSONDecoder().decode(ThoughtThresholds.self, from: data)
        } catch let error as DecodingError {
            throw fail(describe(error))
        } catch {
            throw fail("not a thresholds file: \(error.localizedDescription)")
        }
        guard t.theta1.isFinite, t.theta2.isFinite, (0...1).contains(t.theta1), (0...1).contains(t.theta2) else {
            throw fail("theta1 and theta2 must lie in [0, 1], got \(t.theta1) and \(t.theta2)")
        }
        guard t.theta1 < t.theta2 else { throw fail("theta1 must be below theta2, got \(t.theta1) and \(t.theta2)") }
        guard !t.layers.isEmpty else { throw fail("layers (L*) is empty") }
        if let bad = t.layers.first(where: { $0 < 0 }) { throw fail("layers holds a negative index \(bad)") }
        guard Set(t.layers).count == t.layers.count else { throw fail("layers lists a layer twice: \(t.layers)") }
        guard t.refreshInterval >= 1 else {
            throw fail("refresh_interval must be at least 1, got \(t.refreshInterval)")
        }
        guard t.sparsityRatio > 0 && t.sparsityRatio < 1 else {
            throw fail("sparsity_ratio must lie strictly between 0 and 1, got \(t.sparsityRatio)")
        }
        return t
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, _):
            return
                "missing key '\(key.stringValue)' (a thresholds file has theta1, theta2, layers, refresh_interval, "
                + "sparsity_ratio)"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            if context.codingPath.isEmpty {
                return "not a JSON object with theta1, theta2, layers, refresh_interval, sparsity_ratio"
            }
            return "'\(path(context))' has the wrong type (\(context.debugDescription))"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not valid JSON" : "'\(path(context))': \(context.debugDescription)"
        @unknown default:
            return "not a thresholds file"
        }
    }
}

/// Forwards a part of a longer job's progress (and leaves `finish` to the whole job).
final class SubProgress: ThinKVEngine.ProgressReporting {
    let base: ThinKVEngine.ProgressReporting
    let offset: Double, scale: Double
    let prefix: String
    init(_ base: ThinKVEngine.ProgressReporting, offset: Double, scale: Double, prefix: String) {
        self.base = base
        self.offset = offset
        self.scale = scale
        self.prefix = prefix
    }
    func update(fraction: Double, detail: String) {
        base.update(fraction: offset + scale * fraction, detail: prefix + detail)
    }
    func finish() {}
}
