import Foundation

/// Thought-based quantization (ThinKV's TBQ) for one layer's cache: each decoded token is
/// stored at the precision of its thought type, in groups that never mix types.
///
/// Group rule, per kv head: consecutive decode tokens of the same thought type accumulate in an
/// *open group*. When it holds `groupSize` resident tokens, the group is quantized with its
/// type's bits — keys per channel (the group's tokens × each channel), values per token (each
/// token's D channels in runs of `groupSize`) — the stored vectors are overwritten with their
/// dequantized values, the tokens' bits are set, and the group's metadata is charged to
/// `cache.metadataBytes[head]`. When the type changes (the thought ends), the open group is
/// quantized as a short group with its own scales, charged like any group
/// (`quantizesPartialGroups`; off, its tokens stay at 16 bits for good).
///
/// Metadata residency follows what the scales belong to. A key scale covers one channel of all
/// the group's tokens, so the group's key metadata stays charged while any of its tokens is
/// resident in that head. A value scale covers channels of one token only, so each token's value
/// metadata leaves with the token. Tell the component about evictions (`didEvict` or
/// `reconcile`) so that both are freed.
///
/// Timing, as a policy uses it:
/// - `prefill(promptLength:cache:)` in the policy's `prefill`;
/// - `setThoughtType(_:position:cache:)` in `beforeAttention`: it sets the token's paging
///   class, and the engine places the new token in a paging block right after that hook;
/// - `append(position:thoughtType:cache:)` in `afterAttention`: the token is attended at 16 bits
///   in its own step, and a group filled by it is quantized for the following steps (as KIVI
///   quantizes its residual after the step).
public final class ThoughtGroupQuantizer {
    /// Thought types as `/tokens/thought` and ThinKV number them.
    public static let reasoning = 0
    public static let execution = 1
    public static let transition = 2
    public static let thoughtTypeCount = 3

    public struct Configuration: Sendable, Equatable {
        /// Element formats: `.paper` (8 = FP8 E4M3, 4 = NVFP4, 2 = ternary) or `.int`.
        public var format: QuantFormat
        /// Bits per element for each thought type, indexed by type (0 R, 1 E, 2 T).
        public var bitsByType: [Int]
        /// Tokens per key group and channels per value group.
        public var groupSize: Int
        /// Bits for the prompt (whole `groupSize` runs of prompt tokens; the tail stays 16-bit),
        /// or nil to keep the prompt at 16 bits. Default nil: the prompt is not a thought of the
        /// reasoning trace and has no type to take a precision from.
        public var promptBits: Int?
        /// Paging class of prompt tokens and of each thought type's tokens (indexed by type):
        /// tokens share a block only within a class, e.g. one class per precision.
        public var promptPagingClass: UInt8
        public var pagingClassByType: [UInt8]
        /// Whether the open group of a thought that ends short of `groupSize` tokens is
        /// quantized (a short group with its own scales) or left at 16 bits.
        public var quantizesPartialGroups: Bool

        public init(
            format: QuantFormat = .paper, reasoningBits: Int = 4, executionBits: Int = 4, transitionBits: Int = 2,
            groupSize: Int = 16, promptBits: Int? = nil, promptPagingClass: UInt8 = 3,
            pagingClassByType: [UInt8] = [0, 1, 2], quantizesPartialGroups: Bool = true
        ) {
            self.format = format
            self.bitsByType = [reasoningBits, executionBits, transitionBits]
            self.groupSize = groupSize
            self.promptBits = promptBits
            self.promptPagingClass = promptPagingClass
            self.pagingClassByType = pagingClassByType
            self.quantizesPartialGroups = quantizesPartialGroups
        }
    }

    public let configuration: Configuration
    /// The quantizer of each thought type.
    public let quantizers: [GroupQuantizer]
    public let promptQuantizer: GroupQuantizer?

    private let numKVHeads: Int
    private let numTokens: Int
    private var typeOf: [Int8]  // per position, -1 until set
    private var openType: [Int]  // per head, -1 when no group is open
    private var openMembers: [[Int]]  // per head, positions of the open group
    // Quantized groups (ids shared by all heads' groups).
    private var groupOf: [Int32]  // per (head, position): group id or -1
    private var groupHead: [Int] = []
    private var groupMembers: [[Int32]] = []
    private var groupLive: [Int] = []  // resident members
    private var groupKeyBytes: [Int] = []  // key metadata bytes, charged while any member is resident
    private var groupValueBytesPerToken: [Int] = []  // one member's value metadata bytes, charged while it is resident
    private var liveGroups: [[Int]]  // per head, ids of groups with resident members
    private var charged: [Int]  // per head, metadata bytes this component charged
    private var mark: [UInt32]
    private var stamp: UInt32 = 0

