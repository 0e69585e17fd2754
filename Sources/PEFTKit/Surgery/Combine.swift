import Foundation
import SafeTensors

/// `peftkit combine`: PEFT's `LoraModel.add_weighted_adapter` (peft/tuners/lora/model.py with
/// peft/utils/merge_utils.py, 0.21), computed module by module in Float32, without PEFT's rsLoRA bug.
///
/// sᵢ is adapter i's scaling for the module (alpha/r or alpha/√r, after its patterns), wᵢ its weight.
///
///     cat        A = [w₁s₁A₁; w₂s₂A₂; …] (rows), B = [B₁ B₂ …] (columns), zero-padded to r = Σ rᵢ
///     linear, ties, magnitude_prune, dare_linear, dare_ties
///                A = op({Aᵢ}, {sign(wᵢsᵢ)·√|wᵢsᵢ|}),  B = op({Bᵢ}, {√|wᵢsᵢ|})   (same rank r everywhere)
///     *_svd      ΔW = op({sᵢBᵢAᵢ}, {wᵢ}), full SVD, B = U_r·S_r, A = V_rᵀ (r = --svd-rank or max rᵢ);
///                `svdClamp` clamps both as PEFT's svd_clamp (library only: the quantile is of signed values, so it
///                depends on the singular vectors' signs, which differ between LAPACK builds)
///
/// with op one of merge_utils': task_arithmetic Σwᵢtᵢ; magnitude_prune (keep the ⌊d·n⌋ largest |tᵢ|, then Σ);
/// ties (prune, majority sign of the pruned tᵢ by "total" = sign of Σ, or "frequency" = sign of Σ sign, ≥ 0 → +,
/// then the weighted values agreeing with it averaged over how many agree, at least 1); dare (keep each value with
/// probability d, divide by d) then Σ or the ties sign step. The new config has r = lora_alpha = the new rank and
/// empty patterns (scaling 1); PEFT copies `use_rslora` from the first adapter, which makes the combined adapter √r
/// too large, so peftkit writes `use_rslora: false`.
public enum CombineMethod: String, Sendable, CaseIterable {
    case cat, linear, svd, ties
    case tiesSVD = "ties_svd"
    case dareLinear = "dare_linear"
    case dareTies = "dare_ties"
    case dareLinearSVD = "dare_linear_svd"
    case dareTiesSVD = "dare_ties_svd"
    case magnitudePrune = "magnitude_prune"
    case magnitudePruneSVD = "magnitude_prune_svd"

    public var isSVD: Bool { rawValue.hasSuffix("_svd") || self == .svd }
    public var needsDensity: Bool { ![.cat, .linear, .svd].contains(self) }
    public var usesMajoritySign: Bool { [.ties, .tiesSVD, .dareTies, .dareTiesSVD].contains(self) }
    public var isRandom: Bool { rawValue.hasPrefix("dare") }

    /// The element-wise combination applied (to A and B, or to the ΔWᵢ for the SVD variants).
    var operation: TaskOperation {
        switch self {
        case .cat, .linear, .svd: .taskArithmetic
        case .ties, .tiesSVD: .ties
        case .dareLinear, .dareLinearSVD: .dareLinear
        case .dareTies, .dareTiesSVD: .dareTies
        case .magnitudePrune, .magnitudePruneSVD: .magnitudePrune
        }
    }
}

public enum MajoritySign: String, Sendable, CaseIterable {
    case total, frequency
}

enum TaskOperation {
    case taskArithmetic, magnitudePrune, ties, dareLinear, dareTies
}

public struct CombineRequest: Sendable {
    public var adapters: [String]
    public var weights: [Double]
    public var method: CombineMethod
    public var density: Double?
    public var majoritySign: MajoritySign
    public var seed: UInt64
    public var svdRank: Int?
    public var svdClamp: Double?
    public var output: String

    public init(adapters: [String], weights: [Double], method: CombineMethod, density: Double? = nil,
                majoritySign: MajoritySign = .total, seed: UInt64 = 0, svdRank: Int? = nil, svdClamp: Double? = nil,
                output: String) {
        self.adapters = adapters
        self.weights = weights
        self.method = method
        self.density = density
        self.majoritySign = majoritySign
        self.seed = seed
        self.svdRank = svdRank
        self.svdClamp = svdClamp
        self.output = output
    }
}

