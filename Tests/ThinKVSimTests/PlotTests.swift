import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest
@testable import ThinKVSim

/// Counts what an SVG figure holds, and fails on anything that is not well-formed XML.
private final class FigureCensus: NSObject, XMLParserDelegate {
    var seriesPerPanel: [String: [String]] = [:]
    var legendEntries = 0
    var bandRects = 0
    var texts: [String] = []
    private var panel: String?
    private var inLegend = false
    private var inBands = false
    private var text = ""
    private var depth = 0
    private var legendDepth = 0

    static func parse(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws -> FigureCensus {
        let parser = try XCTUnwrap(XMLParser(contentsOf: URL(fileURLWithPath: path)), file: file, line: line)
        let census = FigureCensus()
        parser.delegate = census
        XCTAssertTrue(parser.parse(), "\(path): \(parser.parserError.map { "\($0)" } ?? "invalid XML")", file: file, line: line)
        return census
    }

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
        depth += 1
        if name == "g" {
            switch attributes["class"] {
            case "panel": panel = attributes["data-panel"]
            case "series": seriesPerPanel[panel ?? "none", default: []].append(attributes["data-label"] ?? "")
            case "legend": inLegend = true; legendDepth = depth
            case "bands": inBands = true
            default: break
            }
        }
        if inLegend && name == "text" { legendEntries += 1 }
        if inBands && name == "rect" { bandRects += 1 }
        if name == "text" { text = "" }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "text" { texts.append(text) }
        if name == "g" && inLegend && depth == legendDepth { inLegend = false }
        if name == "g" && inBands { inBands = false }
        depth -= 1
    }
}

