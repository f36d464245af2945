import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// TBQ's group rule, bit and metadata accounting, and eviction bookkeeping.
final class ThoughtGroupQuantizerTests: XCTestCase {
    private typealias TBQ = ThoughtGroupQuantizer

    /// Feeds decode positions `first...` with the given types (as a policy would, one per step).
    private func feed(_ tbq: TBQ, _ cache: LayerCache, from first: Int, types: [Int]) {
        for (i, type) in types.enumerated() {
            tbq.setThoughtType(type, position: first + i, cache: cache)
            tbq.append(position: first + i, thoughtType: type, cache: cache)
        }
    }

    func testOneFullGroupCostsHandCountedBytes() throws {
        // D = 16, 16 reasoning tokens at 4-bit int:
        // keys 16·16·4/8 = 128 B + 16 channel groups × 4 B; values 128 B + 16 token groups × 4 B.
        let cache = QuantTestSupport.cache(T: 16, D: 16, seed: 1)
        let tbq = try TBQ(.init(format: .int), cache: cache)
        feed(tbq, cache, from: 0, types: Array(repeating: TBQ.reasoning, count: 15))
        XCTAssertEqual(cache.keyBits[0..<15].allSatisfy { $0 == 16 }, true, "an open group stays 16-bit")
        XCTAssertEqual(cache.metadataBytes[0], 0)
        XCTAssertEqual(cache.bytes(kvHead: 0), 16 * 16 * 2 * 2, "16 tokens (one not yet appended to TBQ) at 16 bits")
        XCTAssertTrue(
            tbq.append(position: 15, thoughtType: TBQ.reasoning, cache: cache), "the 16th token closes the group")
        for p in 0..<16 {
            XCTAssertEqual(cache.keyBits[p], 4)
            XCTAssertEqual(cache.valueBits[p], 4)
        }
        XCTAssertEqual(cache.metadataBytes[0], 16 * 4 + 16 * 4)
        XCTAssertEqual(tbq.chargedMetadataBytes(kvHead: 0), 128)
        XCTAssertEqual(cache.bytes(kvHead: 0), 128 + 64 + 128 + 64)
    }

    func testPaperFormatBytesUseNVFP4AndTernaryScales() throws {
        // Paper formats: every scale is one 1-byte E4M3 value. R (4 bits) = NVFP4, one scale per
        // 16 elements; T (2 bits) = ternary, one scale per group. Keys: 16 channel groups, values:
        // 16 token groups of 16 channels, so 16 + 16 B per group of either type.
        let cache = QuantTestSupport.cache(T: 32, D: 16, seed: 2)
        let tbq = try TBQ(.init(format: .paper), cache: cache)
        feed(tbq, cache, from: 0, types: Array(repeating: TBQ.reasoning, count: 16))
        XCTAssertEqual(cache.metadataBytes[0], 16 + 16)
        feed(tbq, cache, from: 16, types: Array(repeating: TBQ.transition, count: 16))
        XCTAssertEqual(cache.metadataBytes[0], 32 + 16 + 16)
        XCTAssertEqual(cache.bytes(kvHead: 0), (16 * 16 * 4 * 2 + 16 * 16 * 2 * 2) / 8 + 64)
        let v = cache.storedValues!
        for p in 16..<32 {
            let row = v[(p * 16)..<((p + 1) * 16)]
            XCTAssertLessThanOrEqual(
                Set(row.map { abs($0) }).count, 2, "ternary values: 0 and one magnitude per token group")
        }
    }

