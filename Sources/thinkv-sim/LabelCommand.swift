import Foundation
import ThinKVSim

enum LabelCommand: Subcommand {
    static let spec = CommandSpec(
        name: "label",
        abstract:
            "write thought labels (CSV of step,type) into a trace's /tokens/thought, to score the classifier on it",
        positionals: [("trace", "a thinkv-trace HDF5 file (replaced by a labelled copy)")],
        options: [
            OptionDefinition(
                "from", value: "FILE",
                help:
                    "CSV rows 'step,type': decode step (0-based) and R/E/T (or reasoning/execution/transition, "
                    + "0/1/2); required"
            )
        ],
        discussion: """
            Steps the file does not list are -1 (unknown) and the prompt is always -1; a step listed
            twice, or a file with no rows, is refused. LF or CRLF line ends, with or without a UTF-8
            byte-order mark. An existing /tokens/thought is replaced: the labels go into a copy of
            the trace that is renamed over it, so a full disk or a kill leaves the old labels.
            Then 'thinkv-sim inspect TRACE --thoughts' prints the classifier's accuracy against
            these labels, and 'replay --thoughts labels' replays ThinKV with them.

            example:
              thinkv-sim label run.h5 --from run-labels.csv
            """)

    static func run(_ arguments: ParsedArguments) throws {
        let path = arguments.positionals[0]
        guard let from = arguments.value("from") else { throw UsageError("--from FILE is required") }
        let decodeSteps = try { try TraceReader(path: path).header.generatedLength }()
        // A label row is a few bytes; the bound keeps a wrong --from (a huge log) from filling memory.
        let text = try TextFile.read(path: from, limit: max(64 << 20, decodeSteps * 64))
        let labels = try ThoughtLabeler.parse(text, file: from, decodeSteps: decodeSteps)
        try ThoughtLabeler.write(labels, to: path)
        let known = labels.filter { $0 >= 0 }.count
        print(
            "\(path): /tokens/thought written (\(known) of \(labels.count) decode steps labelled: R "
                + "\(labels.filter { $0 == 0 }.count), E \(labels.filter { $0 == 1 }.count), T "
                + "\(labels.filter { $0 == 2 }.count))"
        )
    }
}
