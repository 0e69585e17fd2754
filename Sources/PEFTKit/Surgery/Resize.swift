import Foundation
import SafeTensors

/// How a surgery command chooses each module's rank.
public enum RankChoice: Sendable, Equatable {
    /// At most this rank (a module whose matrix or adapter is smaller keeps its own).
    case fixed(Int)
    /// The smallest rank whose singular values hold at least this fraction of ‖ΔW‖²_F (0 < F ≤ 1).
    case energy(Double)

    /// The smallest k ≥ 1 with Σ_{i<k} σᵢ² ≥ F · total (or `fixed`, capped at the count), given σ descending.
    /// Nil for `energy` when the values given do not reach F · total.
    func rank(singularValues s: [Float], totalEnergy total: Double) -> Int? {
        switch self {
        case .fixed(let r): return min(r, s.count)
        case .energy(let fraction):
            var kept = 0.0
            for (i, value) in s.enumerated() {
                kept += Double(value) * Double(value)
                if kept >= fraction * total { return i + 1 }
            }
            return nil
        }
    }
}

/// `peftkit resize`: each LoRA module's s·B·A re-factored at a lower rank, optimally (Eckart–Young), without forming
/// the out×in product:
///
///     B = Q_B R_B (out×r, thin QR),  Aᵀ = Q_A R_A (in×r)
///     s·B·A = Q_B (s R_B R_Aᵀ) Q_Aᵀ,   s R_B R_Aᵀ = U S Vᵀ  (r×r, sgesdd)
///     B′ = Q_B U_k √S_k,   A′ = √S_k V_kᵀ Q_Aᵀ,   alpha′ = k  (scaling 1)
///
/// The singular values of the small matrix are those of s·B·A, so the energy kept, Σ_{i<k} σᵢ² / Σ σᵢ², and the
/// relative error √(1 − kept) are exact.
public enum Resize {
    public struct ModuleReport: Sendable {
        public let path: String
        public let oldRank: Int
        public let newRank: Int
        /// Σ_{i<k} σᵢ² / Σ σᵢ² (1 for a zero module).
        public let energyKept: Double
        /// ‖s·B·A − B′A′‖_F / ‖s·B·A‖_F = √(1 − energyKept).
        public var relativeError: Double { (max(0, 1 - energyKept)).squareRoot() }
    }

    public struct Report: Sendable {
        public let source: String
        public let output: String
        public let modules: [ModuleReport]
        public let seconds: Double
    }

    /// The resized adapter and its report.
    /// - Throws: `PEFTKitError` `.unsupported` for a non-LoRA adapter, DoRA, PiSSA/OLoRA or trainable tokens.
    public static func resize(_ adapter: Adapter, to choice: RankChoice, output: String) throws -> (Adapter, [ModuleReport]) {
        guard let lora = adapter.method as? LoRA else {
            throw PEFTKitError(.unsupported, file: adapter.source,
                               "resize works on LoRA adapters; this one is \(adapter.config.peftType)")
        }
        if let refusal = lora.surgeryRefusal("resizing") {
            throw PEFTKitError(.unsupported, file: adapter.source, refusal)
        }
        if lora.useDoRA {
            throw PEFTKitError(.unsupported, file: adapter.source,
                               "not supported: resizing a DoRA adapter (its magnitude vector renormalises B·A, so a lower-rank B·A changes the result non-linearly)")
        }
        let dtype = adapter.modules.first.flatMap { $0.tensors[LoRA.a] ?? $0.tensors[LoRA.embeddingA] }?.dtype ?? .f32
        var builder = LoRABuilder(dtype: [.f32, .f16, .bf16].contains(dtype) ? dtype : .f32)
        var reports: [ModuleReport] = []
        for module in adapter.modules {
            let (aRole, bRole) = module.kind == .embedding ? (LoRA.embeddingA, LoRA.embeddingB) : (LoRA.a, LoRA.b)
            guard let aTensor = module.tensors[aRole], let bTensor = module.tensors[bRole] else { continue }
            let a = try aTensor.floats(), b = try bTensor.floats()
            let r = module.rank, inFeatures = aTensor.shape[1], outFeatures = bTensor.shape[0]
            try checkFinite(a, aTensor, adapter.source)
            try checkFinite(b, bTensor, adapter.source)
            let (factors, singular) = try refactor(b: b, a: a, rank: r, outFeatures: outFeatures, inFeatures: inFeatures,
                                                   scaling: Float(module.scaling), choice: choice)
            let total = singular.reduce(0.0) { $0 + Double($1) * Double($1) }
            let kept = singular.prefix(factors.rank).reduce(0.0) { $0 + Double($1) * Double($1) }
            reports.append(ModuleReport(path: module.path, oldRank: r, newRank: factors.rank,
                                        energyKept: total == 0 ? 1 : min(1, kept / total)))
            guard factors.rank > 0 else { continue }
            let bias = try module.tensors[LoRA.bias].map { try $0.floats().map { $0 * Float(module.scaling) } }
            builder.modules.append(try LoRABuilder.Module(path: module.path, kind: module.kind, factors: factors, bias: bias,
                                                      dtype: builder.dtype))
        }
        builder.carried = adapter.carried
        guard !builder.modules.isEmpty || !builder.carried.isEmpty else {
            throw PEFTKitError(.numerics, file: adapter.source, "every module of the adapter is zero: nothing to write")
        }
        let template = adapter.config.json.members
        let json = builder.config(template: template)
        return (try builder.adapter(config: json, source: output), reports)
    }

