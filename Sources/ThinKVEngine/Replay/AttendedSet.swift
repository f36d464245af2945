/// The positions one kv head attends at one step, as a bitmap and in ascending order with the
/// slot each sits in.
///
/// A policy's slots are in physical order, which after evictions and in-place reuse is a random
/// order of positions. Reading a reference row (logits of every visible position) at the slots'
/// positions in that order makes the loads random, one cache miss each; reading them in ascending
/// position order walks the row forward, which the hardware prefetcher streams.
struct AttendedSet {
    private var words: [UInt64]
    private var slotOf: [Int32]
    /// Held positions in ascending order, and the slot index of each: valid up to `count`.
    private(set) var ascendingPositions: [Int32]
    private(set) var ascendingSlots: [Int32]
    private(set) var count = 0
    private var usedWords = 0

    init(numTokens: Int) {
        words = [UInt64](repeating: 0, count: (numTokens + 63) / 64)
        slotOf = [Int32](repeating: 0, count: numTokens)
        ascendingPositions = [Int32](repeating: 0, count: numTokens)
        ascendingSlots = [Int32](repeating: 0, count: numTokens)
    }

    /// Replaces the set by `slots[0..<n]` (distinct positions).
    mutating func load(_ slots: UnsafePointer<Int32>, _ n: Int) {
        clear()
        var top = -1
        words.withUnsafeMutableBufferPointer { w in
            slotOf.withUnsafeMutableBufferPointer { s in
                for i in 0..<n {
                    let p = Int(slots[i])
                    s[p] = Int32(i)
                    w[p >> 6] |= 1 << UInt64(p & 63)
                    if p > top { top = p }
                }
            }
        }
        usedWords = top / 64 + 1
        var c = 0
        words.withUnsafeBufferPointer { w in
            slotOf.withUnsafeBufferPointer { s in
                ascendingPositions.withUnsafeMutableBufferPointer { positions in
                    ascendingSlots.withUnsafeMutableBufferPointer { slotIndices in
                        for word in 0..<usedWords {
                            var bits = w[word]
                            while bits != 0 {
                                let p = word * 64 + bits.trailingZeroBitCount
                                positions[c] = Int32(p)
                                slotIndices[c] = s[p]
                                c += 1
                                bits &= bits - 1
                            }
                        }
                    }
                }
            }
        }
        count = c
    }

    func contains(_ position: Int) -> Bool {
        position >> 6 < usedWords && words[position >> 6] & (1 << UInt64(position & 63)) != 0
    }

    /// out[slot] = row[index[position]] for every held position, reading `row` in ascending
    /// order (`index` ascends with the position; see `allIndexed`).
    func gather(_ row: UnsafePointer<Float>, index: UnsafePointer<Int32>, into out: UnsafeMutablePointer<Float>) {
        ascendingPositions.withUnsafeBufferPointer { positions in
            ascendingSlots.withUnsafeBufferPointer { slotIndices in
                for c in 0..<count { out[Int(slotIndices[c])] = row[Int(index[Int(positions[c])])] }
            }
        }
    }

    /// True when every held position has an entry in `index` (≥ 0).
    func allIndexed(by index: UnsafePointer<Int32>) -> Bool {
        ascendingPositions.withUnsafeBufferPointer { positions in
            var missing: Int32 = 0
            for c in 0..<count { missing |= index[Int(positions[c])] }  // negative if any is −1
            return missing >= 0
        }
    }

    private mutating func clear() {
        for word in 0..<usedWords { words[word] = 0 }
        usedWords = 0
        count = 0
    }
}
