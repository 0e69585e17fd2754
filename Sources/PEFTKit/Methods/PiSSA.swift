import Foundation
import SafeTensors

/// PiSSA and OLoRA (`init_lora_weights: "pissa"` / `"olora"`): LoRA inits that start A and B from a factorisation of
/// W and subtract that start from W, so that training begins at the base model. The trained adapter belongs to the
/// residual W − s·B₀·A₀, and PEFT rebuilds that residual from the original base every time it loads the adapter
/// (`LoraLayer.pissa_init` / `olora_init`, run by `update_layer` before the trained A and B are loaded):
///
///     PiSSA:  U S Vᵀ = svd(W),  B₀ = U_r √(S_r/s),  A₀ = √(S_r/s) V_rᵀ     (W transposed first for fan_in_fan_out)
///     OLoRA:  Q R = qr(W),      B₀ = Q_r,           A₀ = R_r               (W as stored, whatever fan_in_fan_out)
///     W_res = round_dtype(W − (s·B₀) · A₀)                                   Float32, rounded to W's dtype, as PEFT stores it
///     W'    = W_res + s · (B · A)                                             the LoRA merge, onto the residual
///
/// with r and s the module's rank and scaling. B₀·A₀ is the rank-r truncation of the factorisation, which does not
/// depend on the signs LAPACK gives singular vectors or Householder reflections. Rounding the residual to the base
/// dtype before adding the adapter is PEFT's loaded model exactly (it is the base the adapter runs on), so a 16-bit
/// merge has two roundings here, unlike every other method.
///
/// The factorisation needs the whole of W: a first pass gathers the tensor (one Float32 copy of the one tensor) and
/// factorises it before any slice is written. Embeddings are left alone (PEFT's `Embedding.update_layer` runs no such
/// init). The merged weights do not keep B₀·A₀ (the top of W's spectrum), so the merge cannot be undone from them.
extension LoRA {
    /// A LoRA init that rewrote the base weights, which peftkit recomputes as PEFT's loading does.
    public enum BaseRewrite: String, Sendable {
        case pissa
        case olora

        /// How PEFT names the step, for messages.
        var title: String { self == .pissa ? "PiSSA" : "OLoRA" }
    }

    /// The change of a PiSSA / OLoRA module to its weight: the residual, then the trained product.
    func rewrittenChange(_ rewrite: BaseRewrite, module: AdaptedModule, shape: (rows: Int, columns: Int), layout: Layout,
                         a: StoredTensor, b: StoredTensor) throws -> ModuleChange {
        let rank = module.rank, scaling = module.scaling, path = module.path
        guard rank <= min(shape.rows, shape.columns) else {
            throw PEFTKitError(.unsupported, tensor: path, "not supported: \(rewrite.title) with r = \(rank) above the "
                               + "weight's smaller side \(min(shape.rows, shape.columns)) (PEFT cannot load it either)")
        }
        if rewrite == .olora, layout == .transposedProduct, shape.rows != shape.columns {
            throw PEFTKitError(.unsupported, tensor: path, "not supported: OLoRA on a fan_in_fan_out weight of shape "
                               + "\([shape.rows, shape.columns]): PEFT factorises the stored (in × out) weight, which only "
                               + "fits A and B when it is square")
        }
        return ModuleChange(tensor: module.weightName, composition: .alone(rewrite.title), float32Reductions: 2,
                            rewritesBase: true) { context in
            let scale = context.scale, baseDType = context.baseDType
            guard context.direction == .merge else {
                throw PEFTKitError(.unsupported, tensor: path, "not supported: unmerging \(rewrite.title)")
            }
            guard [.f32, .bf16, .f16].contains(baseDType) else {
                throw PEFTKitError(.unsupported, tensor: path, "not supported: \(rewrite.title) on a \(baseDType.rawValue) "
                                   + "weight (PEFT's init accepts float32, float16 and bfloat16 only)")
            }
            let trained = Product(a: try a.floats(), b: try b.floats(), rank: rank, layout: layout, scale: scale)
            return Rewritten(rewrite, rank: rank, scaling: Float(scaling), weight: scale / Float(scaling), layout: layout,
                             shape: shape, baseDType: baseDType, trained: trained, module: path)
        }
    }

    /// W ↦ round(W − w · (s·B₀)·A₀) + w · s·B·A, with B₀, A₀ factorised from the W the first pass gathers.
    final class Rewritten: WeightOperation {
        let rewrite: BaseRewrite
        let rank: Int
        /// The module's scaling s, as PEFT's init uses it (`self.scaling[adapter_name]`).
        let scaling: Float
        /// The merge weight w (1 reproduces PEFT's loaded model).
        let weight: Float
        let layout: Layout
        let shape: (rows: Int, columns: Int)
        let baseDType: DType
        let trained: Product
        let module: String
        /// W as stored, gathered by the first pass; emptied once factorised.
        private var gathered: [Float] = []
        /// −w · (s·B₀)·A₀ in the layout of the stored weight, once factorised.
        private var start: Product?
        /// See `factorisationULP`.
        private var allowance: Double?

        init(_ rewrite: BaseRewrite, rank: Int, scaling: Float, weight: Float, layout: Layout,
             shape: (rows: Int, columns: Int), baseDType: DType, trained: Product, module: String) {
            self.rewrite = rewrite
            self.rank = rank
            self.scaling = scaling
            self.weight = weight
            self.layout = layout
            self.shape = shape
            self.baseDType = baseDType
            self.trained = trained
            self.module = module
        }

        var needsFirstPass: Bool { true }