final class PlotTests: XCTestCase {
    private var directory: URL!
    private var traces: [String] = []

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
        traces = try SweepFixture.traces(in: directory)
    }

    private func sweep(steps: Bool) throws -> String {
        let output = directory.appendingPathComponent(steps ? "with-steps.csv" : "plain.csv").path
        let json = SweepFixture.json(traces: traces, output: output, steps: steps ? directory.appendingPathComponent("steps").path : nil)
        _ = try SweepRunner(grid: try SweepFixture.grid(json)).run()
        return output
    }

    func testFiguresAreValidSVGWithOneSeriesPerPolicyVariant() throws {
        let results = try sweep(steps: true)
        let out = directory.appendingPathComponent("figures").path
        let outcome = try Plotter.plot(results: results, options: PlotOptions(outputDirectory: out))
        XCTAssertEqual(outcome.notes, [])
        let kinds = ["fidelity-budget", "fidelity-bytes", "kv-steps", "thoughts"]
        XCTAssertEqual(outcome.files, ["a", "b"].flatMap { t in kinds.map { "\(out)/\(t).\($0).svg" } }
                       + ["\(out)/all-traces.fidelity-bytes.svg"])

        // full, streaming, h2o, kivi k-bits=2, kivi k-bits=4: in both panels and the legend.
        let expected = ["full", "streaming", "h2o", "kivi k-bits=2", "kivi k-bits=4"]
        for kind in ["fidelity-budget", "fidelity-bytes"] {
            let census = try FigureCensus.parse("\(out)/a.\(kind).svg")
            XCTAssertEqual(census.seriesPerPanel["0"], expected, kind)
            XCTAssertEqual(census.seriesPerPanel["1"], expected, kind)
            XCTAssertEqual(census.legendEntries, 1 + expected.count, "title and one entry per series")
            XCTAssertTrue(census.texts.contains("(b) Attention output error"), "the trace has values: \(census.texts)")
        }
        let budget = try FigureCensus.parse("\(out)/a.fidelity-budget.svg")
        XCTAssertTrue(budget.texts.contains("budget (tokens per kv head)"))
        XCTAssertTrue(budget.texts.contains("4") && budget.texts.contains("8"), "budget ticks: \(budget.texts)")

        // One line per series at the middle budget (4 of 4, 8); the full cache is a series itself.
        let steps = try FigureCensus.parse("\(out)/a.kv-steps.svg")
        XCTAssertEqual(steps.seriesPerPanel["0"], ["full", "streaming", "h2o", "kivi k-bits=2", "kivi k-bits=4"])
        XCTAssertTrue(steps.texts.contains { $0.contains("budget 4") }, "\(steps.texts)")

        // Labels of trace a's decode steps 6..<28 change every 5 positions: 5 segments.
        let thoughts = try FigureCensus.parse("\(out)/a.thoughts.svg")
        XCTAssertEqual(thoughts.seriesPerPanel["0"], ["sparsity"])
        XCTAssertEqual(thoughts.bandRects, 5)
        XCTAssertTrue(thoughts.texts.contains("T: transition"))
    }

    func testWithoutStepCSVsTheTimelineReadsTheTrace() throws {
        let results = try sweep(steps: false)
        let out = directory.appendingPathComponent("figures").path
        var options = PlotOptions(outputDirectory: out)
        options.logBytes = true
        let outcome = try Plotter.plot(results: results, options: options)
        XCTAssertEqual(outcome.files.filter { $0.hasSuffix(".kv-steps.svg") }, [], "no per-step data")
        XCTAssertEqual(outcome.notes.filter { $0.contains("step_csv_dir") }.count, 2, "\(outcome.notes)")
        let thoughts = try FigureCensus.parse("\(out)/b.thoughts.svg")
        XCTAssertEqual(thoughts.seriesPerPanel["0"], ["sparsity"], "sparsity computed from the trace")
        let bytes = try FigureCensus.parse("\(out)/b.fidelity-bytes.svg")
        XCTAssertTrue(bytes.texts.contains { $0.hasSuffix(" KiB") || $0.hasSuffix(" B") }, "log axis labels carry units: \(bytes.texts)")
    }

    func testNotSweepResultsIsAnError() throws {
        let path = directory.appendingPathComponent("other.csv").path
        try Data("a,b\n1,2\n".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Plotter.plot(results: path, options: PlotOptions(outputDirectory: directory.path))) {
            XCTAssertTrue("\($0)".contains("no 'trace' column"), "\($0)")
        }
    }

    // MARK: Axes

    func testLinearTicksAreNiceNumbers() {
        let a = Axis.linear(min: 0.13, max: 0.93, title: "")
        XCTAssertEqual(a.labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"])
        let b = Axis.linear(min: 0.9712, max: 0.9987, title: "", clampUpper: 1)
        XCTAssertEqual(b.ticks.first!, 0.97, accuracy: 1e-12)
        XCTAssertEqual(b.upper, 1)
        XCTAssertEqual(b.labels, ["0.97", "0.98", "0.99", "1.00"])
        let c = Axis.linear(min: 0, max: 636, title: "", includeZero: true, tight: true)
        XCTAssertEqual(c.upper, 636)
        XCTAssertEqual(c.labels, ["0", "200", "400", "600"])
        let flat = Axis.linear(min: 1, max: 1, title: "")
        XCTAssertLessThan(flat.lower, 1)
        XCTAssertGreaterThan(flat.upper, 1)
    }

    func testByteAxesUseBinaryUnits() {
        let linear = Axis.bytes(min: 0, max: 3.4 * 1_048_576, title: "KV cache", log: false)
        XCTAssertEqual(linear.title, "KV cache (MiB)")
        XCTAssertEqual(linear.labels, ["0", "1", "2", "3", "4"])
        let log = Axis.bytes(min: 300 * 1024, max: 9 * 1_048_576, title: "KV cache", log: true)
        XCTAssertEqual(log.labels, ["256 KiB", "512 KiB", "1 MiB", "2 MiB", "4 MiB", "8 MiB"], "powers of two in the padded domain")
        XCTAssertEqual(log.fraction(1_048_576) - log.fraction(524_288), log.fraction(2_097_152) - log.fraction(1_048_576), accuracy: 1e-12,
                       "equal ratios, equal distances")
        XCTAssertEqual(Axis.byteLabel(1536), "1.5 KiB")
        XCTAssertEqual(Axis.byteLabel(512), "512 B")
    }

    func testCoincidentSeriesInterleaveTheirDashes() throws {
        let points: [(x: Double, y: Double)] = [(0, 1), (1, 2), (2, 2)]
        let series = [
            Series(label: "h2o", points: points, style: SeriesStyle(color: "#0072B2")),
            Series(label: "rkv", points: [(0, 1), (1, 3), (2, 2)], style: SeriesStyle(color: "#CC79A7")),
            Series(label: "streaming", points: points, style: SeriesStyle(color: "#D55E00")),
            Series(label: "snapkv", points: points, style: SeriesStyle(color: "#009E73")),
            Series(label: "full", points: [], style: SeriesStyle(color: "#000000", dash: "7 4"), level: 0.5),
            Series(label: "kivi", points: [], style: SeriesStyle(color: "#E69F00", dash: "2 3"), level: 0.5000001),
        ]
        let dashes = Figure.interleavedDashes(series, segment: 9)
        XCTAssertNil(dashes[1], "a line of its own keeps its style")
        XCTAssertNil(Figure.interleavedDashes(series, y: { $0 * 1e8 })[5], "apart on screen: drawn as styled")
        XCTAssertEqual(dashes[0]?.dash, "9 18")
        XCTAssertEqual([0, 2, 3].map { dashes[$0]!.offset }, [0, 18, 9], "each of three gets every third segment")
        XCTAssertEqual(dashes[4]?.dash, "9 9")
        XCTAssertEqual([4, 5].map { dashes[$0]!.offset }, [0, 9])

        let figure = Figure(title: "t", panels: [Panel(title: nil, x: Axis.linear(min: 0, max: 2, title: "x"),
                                                       y: Axis.linear(min: 0, max: 3, title: "y"), series: series)],
                            legend: series.map { LegendEntry(label: $0.label, style: $0.style) })
        let svg = figure.render()
        XCTAssertTrue(svg.contains(##"stroke="#D55E00" stroke-width="1.8" stroke-dasharray="9 18" stroke-dashoffset="18""##), svg)
        XCTAssertTrue(svg.contains(##"stroke="#E69F00" stroke-width="1.8" stroke-dasharray="9 9" stroke-dashoffset="9""##), svg)
    }

    func testTextIsEscaped() throws {
        let figure = Figure(title: "a <b> & \"c\"", panels: [Panel(title: nil, x: Axis.linear(min: 0, max: 1, title: "x"),
                                                                  y: Axis.linear(min: 0, max: 1, title: "y"), series: [])],
                            legend: [LegendEntry(label: "p<1>", style: SeriesStyle(color: "#000000"))])
        let path = directory.appendingPathComponent("escaped.svg").path
        try OutputFile.write(figure.render(), to: path)
        let census = try FigureCensus.parse(path)
        XCTAssertTrue(census.texts.contains("a <b> & \"c\""))
        XCTAssertTrue(census.texts.contains("p<1>"))
    }
}

final class StepCSVPlotTests: XCTestCase {
    /// `plot` on a `replay --csv` file: one figure, a KV panel and one panel per metric, one
    /// line per policy of the replay.
    func testPerStepReplayCSV() throws {
        let directory = try TestTraces.directory(self)
        let trace = try SweepFixture.traces(in: directory)[0]
        let specs = try [PolicySpec(name: "full"), PolicySpec(name: "h2o", values: ["budget": "8"]), PolicySpec(name: "kivi")]
        let (result, _) = try TestTraces.replay(trace, specs)
        let csv = directory.appendingPathComponent("steps.csv").path
        try OutputFile.write(ReplayReport.stepCSV(result), to: csv)
        let out = directory.appendingPathComponent("figures").path
        var options = PlotOptions(outputDirectory: out)
        options.converter = nil
        let outcome = try Plotter.plot(results: csv, options: options)
        XCTAssertEqual(outcome.files, ["\(out)/steps.steps.svg"])
        let census = try FigureCensus.parse("\(out)/steps.steps.svg")
        let labels = ["full", "h2o(budget=8)", "kivi"]
        XCTAssertEqual(census.seriesPerPanel.keys.sorted(), ["0", "1", "2", "3"], "bytes, KL, output error, mass recall")
        for panel in ["0", "1", "2", "3"] { XCTAssertEqual(census.seriesPerPanel[panel], labels, panel) }
        XCTAssertTrue(census.texts.contains("(b) Attention KL (policy ‖ full)"), "\(census.texts)")
    }
}
