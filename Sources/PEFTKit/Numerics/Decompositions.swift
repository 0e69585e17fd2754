import CPeftKitOpenBLAS

/// Thin QR and SVD in Float32 through OpenBLAS's LAPACK, in row-major terms.
///
/// LAPACK is column-major: a row-major m×n buffer is, to LAPACK, the n×m matrix Aᵀ. The SVD is run on that Aᵀ
/// directly (Aᵀ = U′ S V′ᵀ means A = V′ S U′ᵀ, so LAPACK's factors are already A's, row-major, with the roles of U
/// and Vᵀ swapped); the QR needs A itself and transposes on the way in and out.
extension LinearAlgebra {
    struct DecompositionFailure: Error, CustomStringConvertible {
        let routine: String
        let info: Int32
        var description: String { "LAPACK \(routine) failed (info \(info))" }
    }

    /// A = Q R with Q m×k orthonormal columns and R k×n upper triangular, k = min(m, n), as `torch.linalg.qr`'s
    /// reduced mode computes it (Householder reflections: `sgeqrf`, then `sorgqr`).
    struct ThinQR {
        /// m×k, row-major.
        var q: [Float]
        /// k×n, row-major, zero below the diagonal.
        var r: [Float]
        let rows: Int, columns: Int
        var rank: Int { min(rows, columns) }

        init(rowMajor a: [Float], rows m: Int, columns n: Int) throws {
            precondition(a.count == m * n, "ThinQR: \(a.count) values for a \(m)×\(n) matrix")
            rows = m; columns = n
            let k = min(m, n)
            var factors = [Float](repeating: 0, count: m * n)  // column-major A
            for i in 0..<m { for j in 0..<n { factors[j * m + i] = a[i * n + j] } }
            var tau = [Float](repeating: 0, count: max(k, 1))
            var mm = Int32(m), nn = Int32(n), kk = Int32(k), lda = Int32(max(m, 1)), info: Int32 = 0
            var work = try LinearAlgebra.workspace { lwork, size in sgeqrf_(&mm, &nn, &factors, &lda, &tau, &size, &lwork, &info); return info }
            var lwork = Int32(work.count)
            sgeqrf_(&mm, &nn, &factors, &lda, &tau, &work, &lwork, &info)
            guard info == 0 else { throw DecompositionFailure(routine: "sgeqrf", info: info) }
            r = [Float](repeating: 0, count: k * n)
            for i in 0..<k { for j in i..<n { r[i * n + j] = factors[j * m + i] } }
            work = try LinearAlgebra.workspace { lwork, size in sorgqr_(&mm, &kk, &kk, &factors, &lda, &tau, &size, &lwork, &info); return info }
            lwork = Int32(work.count)
            sorgqr_(&mm, &kk, &kk, &factors, &lda, &tau, &work, &lwork, &info)
            guard info == 0 else { throw DecompositionFailure(routine: "sorgqr", info: info) }
            q = [Float](repeating: 0, count: m * k)
            for i in 0..<m { for j in 0..<k { q[i * k + j] = factors[j * m + i] } }
        }
    }

    /// A = U diag(S) Vᵀ with U m×k, S descending (k), Vᵀ k×n, k = min(m, n) (divide and conquer: `sgesdd`).
    struct ThinSVD {
        /// m×k, row-major.
        var u: [Float]
        /// The singular values, largest first.
        var singularValues: [Float]
        /// k×n, row-major.
        var vt: [Float]
        let rows: Int, columns: Int
        var rank: Int { min(rows, columns) }