        func observe(_ slice: WeightRows) {
            if gathered.isEmpty { gathered = [Float](repeating: 0, count: shape.rows * shape.columns) }
            let count = slice.rows.count * slice.columns
            gathered.withUnsafeMutableBufferPointer { all in
                (all.baseAddress! + slice.rows.lowerBound * shape.columns).update(from: slice.values, count: count)
            }
        }

        func finishFirstPass() throws {
            defer { gathered = [] }
            do {
                switch rewrite {
                case .pissa: start = try pissaStart()
                case .olora: start = try oloraStart()
                }
            } catch {
                throw PEFTKitError(.numerics, tensor: module, "\(rewrite.title): factorising the base weight failed: \(error)")
            }
        }

        /// svd of W in PEFT's orientation (out × in): B₀ = U_r √(S_r/s), A₀ = √(S_r/s) V_rᵀ.
        private func pissaStart() throws -> Product {
            let transposed = layout == .transposedProduct
            let (out, inputs) = transposed ? (shape.columns, shape.rows) : (shape.rows, shape.columns)
            var matrix = gathered
            if transposed {
                for i in 0..<inputs { for o in 0..<out { matrix[o * inputs + i] = gathered[i * out + o] } }
            }
            let svd = try LinearAlgebra.ThinSVD(rowMajor: matrix, rows: out, columns: inputs)
            let k = svd.rank, r = rank
            // The rank-r truncation is determined only as well as σ_r is separated from σ_r+1 (Wedin): a backward-
            // stable SVD (error ≈ eps·σ₁ each, ours and PEFT's) moves it by up to ≈ 2·eps·σ₁·(1 + 2σ₁ / gap).
            let sigma1 = Double(svd.singularValues[0])
            let gap = Double(svd.singularValues[r - 1]) - (r < k ? Double(svd.singularValues[r]) : 0)
            guard gap > 1e-6 * sigma1 else {
                throw PEFTKitError(.numerics, tensor: module, "PiSSA: σ_\(r) and σ_\(r + 1) of the base weight are equal to "
                                   + "Float32 precision, so its top-\(r) singular subspace (and PEFT's own residual) is not "
                                   + "determined")
            }
            allowance = ulpsAtLargest(2 * 0x1p-23 * sigma1 * (1 + 2 * sigma1 / gap) * Double(weight.magnitude))
            let roots = (0..<r).map { (svd.singularValues[$0] / scaling).squareRoot() }
            var a0 = [Float](repeating: 0, count: r * inputs), sb0 = [Float](repeating: 0, count: out * r)
            for j in 0..<r { for i in 0..<inputs { a0[j * inputs + i] = roots[j] * svd.vt[j * inputs + i] } }
            for o in 0..<out { for j in 0..<r { sb0[o * r + j] = scaling * (svd.u[o * k + j] * roots[j]) } }
            return Product(a: a0, b: sb0, rank: r, layout: layout, scale: -weight)
        }

        /// qr of W as stored: B₀ = Q_r, A₀ = R_r.
        private func oloraStart() throws -> Product {
            let qr = try LinearAlgebra.ThinQR(rowMajor: gathered, rows: shape.rows, columns: shape.columns)
            let k = qr.rank, r = rank
            // Q_r·R_r projects W onto its first r columns: as well determined as those columns are independent,
            // cond(R₁₁) of the leading r × r triangle; ‖W‖_F bounds ‖W‖₂; the residual subtracts s times it.
            var leading = [Float](repeating: 0, count: r * r)
            for i in 0..<r { for j in i..<r { leading[i * r + j] = qr.r[i * shape.columns + j] } }
            let triangle = try LinearAlgebra.ThinSVD(rowMajor: leading, rows: r, columns: r).singularValues
            guard let smallest = triangle.last, Double(smallest) > 1e-6 * Double(triangle[0]) else {
                throw PEFTKitError(.numerics, tensor: module, "OLoRA: the base weight's first \(r) columns are linearly "
                                   + "dependent to Float32 precision, so Q_r·R_r (and PEFT's own residual) is not determined")
            }
            let norm = gathered.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            let condition = Double(triangle[0]) / Double(smallest)
            allowance = ulpsAtLargest(2 * 0x1p-23 * norm * (1 + 2 * condition) * Double(scaling.magnitude * weight.magnitude))
            var sq = [Float](repeating: 0, count: shape.rows * r)
            for i in 0..<shape.rows { for j in 0..<r { sq[i * r + j] = scaling * qr.q[i * k + j] } }
            return Product(a: Array(qr.r.prefix(r * shape.columns)), b: sq, rank: r, layout: .product, scale: -weight)
        }

        func apply(to slice: WeightRows) {
            guard let start else { preconditionFailure("\(module): \(rewrite.title) applied before its first pass") }
            start.apply(to: slice)
            let count = slice.rows.count * slice.columns
            switch baseDType {
            case .bf16: for i in 0..<count { slice.values[i] = Codec.float(fromBF16: Codec.bf16(from: slice.values[i])) }
            case .f16: for i in 0..<count { slice.values[i] = Codec.float(fromF16: Codec.f16(from: slice.values[i])) }
            default: break
            }
            trained.apply(to: slice)
        }

        var summationError: Double { trained.summationError }

        /// An absolute difference in ulps at the gathered weight's largest magnitude (at least the product's one
        /// rounding and the residual's: 2).
        private func ulpsAtLargest(_ difference: Double) -> Double {
            let largest = gathered.reduce(0.0) { max($0, Double($1.magnitude)) }
            guard largest > 0 else { return 2 }
            let ulp = Double(Float(largest).ulp)
            return max(2, (difference / ulp).rounded(.up))
        }

        var factorisationULP: Double? { allowance }
    }
}
