import Foundation
import XCTest
@testable import ThinKVEngine
@testable import ThinKVPolicies
@testable import ThinKVSim

/// Typed parameters: reads that throw instead of trapping, the budget as a declared role, and
/// combination checks that run before any policy prepares.
final class PolicyConfigurationTests: XCTestCase {

    private static let declared: [PolicyParameter] = [
        .budget(help: "b"),
        .integer("window", default: 8, min: 1, help: "w"),
        .real("alpha", help: "a"),
        .choice("score-dtype", ScoreDType.allCases.map(\.rawValue), default: "float32", help: "d")
    ]

    func testTypedReadsThrowForUndeclaredMisreadOrMissingValues() throws {
        let values = try PolicyParameters(policy: "p", specs: Self.declared, values: ["budget": "12"])
        XCTAssertEqual(try values.integer("budget"), 12)
        XCTAssertEqual(try values.integer("window"), 8, "the declared default")
        XCTAssertEqual(try values.choice("score-dtype", as: ScoreDType.self), .float32)
        XCTAssertNil(try values.optionalReal("alpha"))
        func message(_ read: () throws -> Any?) -> String {
            do { _ = try read() } catch let error as PolicyError { return error.description } catch {
                return "\(error)"
            }
            return "no error"
        }
        XCTAssertEqual(message { try values.integer("recent") }, "p: reads --recent, which it does not declare")
        XCTAssertEqual(
            message { try values.real("window") }, "p: reads --window as a number, which it is not declared as")
        XCTAssertEqual(message { try values.real("alpha") }, "p: --alpha has no value (no default; give it)")
        XCTAssertEqual(
            message { try values.choice("score-dtype", as: KeptSlotOrder.self) },
            "p: --score-dtype 'float32' is not a KeptSlotOrder")
    }

    func testAnAwaitedBudgetIsNeitherRequiredNorGivenAndReadsThrowUntilSet() throws {
        XCTAssertThrowsError(try PolicyParameters(policy: "p", specs: Self.declared, values: [:]), "required")
        let awaiting = try PolicyParameters(policy: "p", specs: Self.declared, values: [:], awaiting: ["budget"])
        XCTAssertEqual(awaiting.given, [:])
        XCTAssertEqual(awaiting.effective.first { $0.name == "budget" }?.value, "auto")
        XCTAssertThrowsError(try awaiting.integer("budget")) { error in
            XCTAssertEqual((error as? PolicyError)?.description, "p: --budget is read before it is set")
        }
        XCTAssertThrowsError(
            try PolicyParameters(
                policy: "p", specs: Self.declared, values: ["budget": "3"],
                awaiting: ["budget"]), "an awaited value may not be given")
        let spec = try PolicySpec(name: "h2o", values: ["recent": "2"], awaitingBudget: true)
        XCTAssertTrue(spec.awaitsBudget)
        XCTAssertEqual(spec.label, "h2o(recent=2)")
        let set = try spec.withBudget(10)
        XCTAssertFalse(set.awaitsBudget)
        XCTAssertEqual(set.label, "h2o(budget=10,recent=2)")
        XCTAssertFalse(try PolicySpec(name: "kivi", awaitingBudget: true).awaitsBudget, "kivi has no budget")
    }

    /// The memory matcher, sweeps and the conformance tests find the budget by its role; every
    /// policy with one calls it `--budget`, so one shared option sets them all.
    func testEveryBudgetIsOneDeclaredIntegerNamedBudget() throws {
        var budgeted: [String] = []
        for type in PolicyRegistry.all {
            let roles = type.parameters.filter { $0.role == .budget }
            XCTAssertLessThanOrEqual(roles.count, 1, type.name)
            guard let budget = roles.first else { continue }
            budgeted.append(type.name)
            XCTAssertEqual(budget.name, "budget", type.name)
            guard case .integer = budget.kind else { return XCTFail("\(type.name): budget is not an integer") }
            XCTAssertTrue(MemoryMatcher.hasBudget(type), type.name)
        }
        XCTAssertEqual(Set(PolicyRegistry.names).subtracting(budgeted), ["full", "kivi", "thinkv-tbq"])
    }

