import Foundation

/// A sweep's results CSV as the figures read it: rows by trace, and series of runs that
/// differ only in their budget.
public struct PlotData {
    public let path: String
    public let table: CSVTable
    /// Traces in order of first appearance.
    public let traces: [String]
    /// Policy parameter columns (between `label` and the replay options).
    public let parameterColumns: [String]
    /// Policies in order of first appearance (the order of lines and legends).
    public let policies: [String]

    static let required = ["trace", "policy", "label"]
    /// Columns holding counts or indices (sweep results and per-step CSVs).
    static let integerColumns = [
        "run_id", "num_layers", "decode_steps", "budget", "matched_budget", "layer", "step", "position"
    ]
    /// Words such columns may hold instead of a number.
    static let wordValues: Set<String> = ["all", "auto"]
    /// Replay options that may vary inside a policy (a layout sweep) and so split series.
    static let optionColumns = ["layers", "steps", "topk", "paging", "block_size"]

    public init(path: String) throws {
        self.path = path
        table = try CSVTable.read(path: path).table
        for column in Self.required where table.index(of: column) == nil {
            throw PlotInputKind.notResults(path, missing: column, header: table.header)
        }
        // Counts and indices must be integers a trace can have: a damaged or hand-edited CSV
        // (nan, -5, 1e300) is refused here, not turned into a trap or an endless axis later.
        for column in Self.integerColumns {
            guard let i = table.index(of: column) else { continue }
            for (n, row) in table.rows.enumerated() where !row[i].isEmpty && !Self.wordValues.contains(row[i]) {
                guard let value = Int(row[i]), value >= 0, value <= Int(Int32.max) else {
                    throw CSVError(
                        "\(path): line \(n + 2): \(column) '\(Format.excerpt(row[i]))' is not a count between 0 and "
                            + "\(Int32.max)"
                    )
                }
            }
        }
        let header = table.header
        if let start = header.firstIndex(of: "label"), let end = header.firstIndex(of: "layers"), start < end {
            parameterColumns = Array(header[(start + 1)..<end])
        } else {
            parameterColumns = []
        }
        var traces: [String] = [], policies: [String] = []
        let t = table.index(of: "trace")!, p = table.index(of: "policy")!
        for row in table.rows {
            if !traces.contains(row[t]) { traces.append(row[t]) }
            if !policies.contains(row[p]) { policies.append(row[p]) }
        }
        self.traces = traces
        self.policies = policies
    }

    public func cell(_ row: [String], _ column: String) -> String? {
        guard let i = table.index(of: column), !row[i].isEmpty else { return nil }
        return row[i]
    }

    /// A cell as a number (`inf` included); nil when empty or absent.
    public func number(_ row: [String], _ column: String) -> Double? {
        guard let s = cell(row, column) else { return nil }
        if s == "inf" { return .infinity }
        if s == "-inf" { return -.infinity }
        return Double(s)
    }

    public func hasColumn(_ column: String) -> Bool { table.index(of: column) != nil }

    public func rows(of trace: String) -> [[String]] {
        let t = table.index(of: "trace")!
        return table.rows.filter { $0[t] == trace }
    }

    /// Runs of one policy that differ only along `axis` (e.g. budget): one line of a figure.
    public struct Group {
        public let policy: String
        /// Columns (other than the axis) whose values tell this group from the policy's others.
        public let variant: [(column: String, value: String)]
        public let rows: [[String]]
        public let label: String
        public let style: SeriesStyle
        /// Index among the policy's variants.
        public let variantIndex: Int
    }

    /// Groups a trace's runs into lines along `axis`: per policy, the columns that vary among
    /// its runs (other than `axis`) split it into variants, drawn in the policy's colour with
    /// a different dash each.
    /// Columns in `ignoring` never split a policy (e.g. the budget a memory match found, which
    /// differs with the target on the axis).
    public func groups(of trace: String, along axis: String, ignoring: [String] = []) -> [Group] {
        let rows = rows(of: trace)
        var out: [Group] = []
        for policy in policies {
            let mine = rows.filter { cell($0, "policy") == policy }
            guard !mine.isEmpty else { continue }
            let varying = (parameterColumns + Self.optionColumns).filter { column in
                column != axis && !ignoring.contains(column) && Set(mine.map { cell($0, column) ?? "" }).count > 1
            }
            var order: [[String]] = []
            var members: [[String]: [[String]]] = [:]
            for row in mine {
                let key = varying.map { cell(row, $0) ?? "" }
                if members[key] == nil { order.append(key) }
                members[key, default: []].append(row)
            }
            // Colour, marker and dash follow the policy's place in the registry, so a policy
            // looks the same in every figure of every results file.
            let index = Palette.index(ofPolicy: policy, unregistered: policies)
            for (v, key) in order.enumerated() {
                let variant = zip(varying, key).map { (column: $0, value: $1) }
                let style = SeriesStyle(
                    color: index.map(Palette.color) ?? Palette.reference,
                    marker: Palette.marker(index ?? 0),
                    dash: Palette.dash(index ?? 0, variant: v), hollow: v % 2 == 1)
                let suffix = variant.map { "\(Self.parameterName($0.column, policy: policy))=\($0.value)" }.joined(
                    separator: ", ")
                out.append(
                    Group(
                        policy: policy, variant: variant, rows: members[key]!,
                        label: suffix.isEmpty ? policy : "\(policy) \(suffix)", style: style, variantIndex: v))
            }
        }
        return out
    }

    /// The parameter name as configs and `thinkv-sim policies` spell it (`k_bits` -> `k-bits`).
    static func parameterName(_ column: String, policy: String) -> String {
        guard let type = PolicyRegistry.type(named: policy) else { return column }
        return type.parameters.first { SweepColumns.parameterColumn($0.name) == column }?.name ?? column
    }

    /// A file-name-safe short name for a trace: its stem, or `dir-stem` when stems collide.
    public func shortName(_ trace: String) -> String {
        let stem = { (t: String) in URL(fileURLWithPath: t).deletingPathExtension().lastPathComponent }
        let name = stem(trace)
        let collides = traces.filter { stem($0) == name }.count > 1
        let raw =
            collides ? URL(fileURLWithPath: trace).deletingLastPathComponent().lastPathComponent + "-" + name : name
        return String(raw.map { $0.isLetter || $0.isNumber || "-_.".contains($0) ? $0 : "_" })
    }

    /// Resolves a path from the CSV: as written (relative to the working directory), else
    /// relative to the CSV's directory.
    public func resolve(_ path: String) -> String? {
        if FileManager.default.fileExists(atPath: path) { return path }
        let beside = URL(fileURLWithPath: self.path).deletingLastPathComponent().appendingPathComponent(path).path
        return path.hasPrefix("/") || !FileManager.default.fileExists(atPath: beside) ? nil : beside
    }
}
