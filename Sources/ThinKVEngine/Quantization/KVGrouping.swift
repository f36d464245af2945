import Foundation

/// How K and V are cut into quantization groups, applied to a `LayerCache`'s stored vectors.
///
/// - Keys per channel (KIVI): a group is `G` consecutive tokens of one channel of one kv head.
///   Key outliers sit in fixed channels, so grouping along tokens keeps each outlier channel's
///   range to itself. In the per-head layout `(head·T + position)·D + d` a group over
///   consecutive positions is a stride-D walk.
/// - Values per token: a group is `G` consecutive channels of one token (contiguous).
///
/// Both helpers overwrite the stored vectors with their dequantized values (when the cache
/// holds that tensor), set `keyBits`/`valueBits` of the positions to the quantizer's element
/// width, and return the metadata bits the groups cost; the caller charges the metadata to
/// `cache.metadataBytes` (it knows how long each group stays resident). Bits are charged even
/// when the layer records no keys or values: memory accounting does not depend on the data.
public enum KVGrouping {
    /// Quantizes the keys of `positions` (in the order given, cut into runs of `groupSize`
    /// tokens; a shorter last run is its own group) per channel in `kvHead`.
    @discardableResult
    public static func quantizeKeysPerChannel(
        _ cache: LayerCache, kvHead: Int, positions: [Int], groupSize: Int,
        quantizer: GroupQuantizer
    ) -> Int {
        precondition(groupSize > 0, "group size must be positive")
        let n = positions.count
        guard n > 0 else { return 0 }
        let D = cache.headDim, T = cache.numTokens
        if cache.storedKeys != nil {
            cache.keysModified = true
            let consecutive = zip(positions, positions.dropFirst()).allSatisfy { $1 == $0 + 1 }
            cache.storedKeys!.withUnsafeMutableBufferPointer { keys in
                let head = keys.baseAddress! + kvHead * T * D
                if consecutive {
                    // In place: channel d of tokens p0..<p0+n is a stride-D walk.
                    var start = 0
                    while start < n {
                        let count = min(groupSize, n - start)
                        let block = head + (positions[start]) * D
                        for d in 0..<D { quantizer.roundTrip(block + d, count: count, stride: D) }
                        start += count
                    }
                } else {
                    // Gather into channel-major scratch so each channel group is contiguous.
                    var scratch = [Float](repeating: 0, count: n * D)
                    scratch.withUnsafeMutableBufferPointer { s in
                        let sp = s.baseAddress!
                        for (i, p) in positions.enumerated() {
                            let row = head + p * D
                            for d in 0..<D { sp[d * n + i] = row[d] }
                        }
                        for d in 0..<D {
                            var start = 0
                            while start < n {
                                let count = min(groupSize, n - start)
                                quantizer.roundTrip(sp + d * n + start, count: count, stride: 1)
                                start += count
                            }
                        }
                        for (i, p) in positions.enumerated() {
                            let row = head + p * D
                            for d in 0..<D { row[d] = sp[d * n + i] }
                        }
                    }
                }
            }
        }
        let bits = UInt8(quantizer.elementBits)
        for p in positions { cache.setKeyBits(kvHead: kvHead, position: p, bits) }
        var metadata = 0
        var start = 0
        while start < n {
            let count = min(groupSize, n - start)
            metadata += D * quantizer.metadataBits(count: count)
            cache.quantizationLog?.append(
                (
                    kvHead,
                    QuantizedGroup(
                        tensor: .key, positions: positions[start..<(start + count)].map { Int32($0) },
                        quantizer: quantizer, channelGroup: D)
                ))
            start += count
        }
        return metadata
    }