    func testAThoughtEndingShortOfAGroupIsQuantizedAsAShortGroup() throws {
        // D = 16, int format: 10 execution tokens, then a transition token closes their group.
        let cache = QuantTestSupport.cache(T: 32, D: 16, seed: 3)
        let exactK = cache.storedKeys!
        let tbq = try TBQ(.init(format: .int), cache: cache)
        feed(tbq, cache, from: 0, types: Array(repeating: TBQ.execution, count: 10))
        XCTAssertEqual(cache.metadataBytes[0], 0, "open while the thought lasts")
        XCTAssertTrue(
            tbq.append(position: 10, thoughtType: TBQ.transition, cache: cache), "the thought's end quantizes it")
        for p in 0..<10 {
            XCTAssertEqual(cache.keyBits[p], 4, "execution bits, position \(p)")
            XCTAssertEqual(cache.valueBits[p], 4)
        }
        XCTAssertEqual(cache.keyBits[10], 16, "the new thought's token is open")
        XCTAssertNotEqual(Array(cache.storedKeys![0..<160]), Array(exactK[0..<160]), "keys were really quantized")
        // Keys: 16 channel groups of 10 tokens, values: 10 token groups of 16 channels; int
        // metadata is an fp16 scale and zero point (4 B) per group, whatever its length.
        XCTAssertEqual(cache.metadataBytes[0], 16 * 4 + 10 * 4)
        XCTAssertEqual(
            cache.bytes(kvHead: 0), (10 * 16 * 4 * 2) / 8 + 104 + 22 * 16 * 2 * 2, "the other 22 positions at 16 bits")
        XCTAssertEqual(tbq.openGroup(kvHead: 0)?.positions, [10])
    }

    func testWithPartialGroupsKeptATypeChangeLeavesThePartialGroupAt16BitsForGood() throws {
        let cache = QuantTestSupport.cache(T: 48, D: 8, seed: 3)
        let exactK = cache.storedKeys!, exactV = cache.storedValues!
        let tbq = try TBQ(.init(format: .int, quantizesPartialGroups: false), cache: cache)
        // 10 execution tokens, then 6 transition tokens: 16 tokens, but no 16 of one type.
        feed(
            tbq, cache, from: 0,
            types: Array(repeating: TBQ.execution, count: 10) + Array(repeating: TBQ.transition, count: 6))
        XCTAssertEqual(cache.keyBits[0..<16].allSatisfy { $0 == 16 }, true, "a group never mixes types")
        XCTAssertEqual(tbq.openGroup(kvHead: 0)?.type, TBQ.transition)
        XCTAssertEqual(tbq.openGroup(kvHead: 0)?.positions, Array(10..<16))
        // 10 more transition tokens complete the transition group; the execution tokens stay 16-bit.
        feed(tbq, cache, from: 16, types: Array(repeating: TBQ.transition, count: 10))
        for p in 0..<10 {
            XCTAssertEqual(cache.keyBits[p], 16, "closed partial group, position \(p)")
            XCTAssertEqual(cache.valueBits[p], 16)
            XCTAssertEqual(Array(cache.storedKeys![(p * 8)..<((p + 1) * 8)]), Array(exactK[(p * 8)..<((p + 1) * 8)]))
        }
        for p in 10..<26 { XCTAssertEqual(cache.keyBits[p], 2, "transition position \(p)") }
        let quantizedRows = (10 * 8)..<(26 * 8)
        XCTAssertNotEqual(
            Array(cache.storedKeys![quantizedRows]), Array(exactK[quantizedRows]), "keys were really quantized")
        XCTAssertNotEqual(Array(cache.storedValues![quantizedRows]), Array(exactV[quantizedRows]))
        // Even returning to execution does not reopen the old partial group.
        feed(tbq, cache, from: 26, types: Array(repeating: TBQ.execution, count: 6))
        XCTAssertEqual(tbq.openGroup(kvHead: 0)?.positions, Array(26..<32))
        XCTAssertEqual(cache.keyBits[0..<10].allSatisfy { $0 == 16 }, true)
    }

    func testPagingClassIsTheThoughtTypeAndThePromptHasItsOwn() throws {
        let cache = QuantTestSupport.cache(T: 12, D: 4, seed: 4)
        let tbq = try TBQ(.init(), cache: cache)
        tbq.prefill(promptLength: 4, cache: cache)
        feed(tbq, cache, from: 4, types: [0, 0, 1, 2, 2, 1, 0, 2])
        XCTAssertEqual(cache.pagingClass, [3, 3, 3, 3, 0, 0, 1, 2, 2, 1, 0, 2])
        XCTAssertEqual(tbq.thoughtType(of: 6), 1)
        XCTAssertNil(tbq.thoughtType(of: 0))
    }

