import Foundation

/// Which memory figure of a run is matched: its mean over decode steps, or its peak.
public enum MemoryStatistic: String, Codable, CaseIterable, Sendable {
    case mean, peak
}

/// How a policy's run relates to the memory target.
public struct MemoryMatch: Codable, Equatable, Sendable {
    public enum Status: String, Codable, Sendable {
        /// A budget was found within the tolerance.
        case matched
        /// The policy has no budget (`CachePolicy.budgetParameter`): it ran as given.
        case notMatched = "not matched"
        /// No budget reaches the target within the tolerance; the closest one not above it ran.
        case unreachable
    }

    public var status: Status
    public var statistic: MemoryStatistic
    /// The target as a percentage of the full cache, or in bytes (one of them is set).
    public var targetPercent: Double?
    public var targetBytes: Double?
    /// The budget replayed (nil when not matched), and the run's memory figure.
    public var budget: Int?
    public var achievedPercent: Double
    public var achievedBytes: Double
    /// Budgets replayed for this policy, over all its targets.
    public var trials: Int
    /// One line on an unreachable target.
    public var note: String?

    package init(
        status: Status, statistic: MemoryStatistic, targetPercent: Double?, targetBytes: Double?, budget: Int?,
        achievedPercent: Double, achievedBytes: Double, trials: Int, note: String?
    ) {
        self.status = status
        self.statistic = statistic
        self.targetPercent = targetPercent
        self.targetBytes = targetBytes
        self.budget = budget
        self.achievedPercent = achievedPercent
        self.achievedBytes = achievedBytes
        self.trials = trials
        self.note = note
    }
}

/// Timings of several engine runs (a memory target's trials) added up.
extension ReplayTiming {
    package mutating func add(_ other: ReplayTiming) {
        wallSeconds += other.wallSeconds
        referenceSeconds += other.referenceSeconds
        policySeconds += other.policySeconds
        readSeconds += other.readSeconds
        referenceFLOPs += other.referenceFLOPs
        policyFLOPs += other.policyFLOPs
        threads = other.threads
    }
}

/// One event count of a policy's run (`CachePolicy.reportCounters`), summed over layers.
public struct PolicyCounter: Codable, Equatable, Sendable {
    public var name: String
    public var value: Int

    public init(name: String, value: Int) {
        self.name = name
        self.value = value
    }
}
