import Foundation

/// What `inspect --thoughts` reports: the trace's per-layer sparsity densities, the thresholds
/// used, the classified timeline and, when the trace carries `/tokens/thought`, agreement with it.
public struct ThoughtInspection: Encodable, Sendable {
    /// Agreement of the classifier with the reference labels at one refresh interval.
    public struct Evaluation: Encodable, Sendable {
        public var refreshInterval: Int
        /// Decode steps with a reference label (label ≥ 0) among those classified.
        public var labelledSteps: Int
        public var accuracy: Double
        /// `[reference][predicted]`, R, E, T order.
        public var confusion: [[Int]]
    }

    /// Lengths of the runs of equal reference labels (a −1 label ends a run).
    public struct SegmentStatistics: Encodable, Sendable {
        public var type: String
        public var count: Int
        public var meanLength: Double
        public var medianLength: Double
        public var minLength: Int
        public var maxLength: Int
        /// Segments shorter than τ: a held type cannot follow them.
        public var shorterThanRefresh: Int
    }

    /// "file" (thresholds from `calibrationFile`) or "self" (calibrated on this trace).
    public var thresholdSource: String
    public var calibrationFile: String?
    public var thresholds: ThoughtThresholds
    /// The self-calibration's fallback and notes (also shown when a file supplies the thresholds:
    /// they describe this trace's densities).
    public var fallback: Bool
    public var fallbackReason: String?
    public var notes: [String]
    /// This trace's per-layer densities (L* marks the layers the thresholds average).
    public var layers: [LayerSparsityDensity]
    public var decodeSteps: Int
    public var predictedCounts: [String: Int]
    /// One letter per bin of decode steps: the majority predicted type at τ.
    public var timeline: String
    /// The same for the reference labels (when present), with the same bins.
    public var labelTimeline: String?
    /// One letter per decode step at τ.
    public var steps: String
    /// At τ and at τ = 1 (when the trace has labels).
    public var evaluations: [Evaluation]
    public var referenceSegments: [SegmentStatistics]?
    /// With `--text`: each predicted segment (a run of one type at τ) and its tokens' text.
    public var segmentTexts: [SegmentText]?

    /// One predicted segment: decode steps `firstStep...lastStep` of `type`, and their text.
    public struct SegmentText: Encodable, Sendable {
        public var type: String
        public var firstStep: Int
        public var lastStep: Int
        public var text: String
    }

    /// The predicted segments of `steps` (one letter per decode step) with the decoded text of
    /// their tokens (`tokenText` has one piece per position), each text cut to `maxCharacters`.
    public static func segmentTexts(steps: String, tokenText: [String], promptLength: Int, maxCharacters: Int = 120)
        -> [SegmentText]
    {
        let letters = Array(steps)
        var out: [SegmentText] = []
        var start = 0
        let names: [Character: String] = ["R": "reasoning", "E": "execution", "T": "transition"]
        while start < letters.count {
            var end = start
            while end + 1 < letters.count && letters[end + 1] == letters[start] { end += 1 }
            let pieces = (start...end).compactMap {
                promptLength + $0 < tokenText.count ? tokenText[promptLength + $0] : nil
            }
            var text = Format.printable(pieces.joined())
            if text.count > maxCharacters { text = String(text.prefix(maxCharacters - 3)) + "..." }
            out.append(
                SegmentText(
                    type: names[letters[start]] ?? String(letters[start]), firstStep: start, lastStep: end, text: text))
            start = end + 1
        }
        return out
    }