    func testPromptIsQuantizedInWholeGroupsOnlyWhenAsked() throws {
        let kept = QuantTestSupport.cache(T: 24, D: 16, seed: 5)
        try TBQ(.init(), cache: kept).prefill(promptLength: 20, cache: kept)
        XCTAssertEqual(kept.keyBits.allSatisfy { $0 == 16 }, true, "default: prompt stays 16-bit")
        XCTAssertEqual(kept.metadataBytes[0], 0)

        let cache = QuantTestSupport.cache(T: 24, D: 16, seed: 5)
        let tbq = try TBQ(.init(format: .paper, promptBits: 8), cache: cache)
        tbq.prefill(promptLength: 20, cache: cache)
        for p in 0..<16 { XCTAssertEqual(cache.keyBits[p], 8) }
        for p in 16..<24 { XCTAssertEqual(cache.keyBits[p], 16, "the prompt's tail (20 mod 16) stays 16-bit") }
        XCTAssertEqual(cache.metadataBytes[0], 16 + 16, "one E4M3 scale per FP8 key and value group")
        // Decode tokens never join a prompt group: they open their own.
        feed(tbq, cache, from: 20, types: [0, 0])
        XCTAssertEqual(tbq.openGroup(kvHead: 0)?.positions, [20, 21])
    }

    func testMetadataIsFreedWhenTheLastMemberIsEvicted() throws {
        let cache = QuantTestSupport.cache(T: 40, D: 16, seed: 6)
        let tbq = try TBQ(.init(format: .int), cache: cache)
        feed(tbq, cache, from: 0, types: Array(repeating: TBQ.reasoning, count: 32))
        XCTAssertEqual(tbq.liveGroupCount(kvHead: 0), 2)
        // Per group (int, D = 16): keys 16 channel groups × 4 B, values 16 tokens × one 4 B group.
        XCTAssertEqual(cache.metadataBytes[0], 2 * (64 + 64))
        // Evict 15 of the first group's 16 tokens: their value scales leave with them, the
        // group's key scales (which cover the remaining token too) stay.
        let firstFifteen = (0..<15).map { Int32($0) }
        cache.removeAll(kvHead: 0) { $0 < 15 }
        tbq.didEvict(kvHead: 0, positions: firstFifteen, cache: cache)
        XCTAssertEqual(cache.metadataBytes[0], 2 * 128 - 15 * 4)
        XCTAssertEqual(tbq.chargedMetadataBytes(kvHead: 0), 2 * 128 - 15 * 4)
        let before = cache.bytes(kvHead: 0)
        cache.removeAll(kvHead: 0) { $0 == 15 }
        tbq.didEvict(kvHead: 0, positions: [15], cache: cache)
        XCTAssertEqual(cache.metadataBytes[0], 128, "the first group's metadata is freed")
        XCTAssertEqual(tbq.liveGroupCount(kvHead: 0), 1)
        XCTAssertEqual(
            before - cache.bytes(kvHead: 0), 16 * 4 * 2 / 8 + 4 + 64,
            "one 4-bit token's K and V, its value scale, and the group's key scales")
    }

