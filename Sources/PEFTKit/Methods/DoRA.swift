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
/// The merged weights alone do not say what the norms were (‖W'‖ per output is m, whatever W was), so a DoRA merge
/// cannot be undone from them; peftkit refuses to unmerge DoRA.
extension LoRA {
    static let magnitude = TensorRole("lora_magnitude_vector")

    final class Renormalized: WeightOperation {
        let product: Product
        let magnitude: [Float]
        /// Conv1D: Σ over inputs of (W + s·B·A)² per output column, from the first pass.
        private var columnSquares: [Double]

        init(product: Product, magnitude: [Float]) {
            self.product = product
            self.magnitude = magnitude
            columnSquares = product.layout == .transposedProduct ? Array(repeating: 0, count: magnitude.count) : []
        }

        var needsFirstPass: Bool { product.layout == .transposedProduct }

        /// Sums the squares of W + s·B·A per column (the slice is scratch: the engine decodes it again to apply).
        func observe(_ slice: WeightRows) {
            product.apply(to: slice)
            for r in slice.rows {
                let row = slice.row(r)
                for c in 0..<slice.columns { columnSquares[c] += Double(row[c]) * Double(row[c]) }
            }
        }

        func apply(to slice: WeightRows) {
            product.apply(to: slice)
            switch product.layout {
            case .product:
                for o in slice.rows {
                    let row = slice.row(o)
                    let factor = magnitude[o] / Float(Self.sumOfSquares(row, count: slice.columns).squareRoot())
                    for i in 0..<slice.columns { row[i] *= factor }
                }
            case .transposedProduct:
                let factors = (0..<slice.columns).map { magnitude[$0] / Float(columnSquares[$0].squareRoot()) }
                for r in slice.rows {
                    let row = slice.row(r)
                    for c in 0..<slice.columns { row[c] *= factors[c] }
                }
            }
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