    /// Classifies the profiled steps of `reader`. Thresholds come from `calibrationFile` if given,
    /// else from calibrating on `profile` itself; `refreshInterval` overrides τ.
    public init(
        reader: TraceReader, profile: SparsityProfile, calibrationFile: String?, refreshInterval: Int?,
        options: CalibrationOptions = CalibrationOptions(), timelineWidth: Int = 80
    ) throws {
        var own = options
        if let refreshInterval { own.refreshInterval = refreshInterval }
        let selfCalibration = try ThoughtCalibration.calibrate(
            [ThoughtCalibration.Input(path: reader.path, model: reader.header.model, profile: profile)], options: own)
        var thresholds: ThoughtThresholds
        var mappingNote: String?
        if let calibrationFile {
            thresholds = try ThoughtThresholds.load(path: calibrationFile)
            if let refreshInterval { thresholds.refreshInterval = refreshInterval }
            // As replay does: L* layers this trace lacks map to its nearest recorded ones.
            if let (mapped, note) = ThinKVParameters.nearestRecorded(
                thresholds.layers, recorded: profile.layers.sorted())
            {
                thresholds.layers = mapped
                mappingNote = "\(URL(fileURLWithPath: calibrationFile).lastPathComponent): \(note)"
            }
            if abs(thresholds.sparsityRatio - Sparsity.defaultRatio) > 1e-6 {
                throw CalibrationError(
                    "\(calibrationFile): calibrated at sparsity ratio \(thresholds.sparsityRatio), but sparsity is "
                        + "measured at \(Sparsity.defaultRatio)"
                )
            }
            thresholdSource = "file"
        } else {
            thresholds = selfCalibration.thresholds
            thresholdSource = "self"
        }
        self.calibrationFile = calibrationFile
        self.thresholds = thresholds
        fallback = selfCalibration.fallback
        fallbackReason = selfCalibration.fallbackReason
        notes = selfCalibration.notes + (mappingNote.map { [$0] } ?? [])
        layers = selfCalibration.layers.map { l in
            var l = l
            l.selected = thresholds.layers.contains(l.layer)
            return l
        }

        let averaged = profile.averaged(over: thresholds.layers)
        let predicted = ThoughtClassifier.timeline(averagedSparsity: averaged, thresholds: thresholds)
        decodeSteps = predicted.count
        var counts: [String: Int] = [:]
        for t in ThoughtType.allCases { counts[t.name] = predicted.filter { $0 == t }.count }
        predictedCounts = counts
        steps = String(predicted.map(\.letter))
        timeline = ThoughtInspection.binnedLetters(predicted.map { Int8($0.rawValue) }, width: timelineWidth)

        evaluations = []
        if let labels = try reader.readThoughtLabels() {
            let P = reader.header.promptLength
            let reference = Array(labels[P..<(P + predicted.count)])
            labelTimeline = ThoughtInspection.binnedLetters(reference, width: timelineWidth)
            var perStep = thresholds
            perStep.refreshInterval = 1
            let everyStep = ThoughtClassifier.timeline(averagedSparsity: averaged, thresholds: perStep)
            for (tau, types) in [(thresholds.refreshInterval, predicted), (1, everyStep)] {
                if tau == 1 && thresholds.refreshInterval == 1 && !evaluations.isEmpty { break }
                let (accuracy, confusion) = ThoughtClassifier.accuracy(predicted: types, reference: reference)
                evaluations.append(
                    Evaluation(
                        refreshInterval: tau, labelledSteps: confusion.joined().reduce(0, +),
                        accuracy: accuracy, confusion: confusion))
            }
            referenceSegments = ThoughtInspection.segmentStatistics(
                reference, refreshInterval: thresholds.refreshInterval)
        }
    }

    /// Majority letter per bin (`.` for a bin without labels); the bins match `TraceSummary`'s.
    static func binnedLetters(_ values: [Int8], width: Int) -> String {
        let G = values.count
        guard G > 0 else { return "" }
        let w = max(1, min(width, G))
        return String(
            (0..<w).map { b -> Character in
                var counts = [0, 0, 0]
                for i in (b * G / w)..<max((b + 1) * G / w, b * G / w + 1) where values[i] >= 0 {
                    counts[Int(values[i])] += 1
                }
                guard let best = counts.indices.max(by: { counts[$0] < counts[$1] }), counts[best] > 0 else {
                    return "."
                }
                return ThoughtType(rawValue: Int8(best))!.letter
            })
    }

