import Testing
@testable import PEFTKit

/// The LAPACK wrappers against matrices whose factors are known by construction, not by LAPACK.
@Suite struct DecompositionTests {
    /// A = U diag(s) Vᵀ built from two rotations and chosen singular values; the SVD must give back s and A.
    @Test func svdRecoversConstructedSingularValues() throws {
        // 3×2: U = columns of a rotation in the (x, y) plane plus z, V = 2-D rotation by 0.3.
        let (c1, s1) = (Float(0.8), Float(0.6)), (c2, s2) = (Float(0.955336489), Float(0.295520207))
        let u: [[Float]] = [[c1, -s1], [s1, c1], [0, 0]]
        let v: [[Float]] = [[c2, -s2], [s2, c2]]
        let sigma: [Float] = [5, 2]
        var a = [Float](repeating: 0, count: 6)
        for i in 0..<3 { for j in 0..<2 { for t in 0..<2 { a[i * 2 + j] += u[i][t] * sigma[t] * v[j][t] } } }
        let svd = try LinearAlgebra.ThinSVD(rowMajor: a, rows: 3, columns: 2)
        #expect(abs(svd.singularValues[0] - 5) < 1e-5 && abs(svd.singularValues[1] - 2) < 1e-5)
        let back = svd.truncated(to: 2)
        for (x, y) in zip(back, a) { #expect(abs(x - y) < 1e-5) }
        // Rank 1 keeps only σ₁'s triplet: u₁ σ₁ v₁ᵀ, whatever the signs LAPACK chose.
        let rankOne = svd.truncated(to: 1)
        for i in 0..<3 { for j in 0..<2 { #expect(abs(rankOne[i * 2 + j] - u[i][0] * 5 * v[j][0]) < 1e-5) } }
        #expect(svd.u.count == 6 && svd.vt.count == 4)
    }

    /// A wide matrix (rows < columns) exercises the swapped roles of LAPACK's factors.
    @Test func svdOfWideMatrixReconstructs() throws {
        let a: [Float] = [1, 2, 3, 4, 0, -1, 2, 1]  // 2×4
        let svd = try LinearAlgebra.ThinSVD(rowMajor: a, rows: 2, columns: 4)
        #expect(svd.singularValues.count == 2 && svd.singularValues[0] >= svd.singularValues[1])
        // ‖A‖²_F = Σσ² = 1+4+9+16+0+1+4+1 = 36.
        #expect(abs(svd.singularValues.map { $0 * $0 }.reduce(0, +) - 36) < 1e-4)
        for (x, y) in zip(svd.truncated(to: 2), a) { #expect(abs(x - y) < 1e-5) }
    }

    /// Householder QR: R's diagonal sign follows LAPACK (−sign of the pivot column's head), Q has orthonormal columns.
    @Test func qrOfKnownMatrix() throws {
        // A = [[3, 1], [4, 2], [0, 5]]: first column norm 5, so R₀₀ = −5 (Householder reflects 3 to −5).
        let a: [Float] = [3, 1, 4, 2, 0, 5]
        let qr = try LinearAlgebra.ThinQR(rowMajor: a, rows: 3, columns: 2)
        #expect(abs(qr.r[0] + 5) < 1e-5)
        #expect(qr.r[2] == 0)  // below the diagonal
        #expect(abs(qr.r[1] - (-(3 * 1 + 4 * 2) / 5)) < 1e-5)  // q₁ = −a₁/5, so R₀₁ = q₁·a₂ = −11/5
        for i in 0..<3 { for j in 0..<2 {
            let value = (0..<2).map { qr.q[i * 2 + $0] * qr.r[$0 * 2 + j] }.reduce(0, +)
            #expect(abs(value - a[i * 2 + j]) < 1e-5)
        } }
        let dot = (0..<3).map { qr.q[$0 * 2] * qr.q[$0 * 2 + 1] }.reduce(0, +)
        #expect(abs(dot) < 1e-6)
    }
}
