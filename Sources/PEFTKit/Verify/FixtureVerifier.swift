import Foundation
import SafeTensors

/// One numeric check of one fixture case. `package`: for `peftkit verify` and the tests, not for apps.
package struct VerificationCheck: Sendable {
    package let caseName: String
    package let method: String
    package let dtype: String
    package let check: String
    /// The largest absolute difference found.
    package let maxAbsoluteError: Double
    /// The measure the tolerance applies to (ulps at operand scale, or a ratio to an error bound).
    package let measure: Double
    package let tolerance: Double
    package let unit: String
    /// The tensor (or layer) where the measure is worst.
    package let worst: String?

    package var passed: Bool { measure <= tolerance }
}

/// Checks peftkit against the reference outputs HF PEFT produced for a fixture case (fixtures/README.md, spec/tolerance.md):
///
/// 1. merged weights: peftkit's merge against PEFT's `merge_and_unload()`, in ulps at the operands' magnitude;
/// 2. layer outputs: peftkit's merged layers applied to the stored inputs X, against PEFT's own *unmerged* forward
///    Y — proving the merge equals the adapter's computation, not just PEFT's merge code;
/// 3. unmerge drift: peftkit's unmerge of PEFT's merged weights, against PEFT's own merge-then-unmerge drift.
package enum FixtureVerifier {
    package static let manifestName = "manifest.json"

    /// Case folders under `paths`: a folder with a manifest is a case; otherwise its subfolders (two levels down) are
    /// searched, so `fixtures` finds `fixtures/cases/*`.
    /// - Throws: PEFTKitError (kind `io`) when a path does not exist, (kind `invalidConfig`) when a path holds no case.
    package static func findCases(_ paths: [String]) throws -> [String] {
        var cases: [String] = []
        func search(_ folder: String, depth: Int) {
            if FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent(manifestName)) {
                cases.append(folder)
                return
            }
            guard depth > 0, let entries = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return }
            for entry in entries.sorted() where !entry.hasPrefix(".") {
                let path = (folder as NSString).appendingPathComponent(entry)
                var isFolder: ObjCBool = false
                if FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), isFolder.boolValue {
                    search(path, depth: depth - 1)
                }
            }
        }
        for path in paths {
            var isFolder: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), isFolder.boolValue else {
                throw PEFTKitError(.io, file: path, "no such folder")
            }
            let before = cases.count
            search(path, depth: 2)
            if cases.count == before {
                throw PEFTKitError(.invalidConfig, file: path, "no fixture case (a folder with \(manifestName)) here")
            }
        }
        return cases
    }

    /// The manifest fields verification needs.
    struct Manifest {
        let name: String
        let method: String
        let dtype: String
        let adapters: [String]
        let modules: [(path: String, layer: String, weight: String, bias: String?)]
        let mergedMaxULP: Double
        let layerBoundFactor: Double
        let unmergeDriftFactor: Double
        /// False where the merged checkpoint cannot determine the base (DoRA): peftkit must refuse to unmerge.
        let unmergesFromCheckpoint: Bool
        /// The adapters are merged in one run, in order (PEFT's references have them all active), rather than each
        /// on its own.
        let mergeTogether: Bool
        /// peftkit's unmerge of its own merge (from the record it writes), adapters last first, is checked against
        /// PEFT's in-memory merge-then-unmerge (`expected_unmerged.safetensors`).
        let unmergeWithRecord: Bool

        init(folder: String) throws {
            let path = (folder as NSString).appendingPathComponent(manifestName)
            let json = try AdapterLoader.readJSON(path)
            func field<T>(_ value: T?, _ key: String) throws -> T {
                guard let value else { throw PEFTKitError(.invalidConfig, file: path, "missing or malformed '\(key)'") }
                return value
            }
            name = try field(json["case"]?.stringValue, "case")
            method = try field(json["method"]?.stringValue, "method") + "/" + (json["variant"]?.stringValue ?? "default")
            dtype = try field(json["model"]?["dtype"]?.stringValue, "model.dtype")
            adapters = try field(json["adapters"]?.arrayValue?.compactMap(\.stringValue), "adapters")
            var modules: [(path: String, layer: String, weight: String, bias: String?)] = []
            for (module, entry) in try field(json["modules"]?.objectValue, "modules") {
                modules.append((module, try field(entry["layer"]?.stringValue, "modules.\(module).layer"),
                                try field(entry["weight"]?.stringValue, "modules.\(module).weight"), entry["bias"]?.stringValue))
            }
            self.modules = modules
            let tolerances = json["tolerances"]
            mergedMaxULP = try field(tolerances?["merged_max_ulp"]?.doubleValue, "tolerances.merged_max_ulp")
            layerBoundFactor = try field(tolerances?["layer_bound_factor"]?.doubleValue, "tolerances.layer_bound_factor")
            unmergeDriftFactor = try field(tolerances?["unmerge_drift_factor"]?.doubleValue, "tolerances.unmerge_drift_factor")
            unmergesFromCheckpoint = json["unmerge_from_checkpoint"]?.boolValue ?? true
            mergeTogether = json["merge_together"]?.boolValue ?? false
            unmergeWithRecord = json["unmerge_with_record"]?.boolValue ?? false
        }
    }

    /// Runs every check of one case; a check that fails is a row with `passed == false`, not an error.
    /// - Throws: only when the fixture itself cannot be read or is inconsistent: PEFTKitError (kind `invalidConfig`
    ///   for a malformed manifest, `inconsistentAdapter` when the reference files disagree with the manifest or the
    ///   merge, or any kind `MergeEngine.run` throws), SafeTensorsError for an unreadable checkpoint, or a Foundation
    ///   error when the scratch folder cannot be made.
    package static func verify(caseFolder: String) throws -> [VerificationCheck] {
        if let checks = try GGUFFixtureVerifier.verifyIfGGUF(caseFolder: caseFolder) { return checks }
        if CombineFixture.isCase(caseFolder) { return try CombineFixture.verify(caseFolder: caseFolder) }
        let manifest = try Manifest(folder: caseFolder)
        let file = { (name: String) in (caseFolder as NSString).appendingPathComponent(name) }
        let scratch = NSTemporaryDirectory() + "peftkit-verify-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let base = try Checkpoint(path: file("base"))
        let expectedMerged = try Checkpoint(path: file("expected_merged.safetensors"))
        func row(_ check: String, _ max: Double, _ measure: Double, _ tolerance: Double, _ unit: String,
                 _ worst: String?) -> VerificationCheck {
            VerificationCheck(caseName: manifest.name, method: manifest.method, dtype: manifest.dtype, check: check,
                              maxAbsoluteError: max, measure: measure, tolerance: tolerance, unit: unit, worst: worst)
        }

        var checks: [VerificationCheck] = []
        var mergedPath = ""
        let merges = manifest.mergeTogether ? [manifest.adapters] : manifest.adapters.map { [$0] }
        for adapters in merges {
            let adapter = adapters.joined(separator: " + ")
            let output = (scratch as NSString).appendingPathComponent("merged-\(adapters.joined(separator: "-"))")
            _ = try MergeEngine.run(MergeRequest(base: file("base"), adapters: adapters.map(file), output: output))
            if mergedPath.isEmpty { mergedPath = output }
            let merged = try Checkpoint(path: output)
            var worst: TensorComparison?
            var maxError = 0.0
            for location in expectedMerged.tensors {
                let expected = try location.file.view(location.info)
                guard let actual = try? merged.view(location.info.name), actual.info.dtype == location.info.dtype,
                      actual.info.shape == location.info.shape else {
                    throw PEFTKitError(.inconsistentAdapter, file: file("expected_merged.safetensors"), tensor: location.info.name,
                                       "peftkit's merge has no tensor of this name, dtype and shape")
                }
                let scale = try base.location(of: location.info.name).flatMap { baseLocation in
                    baseLocation.info.dtype == location.info.dtype && baseLocation.info.shape == location.info.shape
                        ? try baseLocation.file.view(baseLocation.info).bytes : nil
                }
                guard location.info.dtype.isArithmetic else { continue }
                let comparison = Comparison.compare(
                    name: location.info.name, dtype: location.info.dtype, count: location.info.elementCount,
                    actual: actual.bytes, expected: expected.bytes, scale: scale,
                    floorAtTensorMaximum: Comparison.floorsAtTensorMaximum(location.info.dtype))
                maxError = max(maxError, comparison.maxAbsoluteError)
                if worst == nil || comparison.maxScaledULP > worst!.maxScaledULP { worst = comparison }
            }
            checks.append(row(adapter == "adapter" ? "merged weights" : "merged weights (\(adapter))", maxError,
                              worst?.maxScaledULP ?? 0, manifest.mergedMaxULP, "ulp", worst?.name))
        }

        checks.append(try checkLayers(manifest, merged: try Checkpoint(path: mergedPath),
                                      layers: try SafeTensorsFile(path: file("expected_layers.safetensors")), row: row))
        checks.append(try checkUnmerge(manifest, caseFolder: caseFolder, base: base, scratch: scratch, row: row))
        if manifest.unmergeWithRecord {
            // Last merged, first unmerged, each from the previous output and the record it carries.
            var current = mergedPath
            var summationBound = 0.0
            for (step, adapter) in manifest.adapters.reversed().enumerated() {
                let output = (scratch as NSString).appendingPathComponent("unmerged-record-\(step)")
                let summary = try MergeEngine.run(MergeRequest(base: current, adapters: [file(adapter)], output: output,
                                                               direction: .unmerge))
                summationBound += summary.summationBound ?? 0
                current = output
            }
            checks.append(try compareUnmerged(try Checkpoint(path: current), check: "unmerge of peftkit's merge (its record) vs PEFT's",
                                              manifest, caseFolder: caseFolder, base: base, summationBound: summationBound,
                                              row: row))
        }
        return checks
    }

    /// peftkit's merged layers on X against PEFT's unmerged forward Y, as a ratio to the error the output dtype's
    /// rounding of W' can cause: |Δy| ≤ factor · (u + n·2⁻²⁴) · (|X|·|W'|ᵀ + |b|), u the dtype's unit roundoff and
    /// n·2⁻²⁴ Float32 accumulation over n inputs (spec/tolerance.md).
    private static func checkLayers(_ manifest: Manifest, merged: Checkpoint, layers: SafeTensorsFile,
                                    row: (String, Double, Double, Double, String, String?) -> VerificationCheck) throws -> VerificationCheck {
        let unitRoundoff: Double = switch manifest.dtype {
        case "BF16": 0x1p-8
        case "F16": 0x1p-11
        default: 0x1p-24
        }
        var worstRatio = 0.0, maxError = 0.0
        var worst: String?
        for module in manifest.modules {
            let x = try layers.view(module.path + ".x"), y = try layers.view(module.path + ".y_adapter")
            let weight = try merged.view(module.weight)
            let w = floatValues(weight)
            let b = try module.bias.map { floatValues(try merged.view($0)) }
            let yValues = floatValues(y)
            let shape = weight.info.shape
            guard shape.count == 2 else {
                throw PEFTKitError(.inconsistentAdapter, file: layers.path, tensor: module.weight, "weight is not a matrix")
            }
            var outputs: [(value: Double, bound: Double)] = []
            switch module.layer {
            case "embedding":
                let ids = floatValues(x).map { Int($0) }
                for id in ids {
                    guard id >= 0 && id < shape[0] else {
                        throw PEFTKitError(.inconsistentAdapter, file: layers.path, tensor: module.path + ".x", "token id \(id) out of range")
                    }
                    for d in 0..<shape[1] {
                        let value = Double(w[id * shape[1] + d])
                        outputs.append((value, manifest.layerBoundFactor * unitRoundoff * abs(value)))
                    }
                }
            case "linear", "conv1d":
                let transposed = module.layer == "conv1d"  // Conv1D stores W as in × out
                let (inFeatures, outFeatures) = transposed ? (shape[0], shape[1]) : (shape[1], shape[0])
                let xValues = floatValues(x)
                let batch = xValues.count / inFeatures
                let slack = unitRoundoff + Double(inFeatures) * 0x1p-24
                for n in 0..<batch {
                    for o in 0..<outFeatures {
                        var sum = Double(b?[o] ?? 0), magnitude = abs(Double(b?[o] ?? 0))
                        for i in 0..<inFeatures {
                            let wi = Double(transposed ? w[i * outFeatures + o] : w[o * inFeatures + i])
                            let xi = Double(xValues[n * inFeatures + i])
                            sum += xi * wi
                            magnitude += abs(xi * wi)
                        }
                        outputs.append((sum, manifest.layerBoundFactor * slack * magnitude))
                    }
                }
            default:
                throw PEFTKitError(.unsupported, tensor: module.path, "unknown layer kind '\(module.layer)' in the manifest")
            }
            guard outputs.count == yValues.count else {
                throw PEFTKitError(.inconsistentAdapter, file: layers.path, tensor: module.path + ".y_adapter",
                                   "has \(yValues.count) values, the layer produces \(outputs.count)")
            }
            for (output, expected) in zip(outputs, yValues) {
                let error = abs(output.value - Double(expected))
                maxError = max(maxError, error)
                let ratio = error == 0 ? 0 : (output.bound > 0 ? error / output.bound : .infinity)
                if ratio > worstRatio || (ratio.isNaN && !worstRatio.isNaN) {
                    worstRatio = ratio.isNaN ? .infinity : ratio
                    worst = module.path
                }
            }
        }
        return row("layer outputs vs unmerged adapter", maxError, worstRatio, 1, "× bound", worst)
    }

    /// peftkit's unmerge of PEFT's merged weights against the base, next to PEFT's own merge-then-unmerge drift.
    private static func checkUnmerge(_ manifest: Manifest, caseFolder: String, base: Checkpoint, scratch: String,
                                     row: (String, Double, Double, Double, String, String?) -> VerificationCheck) throws -> VerificationCheck {
        let file = { (name: String) in (caseFolder as NSString).appendingPathComponent(name) }
        let output = (scratch as NSString).appendingPathComponent("unmerged")
        guard manifest.unmergesFromCheckpoint else {
            // PEFT unmerges with what it cached in memory at merge time (DoRA's norms) or kept in the adapter; from
            // the merged weights alone it cannot be done. peftkit must refuse, unless the adapter carries the base's
            // own copy of every tensor the merge changed (an embedding's base_layer): then it must restore it exactly.
            // Adapters merged together are undone last first.
            let last = manifest.mergeTogether ? manifest.adapters.last! : manifest.adapters[0]
            do {
                _ = try MergeEngine.run(MergeRequest(base: file("expected_merged.safetensors"),
                                                     adapters: [file(last)], output: output, direction: .unmerge))
            } catch let error as PEFTKitError where error.kind == .unsupported {
                return row("unmerge refused (not determined by the checkpoint)", 0, 0, 0, "", nil)
            }
            let ours = try Checkpoint(path: output)
            var differing: String?
            for module in manifest.modules {
                guard let truth = base.location(of: module.weight) else { continue }
                let restored = try ours.view(module.weight), original = try truth.file.view(truth.info)
                if restored.info.dtype != truth.info.dtype || !restored.bytes.elementsEqual(original.bytes) {
                    differing = module.weight
                    break
                }
            }
            return row("unmerge refused, or restored from the adapter's copy exactly", 0, differing == nil ? 0 : 1, 0, "",
                       differing)
        }
        let summary = try MergeEngine.run(MergeRequest(base: file("expected_merged.safetensors"),
                                                       adapters: [file(manifest.adapters[0])], output: output,
                                                       direction: .unmerge))
        return try compareUnmerged(try Checkpoint(path: output), check: "unmerge drift vs PEFT's own", manifest,
                                   caseFolder: caseFolder, base: base, summationBound: summary.summationBound ?? 0, row: row)
    }

    /// An unmerged checkpoint's largest distance from the base, as a ratio to PEFT's own merge-then-unmerge drift
    /// plus, for F32/F64, what summation order can add (spec/tolerance.md §3): PEFT's own unmerge subtracts the very
    /// sum its merge added, peftkit's sums the change again in OpenBLAS's order, so the two sums can differ by up to
    /// `summationBound` (the unmerge's γ bound of both), and by at least one ulp at the tensor's scale.
    private static func compareUnmerged(_ ours: Checkpoint, check: String, _ manifest: Manifest, caseFolder: String,
                                        base: Checkpoint, summationBound: Double,
                                        row: (String, Double, Double, Double, String, String?) -> VerificationCheck) throws -> VerificationCheck {
        let file = { (name: String) in (caseFolder as NSString).appendingPathComponent(name) }
        let peft = try Checkpoint(path: file("expected_unmerged.safetensors"))
        var ourDrift = 0.0, peftDrift = 0.0, allowance = 0.0
        var worst: String?
        for location in peft.tensors {
            let name = location.info.name
            guard let baseLocation = base.location(of: name) else {
                throw PEFTKitError(.inconsistentAdapter, file: file("expected_unmerged.safetensors"), tensor: name, "not in the base")
            }
            let truth = floatValues(try baseLocation.file.view(baseLocation.info))
            let theirs = floatValues(try location.file.view(location.info))
            let mine = floatValues(try ours.view(name))
            let mineMax = zip(mine, truth).map { Double(abs($0 - $1)) }.max() ?? 0
            peftDrift = max(peftDrift, zip(theirs, truth).map { Double(abs($0 - $1)) }.max() ?? 0)
            if mineMax > ourDrift { ourDrift = mineMax; worst = name }
            allowance = max(allowance, Comparison.summationOrderAllowance(truth, dtype: location.info.dtype,
                                                                          summationBound: summationBound))
        }
        // As a ratio to PEFT's own drift (plus, for F32/F64, the summation-order allowance); both exact gives 0.
        let reference = peftDrift + allowance
        let ratio = ourDrift == 0 ? 0 : (reference == 0 ? .infinity : ourDrift / reference)
        return row(check, ourDrift, ratio, manifest.unmergeDriftFactor, "× PEFT", worst)
    }

    private static func floatValues(_ view: TensorView) -> [Float] {
        Codec.decode(view.bytes, as: view.info.dtype, count: view.info.elementCount)
    }
}
