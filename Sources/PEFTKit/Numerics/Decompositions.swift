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
    /// Runs a LAPACK workspace query (lwork = −1) and returns a work array of the size it asks for.
    fileprivate static func workspace(_ query: (inout Int32, inout Float) -> Int32) throws -> [Float] {
        var lwork: Int32 = -1
        var size: Float = 0
        let info = query(&lwork, &size)
        guard info == 0 else { throw DecompositionFailure(routine: "workspace query", info: info) }
        return [Float](repeating: 0, count: max(Int(size.rounded(.up)), 1))
    }
}
