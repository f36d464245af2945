import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// `thinkv-sim label`: a user's labels into /tokens/thought, then readable as the trace's labels.
final class ThoughtLabelerTests: XCTestCase {
    func testLabelsFromCSVBecomeTheTracesThoughtLabels() throws {
        let directory = try TestTraces.directory(self)
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("l.h5"), T: 12, P: 4, Hq: 1, Hkv: 1, D: 8,
            layers: [TestTraces.randomLayer(T: 12, Hq: 1, Hkv: 1, D: 8, seed: 2)])
        XCTAssertNil(try TraceReader(path: path).readThoughtLabels())
        let csv = directory.appendingPathComponent("labels.csv")
        try Data("step,type\n0,R\n1,execution\n2,2\n# a comment\n7,t\n".utf8).write(to: csv)
        let outcome = try CommandRunner.run(["label", path, "--from", csv.path], in: directory)
        XCTAssertEqual(outcome.status, 0, outcome.stderr)
        XCTAssertEqual(try TraceReader(path: path).readThoughtLabels(), [-1, -1, -1, -1, 0, 1, 2, -1, -1, -1, -1, 2])
        // Relabelling replaces the dataset.
        try Data("3,E\n".utf8).write(to: csv)
        XCTAssertEqual(try CommandRunner.run(["label", path, "--from", csv.path], in: directory).status, 0)
        XCTAssertEqual(try TraceReader(path: path).readThoughtLabels(), [-1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1])
        // Bad rows name the line.
        XCTAssertThrowsError(try ThoughtLabeler.parse("0,R\n9,R\n", file: "x.csv", decodeSteps: 8)) {
            XCTAssertTrue("\($0)".contains("x.csv: line 2: step 9 is not a decode step"), "\($0)")
        }
        XCTAssertThrowsError(try ThoughtLabeler.parse("0,Q\n", file: "x.csv", decodeSteps: 8)) {
            XCTAssertTrue("\($0)".contains("type 'Q'"), "\($0)")
        }
    }

    func testPredictedSegmentsCarryTheirTokensText() {
        let text = ["<p>", "<p>", "Let", " me", " compute", "\n", "Wait"]
        let segments = ThoughtInspection.segmentTexts(
            steps: "RREET", tokenText: text, promptLength: 2, maxCharacters: 12)
        XCTAssertEqual(segments.map(\.type), ["reasoning", "execution", "transition"])
        XCTAssertEqual(segments.map { [$0.firstStep, $0.lastStep] }, [[0, 1], [2, 3], [4, 4]])
        XCTAssertEqual(segments.map(\.text), ["Let me", " compute\\n", "Wait"], "control characters escaped")
        XCTAssertEqual(
            ThoughtInspection.segmentTexts(
                steps: "RRRRR", tokenText: ["a", "bcdefghij", "klmnopqrst", "u", "v", "w"],
                promptLength: 1, maxCharacters: 8)[0].text, "bcdef...")
    }

    func testTheThoughtFigureDrawsThresholdsAndTheClassifiersTypes() throws {
        let thresholds = ThoughtThresholds(theta1: 0.3, theta2: 0.7, layers: [0])
        let figure = try XCTUnwrap(
            ThoughtTimelineFigure.figure(
                name: "t", subtitle: "s", labels: [0, 0, 2, 1], sparsity: [0.5, 0.5, 0.9, 0.1],
                thresholds: thresholds, predicted: [.reasoning, .reasoning, .transition, .execution]))
        let series = figure.panels[0].series
        XCTAssertEqual(series.map(\.label), ["sparsity", "θ1 = 0.300", "θ2 = 0.700"])
        // The classifier's types are a strip of their own: R for steps 0-1, T for 2, E for 3.
        let strip = try XCTUnwrap(figure.panels[0].strips.first { $0.label == "classifier" })
        XCTAssertEqual(strip.segments.map { [$0.from, $0.to] }, [[0, 2], [2, 3], [3, 4]])
        XCTAssertEqual(strip.segments.map(\.color), [0, 2, 1].map { Palette.thoughts[$0] })
        XCTAssertTrue(figure.render().contains("θ2 = 0.700"))
    }
}
