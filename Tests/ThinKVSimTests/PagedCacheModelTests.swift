import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Hand-checked block-table behaviour: in-place reuse (CT), dense compaction, byte accounting.
final class PagedCacheModelTests: XCTestCase {
    private let sixteenBitToken = 32  // key bits + value bits of an unquantized token

    func testCTReusesFreedSlotOfSameClassBeforeAllocating() {
        // Block size 4, D = 2. Positions 0..5 of class 0 fill block 0 and half of block 1.
        var model = PagedCacheModel(mode: .ct, blockSize: 4, headDim: 2, numTokens: 32)
        for p in 0..<6 { model.insert(position: Int32(p), tokenClass: 0) }
        XCTAssertEqual(model.blocks(), 2)
        // Evict position 1 (slot 1 of block 0): the block stays (3 live tokens).
        _ = model.remove([1], classOf: { _ in 0 }, bits: { _ in self.sixteenBitToken })
        XCTAssertEqual(model.blocks(), 2)
        // A class-1 token must not take the class-0 hole: it opens a new block.
        model.insert(position: 6, tokenClass: 1)
        XCTAssertEqual(model.blocks(), 3)
        // The next class-0 token reuses the hole in block 0, not block 1's free tail slots.
        model.insert(position: 7, tokenClass: 0)
        XCTAssertEqual(model.blocks(), 3)
        XCTAssertEqual(model.liveTokens, 7)
        // Block 0 is full again: 4 x (2 elements x 32 bits / 8) = 32 bytes; block 1 (2 live) and block 2 (1 live)
        // occupy whole blocks too: 3 blocks x 32 bytes.
        XCTAssertEqual(model.pagedBytes { _ in self.sixteenBitToken }, 3 * 4 * 2 * 4)
    }

    func testEmptyBlockIsReleasedAndReused() {
        var model = PagedCacheModel(mode: .ct, blockSize: 2, headDim: 1, numTokens: 16)
        for p in 0..<4 { model.insert(position: Int32(p), tokenClass: 0) }
        XCTAssertEqual(model.blocks(), 2)
        _ = model.remove([0, 1], classOf: { _ in 0 }, bits: { _ in 32 })
        XCTAssertEqual(model.blocks(), 1, "block 0 emptied and went back to the pool")
        model.insert(position: 4, tokenClass: 2)
        XCTAssertEqual(model.blocks(), 2, "a released block serves a new class")
    }

    func testCompactionBytesCountSurvivorsBehindFirstHole() {
        // Dense order 0,1,2,3,4 (one class). Removing 1 and 3 moves 2 and 4: 2 tokens x D=4 x 32 bits / 8 = 32 bytes.
        var model = PagedCacheModel(mode: .compact, blockSize: 2, headDim: 4, numTokens: 8)
        for p in 0..<5 { model.insert(position: Int32(p), tokenClass: 0) }
        XCTAssertEqual(model.blocks(), 3)
        let moved = model.remove([1, 3], classOf: { _ in 0 }, bits: { _ in 32 })
        XCTAssertEqual(moved, 2 * 4 * 4)
        XCTAssertEqual(model.blocks(), 2, "three survivors fit in two dense blocks")
        // Removing the newest token moves nothing.
        XCTAssertEqual(model.remove([4], classOf: { _ in 0 }, bits: { _ in 32 }), 0)
    }

    func testPagedBytesUseWidestTokenOfEachBlock() {
        // One block of 4 slots, D = 8: tokens at 4+4 bits and one at 16+16 bits -> every slot is 32 bits wide.
        var model = PagedCacheModel(mode: .ct, blockSize: 4, headDim: 8, numTokens: 8)
        model.insert(position: 0, tokenClass: 0)
        model.insert(position: 1, tokenClass: 0)
        XCTAssertEqual(model.pagedBytes { $0 == 0 ? 8 : 32 }, 4 * 8 * 32 / 8)
        model.recharged(position: 1)  // now 4+4 bits as well
        XCTAssertEqual(model.pagedBytes { _ in 8 }, 4 * 8 * 8 / 8)
    }

    func testRunningPagedBytesEqualRecomputedOnes() {
        // Random inserts, evictions and precision changes over 3 classes: the CT byte total kept
        // block by block must equal the sum over every held block after each operation.
        var random = SeededRandom(seed: 7)
        var model = PagedCacheModel(mode: .ct, blockSize: 4, headDim: 8, numTokens: 400)
        var bits = [Int](repeating: 32, count: 400)
        var live: [Int32] = []
        var next: Int32 = 0, largest = 0
        for _ in 0..<2000 {
            let action = random.next() % 4
            if action < 2 && next < 400 {
                model.insert(position: next, tokenClass: UInt8(random.next() % 3))
                live.append(next)
                next += 1
            } else if action == 2 && !live.isEmpty {
                let gone = live.remove(at: Int(random.next() % UInt64(live.count)))
                _ = model.remove([gone], classOf: { _ in 0 }, bits: { bits[Int($0)] })
            } else if !live.isEmpty {
                let p = live[Int(random.next() % UInt64(live.count))]
                bits[Int(p)] = [8, 12, 20, 32][Int(random.next() % 4)]
                model.recharged(position: p)
            }
            let bytes = model.pagedBytes { bits[Int($0)] }
            XCTAssertEqual(bytes, model.pagedBytesRecomputed { bits[Int($0)] })
            largest = max(largest, bytes)
        }
        XCTAssertGreaterThan(largest, 0, "the sequence held tokens at some point")
    }

    func testNoPagingReportsNoBlocks() {
        var model = PagedCacheModel(mode: .none, blockSize: 4, headDim: 2, numTokens: 8)
        model.insert(position: 0, tokenClass: 0)
        XCTAssertEqual(model.blocks(), 0)
        XCTAssertEqual(model.pagedBytes { _ in 32 }, 0)
    }
}