    /// Checks the configuration: bits each format supports, a positive group size.
    public init(_ configuration: Configuration, cache: LayerCache) throws {
        guard configuration.groupSize > 0 else { throw PolicyError("TBQ group size must be positive") }
        guard configuration.bitsByType.count == Self.thoughtTypeCount,
            configuration.pagingClassByType.count == Self.thoughtTypeCount
        else {
            throw PolicyError("TBQ needs bits for \(Self.thoughtTypeCount) thought types")
        }
        self.configuration = configuration
        quantizers = try configuration.bitsByType.map { try GroupQuantizer(format: configuration.format, bits: $0) }
        promptQuantizer = try configuration.promptBits.map {
            try GroupQuantizer(format: configuration.format, bits: $0)
        }
        numKVHeads = cache.numKVHeads
        numTokens = cache.numTokens
        typeOf = [Int8](repeating: -1, count: cache.numTokens)
        openType = [Int](repeating: -1, count: cache.numKVHeads)
        openMembers = Array(repeating: [], count: cache.numKVHeads)
        groupOf = [Int32](repeating: -1, count: cache.numKVHeads * cache.numTokens)
        liveGroups = Array(repeating: [], count: cache.numKVHeads)
        charged = [Int](repeating: 0, count: cache.numKVHeads)
        mark = [UInt32](repeating: 0, count: cache.numTokens)
    }

    // MARK: Feeding tokens

    /// Sets the prompt's paging class and, if `promptBits` is set, quantizes the prompt in whole
    /// runs of `groupSize` consecutive positions (call before evicting any prompt token).
    public func prefill(promptLength: Int, cache: LayerCache) {
        for p in 0..<promptLength { cache.pagingClass[p] = configuration.promptPagingClass }
        guard let quantizer = promptQuantizer else { return }
        let G = configuration.groupSize
        for h in 0..<numKVHeads {
            var start = 0
            while start + G <= promptLength {
                quantizeGroup(kvHead: h, positions: Array(start..<(start + G)), quantizer: quantizer, cache: cache)
                start += G
            }
        }
    }

    /// Records the thought type (0 R, 1 E, 2 T) of a decode position and makes it the token's
    /// paging class. Call before the engine pages the token (`beforeAttention`).
    public func setThoughtType(_ type: Int, position: Int, cache: LayerCache) {
        precondition((0..<Self.thoughtTypeCount).contains(type), "thought type must be 0, 1 or 2, got \(type)")
        precondition(
            typeOf[position] < 0 || Int(typeOf[position]) == type,
            "position \(position) already has thought type \(typeOf[position])")
        typeOf[position] = Int8(type)
        cache.pagingClass[position] = configuration.pagingClassByType[type]
    }

    /// Adds a decode position to every kv head that holds it: to the open group if the type
    /// matches, else it closes the open group (quantized short, or left at 16 bits; see
    /// `quantizesPartialGroups`) and opens a new one. Quantizes a
    /// head's open group once it holds `groupSize` resident tokens. Positions must arrive in
    /// increasing order. Returns whether any head quantized a group.
    @discardableResult
    public func append(position: Int, thoughtType: Int, cache: LayerCache) -> Bool {
        setThoughtType(thoughtType, position: position, cache: cache)
        let G = configuration.groupSize
        var quantized = false
        for h in 0..<numKVHeads {
            if openType[h] != thoughtType {
                if configuration.quantizesPartialGroups && openType[h] >= 0 && !openMembers[h].isEmpty {
                    pruneOpenGroup(kvHead: h, cache: cache)
                    if !openMembers[h].isEmpty {
                        quantizeGroup(
                            kvHead: h, positions: openMembers[h], quantizer: quantizers[openType[h]], cache: cache)
                        quantized = true
                    }
                }
                openType[h] = thoughtType
                openMembers[h].removeAll(keepingCapacity: true)
            }
            let slots = cache.slots[h]
            guard slots.last == Int32(position) || slots.contains(Int32(position)) else { continue }
            openMembers[h].append(position)
            guard openMembers[h].count >= G else { continue }
            // Members evicted without a `didEvict` call do not count towards a full group.
            pruneOpenGroup(kvHead: h, cache: cache)
            guard openMembers[h].count == G else { continue }
            quantizeGroup(kvHead: h, positions: openMembers[h], quantizer: quantizers[thoughtType], cache: cache)
            openMembers[h].removeAll(keepingCapacity: true)
            quantized = true
        }
        return quantized
    }

    // MARK: Evictions

    /// Tells the component that `kvHead` evicted `positions`: each quantized token frees its value
    /// metadata, a quantized group whose last resident token goes frees its key metadata;
    /// open-group members are dropped.
    public func didEvict(kvHead h: Int, positions: [Int32], cache: LayerCache) {
        guard !positions.isEmpty else { return }
        let base = h * numTokens
        var touchedOpen = false
        for p in positions {
            let id = Int(groupOf[base + Int(p)])
            if id >= 0 {
                groupOf[base + Int(p)] = -1
                groupLive[id] -= 1
                uncharge(groupValueBytesPerToken[id], kvHead: h, cache: cache)
                if groupLive[id] == 0 { release(group: id, cache: cache) }
            } else {
                touchedOpen = true
            }
        }
        if touchedOpen {
            let gone = Set(positions.map(Int.init))
            openMembers[h].removeAll { gone.contains($0) }
        }
    }

