import Foundation

/// Joins the results of the shards of one sweep into the table the unsharded sweep writes.
public enum ShardMerge {
    /// Reads every file, checks they come from one config (identical columns, no run id or run
    /// key claimed twice with different contents) and returns the rows ordered by run id.
    public static func merge(paths: [String]) throws -> CSVTable {
        precondition(!paths.isEmpty)
        var merged: CSVTable?
        var byID: [Int: (row: [String], file: String)] = [:]
        var keyOwner: [String: Int] = [:]
        for path in paths {
            let (table, _) = try CSVTable.read(path: path)
            guard let idColumn = table.index(of: "run_id"), let keyColumn = table.index(of: "run_key") else {
                throw CSVError("\(path): not sweep results (no run_id/run_key column)")
            }
            if let first = merged {
                guard table.header == first.header else {
                    let mine = Set(table.header), theirs = Set(first.header)
                    var why: [String] = []
                    let extra = table.header.filter { !theirs.contains($0) },
                        missing = first.header.filter { !mine.contains($0) }
                    if !extra.isEmpty { why.append("only here: \(extra.joined(separator: ", "))") }
                    if !missing.isEmpty { why.append("only in \(paths[0]): \(missing.joined(separator: ", "))") }
                    if why.isEmpty { why.append("same columns in another order") }
                    throw CSVError(
                        "\(path): columns differ from \(paths[0]) (\(why.joined(separator: "; "))); shards of "
                            + "different configs cannot be merged"
                    )
                }
            } else {
                merged = CSVTable(header: table.header)
            }
            for (i, row) in table.rows.enumerated() {
                guard let id = Int(row[idColumn]), id >= 0, id < maxRunID else {
                    throw CSVError("\(path): line \(i + 2): run_id '\(row[idColumn])' is not a grid index")
                }
                if let existing = byID[id] {
                    guard existing.row == row else {
                        throw CSVError(
                            "\(path): line \(i + 2): run_id \(id) differs from the row in \(existing.file); shards "
                                + "of different configs cannot be merged"
                        )
                    }
                    continue  // the same run in two files (e.g. a shard re-run into a copy)
                }
                if let other = keyOwner[row[keyColumn]], other != id {
                    throw CSVError(
                        "\(path): line \(i + 2): run key is run_id \(other) elsewhere and \(id) here; shards of "
                            + "different configs cannot be merged"
                    )
                }
                byID[id] = (row, path)
                keyOwner[row[keyColumn]] = id
            }
        }
        var out = merged!
        out.rows = byID.keys.sorted().map { byID[$0]!.row }
        return out
    }

    /// Run ids above this are not indices of any grid a sweep accepts.
    public static let maxRunID = 100_000_000

    /// How many run ids are missing below the largest one present (a shard not run or not
    /// finished), and the first `shown` of them; work bounded by the rows, not by the ids.
    public static func gaps(_ table: CSVTable, shown: Int = 10) -> (count: Int, first: [Int]) {
        guard let column = table.index(of: "run_id") else { return (0, []) }
        let ids = Set(table.rows.compactMap { Int($0[column]) })
        guard let top = ids.max() else { return (0, []) }
        var first: [Int] = []
        var i = 0
        while first.count < shown && i < top {
            if !ids.contains(i) { first.append(i) }
            i += 1
        }
        return (top + 1 - ids.count, first)
    }

    /// Shards a set of file names says are missing: names like `x.shard-2-of-4.csv` (as
    /// `sweep --shard` writes them) give each shard's index and the count.
    public static func missingShards(_ paths: [String]) -> [String] {
        var count: Int?, present = Set<Int>()
        for path in paths {
            let name = URL(fileURLWithPath: path).lastPathComponent
            guard let range = name.range(of: #"shard-(\d+)-of-(\d+)"#, options: .regularExpression) else { continue }
            let parts = name[range].split(separator: "-")
            guard parts.count == 4, let i = Int(parts[1]), let n = Int(parts[3]), n > 0, n <= 100_000 else { continue }
            count = max(count ?? 0, n)
            present.insert(i)
        }
        guard let count else { return [] }
        // Shards may be numbered from 0 or from 1.
        let base = present.contains(0) ? 0 : 1
        return (base..<(base + count)).filter { !present.contains($0) }.map { "shard \($0) of \(count)" }
    }
}