    /// The guard every window-scoring policy shares says the same thing in each.
    func testTheBudgetAboveTheWindowGuardIsOneMessage() throws {
        let header = TraceHeader(
            model: "m", numLayers: 1, numQHeads: 4, numKVHeads: 2, headDim: 8, promptLength: 8,
            numTokens: 64)
        let layer = LayerInfo(index: 0)
        var messages: [String] = []
        for (name, values) in [
            ("rkv", ["budget": "8", "window": "8"]), ("snapkv", ["budget": "8", "window": "8"]),
            ("pyramidkv", ["budget": "8", "window": "8", "interval": "16"])
        ] {
            let spec = try PolicySpec(name: name, values: values)
            XCTAssertThrowsError(try spec.checkParameters(header: header, layer: layer)) { error in
                XCTAssertTrue(error is UsageError, "\(name): \(error)")
                let text = "\(error)"
                messages.append(String(text[text.range(of: "--budget")!.lowerBound...]))
            }
        }
        XCTAssertEqual(messages.count, 3)
        XCTAssertEqual(Set(messages).count, 1, "\(messages)")
    }

    /// A memory target whose policy accepts no budget (its floor lies above the trace) is refused
    /// as a usage error before any policy prepares.
    func testAMemoryTargetRefusesBeforeAnyPolicyPrepares() throws {
        let directory = try TestTraces.directory(self)
        let path = try TestTraces.write(
            to: directory.appendingPathComponent("t.h5"), T: 24, P: 4, Hq: 2, Hkv: 1, D: 4,
            numLayers: 1,
            layers: [
                TestTraces.randomLayer(
                    T: 24, Hq: 2, Hkv: 1, D: 4, seed: 5,
                    index: 0)
            ])
        let reader = try TraceReader(path: path)
        PrepareCountingPolicy.prepared.reset()
        let refused = try PolicySpec(
            unregistered: PrepareCountingPolicy.self, values: ["floor": "100"], awaitingBudget: true)
        let matcher = MemoryMatcher(
            reader: reader, configuration: ReplayConfiguration(policies: [refused]),
            target: .percent(50))
        XCTAssertThrowsError(try matcher.run()) { error in
            XCTAssertEqual(
                (error as? UsageError)?.description,
                "counting: --budget (24) must be at least --floor (100)", "\(error)")
        }
        XCTAssertEqual(PrepareCountingPolicy.prepared.count, 0, "refused before prepare")
        XCTAssertThrowsError(try refused.checkParameters(header: reader.header, layer: reader.layerInfo(0)!))

        // Control: an accepted floor prepares (once per trial engine run) and is matched.
        let accepted = try PolicySpec(
            unregistered: PrepareCountingPolicy.self, values: ["floor": "4"], awaitingBudget: true)
        XCTAssertEqual(try accepted.lowestBudget(header: reader.header, layer: reader.layerInfo(0)!), 4)
        let result = try MemoryMatcher(
            reader: reader, configuration: ReplayConfiguration(policies: [accepted]),
            target: .percent(50), tolerance: 100
        ).run()
        XCTAssertGreaterThan(PrepareCountingPolicy.prepared.count, 0)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(result.runs[0].memoryMatch?.budget), 4)
    }
}

/// Counts `prepare` calls; refuses a budget below `--floor` in its configuration.
private final class PrepareCountingPolicy: ConfiguredPolicy {
    static let name = "counting"
    static let summary = "test policy: keeps the newest budget tokens, counts prepare calls"
    static let parameters: [PolicyParameter] = [
        .budget(help: "tokens kept"),
        .integer("floor", default: 1, min: 1, help: "smallest budget accepted")
    ]
    static func compressionCadence(_ parameters: PolicyParameters) -> String { "every step" }
    static let prepared = Counter()

    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var value = 0
        var count: Int { lock.withLock { value } }
        func increment() { lock.withLock { value += 1 } }
        func reset() { lock.withLock { value = 0 } }
    }

    struct Configuration: PolicyConfiguration {
        let budget: Int
        init(_ values: PolicyParameters) throws {
            budget = try values.integer("budget")
            let floor = try values.integer("floor")
            guard budget >= floor else {
                throw PolicyError("counting: --budget (\(budget)) must be at least --floor (\(floor))")
            }
        }
    }

    static func prepare(_ reader: TraceReader, parameters: PolicyParameters, layers: [Int]) throws -> (any Sendable)? {
        prepared.increment()
        return nil
    }

    let budget: Int
    init(parameters: PolicyParameters, setup: PolicySetup) throws {
        budget = try Configuration(parameters).budget
    }

    var residentCap: Int? { budget }

    func afterAttention(_ context: StepContext, attention: AttentionView, cache: LayerCache) {
        for g in 0..<cache.numKVHeads where cache.count(kvHead: g) > budget {
            let n = cache.count(kvHead: g)
            cache.keep(kvHead: g, slotIndices: Array((n - budget)..<n))
        }
    }
}