    /// Recomputes every head's group residency from the cache's slots (an alternative to
    /// `didEvict` after arbitrary slot changes); frees the value metadata of evicted quantized
    /// tokens and the key metadata of groups with no resident token, and drops evicted
    /// open-group members.
    public func reconcile(cache: LayerCache) {
        for h in 0..<numKVHeads {
            markResident(kvHead: h, cache: cache)
            let base = h * numTokens
            var stillLive: [Int] = []
            stillLive.reserveCapacity(liveGroups[h].count)
            for id in liveGroups[h] {
                var live = 0
                for p in groupMembers[id] {
                    if mark[Int(p)] == stamp {
                        live += 1
                    } else {
                        groupOf[base + Int(p)] = -1
                    }
                }
                uncharge((groupLive[id] - live) * groupValueBytesPerToken[id], kvHead: h, cache: cache)
                groupLive[id] = live
                if live > 0 { stillLive.append(id) } else { free(group: id, cache: cache) }
            }
            liveGroups[h] = stillLive
            openMembers[h].removeAll { mark[$0] != stamp }
        }
    }

    // MARK: Inspection

    /// Metadata bytes this component has charged to `kvHead` and not yet freed.
    public func chargedMetadataBytes(kvHead: Int) -> Int { charged[kvHead] }

    /// The thought type and positions of `kvHead`'s open (not yet quantized) group.
    public func openGroup(kvHead: Int) -> (type: Int, positions: [Int])? {
        openType[kvHead] < 0 ? nil : (openType[kvHead], openMembers[kvHead])
    }

    /// The thought type recorded for a position, or nil (prompt, or not yet seen).
    public func thoughtType(of position: Int) -> Int? {
        typeOf[position] < 0 ? nil : Int(typeOf[position])
    }

    /// Quantized groups of `kvHead` that still have resident tokens.
    public func liveGroupCount(kvHead: Int) -> Int { liveGroups[kvHead].count }

    // MARK: Internals

    private func quantizeGroup(kvHead h: Int, positions: [Int], quantizer: GroupQuantizer, cache: LayerCache) {
        let G = configuration.groupSize
        let keyBits = KVGrouping.quantizeKeysPerChannel(
            cache, kvHead: h, positions: positions, groupSize: G, quantizer: quantizer)
        KVGrouping.quantizeValuesPerToken(cache, kvHead: h, positions: positions, groupSize: G, quantizer: quantizer)
        // Every format's metadata is whole bytes per scale (8, 16 or 32 bits), so rounding the
        // key and the per-token value metadata separately loses nothing.
        let keyBytes = (keyBits + 7) / 8
        let valueBytesPerToken =
            (KVGrouping.valueMetadataBitsPerToken(headDim: cache.headDim, groupSize: G, quantizer: quantizer) + 7) / 8
        let id = groupHead.count
        groupHead.append(h)
        groupMembers.append(positions.map { Int32($0) })
        groupLive.append(positions.count)
        groupKeyBytes.append(keyBytes)
        groupValueBytesPerToken.append(valueBytesPerToken)
        for p in positions { groupOf[h * numTokens + p] = Int32(id) }
        liveGroups[h].append(id)
        charge(keyBytes + positions.count * valueBytesPerToken, kvHead: h, cache: cache)
    }

    private func charge(_ bytes: Int, kvHead h: Int, cache: LayerCache) {
        charged[h] += bytes
        cache.metadataBytes[h] += bytes
    }

    private func uncharge(_ bytes: Int, kvHead h: Int, cache: LayerCache) { charge(-bytes, kvHead: h, cache: cache) }

    /// Frees a group's key metadata and drops it from its head's live list.
    private func release(group id: Int, cache: LayerCache) {
        free(group: id, cache: cache)
        liveGroups[groupHead[id]].removeAll { $0 == id }
    }

    /// Frees a group's key metadata (its members' value metadata left with them).
    private func free(group id: Int, cache: LayerCache) {
        uncharge(groupKeyBytes[id], kvHead: groupHead[id], cache: cache)
        groupKeyBytes[id] = 0
    }

    private func markResident(kvHead h: Int, cache: LayerCache) {
        stamp &+= 1
        if stamp == 0 {  // wrapped: old marks could collide
            for i in mark.indices { mark[i] = 0 }
            stamp = 1
        }
        for p in cache.slots[h] { mark[Int(p)] = stamp }
    }

    private func pruneOpenGroup(kvHead h: Int, cache: LayerCache) {
        markResident(kvHead: h, cache: cache)
        openMembers[h].removeAll { mark[$0] != stamp }
    }
}