public struct CombineReport: Sendable {
    public let method: CombineMethod
    /// The method asked for, when PEFT's rule replaced it (one adapter: linear).
    public let requested: CombineMethod
    public let rank: Int
    public let modules: Int
    /// DARE: the fraction of values kept, over all masks drawn (expected: the density).
    public let keptFraction: Double?
    /// DARE: how many mask values were drawn.
    public let drawn: Int
    public let notes: [String]
}

public enum Combine {
    /// The combined adapter (in memory, Float32 tensors) and its report.
    /// - Throws: `PEFTKitError` `.unsupported` for what PEFT refuses or peftkit cannot do exactly.
    public static func combine(_ adapters: [Adapter], _ request: CombineRequest) throws -> (Adapter, CombineReport) {
        precondition(adapters.count == request.weights.count && !adapters.isEmpty)
        var notes: [String] = []
        var loras: [LoRA] = []
        for adapter in adapters {
            guard let lora = adapter.method as? LoRA else {
                throw PEFTKitError(.unsupported, file: adapter.source,
                                   "combine works on LoRA adapters (as PEFT's add_weighted_adapter); this one is \(adapter.config.peftType)")
            }
            if let refusal = lora.surgeryRefusal("combining") {
                throw PEFTKitError(.unsupported, file: adapter.source, refusal)
            }
            if lora.useDoRA {
                throw PEFTKitError(.unsupported, file: adapter.source,
                                   "not supported: combining DoRA adapters (add_weighted_adapter would drop the trained magnitude vectors)")
            }
            if lora.loraBias {
                throw PEFTKitError(.unsupported, file: adapter.source,
                                   "not supported: combining adapters with lora_bias (add_weighted_adapter ignores lora_B.bias)")
            }
            if let carried = adapter.carried.first {
                throw PEFTKitError(.unsupported, file: adapter.source, tensor: carried.tensor.name,
                                   "not supported: combining an adapter that carries whole tensors (\(carried.reason.rawValue)): "
                                   + "add_weighted_adapter does not combine them, and the combined adapter would drop them")
            }
            loras.append(lora)
        }
        if Set(loras.map(\.fanInFanOut)).count > 1 {
            throw PEFTKitError(.unsupported, file: adapters[1].source,
                               "not supported: the adapters disagree on fan_in_fan_out")
        }
        let method = adapters.count == 1 ? .linear : request.method
        if method != request.method {
            notes.append("one adapter: combined with linear, as PEFT does")
        }
        // The ranks PEFT sizes the new adapter from: r, or the largest of r and the rank_pattern values.
        let adapterRanks = loras.map { max($0.ranks.rank, $0.ranks.rankPattern.map(\.value).max() ?? 0) }
        let newRank: Int
        switch method {
        case .cat: newRank = adapterRanks.reduce(0, +)
        case _ where method.isSVD: newRank = request.svdRank ?? adapterRanks.max()!
        default:
            guard Set(adapterRanks).count == 1 else {
                throw PEFTKitError(.unsupported, file: adapters[0].source,
                                   "\(method.rawValue) needs adapters of one rank (PEFT refuses otherwise); their ranks are "
                                   + adapterRanks.map(String.init).joined(separator: ", ") + ". Use cat or an svd method")
            }
            newRank = adapterRanks[0]
        }
        if method.needsDensity {
            guard let d = request.density, d > 0, d <= 1 else {
                throw PEFTKitError(.unsupported, "\(method.rawValue) needs a density in (0, 1]")
            }
        }
        let targets = try targetModules(adapters)

        // Modules: the union over the adapters, each combined from the adapters that have it.
        var byPath: [String: [(module: AdaptedModule, weight: Double)]] = [:]
        for (adapter, weight) in zip(adapters, request.weights) {
            for module in adapter.modules { byPath[module.path, default: []].append((module, weight)) }
        }
        var random = SurgeryRandom(seed: request.seed)
        var kept = (kept: 0, drawn: 0)
        var builder = LoRABuilder(dtype: .f32)
        for path in byPath.keys.sorted() {
            let entries = byPath[path]!
            let first = entries[0].module
            let (aRole, bRole) = first.kind == .embedding ? (LoRA.embeddingA, LoRA.embeddingB) : (LoRA.a, LoRA.b)
            var factors: [(a: [Float], b: [Float], rank: Int, scale: Double, weight: Double)] = []
            let inFeatures = first.tensors[aRole]!.shape[1], outFeatures = first.tensors[bRole]!.shape[0]
            for (module, weight) in entries {
                guard module.kind == first.kind, module.tensors[aRole]!.shape[1] == inFeatures,
                      module.tensors[bRole]!.shape[0] == outFeatures else {
                    throw PEFTKitError(.unsupported, tensor: path,
                                       "the adapters' modules '\(path)' differ in kind or shape; they cannot be combined")
                }
                factors.append((try module.tensors[aRole]!.floats(), try module.tensors[bRole]!.floats(), module.rank,
                                module.scaling, weight))
            }
            let result: LowRankFactors
            switch method {
            case .cat:
                var a = [Float](repeating: 0, count: newRank * inFeatures)
                var b = [Float](repeating: 0, count: outFeatures * newRank)
                var row = 0
                for f in factors {
                    // PEFT: A * weight * scaling, two Float32 products.
                    let weight = Float(f.weight), scale = Float(f.scale)
                    for j in 0..<f.rank {
                        for c in 0..<inFeatures { a[(row + j) * inFeatures + c] = f.a[j * inFeatures + c] * weight * scale }
                        for o in 0..<outFeatures { b[o * newRank + row + j] = f.b[o * f.rank + j] }
                    }
                    row += f.rank
                }
                result = LowRankFactors(b: b, a: a, outFeatures: outFeatures, inFeatures: inFeatures)
            case _ where method.isSVD:
                guard newRank <= min(outFeatures, inFeatures) else {
                    throw PEFTKitError(.unsupported, tensor: path,
                                       "the svd rank \(newRank) exceeds min(out, in) = \(min(outFeatures, inFeatures)) of this module")
                }
                // PEFT's get_delta_weight: (B @ A) * scaling.
                let deltas = factors.map { f in
                    LowRankFactors(b: f.b, a: f.a, outFeatures: outFeatures, inFeatures: inFeatures).product().map { $0 * Float(f.scale) }
                }
                let delta = try apply(method.operation, deltas, weights: factors.map { Float($0.weight) },
                                      request: request, random: &random, kept: &kept)
                result = try truncatedSVD(delta, rows: outFeatures, columns: inFeatures, rank: newRank, clamp: request.svdClamp)
            default:
                guard factors.allSatisfy({ $0.rank == newRank }) else {
                    throw PEFTKitError(.unsupported, tensor: path,
                                       "\(method.rawValue): this module's rank differs between the adapters or from r "
                                       + "(rank_pattern); PEFT would write an adapter whose tensors do not fit its config")
                }
                let weightsA = factors.map { f -> Float in
                    let ws = f.weight * f.scale
                    return Float((ws >= 0 ? 1 : -1) * abs(ws).squareRoot())
                }
                let weightsB = factors.map { Float(abs($0.weight * $0.scale).squareRoot()) }
                let a = try apply(method.operation, factors.map(\.a), weights: weightsA, request: request, random: &random, kept: &kept)
                let b = try apply(method.operation, factors.map(\.b), weights: weightsB, request: request, random: &random, kept: &kept)
                result = LowRankFactors(b: b, a: a, outFeatures: outFeatures, inFeatures: inFeatures)
            }
            builder.modules.append(try LoRABuilder.Module(path: path, kind: first.kind, factors: result, dtype: .f32))
        }
        if loras.contains(where: \.useRSLoRA) {
            notes.append("use_rslora is written false: the combined factors already hold every scaling (PEFT copies use_rslora and makes the result √r too large)")
        }
        var template = adapters[0].config.json.members
        template.removeAll { $0.key == "rank_pattern" || $0.key == "alpha_pattern" }
        let json = builder.config(template: template, targetModules: targets)
        let adapter = try builder.adapter(config: json, source: request.output)
        let fraction = kept.drawn > 0 ? Double(kept.kept) / Double(kept.drawn) : nil
        return (adapter, CombineReport(method: method, requested: request.method, rank: newRank,
                                       modules: builder.modules.count, keptFraction: fraction, drawn: kept.drawn,
                                       notes: notes))
    }