    /// Quantizes the values of `positions` in `kvHead` per token: each token's D channels in
    /// runs of `groupSize` (a shorter last run when D is not a multiple).
    @discardableResult
    public static func quantizeValuesPerToken(
        _ cache: LayerCache, kvHead: Int, positions: [Int], groupSize: Int,
        quantizer: GroupQuantizer
    ) -> Int {
        precondition(groupSize > 0, "group size must be positive")
        guard !positions.isEmpty else { return 0 }
        let D = cache.headDim, T = cache.numTokens
        if cache.storedValues != nil {
            cache.valuesModified = true
            cache.storedValues!.withUnsafeMutableBufferPointer { values in
                roundTripRows(
                    values.baseAddress! + kvHead * T * D, positions: positions, headDim: D, groupSize: groupSize,
                    quantizer: quantizer)
            }
        }
        let bits = UInt8(quantizer.elementBits)
        for p in positions { cache.setValueBits(kvHead: kvHead, position: p, bits) }
        cache.quantizationLog?.append(
            (
                kvHead,
                QuantizedGroup(
                    tensor: .value, positions: positions.map { Int32($0) }, quantizer: quantizer,
                    channelGroup: groupSize)
            ))
        return positions.count * valueMetadataBitsPerToken(headDim: D, groupSize: groupSize, quantizer: quantizer)
    }

    /// Quantizes the keys of `positions` in `kvHead` per token, as values are: each token's D
    /// channels in runs of `groupSize` (PM-KVQ groups keys and values alike, along the head
    /// dimension). Returns the metadata bits.
    /// `channelScale` (D entries): the keys are divided by it before rounding and multiplied by
    /// it after, as when a reparameterization (PM-KVQ's SmoothAttention) moves a per-channel
    /// factor from the keys into the queries.
    @discardableResult
    public static func quantizeKeysPerToken(
        _ cache: LayerCache, kvHead: Int, positions: [Int], groupSize: Int,
        quantizer: GroupQuantizer, channelScale: [Float]? = nil
    ) -> Int {
        precondition(groupSize > 0, "group size must be positive")
        guard !positions.isEmpty else { return 0 }
        let D = cache.headDim, T = cache.numTokens
        if cache.storedKeys != nil {
            cache.keysModified = true
            cache.storedKeys!.withUnsafeMutableBufferPointer { keys in
                roundTripRows(
                    keys.baseAddress! + kvHead * T * D, positions: positions, headDim: D, groupSize: groupSize,
                    quantizer: quantizer, channelScale: channelScale)
            }
        }
        let bits = UInt8(quantizer.elementBits)
        for p in positions { cache.setKeyBits(kvHead: kvHead, position: p, bits) }
        cache.quantizationLog?.append(
            (
                kvHead,
                QuantizedGroup(
                    tensor: .keyPerToken, positions: positions.map { Int32($0) }, quantizer: quantizer,
                    channelGroup: groupSize,
                    channelScale: channelScale)
            ))
        return positions.count * valueMetadataBitsPerToken(headDim: D, groupSize: groupSize, quantizer: quantizer)
    }

    /// Rounds the rows `positions` of one head's `[T][D]` tensor in place, each in runs of
    /// `groupSize` channels (a shorter last run); with `channelScale`, divided by it before and
    /// multiplied by it after.
    private static func roundTripRows(
        _ head: UnsafeMutablePointer<Float>, positions: [Int], headDim D: Int, groupSize: Int,
        quantizer: GroupQuantizer, channelScale: [Float]? = nil
    ) {
        for p in positions {
            let row = head + p * D
            if let channelScale { for d in 0..<D { row[d] /= channelScale[d] } }
            var start = 0
            while start < D {
                let count = min(groupSize, D - start)
                quantizer.roundTrip(row + start, count: count, stride: 1)
                start += count
            }
            if let channelScale { for d in 0..<D { row[d] *= channelScale[d] } }
        }
    }

    /// Metadata bits of one token's values quantized per token.
    public static func valueMetadataBitsPerToken(headDim D: Int, groupSize: Int, quantizer: GroupQuantizer) -> Int {
        var bits = 0
        var start = 0
        while start < D {
            let count = min(groupSize, D - start)
            bits += quantizer.metadataBits(count: count)
            start += count
        }
        return bits
    }
}