    func testReconcileAgreesWithDidEvict() throws {
        func run(useReconcile: Bool) throws -> (LayerCache, TBQ) {
            let cache = QuantTestSupport.cache(T: 80, Hkv: 2, D: 16, seed: 7)
            let tbq = try TBQ(.init(format: .paper, reasoningBits: 8, quantizesPartialGroups: false), cache: cache)
            let types = Array(repeating: 0, count: 20) + Array(repeating: 2, count: 40) + Array(repeating: 1, count: 20)
            feed(tbq, cache, from: 0, types: types)
            // Head 0 drops all of 0..<16 and part of 20..<36; head 1 drops a single token.
            let drop0: (Int32) -> Bool = { $0 < 16 || ($0 >= 20 && $0 < 30) }
            let dropped0 = cache.slots[0].filter(drop0)
            cache.removeAll(kvHead: 0, where: drop0)
            cache.removeAll(kvHead: 1) { $0 == 40 }
            if useReconcile {
                tbq.reconcile(cache: cache)
            } else {
                tbq.didEvict(kvHead: 0, positions: dropped0, cache: cache)
                tbq.didEvict(kvHead: 1, positions: [40], cache: cache)
            }
            return (cache, tbq)
        }
        let (a, ta) = try run(useReconcile: false)
        let (b, tb) = try run(useReconcile: true)
        XCTAssertEqual(a.metadataBytes, b.metadataBytes)
        XCTAssertEqual(ta.liveGroupCount(kvHead: 0), tb.liveGroupCount(kvHead: 0))
        // Groups: R 0..<16 (FP8), T 20..<36, 36..<52 (ternary), E 60..<76 (NVFP4), per head.
        // Each: 16 key scales + 16 tokens' value scales, 1 B each (E4M3).
        let fp8 = 16 + 16, ternary = 16 + 16, nvfp4 = 16 + 16
        XCTAssertEqual(
            a.metadataBytes[1], fp8 + 2 * ternary + nvfp4 - 1, "head 1 lost one token's value scale, no whole group")
        XCTAssertEqual(
            a.metadataBytes[0], 2 * ternary + nvfp4 - 10, "head 0 lost all of the FP8 group and 10 tokens' value scales"
        )
        XCTAssertEqual(ta.liveGroupCount(kvHead: 0), 3)
    }

    func testAnOpenGroupMemberEvictedInOneHeadDelaysOnlyThatHead() throws {
        let cache = QuantTestSupport.cache(T: 20, Hkv: 2, D: 8, seed: 8)
        let tbq = try TBQ(.init(format: .int), cache: cache)
        feed(tbq, cache, from: 0, types: Array(repeating: 0, count: 10))
        cache.removeAll(kvHead: 1) { $0 == 3 }
        tbq.didEvict(kvHead: 1, positions: [3], cache: cache)
        feed(tbq, cache, from: 10, types: Array(repeating: 0, count: 6))
        XCTAssertEqual(cache.keyBits[0 * 20 + 15], 4, "head 0 filled its group")
        XCTAssertEqual(cache.keyBits[1 * 20 + 15], 16, "head 1 has 15 resident members")
        feed(tbq, cache, from: 16, types: [0])
        XCTAssertEqual(cache.keyBits[1 * 20 + 16], 4, "head 1's group closes one token later, gathered around the gap")
        XCTAssertEqual(cache.keyBits[1 * 20 + 3], 16)
        XCTAssertEqual(tbq.openGroup(kvHead: 0)?.positions, [16])
        XCTAssertEqual(tbq.openGroup(kvHead: 1)?.positions, [])
    }

    func testAnEvictionTheComponentWasNotToldAboutDoesNotFillAGroup() throws {
        let cache = QuantTestSupport.cache(T: 20, D: 8, seed: 9)
        let tbq = try TBQ(.init(format: .int), cache: cache)
        feed(tbq, cache, from: 0, types: Array(repeating: 1, count: 8))
        cache.removeAll(kvHead: 0) { $0 == 2 }  // no didEvict
        feed(tbq, cache, from: 8, types: Array(repeating: 1, count: 8))
        XCTAssertEqual(cache.keyBits[15], 16, "only 15 resident members")
        feed(tbq, cache, from: 16, types: [1])
        XCTAssertEqual(cache.keyBits[16], 4)
    }

    func testBadConfigurationsAreRefused() throws {
        let cache = QuantTestSupport.cache(T: 4, D: 4, seed: 10)
        XCTAssertThrowsError(try TBQ(.init(format: .paper, transitionBits: 3), cache: cache))
        XCTAssertThrowsError(try TBQ(.init(format: .int, groupSize: 0), cache: cache))
        XCTAssertNoThrow(try TBQ(.init(format: .paper, reasoningBits: 8), cache: cache))
    }
}
