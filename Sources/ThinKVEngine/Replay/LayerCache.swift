import Foundation

/// One policy's KV cache for one layer: per kv head, the positions it holds in *physical slot
/// order* (the order a real cache stores them; some references' later decisions depend on it),
/// the stored key/value vectors (the exact ones, or what a quantizer made of them), and the
/// precision each stored token is charged at.
public final class LayerCache {
    public let numKVHeads: Int
    public let numTokens: Int
    public let headDim: Int

    /// Positions held by each kv head, in physical slot order.
    public private(set) var slots: [[Int32]]

    /// Stored keys and values, same layout as `LayerData` (`(head * T + position) * D`).
    /// They start as the exact tensors (shared storage); a quantizing policy overwrites the
    /// entries it quantized with their dequantized values and sets `keysModified`/`valuesModified`.
    public var storedKeys: [Float]?
    public var storedValues: [Float]?
    public var keysModified = false
    public var valuesModified = false

    /// Bits per element each (head, position) is charged at: index `head * T + position`.
    /// 16 means unquantized (the model's float16/bfloat16 cache). Set through `setBits`,
    /// `setKeyBits`, `setValueBits`, which keep the held total current.
    public private(set) var keyBits: [UInt8]
    public private(set) var valueBits: [UInt8]
    /// Quantization metadata (scales, zero points) currently held, in bytes, per kv head.
    public var metadataBytes: [Int]

    /// Paging class of each position: a block holds tokens of one class (ThinKV: the thought
    /// type, i.e. one precision). Policies without classes leave it 0.
    public var pagingClass: [UInt8]

    /// Quantizations applied since the replay last read them, with their kv head; nil (not
    /// logged) unless `replay --cache-timeline` asked for them.
    public var quantizationLog: [(kvHead: Int, group: QuantizedGroup)]?

    /// Set when a head's slots lost a position during the current step (for `--kept` events).
    public internal(set) var droppedThisStep: [Bool]
    /// Positions each head dropped since the paging model last consumed them.
    var removedPending: [[Int32]]
    /// Held positions whose precision changed since the paging model last consumed them.
    var rechargedPending: [[Int32]]
    private var mark: [UInt32]
    private var stamp: UInt32 = 0
    /// Whether each (head, position) is held, and the key + value bits per element summed over
    /// each head's held positions: `bytes(kvHead:)` is read twice a step, so it is kept as the
    /// slots and precisions change instead of summed over the slots each time.
    private var held: [Bool]
    private var heldBits: [Int]

    public init(data: LayerData) {
        numKVHeads = data.numKVHeads
        numTokens = data.numTokens
        headDim = data.headDim
        slots = Array(repeating: [], count: data.numKVHeads)
        for h in 0..<numKVHeads { slots[h].reserveCapacity(256) }
        storedKeys = data.keys
        storedValues = data.values
        keyBits = [UInt8](repeating: 16, count: numKVHeads * numTokens)
        valueBits = [UInt8](repeating: 16, count: numKVHeads * numTokens)
        metadataBytes = [Int](repeating: 0, count: numKVHeads)
        pagingClass = [UInt8](repeating: 0, count: numTokens)
        droppedThisStep = [Bool](repeating: false, count: numKVHeads)
        removedPending = Array(repeating: [], count: numKVHeads)
        rechargedPending = Array(repeating: [], count: numKVHeads)
        mark = [UInt32](repeating: 0, count: numTokens)
        held = [Bool](repeating: false, count: numKVHeads * numTokens)
        heldBits = [Int](repeating: 0, count: numKVHeads)
    }

    /// Key bits + value bits per element of a position in one head (what a block slot must hold).
    @inline(__always)
    func bitsPerElement(kvHead h: Int, position p: Int32) -> Int { bitsPerElement(h * numTokens + Int(p)) }

    @inline(__always)
    private func bitsPerElement(_ index: Int) -> Int { Int(keyBits[index]) + Int(valueBits[index]) }

