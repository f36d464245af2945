import Foundation

/// How the simulated cache lays tokens out in memory.
public enum PagingMode: String, CaseIterable, Codable, Sendable {
    /// No pages: memory is exactly the bytes of the tokens held.
    case none
    /// PagedAttention blocks; a slot freed by eviction is reused in place by a later token of
    /// the same class (Continuous Thinking). Blocks empty of live tokens return to the pool.
    case ct
    /// PagedAttention blocks kept dense: after each eviction, survivors are gathered so each
    /// class fills ceil(live / block size) blocks.
    case compact
}

/// The block table of one (layer, kv head) under a paging mode.
///
/// Tokens belong to a *class* (ThinKV: the thought type, so that one block holds one
/// precision; other policies: a single class). Regardless of the mode, a dense "compaction
/// shadow" is kept to tell how many bytes a gather-compaction would copy at each eviction,
/// so CT's saving is measured on the same run.
struct PagedCacheModel {
    let mode: PagingMode
    let blockSize: Int
    let headDim: Int

    // In-place (CT) table. Global slot id = block * blockSize + offset.
    private var occupant: [Int32] = []  // position in each slot, -1 when free
    private var blockClass: [UInt8] = []
    private var blockLive: [Int] = []
    private var blockAllocated: [Bool] = []
    private var releasedBlocks: [Int] = []  // allocated before, now empty: reused lowest first
    private var freeSlots: [[Int]] = Array(repeating: [], count: 256)  // per class, min-heaps of slot ids
    private var slotOf: [Int32]  // per position, slot id or -1

    // Compaction shadow: per class, positions in dense slot order.
    private var dense: [[Int32]] = Array(repeating: [], count: 256)
    private var denseMark: [UInt32]
    private var denseStamp: UInt32 = 0

    private(set) var blocksHeld = 0
    private(set) var liveTokens = 0

    // CT bytes, kept current block by block: a block's width is recomputed only after a token
    // entered or left it or changed precision (`pagedBytes` is read every step).
    private var blockBytes: [Int] = []
    private var blockDirty: [Bool] = []
    private var dirtyBlocks: [Int] = []
    private var ctBytes = 0

    init(mode: PagingMode, blockSize: Int, headDim: Int, numTokens: Int) {
        self.mode = mode
        self.blockSize = max(1, blockSize)
        self.headDim = headDim
        slotOf = [Int32](repeating: -1, count: numTokens)
        denseMark = [UInt32](repeating: 0, count: numTokens)
    }

    // MARK: Updates

    mutating func insert(position p: Int32, tokenClass c: UInt8) {
        liveTokens += 1
        dense[Int(c)].append(p)
        guard mode == .ct else { return }
        let slot: Int
        if let free = popFreeSlot(class: c) {
            slot = free
        } else {
            let block = allocateBlock(class: c)
            for offset in 1..<blockSize { pushFreeSlot(block * blockSize + offset, class: c) }
            slot = block * blockSize
        }
        occupant[slot] = p
        slotOf[Int(p)] = Int32(slot)
        blockLive[slot / blockSize] += 1
        markDirty(slot / blockSize)
    }

    /// Position p (if placed) changed precision: its block's width may change.
    mutating func recharged(position p: Int32) {
        guard mode == .ct else { return }
        let slot = Int(slotOf[Int(p)])
        if slot >= 0 { markDirty(slot / blockSize) }
    }

    private mutating func markDirty(_ block: Int) {
        if !blockDirty[block] {
            blockDirty[block] = true
            dirtyBlocks.append(block)
        }
    }

    /// Removes evicted positions; returns the bytes a dense gather-compaction would copy
    /// (survivors behind the first hole of their class). `bits(p)` = key + value bits of p.
    mutating func remove(_ positions: [Int32], classOf: (Int32) -> UInt8, bits: (Int32) -> Int) -> Int {
        guard !positions.isEmpty else { return 0 }
        liveTokens -= positions.count
        // Compaction shadow: survivors behind the first hole of their class move forward.
        denseStamp &+= 1
        var touched = Set<UInt8>()
        for p in positions {
            denseMark[Int(p)] = denseStamp
            touched.insert(classOf(p))
        }
        var moved = 0
        for c in touched.sorted() {
            var kept: [Int32] = []
            kept.reserveCapacity(dense[Int(c)].count)
            var holeSeen = false
            for p in dense[Int(c)] {
                if denseMark[Int(p)] == denseStamp {
                    holeSeen = true
                } else {
                    if holeSeen { moved += headDim * bits(p) / 8 }
                    kept.append(p)
                }
            }
            dense[Int(c)] = kept
        }
        guard mode == .ct else { return moved }
        for p in positions {
            let slot = Int(slotOf[Int(p)])
            guard slot >= 0 else { continue }
            slotOf[Int(p)] = -1
            occupant[slot] = -1
            let block = slot / blockSize
            blockLive[block] -= 1
            markDirty(block)
            if blockLive[block] == 0 {
                releaseBlock(block)
            } else {
                pushFreeSlot(slot, class: blockClass[block])
            }
        }
        return moved
    }

