import Foundation

/// DoRA (`use_dora`, a LoRA variant): the LoRA-changed weight is renormalised per output to a trained magnitude m
/// (`lora_magnitude_vector`, one entry per output):
///
///     W' = m / ‖W + s·B·A‖ ⊙ (W + s·B·A)      the norm of each output's weights, over the inputs
///
/// For nn.Linear an output is a row of W, so a slice of rows holds everything its norms need. For GPT-2's Conv1D
/// (`fan_in_fan_out`, W stored in × out) an output is a column, and so is an embedding channel (W stored vocab × dim,
/// m one entry per channel, the norm over the vocabulary, as PEFT's DoRA embedding layer takes it): a first pass
/// over the whole tensor sums each column's squares, and the second applies the factors. PEFT forms the factor m / ‖·‖ and the product in Float32 and
/// rounds once, as here (norms are summed in Double; PEFT's Float32 sum may differ in its last bit).
///
/// Several adapters on one module compose as PEFT's forward does with all of them active: in turn, each DoRA term
/// maps the running value y ↦ m / ‖W + s·B·A‖ ⊙ (y + s·B·A) with the norm of the *base* weight W and its own change
/// (a plain LoRA term adds s·B·A), so W' = f₂ ⊙ (f₁ ⊙ (W + s₁Δ₁) + s₂Δ₂).
///
/// The merged weights alone do not say what the norms were (‖W'‖ per output is m, whatever W was). The merge
/// records them (UnmergeRecord.swift), and unmerge undoes each term as W = W' · n / m − s·B·A from that record;
/// without it, unmerge refuses.
extension LoRA {
    static let magnitude = TensorRole("lora_magnitude_vector")

    final class Renormalized: WeightOperation {
        let product: Product
        let magnitude: [Float]
        let direction: MergeDirection
        let needsFirstPass: Bool
        /// n = ‖W + s·B·A‖ per output: recorded by the merge (unmerge), from the first pass (norms over columns, or
        /// other changes before this one), or else as each slice of rows is applied.
        private var norms: [Float]
        /// Σ (W + s·B·A)² per output, from the first pass.
        private var squares: [Double]

        /// `product` carries the merge's scale s, negated for an unmerge.
        init(product: Product, magnitude: [Float], context: ModuleChange.Context, module: String) throws {
            self.product = product
            self.magnitude = magnitude
            direction = context.direction
            let outputs = magnitude.count
            if direction == .unmerge {
                // The plan checked that the record has a DoRA merge on top of this tensor, with this scale.
                guard let recorded = context.recorded?.dora, recorded.norms.count == outputs else {
                    throw PEFTKitError(.baseMismatch, tensor: module, "the DoRA merge recorded for this module has "
                                       + "\(context.recorded?.dora?.norms.count ?? 0) outputs, the adapter \(outputs)")
                }
                guard recorded.magnitude == magnitude else {
                    throw PEFTKitError(.baseMismatch, tensor: module, "the last merge recorded for this module is of "
                                       + "another DoRA adapter (its lora_magnitude_vector differs): unmerge adapters in "
                                       + "the reverse order of merging")
                }
                if let zero = magnitude.firstIndex(of: 0) {
                    throw PEFTKitError(.numerics, tensor: module, "lora_magnitude_vector[\(zero)] is 0: the merge set that "
                                       + "output to zero, which cannot be undone")
                }
                norms = recorded.norms
                needsFirstPass = false
            } else {
                needsFirstPass = product.layout == .transposedProduct || context.followsOtherChanges
                norms = Array(repeating: 0, count: outputs)
            }
            squares = needsFirstPass ? Array(repeating: 0, count: outputs) : []
        }

        var observesStartValue: Bool { true }
        var recordForUnmerge: (norms: [Float], magnitude: [Float])? { direction == .merge ? (norms, magnitude) : nil }
        /// Undoing divides by m / n.
        var roundingAmplification: Double {
            direction == .merge ? 1 : zip(norms, magnitude).map { Double($0) / Double($1.magnitude) }.max() ?? 1
        }
        var summationError: Double { product.summationError }

        /// Sums the squares of W + s·B·A per output (the slice is scratch: the engine decodes it again to apply).
        func observe(_ slice: WeightRows) {
            product.apply(to: slice)
            for r in slice.rows {
                let row = slice.row(r)
                switch product.layout {
                case .product: squares[r] = Self.sumOfSquares(row, count: slice.columns)
                case .transposedProduct: for c in 0..<slice.columns { squares[c] += Double(row[c]) * Double(row[c]) }
                }
            }
        }

        func finishFirstPass() throws { norms = squares.map { Float($0.squareRoot()) } }

        func apply(to slice: WeightRows) {
            if direction == .merge { product.apply(to: slice) }
            // PEFT forms the factor m / n in Float32, multiplies by it to merge and divides by it to unmerge.
            let factor: (Int) -> Float = { self.magnitude[$0] / self.norms[$0] }
            switch product.layout {
            case .product:
                for o in slice.rows {
                    let row = slice.row(o)
                    if direction == .merge && !needsFirstPass {
                        norms[o] = Float(Self.sumOfSquares(row, count: slice.columns).squareRoot())
                    }
                    let f = factor(o)
                    if direction == .merge { for i in 0..<slice.columns { row[i] *= f } }
                    else { for i in 0..<slice.columns { row[i] /= f } }
                }
            case .transposedProduct:
                let factors = (0..<slice.columns).map(factor)
                for r in slice.rows {
                    let row = slice.row(r)
                    if direction == .merge { for c in 0..<slice.columns { row[c] *= factors[c] } }
                    else { for c in 0..<slice.columns { row[c] /= factors[c] } }
                }
            }
            if direction == .unmerge { product.apply(to: slice) }
        }

        /// Σ xᵢ² in Double, four lanes at a time: one running sum would make every addition wait for the one before
        /// (this loop was most of the time a DoRA merge spends beyond a LoRA merge).
        static func sumOfSquares(_ values: UnsafeMutablePointer<Float>, count: Int) -> Double {
            var lanes = SIMD4<Double>()
            var i = 0
            while i + 4 <= count {
                let x = SIMD4<Double>(Double(values[i]), Double(values[i + 1]), Double(values[i + 2]), Double(values[i + 3]))
                lanes += x * x
                i += 4
            }
            var total = lanes.sum()
            while i < count {
                total += Double(values[i]) * Double(values[i])
                i += 1
            }
            return total
        }
    }
}