    /// PEFT's new `target_modules`: the union of the lists, or the regular expressions joined as `(a)|(b)`.
    static func targetModules(_ adapters: [Adapter]) throws -> JSONValue? {
        let values = adapters.map { $0.config.targetModules ?? .null }
        if values.allSatisfy({ $0.stringValue != nil }) {
            return .string(values.map { "(\($0.stringValue!))" }.joined(separator: "|"))
        }
        if values.allSatisfy({ $0.arrayValue != nil }) {
            let names = Set(values.flatMap { $0.arrayValue!.compactMap(\.stringValue) })
            return .array(names.sorted().map { .string($0) })
        }
        if values.allSatisfy({ $0 == .null }) { return nil }
        throw PEFTKitError(.unsupported, file: adapters[0].source,
                           "the adapters' target_modules mix lists and regular expressions, which PEFT refuses to combine")
    }

    // MARK: merge_utils

    /// One of merge_utils' combinations of same-shaped tensors tᵢ with weights wᵢ.
    static func apply(_ operation: TaskOperation, _ tensors: [[Float]], weights: [Float], request: CombineRequest,
                      random: inout SurgeryRandom, kept: inout (kept: Int, drawn: Int)) throws -> [Float] {
        let count = tensors[0].count
        let density = request.density ?? 1
        var pruned = tensors
        switch operation {
        case .taskArithmetic: break
        case .magnitudePrune, .ties:
            if density < 1 { pruned = tensors.map { magnitudePruned($0, density: density) } }
        case .dareLinear, .dareTies:
            if density < 1 {
                let d = Float(density)
                for i in pruned.indices {
                    for j in 0..<count {
                        if random.uniform() < d {
                            pruned[i][j] /= d
                            kept.kept += 1
                        } else {
                            pruned[i][j] = 0
                        }
                    }
                    kept.drawn += count
                }
            }
        }
        var result = [Float](repeating: 0, count: count)
        switch operation {
        case .taskArithmetic, .magnitudePrune, .dareLinear:
            for (t, w) in zip(pruned, weights) { for j in 0..<count { result[j] += t[j] * w } }
        case .ties, .dareTies:
            for j in 0..<count {
                // The majority sign from the pruned, unweighted values (torch.sign: 0 for 0; ties go to +).
                var signal: Float = 0
                for t in pruned {
                    switch request.majoritySign {
                    case .total: signal += t[j]
                    case .frequency: signal += t[j] > 0 ? 1 : (t[j] < 0 ? -1 : 0)
                    }
                }
                let positive = signal >= 0
                var sum: Float = 0, agreeing = 0
                for (t, w) in zip(pruned, weights) where positive ? t[j] > 0 : t[j] < 0 {
                    sum += t[j] * w
                    agreeing += 1
                }
                result[j] = sum / Float(max(agreeing, 1))
            }
        }
        return result
    }

