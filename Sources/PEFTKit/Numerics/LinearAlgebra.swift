import CPeftKitOpenBLAS

/// Thin wrappers over OpenBLAS and LAPACK, in row-major terms. Each names the routine it calls.
enum LinearAlgebra {
    /// Makes OpenBLAS compute on the calling thread only (`openblas_set_num_threads(1)`): peftkit parallelises over
    /// tensors itself, and OpenBLAS's worker threads spend more time spinning than computing on products this small.
    static func useOneThread() {
        openblas_set_num_threads(1)
    }

    /// `C += alpha · op(A) · op(B)` with `cblas_sgemm` (β = 1), all row-major. `C` is m×n, `op(A)` m×k, `op(B)` k×n.
    static func multiplyAccumulate(
        m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, transposeA: Bool,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        into c: UnsafeMutablePointer<Float>, ldc: Int, beta: Float = 1
    ) {
        guard m > 0, n > 0 else { return }
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }

    /// A row-major rows×columns matrix transposed (row-major columns×rows).
    static func transpose<T>(_ values: [T], rows: Int, columns: Int) -> [T] {
        var out = values
        for r in 0..<rows { for c in 0..<columns { out[c * rows + r] = values[r * columns + c] } }
        return out
    }

    /// An LU factorisation of a square matrix (`sgetrf`), kept to solve several right-hand sides.
    struct LUFactorization {
        let order: Int
        /// Column-major factors as LAPACK leaves them.
        var factors: [Float]
        var pivots: [Int32]
        /// Reciprocal condition number in the 1-norm of the column-major matrix (`sgecon`).
        let reciprocalCondition: Float

        /// Factorises the n×n matrix `columnMajor`. Returns nil when it is exactly singular.
        init?(columnMajor: [Float], order n: Int) {
            order = n
            factors = columnMajor
            pivots = [Int32](repeating: 0, count: n)
            var size = Int32(n), info: Int32 = 0
            var work = [Float](repeating: 0, count: 4 * n)
            var norm: CChar = CChar(UInt8(ascii: "1"))
            let anorm = slange_(&norm, &size, &size, factors, &size, &work)
            sgetrf_(&size, &size, &factors, &size, &pivots, &info)
            guard info == 0 else { return nil }
            var rcond: Float = 0
            var integerWork = [Int32](repeating: 0, count: n)
            sgecon_(&norm, &size, factors, &size, [anorm], &rcond, &work, &integerWork, &info)
            reciprocalCondition = rcond
        }

        /// Solves `M · X = B` in place for `columns` right-hand sides stored column-major with leading dimension n
        /// (`sgetrs`).
        func solve(_ rightHandSides: UnsafeMutablePointer<Float>, columns: Int) {
            guard columns > 0 else { return }
            var trans: CChar = CChar(UInt8(ascii: "N"))
            var size = Int32(order), count = Int32(columns), info: Int32 = 0
            sgetrs_(&trans, &size, &count, factors, &size, pivots, rightHandSides, &size, &info)
        }
    }
}
