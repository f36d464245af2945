import Foundation
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Keeps the cache timelines a replay writes (`--cache-timeline`), for tests to read back.
final class CacheTimelineCollector: CacheTimelineSink, @unchecked Sendable {
    private let lock = NSLock()
    private(set) var timelines: [CacheTimeline] = []

    func record(_ timelines: [CacheTimeline]) {
        lock.lock()
        self.timelines += timelines
        lock.unlock()
    }
}