    /// Run lengths of each reference type, plus all types together ("all").
    static func segmentStatistics(_ labels: [Int8], refreshInterval: Int) -> [SegmentStatistics] {
        var runs: [(Int8, Int)] = []
        for l in labels {
            if let last = runs.last, last.0 == l { runs[runs.count - 1].1 += 1 } else { runs.append((l, 1)) }
        }
        runs.removeAll { $0.0 < 0 }
        func stats(_ name: String, _ lengths: [Int]) -> SegmentStatistics? {
            guard !lengths.isEmpty else { return nil }
            let sorted = lengths.sorted()
            let median =
                sorted.count % 2 == 1
                ? Double(sorted[sorted.count / 2])
                : Double(sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            return SegmentStatistics(
                type: name, count: lengths.count,
                meanLength: Double(lengths.reduce(0, +)) / Double(lengths.count), medianLength: median,
                minLength: sorted.first!, maxLength: sorted.last!,
                shorterThanRefresh: lengths.filter { $0 < refreshInterval }.count)
        }
        var out = ThoughtType.allCases.compactMap { t in stats(t.name, runs.filter { $0.0 == t.rawValue }.map(\.1)) }
        if let all = stats("all", runs.map(\.1)) { out.append(all) }
        return out
    }

    public var text: String {
        var out: [String] = []
        out.append("thought decomposition")
        if thresholdSource == "file", let calibrationFile {
            out.append("thresholds from \(calibrationFile); per-layer densities below are this trace's own")
        } else {
            out.append("thresholds calibrated on this trace itself (no --calibration given)")
        }
        out.append("")
        out.append(ThoughtCalibration.layerTable(layers, showSelection: true))
        out.append("modes: sparsity (relative prominence); L*: layers the thresholds average")
        if thresholdSource == "self", fallback {
            out.append(
                "WARNING: \(fallbackReason ?? "no tri-modal layer"); thresholds from the fallback rule (see "
                    + "'thinkv-sim calibrate')"
            )
        }
        for note in notes { out.append("note: \(note)") }
        out.append(
            "L* = \(thresholds.layers.map(String.init).joined(separator: ", ")), θ1 = "
                + "\(Format.fixed(Double(thresholds.theta1), 4)), θ2 = "
                + "\(Format.fixed(Double(thresholds.theta2), 4)), τ = \(thresholds.refreshInterval)"
        )
        let total = Double(max(decodeSteps, 1))
        out.append(
            "predicted: "
                + ThoughtType.allCases.map { t in
                    let n = predictedCounts[t.name] ?? 0
                    return "\(t.name) \(n) (\(String(format: "%.1f", 100 * Double(n) / total))%)"
                }.joined(separator: ", "))
        out.append("")
        out.append("timeline over \(decodeSteps) decode steps (majority per bin):")
        if let labelTimeline { out.append("  labels     \(labelTimeline)") }
        out.append("  predicted  \(timeline)  (τ = \(thresholds.refreshInterval))")
        if let segmentTexts {
            out.append("")
            out.append("predicted segments at τ = \(thresholds.refreshInterval), with their text:")
            var table = TextTable(headers: ["type", "steps", "text"])
            for s in segmentTexts { table.add([s.type, "\(s.firstStep)-\(s.lastStep)", s.text]) }
            out.append(table.render())
        }
        if evaluations.isEmpty {
            out.append("")
            out.append("no /tokens/thought in this trace: no accuracy")
            return out.joined(separator: "\n")
        }
        out.append("")
        out.append(
            "token-level accuracy against /tokens/thought (\(evaluations[0].labelledSteps) labelled decode steps):")
        for e in evaluations {
            out.append("  τ = \(e.refreshInterval): \(Format.fixed(100 * e.accuracy, 1))%")
        }
        for e in evaluations {
            out.append("")
            out.append("confusion at τ = \(e.refreshInterval) (rows: reference, columns: predicted)")
            var table = TextTable(headers: ["reference", "R", "E", "T"])
            for (i, t) in ThoughtType.allCases.enumerated() {
                table.add([String(t.letter)] + e.confusion[i].map(String.init))
            }
            out.append(table.render())
        }
        if let segments = referenceSegments {
            out.append("")
            out.append("reference segments (runs of one label):")
            var table = TextTable(headers: ["type", "count", "mean", "median", "min", "max", "< τ"])
            for s in segments {
                table.add([
                    s.type, String(s.count), Format.fixed(s.meanLength, 1), Format.fixed(s.medianLength, 1),
                    String(s.minLength), String(s.maxLength), String(s.shorterThanRefresh)
                ])
            }
            out.append(table.render())
        }
        return out.joined(separator: "\n")
    }
}
