import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// The seeded k-means that picks a segment's representative tokens.
final class KMeansTests: XCTestCase {
    /// Three tight clusters in 4-D, around 10·e0, 10·e1 and 10·e2; in each, the point listed
    /// first sits exactly at the cluster's mean (the others are placed symmetrically around it).
    private func threeClusters() -> (points: [[Float]], centres: [Int]) {
        var points: [[Float]] = []
        var centres: [Int] = []
        for axis in 0..<3 {
            var centre = [Float](repeating: 0, count: 4)
            centre[axis] = 10
            centres.append(points.count)
            points.append(centre)
            for (d, delta) in [(3, Float(0.5)), (3, -0.5), ((axis + 1) % 3, 0.25), ((axis + 1) % 3, -0.25)] {
                var p = centre
                p[d] += delta
                points.append(p)
            }
        }
        // Interleave the clusters so that index order says nothing about membership.
        let order = [1, 6, 11, 0, 7, 12, 2, 5, 13, 3, 8, 10, 4, 9, 14]
        let shuffled = order.map { points[$0] }
        return (shuffled, centres.map { order.firstIndex(of: $0)! })
    }

    func testFindsObviousClustersAndKeepsThePointAtEachMean() {
        let (points, centres) = threeClusters()
        for seed: UInt64 in [0, 1, 2, 7, 123] {
            let picked = KMeans.representatives(points, k: 3, iterations: 10, seed: seed)
            XCTAssertEqual(
                picked, centres.sorted(), "seed \(seed): one representative per cluster, the one at its mean")
        }
    }

    func testRepresentativesAreDistinctRealPointsEvenForDuplicates() {
        // Ten identical points: every centre coincides with all of them; ties go to the lower index.
        let same = Array(repeating: [Float](repeating: 1.5, count: 8), count: 10)
        XCTAssertEqual(KMeans.representatives(same, k: 3, seed: 4), [0, 1, 2])
        // Two distinct values, k = 4: both values are represented, and four distinct indices come back.
        let two = (0..<10).map { i in [Float](repeating: i < 5 ? 0 : 1, count: 8) }
        let picked = KMeans.representatives(two, k: 4, seed: 9)
        XCTAssertEqual(Set(picked).count, 4)
        XCTAssertTrue(picked.contains { $0 < 5 } && picked.contains { $0 >= 5 })
        XCTAssertTrue(picked.allSatisfy { (0..<10).contains($0) })
    }

    func testDeterministicForASeedAndDependingOnIt() {
        var random = SeededRandom(seed: 42)
        let points = (0..<200).map { _ in (0..<16).map { _ in Float(random.uniform()) } }
        let a = KMeans.representatives(points, k: 12, iterations: 10, seed: 5)
        XCTAssertEqual(a, KMeans.representatives(points, k: 12, iterations: 10, seed: 5))
        XCTAssertEqual(a.count, 12)
        XCTAssertEqual(a, a.sorted())
        // Uniform noise has no clusters: the seed's initialisation shows in the result.
        let others = (6..<12).map { KMeans.representatives(points, k: 12, iterations: 10, seed: UInt64($0)) }
        XCTAssertTrue(others.contains { $0 != a }, "different seeds give different picks on structureless data")
    }

    func testSmallCases() {
        let points: [[Float]] = [[0, 0], [1, 0], [5, 5]]
        XCTAssertEqual(KMeans.representatives(points, k: 3), [0, 1, 2], "k = n keeps every point")
        XCTAssertEqual(KMeans.representatives(points, k: 5), [0, 1, 2])
        XCTAssertEqual(KMeans.representatives(points, k: 0), [])
        // k = 1: the centroid is (2, 5/3); the nearest point is (1, 0) (distance² 1 + 25/9 ≈ 3.8,
        // against 4 + 2.8 for (0, 0) and 9 + 11.1 for (5, 5)).
        for seed: UInt64 in 0..<5 { XCTAssertEqual(KMeans.representatives(points, k: 1, seed: seed), [1]) }
        // Zero iterations: the k-means++ centres themselves, which are input points.
        let picked = KMeans.representatives(points, k: 2, iterations: 0, seed: 3)
        XCTAssertEqual(picked.count, 2)
    }
}
