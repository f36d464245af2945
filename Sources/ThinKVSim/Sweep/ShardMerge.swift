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
                    let extra = table.header.filter { !theirs.contains($0) }, missing = first.header.filter { !mine.contains($0) }
                    if !extra.isEmpty { why.append("only here: \(extra.joined(separator: ", "))") }
                    if !missing.isEmpty { why.append("only in \(paths[0]): \(missing.joined(separator: ", "))") }
                    if why.isEmpty { why.append("same columns in another order") }
                    throw CSVError("\(path): columns differ from \(paths[0]) (\(why.joined(separator: "; "))); shards of different configs cannot be merged")
                }
            } else {
                merged = CSVTable(header: table.header)
            }
            for (i, row) in table.rows.enumerated() {
                guard let id = Int(row[idColumn]), id >= 0 else {
                    throw CSVError("\(path): line \(i + 2): run_id '\(row[idColumn])' is not a grid index")
                }
                if let existing = byID[id] {
                    guard existing.row == row else {
                        throw CSVError("\(path): line \(i + 2): run_id \(id) differs from the row in \(existing.file); shards of different configs cannot be merged")
                    }
                    continue  // the same run in two files (e.g. a shard re-run into a copy)
                }
                if let other = keyOwner[row[keyColumn]], other != id {
                    throw CSVError("\(path): line \(i + 2): run key is run_id \(other) elsewhere and \(id) here; shards of different configs cannot be merged")
                }
                byID[id] = (row, path)
                keyOwner[row[keyColumn]] = id
            }
        }
        var out = merged!
        out.rows = byID.keys.sorted().map { byID[$0]!.row }
        return out
    }

    /// Run ids missing below the largest one present (a shard not run or not finished).
    public static func gaps(_ table: CSVTable) -> [Int] {
        guard let column = table.index(of: "run_id") else { return [] }
        let ids = Set(table.rows.compactMap { Int($0[column]) })
        guard let top = ids.max() else { return [] }
        return (0..<top).filter { !ids.contains($0) }
    }
}