    /// Marks a position of a head as no longer held.
    private func release(kvHead h: Int, position p: Int32) {
        let index = h * numTokens + Int(p)
        held[index] = false
        heldBits[h] -= bitsPerElement(index)
    }

    /// Tokens currently held by a head.
    public func count(kvHead: Int) -> Int { slots[kvHead].count }

    /// Adds `position` at the end of every head's slots (the engine does this for each new token).
    public func append(position: Int) {
        for h in 0..<numKVHeads {
            slots[h].append(Int32(position))
            let index = h * numTokens + position
            precondition(!held[index], "append: position \(position) is already held")
            held[index] = true
            heldBits[h] += bitsPerElement(index)
        }
    }

    /// Replaces a head's slots with `newSlots` (positions it already holds, in the new physical order).
    public func setSlots(kvHead: Int, _ newSlots: [Int32]) {
        stamp &+= 1
        for p in newSlots {
            precondition(
                p >= 0 && Int(p) < numTokens && mark[Int(p)] != stamp, "setSlots: invalid or repeated position \(p)")
            mark[Int(p)] = stamp
        }
        var removed = 0
        for p in slots[kvHead] where mark[Int(p)] != stamp {
            removedPending[kvHead].append(p)
            release(kvHead: kvHead, position: p)
            removed += 1
        }
        precondition(
            newSlots.count + removed == slots[kvHead].count, "setSlots: new slots must be positions the head holds")
        if removed > 0 { droppedThisStep[kvHead] = true }
        slots[kvHead] = newSlots
    }

    /// Keeps the slots at the given indices into the current slot list, in the order given.
    public func keep(kvHead: Int, slotIndices: [Int]) {
        let old = slots[kvHead]
        setSlots(kvHead: kvHead, slotIndices.map { old[$0] })
    }

    /// Drops every slot whose position satisfies `shouldDrop`, keeping the others' order.
    public func removeAll(kvHead: Int, where shouldDrop: (Int32) -> Bool) {
        var kept: [Int32] = []
        kept.reserveCapacity(slots[kvHead].count)
        for p in slots[kvHead] {
            if shouldDrop(p) {
                removedPending[kvHead].append(p)
                release(kvHead: kvHead, position: p)
            } else {
                kept.append(p)
            }
        }
        if kept.count < slots[kvHead].count { droppedThisStep[kvHead] = true }
        slots[kvHead] = kept
    }

    /// Sets the precision a position is charged at in one head.
    public func setBits(kvHead: Int, position: Int, key: UInt8, value: UInt8) {
        setKeyBits(kvHead: kvHead, position: position, key)
        setValueBits(kvHead: kvHead, position: position, value)
    }

    public func setKeyBits(kvHead: Int, position: Int, _ bits: UInt8) {
        charge(&keyBits, kvHead: kvHead, position: position, bits)
    }

    public func setValueBits(kvHead: Int, position: Int, _ bits: UInt8) {
        charge(&valueBits, kvHead: kvHead, position: position, bits)
    }

    /// Sets one entry of `keyBits` or `valueBits`, keeping the held total and the paging model's
    /// pending changes current.
    private func charge(_ table: inout [UInt8], kvHead: Int, position: Int, _ bits: UInt8) {
        let index = kvHead * numTokens + position
        if held[index] && bits != table[index] {
            heldBits[kvHead] += Int(bits) - Int(table[index])
            rechargedPending[kvHead].append(Int32(position))
        }
        table[index] = bits
    }

    /// Bytes of K and V this head holds: each token's D elements at its precision, plus metadata.
    public func bytes(kvHead: Int) -> Int {
        (heldBits[kvHead] * headDim + 7) / 8 + metadataBytes[kvHead]
    }

    /// Bytes over all kv heads of this layer.
    public func totalBytes() -> Int { (0..<numKVHeads).reduce(0) { $0 + bytes(kvHead: $1) } }

    func beginStep() {
        for h in 0..<numKVHeads { droppedThisStep[h] = false }
    }
}