    // MARK: Measurements

    /// Blocks held (in compact mode: the dense minimum per class).
    func blocks() -> Int {
        switch mode {
        case .none: return 0
        case .ct: return blocksHeld
        case .compact: return dense.reduce(0) { $0 + ($1.count + blockSize - 1) / blockSize }
        }
    }

    /// Bytes the held blocks occupy: every slot of a block is as wide as the widest live token
    /// in it (a block stores one precision). `bits(p)` = key bits + value bits of position p.
    /// Precision changes must have been reported (`recharged`) before the call.
    mutating func pagedBytes(bits: (Int32) -> Int) -> Int {
        switch mode {
        case .none:
            return 0
        case .ct:
            for block in dirtyBlocks {
                blockDirty[block] = false
                let bytes = blockAllocated[block] ? widthBytes(block, bits: bits) : 0
                ctBytes += bytes - blockBytes[block]
                blockBytes[block] = bytes
            }
            dirtyBlocks.removeAll(keepingCapacity: true)
            return ctBytes
        case .compact:
            var total = 0
            for positions in dense where !positions.isEmpty {
                var start = 0
                while start < positions.count {
                    let end = min(start + blockSize, positions.count)
                    var widest = 0
                    for i in start..<end { widest = max(widest, bits(positions[i])) }
                    total += blockSize * headDim * widest / 8
                    start = end
                }
            }
            return total
        }
    }

    /// `pagedBytes` recomputed over every held block (tests check the running total against it).
    func pagedBytesRecomputed(bits: (Int32) -> Int) -> Int {
        guard mode == .ct else {
            var copy = self
            return copy.pagedBytes(bits: bits)
        }
        var total = 0
        for block in 0..<blockAllocated.count where blockAllocated[block] { total += widthBytes(block, bits: bits) }
        return total
    }

    /// Bytes of one CT block: every slot as wide as its widest live token.
    private func widthBytes(_ block: Int, bits: (Int32) -> Int) -> Int {
        var widest = 0
        for slot in (block * blockSize)..<((block + 1) * blockSize) where occupant[slot] >= 0 {
            widest = max(widest, bits(occupant[slot]))
        }
        return blockSize * headDim * widest / 8
    }

    // MARK: Internals

    private mutating func allocateBlock(class c: UInt8) -> Int {
        let block: Int
        if !releasedBlocks.isEmpty {
            let i = releasedBlocks.indices.min { releasedBlocks[$0] < releasedBlocks[$1] }!
            block = releasedBlocks.remove(at: i)
        } else {
            block = blockAllocated.count
            blockAllocated.append(false)
            blockClass.append(0)
            blockLive.append(0)
            blockBytes.append(0)
            blockDirty.append(false)
            occupant += [Int32](repeating: -1, count: blockSize)
        }
        blockAllocated[block] = true
        blockClass[block] = c
        blockLive[block] = 0
        blocksHeld += 1
        markDirty(block)
        return block
    }

    private mutating func releaseBlock(_ block: Int) {
        blockAllocated[block] = false
        blocksHeld -= 1
        releasedBlocks.append(block)
        // Its slots' heap entries go stale; pops check the slot's current state, so stale or
        // duplicate entries are skipped and a slot is never handed out twice.
    }

    private mutating func pushFreeSlot(_ slot: Int, class c: UInt8) {
        PagedCacheModel.heapPush(&freeSlots[Int(c)], slot)
    }

    /// Lowest free slot of class c in a block currently allocated to that class.
    private mutating func popFreeSlot(class c: UInt8) -> Int? {
        while let top = PagedCacheModel.heapPop(&freeSlots[Int(c)]) {
            let block = top / blockSize
            if blockAllocated[block] && blockClass[block] == c && occupant[top] < 0 { return top }
        }
        return nil
    }

    private static func heapPush(_ heap: inout [Int], _ value: Int) {
        heap.append(value)
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[i] < heap[parent] else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    private static func heapPop(_ heap: inout [Int]) -> Int? {
        guard let top = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < heap.count && heap[l] < heap[m] { m = l }
                if r < heap.count && heap[r] < heap[m] { m = r }
                if m == i { break }
                heap.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}
