import Foundation

/// The spelling of compositions and the parts they are made of:
///
///     composition := BASE ["@" TRIGGER] ("+" QUANTIZER | "+" WRAPPER)*
///
/// BASE is a registered policy (what to keep); TRIGGER replaces its own trigger (when to
/// compress: `every-step`, `every-N`, `on-overflow`); QUANTIZER sets the precision (`kivi`,
/// `tbq`, `uniform`); WRAPPER changes how the budget is split among heads (`adakv`). At most one
/// of each; `+` parts in any order. A trigger needs a base that can hand over its compression
/// (`CompressibleNow`), Ada-KV one with per-head scores (`PerHeadScoring`), and a quantizer a
/// base that does not quantize itself. Parameters are the parts' (see `ComposedPolicy`).
public enum PolicyAlgebra {
    public static let triggers: [any CompressionTrigger.Type] = [
        EveryStepTrigger.self, EveryNTrigger.self, OverflowTrigger.self, ThoughtTransitionTrigger.self
    ]
    public static let quantizers: [any CacheQuantizer.Type] = [
        KIVIQuantizer.self, TBQQuantizer.self, UniformQuantizer.self
    ]
    public static let wrappers: [any HeadAllocation.Type] = [AdaKV.self]

    /// True for a name written as a composition.
    public static func isComposition(_ name: String) -> Bool { name.contains("@") || name.contains("+") }

    /// Registered policies a trigger can drive, Ada-KV can wrap and a quantizer can join.
    public static var triggerableBases: [String] { PolicyRegistry.all.filter(isCompressible).map { $0.name } }
    public static var poolableBases: [String] { PolicyRegistry.all.filter(scoresPerHead).map { $0.name } }
    public static var quantizableBases: [String] {
        PolicyRegistry.all.filter { (($0 as? any SelfQuantizing.Type)?.quantizesCache ?? false) == false }
            .map { $0.name }
    }