        init(rowMajor a: [Float], rows m: Int, columns n: Int) throws {
            precondition(a.count == m * n, "ThinSVD: \(a.count) values for a \(m)×\(n) matrix")
            rows = m; columns = n
            let k = min(m, n)
            // LAPACK sees the n×m matrix Aᵀ; its U′ (n×k) is our Vᵀ and its V′ᵀ (k×m) our U, both row-major as is.
            var matrix = a
            var jobz = CChar(UInt8(ascii: "S"))
            var ln = Int32(n), lm = Int32(m), lda = Int32(max(n, 1)), ldu = Int32(max(n, 1)), ldvt = Int32(max(k, 1))
            var values = [Float](repeating: 0, count: max(k, 1))
            var uPrime = [Float](repeating: 0, count: max(n * k, 1))
            var vtPrime = [Float](repeating: 0, count: max(k * m, 1))
            var iwork = [Int32](repeating: 0, count: max(8 * k, 1))
            var info: Int32 = 0
            var work = try LinearAlgebra.workspace { lwork, size in
                sgesdd_(&jobz, &ln, &lm, &matrix, &lda, &values, &uPrime, &ldu, &vtPrime, &ldvt, &size, &lwork, &iwork, &info)
                return info
            }
            var lwork = Int32(work.count)
            sgesdd_(&jobz, &ln, &lm, &matrix, &lda, &values, &uPrime, &ldu, &vtPrime, &ldvt, &work, &lwork, &iwork, &info)
            guard info == 0 else { throw DecompositionFailure(routine: "sgesdd", info: info) }
            u = Array(vtPrime.prefix(m * k))
            singularValues = Array(values.prefix(k))
            vt = Array(uPrime.prefix(k * n))
        }

        /// U_r diag(S_r) V_rᵀ, the best rank-r approximation of A (Eckart–Young), row-major m×n.
        func truncated(to r: Int) -> [Float] {
            let r = min(r, rank)
            var scaledU = [Float](repeating: 0, count: rows * r)
            for i in 0..<rows { for j in 0..<r { scaledU[i * r + j] = u[i * rank + j] * singularValues[j] } }
            var result = [Float](repeating: 0, count: rows * columns)
            scaledU.withUnsafeBufferPointer { left in
                vt.withUnsafeBufferPointer { right in
                    result.withUnsafeMutableBufferPointer { out in
                        LinearAlgebra.multiplyAccumulate(m: rows, n: columns, k: r, alpha: 1,
                                                         a: left.baseAddress!, lda: max(r, 1), transposeA: false,
                                                         b: right.baseAddress!, ldb: max(columns, 1), transposeB: false,
                                                         into: out.baseAddress!, ldc: max(columns, 1), beta: 0)
                    }
                }
            }
            return result
        }
    }
}

extension LinearAlgebra {
    /// An orthonormal basis of the columns of a row-major rows×columns block (rows ≥ columns, leading dimension
    /// `leading`), in place: Q of its thin QR A = Q R. LAPACK sees the buffer as the column-major Aᵀ, whose LQ
    /// factorisation Aᵀ = L Q′ (sgelqf, sorglq) has Q′ = Qᵀ: Q comes out row-major where it was, with no transposition.
    static func orthonormalizeColumns(_ a: UnsafeMutablePointer<Float>, rows: Int, columns: Int, leading: Int) throws {
        precondition(rows >= columns && leading >= columns)
        var m = Int32(columns), n = Int32(rows), k = Int32(columns), lda = Int32(leading), info: Int32 = 0
        var tau = [Float](repeating: 0, count: max(columns, 1))
        var work = try workspace { lwork, size in sgelqf_(&m, &n, a, &lda, &tau, &size, &lwork, &info); return info }
        var lwork = Int32(work.count)
        sgelqf_(&m, &n, a, &lda, &tau, &work, &lwork, &info)
        guard info == 0 else { throw DecompositionFailure(routine: "sgelqf", info: info) }
        work = try workspace { lwork, size in sorglq_(&m, &n, &k, a, &lda, &tau, &size, &lwork, &info); return info }
        lwork = Int32(work.count)
        sorglq_(&m, &n, &k, a, &lda, &tau, &work, &lwork, &info)
        guard info == 0 else { throw DecompositionFailure(routine: "sorglq", info: info) }
    }

