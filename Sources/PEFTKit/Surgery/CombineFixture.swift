import Foundation
import SafeTensors

/// A `combine` fixture case (fixtures/generate_surgery.py): the inputs, the options, and the adapter PEFT's
/// `add_weighted_adapter` made. `peftkit verify fixtures` runs `Combine.combine` on the same inputs and compares:
///
/// - `tensors` (cat, linear, ties, magnitude_prune): every A and B, max |peftkit − PEFT| in Float32 ulps at the
///   tensor's largest magnitude (2⁻²³ · max|PEFT|);
/// - `products` (the svd methods: singular vectors are defined up to sign): ‖B·A − B_P·A_P‖_F / ‖B_P·A_P‖_F per module;
/// - `dare` (random masks, torch's generator against peftkit's): every value of PEFT's and of peftkit's A and B must be
///   one the masks can produce (the rule applied to some subset of the adapters' values, rescaled by 1/density), and
///   the fraction peftkit kept must lie within `dare_sigmas` standard deviations of the density.
package enum CombineFixture {
    static func isCase(_ folder: String) -> Bool {
        let path = (folder as NSString).appendingPathComponent(FixtureVerifier.manifestName)
        return (try? AdapterLoader.readJSON(path))?["kind"]?.stringValue == "combine"
    }

    package static func verify(caseFolder: String) throws -> [VerificationCheck] {
        let manifestPath = (caseFolder as NSString).appendingPathComponent(FixtureVerifier.manifestName)
        let json = try AdapterLoader.readJSON(manifestPath)
        func field<T>(_ value: T?, _ key: String) throws -> T {
            guard let value else { throw PEFTKitError(.invalidConfig, file: manifestPath, "missing or malformed '\(key)'") }
            return value
        }
        let name = try field(json["case"]?.stringValue, "case")
        let methodName = try field(json["method"]?.stringValue, "method")
        guard let method = CombineMethod(rawValue: methodName) else {
            throw PEFTKitError(.invalidConfig, file: manifestPath, "unknown method '\(methodName)'")
        }
        let adapterPaths = try field(json["adapters"]?.arrayValue?.compactMap(\.stringValue), "adapters")
            .map { ((caseFolder as NSString).appendingPathComponent($0) as NSString).standardizingPath }
        let weights = try field(json["weights"]?.arrayValue?.compactMap(\.doubleValue), "weights")
        let compare = try field(json["compare"]?.stringValue, "compare")
        let tolerances = json["tolerances"]
        let request = CombineRequest(
            adapters: adapterPaths, weights: weights, method: method, density: json["density"]?.doubleValue,
            majoritySign: MajoritySign(rawValue: json["majority_sign"]?.stringValue ?? "total") ?? .total,
            seed: 0, svdRank: json["svd_rank"]?.integerValue.map(Int.init),
            output: (caseFolder as NSString).appendingPathComponent("peftkit"))
        let inputs = try adapterPaths.map { try AdapterLoader.load($0) }
        let (ours, report) = try Combine.combine(inputs, request)
        let expected = try AdapterLoader.load((caseFolder as NSString).appendingPathComponent("expected"))
        func row(_ check: String, _ maxError: Double, _ measure: Double, _ tolerance: Double, _ unit: String,
                 _ worst: String?) -> VerificationCheck {
            VerificationCheck(caseName: name, method: "combine/" + methodName, dtype: "f32", check: check,
                              maxAbsoluteError: maxError, measure: measure, tolerance: tolerance, unit: unit, worst: worst)
        }
        var checks: [VerificationCheck] = []
        let peftR = json["peft_r"]?.integerValue.map(Int.init)
        let ourLoRA = ours.method as! LoRA
        checks.append(row("rank r = lora_alpha (PEFT: \(peftR.map(String.init) ?? "?"))", 0,
                          ourLoRA.ranks.rank == peftR && ourLoRA.ranks.alpha == Double(peftR ?? -1) ? 0 : 1, 0, "mismatch", nil))
        let pairs: [(AdaptedModule, AdaptedModule)] = try expected.modules.map { reference in
            guard let module = ours.module(reference.path) else {
                throw PEFTKitError(.inconsistentAdapter, file: caseFolder, tensor: reference.path,
                                   "PEFT's combined adapter has this module, peftkit's has not")
            }
            return (module, reference)
        }
        if ours.modules.count != expected.modules.count {
            throw PEFTKitError(.inconsistentAdapter, file: caseFolder,
                               "peftkit's combined adapter has \(ours.modules.count) modules, PEFT's \(expected.modules.count)")
        }
        switch compare {
        case "tensors":
            var worst = (measure: 0.0, error: 0.0, name: "")
            for (module, reference) in pairs {
                for (role, tensor) in reference.tensors {
                    let a = try module.tensors[role]!.floats(), b = try tensor.floats()
                    guard a.count == b.count else {
                        throw PEFTKitError(.inconsistentAdapter, file: caseFolder, tensor: tensor.name, "shapes differ")
                    }
                    let error = zip(a, b).reduce(0.0) { max($0, Double(abs($1.0 - $1.1))) }
                    let scale = b.reduce(0.0) { max($0, Double(abs($1))) }
                    let measure = scale == 0 ? (error == 0 ? 0 : .infinity) : error / (scale * 0x1p-23)
                    if measure >= worst.measure { worst = (measure, max(worst.error, error), tensor.name) }
                }
            }
            checks.append(row("A and B tensors", worst.error, worst.measure,
                              tolerances?["tensor_max_ulp"]?.doubleValue ?? 4, "ulp", worst.name))
        case "products":
            var worst = (measure: 0.0, error: 0.0, name: "")
            for (module, reference) in pairs {
                let p = try product(module), q = try product(reference)
                let difference = zip(p, q).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }.squareRoot()
                let norm = q.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
                let measure = norm == 0 ? difference : difference / norm
                if measure >= worst.measure { worst = (measure, difference, module.path) }
            }
            checks.append(row("products B·A", worst.error, worst.measure,
                              tolerances?["product_relative"]?.doubleValue ?? 1e-5, "rel", worst.name))
        case "dare":
            let density = request.density ?? 1
            let ties = method == .dareTies
            var worstMiss = (measure: 0.0, name: "")
            for (module, reference) in pairs {
                let sources = inputs.enumerated().compactMap { i, adapter in adapter.module(module.path).map { (i, $0) } }
                for role in [LoRA.a, LoRA.b, LoRA.embeddingA, LoRA.embeddingB] where reference.tensors[role] != nil {
                    let isA = role == LoRA.a || role == LoRA.embeddingA
                    let values = try sources.map { try $0.1.tensors[role]!.floats() }
                    let w = sources.map { i, m -> Double in
                        let ws = weights[i] * m.scaling
                        return isA ? (ws >= 0 ? 1 : -1) * abs(ws).squareRoot() : abs(ws).squareRoot()
                    }
                    for candidate in [try module.tensors[role]!.floats(), try reference.tensors[role]!.floats()] {
                        let miss = largestMiss(candidate, values, w, density: density, ties: ties,
                                               sign: request.majoritySign)
                        if miss >= worstMiss.measure { worstMiss = (miss, reference.tensors[role]!.name) }
                    }
                }
            }
            checks.append(row("values the masks allow (peftkit and PEFT)", worstMiss.measure, worstMiss.measure / 1e-5,
                              1, "× 1e-5 rel", worstMiss.name))
            let drawn = Double(report.drawn)
            let fraction = report.keptFraction ?? 1
            let sigma = (density * (1 - density) / max(drawn, 1)).squareRoot()
            let sigmas = tolerances?["dare_sigmas"]?.doubleValue ?? 5
            checks.append(row(String(format: "kept fraction %.4f vs density %.2f", fraction, density),
                              abs(fraction - density), sigma == 0 ? 0 : abs(fraction - density) / sigma, sigmas, "σ", nil))
        default:
            throw PEFTKitError(.invalidConfig, file: manifestPath, "unknown compare '\(compare)'")
        }
        return checks
    }

    /// B·A of a module, row-major, without the scaling.
    static func product(_ module: AdaptedModule) throws -> [Float] {
        let (aRole, bRole) = module.kind == .embedding ? (LoRA.embeddingA, LoRA.embeddingB) : (LoRA.a, LoRA.b)
        let a = module.tensors[aRole]!, b = module.tensors[bRole]!
        return LowRankFactors(b: try b.floats(), a: try a.floats(), outFeatures: b.shape[0], inFeatures: a.shape[1]).product()
    }

    /// The largest distance, relative to the values' scale, from an element of `result` to the nearest value a DARE
    /// mask allows: for some subset S of the adapters kept, Σ_S wᵢtᵢ/d (dare_linear), or the ties step on the
    /// rescaled kept values (dare_ties).
    static func largestMiss(_ result: [Float], _ tensors: [[Float]], _ w: [Double], density d: Double, ties: Bool,
                            sign: MajoritySign) -> Double {
        let n = tensors.count
        let scale = tensors.flatMap { $0 }.reduce(0.0) { max($0, Double(abs($1))) } / d * (w.map(abs).max() ?? 1) * Double(n)
        var worst = 0.0
        for j in result.indices {
            var best = Double.infinity
            for subset in 0..<(1 << n) {
                let kept = (0..<n).map { subset & (1 << $0) != 0 ? Double(tensors[$0][j]) / d : 0 }
                var value = 0.0
                if ties {
                    let signal = sign == .total ? kept.reduce(0, +) : kept.reduce(0) { $0 + ($1 > 0 ? 1 : ($1 < 0 ? -1 : 0)) }
                    let agreeing = (0..<n).filter { signal >= 0 ? kept[$0] > 0 : kept[$0] < 0 }
                    value = agreeing.reduce(0) { $0 + w[$1] * kept[$1] } / Double(max(agreeing.count, 1))
                } else {
                    value = (0..<n).reduce(0) { $0 + w[$1] * kept[$1] }
                }
                best = min(best, abs(value - Double(result[j])))
            }
            worst = max(worst, best / max(scale, .leastNormalMagnitude))
        }
        return worst
    }
}