    /// The policy type of a composition and the parameter values its name sets
    /// (`keydiff@every-64` → every=64). Errors name the composition and list what is allowed.
    public static func resolve(_ name: String) throws -> (type: any CachePolicy.Type, implied: [String: String]) {
        func bad(_ problem: String) -> PolicyError { PolicyError("policy '\(name)': \(problem)") }
        let pieces = name.split(separator: "+", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        guard !pieces.contains(where: \.isEmpty) else { throw bad("an empty part around '+'") }
        let head = pieces[0].split(separator: "@", omittingEmptySubsequences: false).map(String.init)
        guard head.count <= 2 else { throw bad("one '@TRIGGER' at most, after the base policy") }
        guard !pieces.dropFirst().contains(where: { $0.contains("@") }) else {
            throw bad("write the trigger right after the base policy (BASE@TRIGGER+PART)")
        }
        let baseName = head[0]
        guard let base = PolicyRegistry.all.first(where: { $0.name == baseName }) else {
            let known = PolicyRegistry.names
            let hint = Suggestions.closest(to: baseName, among: known).map { "did you mean \($0)? " } ?? ""
            throw bad("unknown base policy '\(baseName)' (\(hint)known: \(known.joined(separator: ", ")))")
        }
        var trigger: any CompressionTrigger.Type = BaseTrigger.self
        var implied: [String: String] = [:]
        if head.count == 2 {
            guard let match = triggers.lazy.compactMap({ t in t.parse(head[1]).map { (t, $0) } }).first else {
                let known = triggers.map { "@" + $0.spelling }.joined(separator: ", ")
                throw bad("unknown trigger '@\(head[1])' (triggers: \(known))")
            }
            guard isCompressible(base) else {
                throw bad(
                    "\(baseName) cannot hand its compression to a trigger "
                        + "(triggers apply to: \(triggerableBases.joined(separator: ", ")))")
            }
            (trigger, implied) = match
        }
        var quantizer: any CacheQuantizer.Type = NoQuantizer.self
        var allocation: any HeadAllocation.Type = UniformHeads.self
        for part in pieces.dropFirst() {
            if let q = quantizers.first(where: { $0.name == part }) {
                guard quantizer == NoQuantizer.self else { throw bad("one quantizer at most") }
                guard quantizableBases.contains(baseName) else {
                    throw bad(
                        "\(baseName) quantizes the cache itself; a quantizer joins one of: "
                            + quantizableBases.joined(separator: ", "))
                }
                quantizer = q
            } else if let w = wrappers.first(where: { $0.name == part }) {
                guard allocation == UniformHeads.self else { throw bad("'+\(part)' given twice") }
                guard scoresPerHead(base) else {
                    throw bad(
                        "\(baseName) has no per-head scores for +\(part) to pool "
                            + "(it wraps: \(poolableBases.joined(separator: ", ")))")
                }
                allocation = w
            } else {
                let known = quantizers.map { $0.name } + wrappers.map { $0.name }
                let hint = Suggestions.closest(to: part, among: known).map { "did you mean \($0)? " } ?? ""
                let quantizerNames = quantizers.map { $0.name }.joined(separator: ", ")
                throw bad(
                    "unknown part '+\(part)' (\(hint)quantizers: \(quantizerNames); "
                        + "wrappers: \(wrappers.map { $0.name }.joined(separator: ", ")))")
            }
        }
        let type = compose(base, trigger, quantizer, allocation)
        if let composed = type as? any ComposedPolicyType.Type {
            // The trigger's values under the names the composition declares them by.
            var renamed: [String: String] = [:]
            for (key, value) in implied {
                let entry = composed.layout.first { $0.part == .trigger && $0.original == key }
                renamed[entry?.declared.name ?? key] = value
            }
            implied = renamed
        }
        return (type, implied)
    }

    /// The parameter values a composition's name sets ([:] for any other name).
    public static func impliedValues(_ name: String) -> [String: String] {
        guard isComposition(name), let resolved = try? resolve(name) else { return [:] }
        return resolved.implied
    }

    static func isCompressible(_ type: any CachePolicy.Type) -> Bool {
        let cast = type as? any CompressibleNow.Type
        return cast != nil
    }

    static func scoresPerHead(_ type: any CachePolicy.Type) -> Bool {
        let cast = type as? any PerHeadScoring.Type
        return cast != nil
    }

    private static func compose<B: CachePolicy, T: CompressionTrigger, Q: CacheQuantizer, A: HeadAllocation>(
        _ base: B.Type, _ trigger: T.Type, _ quantizer: Q.Type, _ allocation: A.Type
    ) -> any CachePolicy.Type {
        ComposedPolicy<B, T, Q, A>.self
    }

    /// Compositions that exercise every part, derived from the declarations: each trigger over
    /// every base it can drive; each quantizer over `full` (nothing evicted), over the first
    /// base that evicts on its own trigger only and over the first a trigger can drive; each
    /// wrapper over every base it can wrap; and each trigger with the first quantizer and every
    /// wrapper over the first base that takes them all. The conformance tests replay these.
    public static var exampleCompositions: [String] {
        var names: [String] = []
        for trigger in triggers { names += triggerableBases.map { "\($0)@\(trigger.example)" } }
        let evictingOnly = quantizableBases.first { $0 != FullCachePolicy.name && !triggerableBases.contains($0) }
        let triggerable = triggerableBases.first(where: quantizableBases.contains)
        let quantizerBases = [FullCachePolicy.name, evictingOnly, triggerable]
        for quantizer in quantizers { names += quantizerBases.compactMap { $0 }.map { "\($0)+\(quantizer.name)" } }
        for wrapper in wrappers { names += poolableBases.map { "\($0)+\(wrapper.name)" } }
        if let base = poolableBases.first(where: quantizableBases.contains), let quantizer = quantizers.first {
            for trigger in triggers {
                names.append("\(base)@\(trigger.example)+\(quantizer.name)" + wrappers.map { "+" + $0.name }.joined())
            }
        }
        return names
    }

    /// The parts as `thinkv-sim policies` lists them, from their declarations.
    public static var partsListing: [String] {
        func parameterLines(_ parameters: [PolicyParameter]) -> [String] {
            parameters.map { p in
                "        --\(p.name)  (default \(p.defaultValue ?? "auto")): \(p.help)"
            }
        }
        var lines = [
            "Compositions: BASE[@TRIGGER][+QUANTIZER][+WRAPPER], e.g. rkv+tbq, snapkv@every-8+kivi, "
                + "tova+adakv.",
            "A composition takes its parts' parameters; a part's parameter whose name is taken is renamed",
            "PART-NAME (e.g. kivi-group). Parameters per item as usual: rkv+tbq:budget=128.", "",
            "Triggers (replace the base's own; bases: \(triggerableBases.joined(separator: ", "))):"
        ]
        for t in triggers {
            lines.append("    @\(t.spelling): \(t.summary)")
            lines += parameterLines(t.parameters)
        }
        let quantizable = quantizableBases.joined(separator: ", ")
        lines += ["", "Quantizers (bases that do not quantize themselves: \(quantizable)):"]
        for q in quantizers {
            lines.append("    +\(q.name): \(q.summary)")
            lines.append("        parameters: \(q.parameters.map { "--" + $0.name }.joined(separator: " "))")
        }
        lines += ["", "Wrappers (bases with per-head scores: \(poolableBases.joined(separator: ", "))):"]
        for w in wrappers {
            lines.append("    +\(w.name): \(w.summary)")
            lines += parameterLines(w.parameters)
        }
        return lines
    }
}