    /// The same, by Cholesky QR twice (CholeskyQR2, Fukaya et al. 2014): G = XᵀX (ssyrk), G = RᵀR (spotrf),
    /// X ← X R⁻¹ (strsm) — level-3 calls throughout, where Householder's panels are level 2 (3 ms against 0.5 ms for
    /// 2048 × 32 here). Columns are scaled to unit length first, since their lengths are what mostly ill-conditions G.
    /// Nearly dependent columns — a Cholesky that fails, a first factor R with a diagonal under 10⁻³ (the columns
    /// are then dependent to about that), or a result not orthonormal to 10⁻⁵ — hand the block to Householder, which
    /// stays orthonormal where R⁻¹ would amplify rounding noise into whole directions.
    static func orthonormalizeColumnsQuickly(_ x: UnsafeMutablePointer<Float>, rows: Int, columns: Int, leading: Int) throws {
        precondition(rows >= columns && leading >= columns)
        var gram = [Float](repeating: 0, count: columns * columns)
        func householder() throws { try orthonormalizeColumns(x, rows: rows, columns: columns, leading: leading) }
        func formGram() {
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, blasint(columns), blasint(rows), 1, x, blasint(leading),
                        0, &gram, blasint(columns))
        }
        for c in 0..<columns {
            let norm = cblas_snrm2(blasint(rows), x + c, blasint(leading))
            guard norm > 0, norm.isFinite else { return try householder() }
            cblas_sscal(blasint(rows), 1 / norm, x + c, blasint(leading))
        }
        for pass in 0..<2 {
            formGram()
            // Row-major upper = column-major lower: spotrf("L") leaves L with G = L Lᵀ, i.e. R = Lᵀ row-major upper.
            var uplo = CChar(UInt8(ascii: "L")), n = Int32(columns), info: Int32 = 0
            spotrf_(&uplo, &n, &gram, &n, &info)
            guard info == 0, pass == 1 || (0..<columns).allSatisfy({ gram[$0 * columns + $0] >= 1e-3 }) else {
                return try householder()
            }
            cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, blasint(rows), blasint(columns),
                        1, gram, blasint(columns), x, blasint(leading))
        }
        formGram()
        for i in 0..<columns {
            for j in i..<columns where abs(gram[i * columns + j] - (i == j ? 1 : 0)) > 1e-5 { return try householder() }
        }
    }
}

extension LinearAlgebra {
    /// The eigenvalues (descending) and eigenvectors of a symmetric n×n Double matrix (`dsyevd`); `matrix` is
    /// row-major, only its upper triangle is read. Column i of `vectors` (row-major n×n) belongs to value i.
    static func symmetricEigen(_ matrix: [Double], order n: Int) throws -> (values: [Double], vectors: [Double]) {
        var a = matrix
        var jobz = CChar(UInt8(ascii: "V")), uplo = CChar(UInt8(ascii: "L")), size = Int32(n), info: Int32 = 0
        var ascending = [Double](repeating: 0, count: n)
        var workSize = 0.0, integerWorkSize: Int32 = 0, query: Int32 = -1
        dsyevd_(&jobz, &uplo, &size, &a, &size, &ascending, &workSize, &query, &integerWorkSize, &query, &info)
        guard info == 0 else { throw DecompositionFailure(routine: "dsyevd workspace query", info: info) }
        var work = [Double](repeating: 0, count: max(Int(workSize), 1))
        var integerWork = [Int32](repeating: 0, count: max(Int(integerWorkSize), 1))
        var lwork = Int32(work.count), liwork = Int32(integerWork.count)
        dsyevd_(&jobz, &uplo, &size, &a, &size, &ascending, &work, &lwork, &integerWork, &liwork, &info)
        guard info == 0 else { throw DecompositionFailure(routine: "dsyevd", info: info) }
        // LAPACK's column-major eigenvectors are the rows of the row-major buffer; reverse to descending order.
        var vectors = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for r in 0..<n { vectors[r * n + i] = a[(n - 1 - i) * n + r] } }
        return (ascending.reversed(), vectors)
    }

    /// Runs a LAPACK workspace query (lwork = −1) and returns a work array of the size it asks for.
    fileprivate static func workspace(_ query: (inout Int32, inout Float) -> Int32) throws -> [Float] {
        var lwork: Int32 = -1
        var size: Float = 0
        let info = query(&lwork, &size)
        guard info == 0 else { throw DecompositionFailure(routine: "workspace query", info: info) }
        return [Float](repeating: 0, count: max(Int(size.rounded(.up)), 1))
    }
}
