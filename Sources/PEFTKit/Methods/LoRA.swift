/// LoRA: a weight changes by a scaled low-rank product.
///
///     W' = W + s · (B · A)       nn.Linear: W is out×in, B out×r, A r×in
///     W' = W + s · (B · A)ᵀ      GPT-2 Conv1D (fan_in_fan_out, W stored in×out) and embeddings
///                                (W vocab×dim, lora_embedding_A r×vocab, lora_embedding_B dim×r)
///     b' = b + s · b_B           lora_bias
///
/// s is alpha / r (alpha / √r with rsLoRA) times the merge weight; unmerging applies −s.
enum LoRA {
    /// How the base weight is stored relative to B · A.
    enum Layout: String, Sendable {
        /// W has the shape of B · A (out × in).
        case product
        /// W has the shape of (B · A)ᵀ (in × out, or vocab × dim for embeddings).
        case transposedProduct
    }

    /// The two factors, decoded: `b` is out×r, `a` is r×in, both row-major.
    struct Factors {
        let a: [Float]
        let b: [Float]
        let rank: Int
        var inFeatures: Int { rank == 0 ? 0 : a.count / rank }
        var outFeatures: Int { rank == 0 ? 0 : b.count / rank }
    }

    /// Adds s · (B · A) (or its transpose) to a slice of rows, with one `sgemm` accumulating straight into the weight.
    static func apply(_ factors: Factors, scale s: Float, layout: Layout, to slice: WeightRows) {
        let r = factors.rank, rowCount = slice.rows.count
        factors.a.withUnsafeBufferPointer { a in
            factors.b.withUnsafeBufferPointer { b in
                switch layout {
                case .product:
                    // rows of W are outputs o: W[o, :] += s · B[o, :] · A
                    LinearAlgebra.multiplyAccumulate(
                        m: rowCount, n: slice.columns, k: r, alpha: s,
                        a: b.baseAddress! + slice.rows.lowerBound * r, lda: r, transposeA: false,
                        b: a.baseAddress!, ldb: factors.inFeatures, transposeB: false,
                        into: slice.values, ldc: slice.columns)
                case .transposedProduct:
                    // rows of W are inputs i: W[i, :] += s · A[:, i]ᵀ · Bᵀ
                    LinearAlgebra.multiplyAccumulate(
                        m: rowCount, n: slice.columns, k: r, alpha: s,
                        a: a.baseAddress! + slice.rows.lowerBound, lda: factors.inFeatures, transposeA: true,
                        b: b.baseAddress!, ldb: r, transposeB: true,
                        into: slice.values, ldc: slice.columns)
                }
            }
        }
    }

    /// b' = b + s · b_B.
    static func applyBias(_ loraBias: [Float], scale s: Float, to bias: UnsafeMutableBufferPointer<Float>) {
        for i in bias.indices { bias[i] += loraBias[i] * s }
    }
}