    /// `magnitude_based_pruning`: the ⌊density · n⌋ values of largest magnitude kept, the rest zeroed (equal
    /// magnitudes at the threshold: the lower indices kept; torch.topk's choice among exact ties is unspecified).
    static func magnitudePruned(_ values: [Float], density: Double) -> [Float] {
        let k = Int(density * Double(values.count))
        guard k < values.count else { return values }
        var result = [Float](repeating: 0, count: values.count)
        guard k > 0 else { return result }
        let order = values.indices.sorted { i, j in
            let x = values[i].magnitude, y = values[j].magnitude
            return x != y ? x > y : i < j
        }
        for i in order.prefix(k) { result[i] = values[i] }
        return result
    }

    /// PEFT's `_svd_generalized_task_arithmetic_weighted_adapter` after the combination: B = U_r S_r, A = V_rᵀ of the
    /// full SVD, then the optional clamp at ± the `clamp` quantile of B's and A's values together (torch.quantile's
    /// linear interpolation).
    static func truncatedSVD(_ delta: [Float], rows: Int, columns: Int, rank r: Int, clamp: Double?) throws -> LowRankFactors {
        let svd = try LinearAlgebra.ThinSVD(rowMajor: delta, rows: rows, columns: columns)
        let k = svd.rank
        var b = [Float](repeating: 0, count: rows * r), a = [Float](repeating: 0, count: r * columns)
        for i in 0..<rows { for j in 0..<r { b[i * r + j] = svd.u[i * k + j] * svd.singularValues[j] } }
        for j in 0..<r { for c in 0..<columns { a[j * columns + c] = svd.vt[j * columns + c] } }
        if let clamp {
            let sorted = (b + a).sorted()
            let position = clamp * Double(sorted.count - 1)
            let low = Int(position.rounded(.down)), high = Int(position.rounded(.up))
            let hi = Double(sorted[low]) + (Double(sorted[high]) - Double(sorted[low])) * (position - Double(low))
            let limit = Float(hi)
            b = b.map { min(max($0, -limit), limit) }
            a = a.map { min(max($0, -limit), limit) }
        }
        return LowRankFactors(b: b, a: a, outFeatures: rows, inFeatures: columns)
    }
}
