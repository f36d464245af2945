import Foundation

/// Calibration on the sparsity a deployed classifier actually reads.
///
/// ThinKV's thresholds are calibrated offline, on attention the paper does not qualify (the
/// full cache's, as far as public text says), while at decode time the classifier can only see
/// the attention over the cache it kept. A small cache looks far less sparse than the full one
/// (at most (n − 1)/n of n held tokens can be below 1 % of the maximum), so thresholds from the
/// full cache can classify no step as a transition. This calibrates in the *cache domain*:
/// 1. calibrate on the full-cache sparsity (θ⁰, L*⁰), as `ThoughtCalibration` does;
/// 2. replay the policy at its budget with the classifier on its own cache (θ⁰), and profile the
///    sparsity over that cache at every decode step of every recorded q+k layer;
/// 3. calibrate again on those profiles, with the same method.
/// One round: the cache the profiles come from was steered by θ⁰, not by the thresholds found.
public enum CacheDomainCalibration {
    /// Calibrates `paths` in the cache domain of `policyType` with `parameters` (which set the
    /// budget). `full` is step 1's result when the caller already has it.
    public static func calibrate(
        readers: [TraceReader], policyType: ThinKVPolicy.Type, parameters: PolicyParameters,
        options: CalibrationOptions, full: ThoughtCalibration? = nil,
        progress: ThinKVEngine.ProgressReporting? = nil
    ) throws -> ThoughtCalibration {
        defer { progress?.finish() }
        guard let name = policyType.budgetParameter?.name, let budget = try? parameters.optionalInteger(name) else {
            throw CalibrationError(
                "calibrating in the cache domain needs a budget (the cache the classifier reads depends on it)")
        }
        let first: ThoughtCalibration
        if let full {
            first = full
        } else {
            var inputs: [ThoughtCalibration.Input] = []
            for reader in readers {
                let profile = try SparsityProfile.compute(reader, gqa: options.gqa)
                inputs.append(.init(path: reader.path, model: reader.header.model, profile: profile))
            }
            first = try ThoughtCalibration.calibrate(inputs, options: options)
        }
        var inputs: [ThoughtCalibration.Input] = []
        for (i, reader) in readers.enumerated() {
            var thresholds = first.thresholds
            thresholds.gqa = options.gqa
            let layers = reader.recordedLayerIndices.filter { reader.layerInfo($0)?.hasQueriesAndKeys == true }
            guard !layers.isEmpty else {
                throw CalibrationError("\(reader.path): the cache domain needs q and k, and no recorded layer has them")
            }
            if let (mapped, _) = ThinKVParameters.nearestRecorded(thresholds.layers, recorded: layers) {
                thresholds.layers = mapped
            }
            let (_, profile) = try CacheSparsityClassifier.run(
                reader, policyType: policyType, parameters: parameters,
                thresholds: thresholds, window: 1, policy: policyType.name,
                profiledLayers: layers)
            inputs.append(.init(path: reader.path, model: reader.header.model, profile: profile!))
            progress?.update(fraction: Double(i + 1) / Double(readers.count), detail: "cache domain, budget \(budget)")
        }
        var calibration = try ThoughtCalibration.calibrate(inputs, options: options)
        calibration.thresholds.domain = "cache@\(budget)"
        calibration.notes.append(
            "calibrated on the sparsity over \(policyType.name)'s own cache at budget \(budget) (the policy steered "
                + "by the full-cache thresholds θ1 = \(String(format: "%.3f", first.thresholds.theta1)), θ2 = "
                + "\(String(format: "%.3f", first.thresholds.theta2)), L* = "
                + "\(first.thresholds.layers.map(String.init).joined(separator: ",")))"
        )
        return calibration
    }
}
