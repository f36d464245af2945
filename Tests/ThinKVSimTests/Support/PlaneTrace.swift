import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

extension TestTraces {
    /// A one-layer trace with D = 2 (scorer scale 1/√2) from explicit vectors: `keys[p][g]` for
    /// position p and kv head g, `queries[p][h]` for the positions that have non-zero queries
    /// (all others are zero). Small enough to check scores on paper.
    static func plane(
        _ testCase: XCTestCase, keys: [[(Float, Float)]], queries: [Int: [(Float, Float)]] = [:],
        P: Int, Hq: Int = 1, name: String = "plane.h5"
    ) throws -> String {
        let T = keys.count, Hkv = keys[0].count
        var k = [Float](), q = [Float](repeating: 0, count: T * Hq * 2)
        for row in keys {
            precondition(row.count == Hkv, "one key per kv head")
            for (x, y) in row { k += [x, y] }
        }
        for (p, heads) in queries {
            precondition(heads.count == Hq, "one query per query head")
            for (h, (x, y)) in heads.enumerated() {
                q[(p * Hq + h) * 2] = x
                q[(p * Hq + h) * 2 + 1] = y
            }
        }
        let dir = try directory(testCase)
        return try write(
            to: dir.appendingPathComponent(name), T: T, P: P, Hq: Hq, Hkv: Hkv, D: 2,
            layers: [Layer(q: q, k: k)])
    }
}