    /// The optimal rank-k factors of s·B·A (k from `choice`, at most r) and all singular values of s·B·A.
    static func refactor(b: [Float], a: [Float], rank r: Int, outFeatures: Int, inFeatures: Int, scaling: Float,
                         choice: RankChoice) throws -> (LowRankFactors, [Float]) {
        let qrB = try LinearAlgebra.ThinQR(rowMajor: b, rows: outFeatures, columns: r)
        var aT = [Float](repeating: 0, count: inFeatures * r)
        for j in 0..<r { for i in 0..<inFeatures { aT[i * r + j] = a[j * inFeatures + i] } }
        let qrA = try LinearAlgebra.ThinQR(rowMajor: aT, rows: inFeatures, columns: r)
        let k1 = qrB.rank, k2 = qrA.rank
        // M = s · R_B (k1×r) · R_Aᵀ (r×k2)
        var m = [Float](repeating: 0, count: k1 * k2)
        qrB.r.withUnsafeBufferPointer { rb in
            qrA.r.withUnsafeBufferPointer { ra in
                m.withUnsafeMutableBufferPointer { out in
                    LinearAlgebra.multiplyAccumulate(m: k1, n: k2, k: r, alpha: scaling, a: rb.baseAddress!, lda: r,
                                                     transposeA: false, b: ra.baseAddress!, ldb: r, transposeB: true,
                                                     into: out.baseAddress!, ldc: k2, beta: 0)
                }
            }
        }
        let svd = try LinearAlgebra.ThinSVD(rowMajor: m, rows: k1, columns: k2)
        let total = svd.singularValues.reduce(0.0) { $0 + Double($1) * Double($1) }
        let nonzero = svd.singularValues.prefix { $0 > 0 }.count
        var k = choice.rank(singularValues: svd.singularValues, totalEnergy: total) ?? svd.rank
        k = min(k, nonzero)
        let small = TruncatedSVD(u: svd.u, singularValues: svd.singularValues, vt: svd.vt, rows: k1, columns: k2,
                                 isComplete: true)
        let inner = LowRankFactors.split(small, rank: k, transposed: false)  // U_k √S (k1×k), √S V_kᵀ (k×k2)
        // B′ = Q_B (out×k1) · inner.b (k1×k);  A′ = inner.a (k×k2) · Q_Aᵀ (k2×in)
        var newB = [Float](repeating: 0, count: outFeatures * k)
        var newA = [Float](repeating: 0, count: k * inFeatures)
        if k > 0 {
            qrB.q.withUnsafeBufferPointer { q in
                inner.b.withUnsafeBufferPointer { ib in
                    newB.withUnsafeMutableBufferPointer { out in
                        LinearAlgebra.multiplyAccumulate(m: outFeatures, n: k, k: k1, alpha: 1, a: q.baseAddress!, lda: k1,
                                                         transposeA: false, b: ib.baseAddress!, ldb: k, transposeB: false,
                                                         into: out.baseAddress!, ldc: k, beta: 0)
                    }
                }
            }
            inner.a.withUnsafeBufferPointer { ia in
                qrA.q.withUnsafeBufferPointer { q in
                    newA.withUnsafeMutableBufferPointer { out in
                        LinearAlgebra.multiplyAccumulate(m: k, n: inFeatures, k: k2, alpha: 1, a: ia.baseAddress!, lda: k2,
                                                         transposeA: false, b: q.baseAddress!, ldb: k2, transposeB: true,
                                                         into: out.baseAddress!, ldc: inFeatures, beta: 0)
                    }
                }
            }
        }
        return (LowRankFactors(b: newB, a: newA, outFeatures: outFeatures, inFeatures: inFeatures), svd.singularValues)
    }

    static func checkFinite(_ values: [Float], _ tensor: StoredTensor, _ source: String) throws {
        if let index = values.firstIndex(where: { !$0.isFinite }) {
            throw PEFTKitError(.numerics, file: source, tensor: tensor.name,
                               "holds a non-finite value (\(values[index]) at flat index \(index))")
        }
    }
}
