import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
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
        XCTAssertTrue(
            parser.parse(), "\(path): \(parser.parserError.map { "\($0)" } ?? "invalid XML")", file: file, line: line)
        return census
    }

    func parser(
        _ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
        attributes: [String: String] = [:]
    ) {
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
        let json = SweepFixture.json(
            traces: traces, output: output, steps: steps ? directory.appendingPathComponent("steps").path : nil)
        _ = try SweepRunner(grid: try SweepFixture.grid(json)).run()
        return output
    }

    func testFiguresAreValidSVGWithOneSeriesPerPolicyVariant() throws {
        let results = try sweep(steps: true)
        let out = directory.appendingPathComponent("figures").path
        let outcome = try Plotter.plot(results: results, options: PlotOptions(outputDirectory: out))
        XCTAssertEqual(outcome.notes, [])
        let kinds = ["fidelity-budget", "fidelity-bytes", "kv-steps", "thoughts"]
        XCTAssertEqual(
            outcome.files,
            ["a", "b"].flatMap { t in kinds.map { "\(out)/\(t).\($0).svg" } }
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
        XCTAssertTrue(
            bytes.texts.contains { $0.hasSuffix(" KiB") || $0.hasSuffix(" B") },
            "log axis labels carry units: \(bytes.texts)")
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
        XCTAssertEqual(
            log.labels, ["256 KiB", "512 KiB", "1 MiB", "2 MiB", "4 MiB", "8 MiB"], "powers of two in the padded domain"
        )
        XCTAssertEqual(
            log.fraction(1_048_576) - log.fraction(524_288), log.fraction(2_097_152) - log.fraction(1_048_576),
            accuracy: 1e-12,
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
            Series(label: "kivi", points: [], style: SeriesStyle(color: "#E69F00", dash: "2 3"), level: 0.5000001)
        ]
        let dashes = Figure.interleavedDashes(series, segment: 9)
        XCTAssertNil(dashes[1], "a line of its own keeps its style")
        XCTAssertNil(Figure.interleavedDashes(series, y: { $0 * 1e8 })[5], "apart on screen: drawn as styled")
        XCTAssertEqual(dashes[0]?.dash, "9 18")
        XCTAssertEqual([0, 2, 3].map { dashes[$0]!.offset }, [0, 18, 9], "each of three gets every third segment")
        XCTAssertEqual(dashes[4]?.dash, "9 9")
        XCTAssertEqual([4, 5].map { dashes[$0]!.offset }, [0, 9])

        let figure = Figure(
            title: "t",
            panels: [
                Panel(
                    title: nil, x: Axis.linear(min: 0, max: 2, title: "x"),
                    y: Axis.linear(min: 0, max: 3, title: "y"), series: series)
            ],
            legend: series.map { LegendEntry(label: $0.label, style: $0.style) })
        let svg = figure.render()
        XCTAssertTrue(
            svg.contains(##"stroke="#D55E00" stroke-width="1.8" stroke-dasharray="9 18" stroke-dashoffset="18""##), svg)
        XCTAssertTrue(
            svg.contains(##"stroke="#E69F00" stroke-width="1.8" stroke-dasharray="9 9" stroke-dashoffset="9""##), svg)
    }

    func testTextIsEscaped() throws {
        let figure = Figure(
            title: "a <b> & \"c\"",
            panels: [
                Panel(
                    title: nil, x: Axis.linear(min: 0, max: 1, title: "x"),
                    y: Axis.linear(min: 0, max: 1, title: "y"), series: [])
            ],
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
        let specs = try [
            PolicySpec(name: "full"), PolicySpec(name: "h2o", values: ["budget": "8"]), PolicySpec(name: "kivi")
        ]
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
        XCTAssertEqual(
            census.seriesPerPanel.keys.sorted(), ["0", "1", "2", "3"], "bytes, KL, output error, mass recall")
        for panel in ["0", "1", "2", "3"] { XCTAssertEqual(census.seriesPerPanel[panel], labels, panel) }
        XCTAssertTrue(census.texts.contains("(b) Attention KL (policy ‖ full)"), "\(census.texts)")
    }
}

/// What makes a figure readable: colours for every policy, comparable x over traces of
/// different lengths, intervals only where they mean something, no line hidden under another,
/// units on every axis, the classifier apart from the sparsity axis.
final class FigureReadabilityTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = try TestTraces.directory(self)
    }

    /// A results CSV of hand-written rows (columns as a sweep writes them).
    private func results(_ header: String, _ rows: [String]) throws -> PlotData {
        let path = directory.appendingPathComponent("hand-\(UUID().uuidString.prefix(8)).csv").path
        try OutputFile.write(([header] + rows).joined(separator: "\n") + "\n", to: path)
        return try PlotData(path: path)
    }

    func testEveryRegisteredPolicyHasItsOwnColour() {
        let names = PolicyRegistry.names
        let styles = names.map { Palette.style(ofPolicy: $0) }
        XCTAssertEqual(styles[names.firstIndex(of: FullCachePolicy.name)!].color, Palette.reference)
        let colored = zip(names, styles).filter { $0.0 != FullCachePolicy.name }.map(\.1)
        XCTAssertEqual(Set(colored.map(\.color)).count, colored.count, "\(colored.map(\.color))")
        XCTAssertFalse(colored.contains { $0.color == Palette.reference })
        // Distinct to the eye, not only as strings: CIE76 distance between any two, and to black.
        var nearest = Double.infinity
        for (i, a) in colored.enumerated() {
            nearest = min(nearest, Palette.distance(Palette.lab(a.color), Palette.lab(Palette.reference)))
            for b in colored[(i + 1)...] {
                nearest = min(nearest, Palette.distance(Palette.lab(a.color), Palette.lab(b.color)))
            }
        }
        XCTAssertGreaterThan(nearest, 20, "two policies' colours are too close")
        // Deterministic, and a policy outside the registry still gets a colour of its own.
        XCTAssertEqual(names.map { Palette.style(ofPolicy: $0).color }, styles.map(\.color))
        let extra = Palette.style(ofPolicy: "not-registered", unregistered: ["not-registered"])
        XCTAssertFalse(styles.map(\.color).contains(extra.color))
        // Colour, marker and dash together stay unique far beyond the registry.
        let many = (0..<(4 * Palette.markers.count)).map {
            "\(Palette.color($0)) \(Palette.marker($0)) \(Palette.dash($0) ?? "-")"
        }
        XCTAssertEqual(Set(many).count, many.count)
    }

    /// Two traces whose full caches differ 10x: h2o holds 10 % of one and 20 % of the other, so
    /// its point is at 15 % — the mean of the bytes (550) would say nothing about either.
    func testAggregatedXIsPercentOfEachTracesFullCache() throws {
        let header = "trace,policy,label,budget,kv_bytes_mean,attention_kl_mean"
        let data = try results(
            header,
            [
                "a.h5,full,full,,1000,0", "a.h5,h2o,h2o,64,100,0.4",
                "b.h5,full,full,,10000,0", "b.h5,h2o,h2o,64,2000,0.2"
            ])
        let figure = try XCTUnwrap(
            AggregateFigure.fidelityVsBytes(
                data, metrics: [.kl], bytesColumn: "kv_bytes_mean",
                logBytes: true, budgetLabels: false))
        let panel = figure.panels[0]
        let h2o = try XCTUnwrap(panel.series.first { $0.role == "series" && $0.label == "h2o" })
        XCTAssertEqual(h2o.points.count, 1)
        XCTAssertEqual(h2o.points[0].x, 15, accuracy: 1e-12)
        XCTAssertEqual(h2o.points[0].y, 0.3, accuracy: 1e-12)
        let own = try XCTUnwrap(panel.series.first { $0.role == "trace-points" && $0.label == "h2o" })
        XCTAssertEqual(own.points.map(\.x), [10, 20])
        XCTAssertEqual(own.points.map(\.y), [0.4, 0.2])
        XCTAssertTrue(panel.x.title.contains("% of each trace's full cache"), panel.x.title)
        // With the sweep's percentage column, that is what x is.
        let measured = try results(
            header + ",percent_of_full_mean",
            ["a.h5,h2o,h2o,64,100,0.4,12", "b.h5,h2o,h2o,64,2000,0.2,18"])
        let second = try XCTUnwrap(
            AggregateFigure.fidelityVsBytes(
                measured, metrics: [.kl], bytesColumn: "kv_bytes_mean",
                logBytes: false, budgetLabels: false))
        XCTAssertEqual(second.panels[0].series.first { $0.role == "series" }?.points.map(\.x), [15])
        // tools/end_to_end's results: the measured share in achieved_percent, no full cache run.
        let endToEnd = try results(
            "trace,policy,label,budget,kv_bytes_mean,achieved_percent,attention_kl_mean",
            ["a.h5,h2o,h2o,64,100,30,0.4", "b.h5,h2o,h2o,64,2000,40,0.2"])
        let third = try XCTUnwrap(
            AggregateFigure.fidelityVsBytes(
                endToEnd, metrics: [.kl],
                bytesColumn: "kv_bytes_mean", logBytes: true,
                budgetLabels: false))
        XCTAssertEqual(third.panels[0].series.first { $0.role == "series" }?.points.map(\.x), [35])
    }

    /// Two traces: each trace's point, no interval. Three: the 95 % Student-t interval
    /// (t = 4.303), cut where the metric ends (KL is never negative).
    func testIntervalOnlyFromThreeTraces() throws {
        let header = "trace,policy,label,budget,kv_bytes_mean,percent_of_full_mean,attention_kl_mean"
        let rows = ["a.h5,h2o,h2o,64,100,10,0.1", "b.h5,h2o,h2o,64,100,10,0.2", "c.h5,h2o,h2o,64,100,10,0.9"]
        func panel(_ rows: [String]) throws -> (Panel, Figure) {
            let figure = try XCTUnwrap(
                AggregateFigure.fidelityVsBytes(
                    try results(header, rows), metrics: [.kl],
                    bytesColumn: "kv_bytes_mean", logBytes: true,
                    budgetLabels: false))
            return (figure.panels[0], figure)
        }
        let (two, twoFigure) = try panel(Array(rows.prefix(2)))
        XCTAssertEqual(two.series.filter { $0.role == "interval" }.count, 0)
        XCTAssertEqual(two.series.filter { $0.role == "trace-points" }.first?.points.count, 2)
        XCTAssertTrue(twoFigure.subtitle?.contains("no interval") == true, twoFigure.subtitle ?? "")
        XCTAssertFalse(twoFigure.legend.contains { $0.label.contains("interval") })

        let (three, threeFigure) = try panel(rows)
        let interval = try XCTUnwrap(three.series.first { $0.role == "interval" })
        let mean = 0.4, sd = ((0.09 + 0.04 + 0.25) / 2).squareRoot()
        XCTAssertEqual(interval.points[0].y, max(0, mean - 4.303 * sd / 3.0.squareRoot()), accuracy: 1e-9)
        XCTAssertEqual(interval.points[0].y, 0, "cut at 0")
        XCTAssertEqual(interval.points[1].y, mean + 4.303 * sd / 3.0.squareRoot(), accuracy: 1e-9)
        XCTAssertGreaterThanOrEqual(three.y.upper, interval.points[1].y, "the interval fits in the panel")
        XCTAssertTrue(threeFigure.subtitle?.contains("95 % Student-t interval") == true, threeFigure.subtitle ?? "")
        XCTAssertTrue(threeFigure.legend.contains { $0.label == "95 % interval" })
    }

    /// Lines with the same y at every x: a note in the legend when they are identical in every
    /// panel, a footnote when only in some; dense lines get staggered markers.
    func testIdenticalSeriesGetANote() throws {
        let shared: [(x: Double, y: Double)] = (0..<200).map { (Double($0), Double($0 / 10)) }
        func style(_ i: Int) -> SeriesStyle { SeriesStyle(color: Palette.color(i), marker: Palette.marker(i)) }
        let bytes = [
            Series(label: "h2o", points: shared, style: style(0)),
            Series(label: "streaming", points: shared, style: style(1)),
            Series(label: "rkv", points: shared.map { ($0.x, $0.y + 3) }, style: style(2))
        ]
        let recall = [
            Series(label: "h2o", points: [(0, 0.5), (1, 0.6)], style: style(0)),
            Series(label: "streaming", points: [(0, 0.5), (1, 0.6)], style: style(1)),
            Series(label: "rkv", points: [(0, 0.7), (1, 0.8)], style: style(2)),
            Series(label: "kivi", points: [(0, 0.7), (1, 0.8)], style: style(3))
        ]
        let kivi = Series(label: "kivi", points: shared.map { ($0.x, $0.y + 9) }, style: style(3))
        let dense = Panel(
            title: "(a) KV", x: Axis.linear(min: 0, max: 200, title: "x (u)"),
            y: Axis.linear(min: 0, max: 30, title: "y (u)"), series: bytes + [kivi], markers: false)
        let sparse = Panel(
            title: "(b) recall", x: Axis.linear(min: 0, max: 1, title: "x (u)"),
            y: Axis.linear(min: 0, max: 1, title: "y (u)"), series: recall)
        let figure = Figure(
            title: "t", panels: [dense, sparse],
            legend: (bytes + [kivi]).map { LegendEntry(label: $0.label, style: $0.style) })
        let path = directory.appendingPathComponent("identical.svg").path
        try OutputFile.write(figure.render(), to: path)
        let census = try FigureCensus.parse(path)
        XCTAssertTrue(census.texts.contains("streaming (= h2o)"), "\(census.texts)")
        XCTAssertFalse(
            census.texts.contains { $0.hasPrefix("rkv (=") || $0.hasPrefix("kivi (=") },
            "identical in (b) only")
        XCTAssertTrue(census.texts.contains("(b): kivi = rkv (identical values, drawn interleaved)"), "\(census.texts)")
        // The dense panel: h2o and streaming carry a few markers each, at different places; rkv none.
        let svg = try SweepFixture.contents(path)
        /// x of the centres of a series' markers (circles: cx; squares: x plus half their side).
        func markerXs(_ label: String) -> [Double] {
            let start = svg.range(of: "<g class=\"series\" data-label=\"\(label)\"")!
            let body = svg[start.upperBound...].prefix { _ in true }
            let group = String(body[..<body.range(of: "</g>")!.lowerBound])
            return group.components(separatedBy: "<").compactMap { element -> Double? in
                let key = element.hasPrefix("circle") ? "cx=\"" : element.hasPrefix("rect") ? " x=\"" : nil
                guard let key, let r = element.range(of: key) else { return nil }
                let value = Double(element[r.upperBound...].prefix { $0 != "\"" })!
                return element.hasPrefix("rect") ? value + 3.6 : value
            }
        }
        let h2oXs = markerXs("h2o"), streamingXs = markerXs("streaming")
        XCTAssertGreaterThan(h2oXs.count, 2)
        XCTAssertGreaterThan(streamingXs.count, 2)
        XCTAssertEqual(markerXs("rkv"), [], "a dense line of its own has no markers")
        XCTAssertTrue(
            h2oXs.allSatisfy { x in streamingXs.allSatisfy { abs($0 - x) > 5 } },
            "staggered: \(h2oXs) \(streamingXs)")
        XCTAssertEqual(Figure.identicalGroups(bytes + [kivi]), [[0, 1]])
        XCTAssertEqual(Figure.identicalGroups(recall), [[0, 1], [2, 3]])
    }

    /// Every axis of every figure kind names its unit: a title ending in "(unit)".
    func testAxisTitlesCarryUnits() throws {
        let traces = try SweepFixture.traces(in: directory)
        let output = directory.appendingPathComponent("units.csv").path
        let steps = directory.appendingPathComponent("steps").path
        let json = SweepFixture.json(traces: traces, output: output, steps: steps)
        _ = try SweepRunner(grid: try SweepFixture.grid(json)).run()
        let data = try PlotData(path: output)
        let trace = data.traces[0]
        var figures: [Figure?] = [
            FidelityFigure.againstBudget(data, trace: trace),
            FidelityFigure.againstBytes(data, trace: trace, bytesColumn: "kv_bytes_mean", logBytes: true),
            FidelityFigure.againstBytes(data, trace: trace, bytesColumn: "kv_bytes_peak", logBytes: false),
            AggregateFigure.fidelityVsBytes(
                data, metrics: PlotMetric.allCases, bytesColumn: "kv_bytes_mean",
                logBytes: true, budgetLabels: false),
            try StepBytesFigure.figure(data, trace: trace, budget: nil, logBytes: true) { file in
                try StepBytesFigure.load(data.resolve(file)!, numLayers: 4)
            },
            ThoughtTimelineFigure.figure(name: "a", subtitle: "", labels: [0, 0, 1], sparsity: [0.2, 0.3, 0.4])
        ]
        let matched = try results("trace,policy,label,budget,kv_percent,attention_kl_mean", ["a.h5,h2o,h2o,8,20,0.1"])
        figures.append(AggregateFigure.equalMemory(matched, metrics: [.kl]))
        let titles = figures.flatMap { ($0?.panels ?? []).flatMap { [$0.x.title, $0.y.title] } }
        XCTAssertGreaterThan(titles.count, 20)
        XCTAssertEqual(figures.filter { $0 == nil }.count, 0)
        let unit = try NSRegularExpression(pattern: #"\([^()]+\)$"#)
        for title in titles {
            XCTAssertNotNil(
                unit.firstMatch(in: title, range: NSRange(title.startIndex..., in: title)),
                "no unit: '\(title)'")
        }
    }

    /// The classifier's type of each step is a strip of its own, beside the reference labels,
    /// never a line on the sparsity axis.
    func testThoughtFigureDrawsTheClassifierAsABand() throws {
        let labels: [Int8] = [0, 0, 0, 1, 1, 2, 0, 0]
        let predicted: [ThoughtType] = [
            .reasoning, .reasoning, .execution, .execution, .execution,
            .transition, .transition, .reasoning
        ]
        let thresholds = ThoughtThresholds(theta1: 0.3, theta2: 0.7, layers: [0])
        let figure = try XCTUnwrap(
            ThoughtTimelineFigure.figure(
                name: "t", subtitle: "", labels: labels,
                sparsity: [0.5, 0.5, 0.2, 0.1, 0.2, 0.9, 0.8, 0.5],
                thresholds: thresholds, predicted: predicted))
        let panel = figure.panels[0]
        XCTAssertEqual(panel.strips.map(\.label), ["labels", "classifier"])
        let classifier = panel.strips[1].segments
        XCTAssertEqual(classifier.map(\.from), [0, 2, 5, 7])
        XCTAssertEqual(classifier.map(\.to), [2, 5, 7, 8])
        XCTAssertEqual(classifier.map(\.color), [0, 1, 2, 0].map { Palette.thoughts[$0] })
        XCTAssertEqual(
            panel.series.map(\.label), ["sparsity", "θ1 = 0.300", "θ2 = 0.700"],
            "no type on the sparsity axis")
        let path = directory.appendingPathComponent("thoughts.svg").path
        try OutputFile.write(figure.render(), to: path)
        let svg = try SweepFixture.contents(path)
        let strip = try XCTUnwrap(svg.range(of: "class=\"strip\" data-label=\"classifier\""))
        let plot = try XCTUnwrap(svg.range(of: "class=\"plot-area\""))
        XCTAssertLessThan(strip.lowerBound, plot.lowerBound, "the strip is drawn apart, above the plot area")
        let census = try FigureCensus.parse(path)
        XCTAssertTrue(census.texts.contains("classifier") && census.texts.contains("labels"))
    }
}
