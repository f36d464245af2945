import Foundation
import ThinKVSim

enum LabelCommand: Subcommand {
    static let spec = CommandSpec(
        name: "label",
        abstract: "write thought labels (CSV of step,type) into a trace's /tokens/thought, to score the classifier on it",
        positionals: [("trace", "a thinkv-trace HDF5 file (changed in place)")],
        options: [
            OptionDefinition("from", value: "FILE", help: "CSV rows 'step,type': decode step (0-based) and R/E/T (or reasoning/execution/transition, 0/1/2); required"),
        ],
        discussion: """
            Steps the file does not list are -1 (unknown) and the prompt is always -1. An existing
            /tokens/thought is replaced. Then 'thinkv-sim inspect TRACE --thoughts' prints the classifier's
            accuracy against these labels, and 'replay --thoughts labels' replays ThinKV with them.

            example:
              thinkv-sim label run.h5 --from run-labels.csv
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let path = arguments.positionals[0]
        guard let from = arguments.value("from") else { throw UsageError("--from FILE is required") }
        let decodeSteps = try { try TraceReader(path: path).header.generatedLength }()
        guard let data = FileManager.default.contents(atPath: from) else { throw CSVError("\(from): cannot be read") }
        let labels = try ThoughtLabeler.parse(String(decoding: data, as: UTF8.self), file: from, decodeSteps: decodeSteps)
        try ThoughtLabeler.write(labels, to: path)
        let known = labels.filter { $0 >= 0 }.count
        print("\(path): /tokens/thought written (\(known) of \(labels.count) decode steps labelled: R \(labels.filter { $0 == 0 }.count), E \(labels.filter { $0 == 1 }.count), T \(labels.filter { $0 == 2 }.count))")
    }
}
