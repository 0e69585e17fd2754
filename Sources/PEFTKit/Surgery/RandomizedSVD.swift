import CPeftKitOpenBLAS
import Foundation

/// The seeded pseudo-random numbers of the surgery commands: one generator, documented, so that `--seed N` gives the
/// same sketch (and the same DARE masks) on every machine.
///
/// - State: xoshiro256** (Blackman & Vigna), its four words filled from the seed by SplitMix64.
/// - Uniform in [0, 1): the top 24 bits of a draw, times 2⁻²⁴ (exactly representable Float32 values).
/// - Standard normal: Box–Muller on two uniforms, u₁ moved into (0, 1] so the logarithm is finite; both outputs of a
///   pair are used, the second kept for the next call.
public struct SurgeryRandom: Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)
    private var spare: Float?

    /// The generator of stream `stream` (extract: the module's place in name order) under `seed`: SplitMix64 started
    /// at seed + stream · 0xD1B54A32D192ED03, so that modules factored in parallel draw the same numbers in any order.
    public init(seed: UInt64, stream: UInt64) {
        self.init(seed: seed &+ stream &* 0xD1B5_4A32_D192_ED03)
    }

    public init(seed: UInt64) {
        var x = seed
        func splitMix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitMix(), splitMix(), splitMix(), splitMix())
    }

    /// xoshiro256**.
    public mutating func next() -> UInt64 {
        let result = rotl(s.1 &* 5, 7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = rotl(s.3, 45)
        return result
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// Uniform in [0, 1), on the 2⁻²⁴ grid.
    public mutating func uniform() -> Float { Float(next() >> 40) * 0x1p-24 }

    /// A standard normal value (Box–Muller, computed in Double).
    public mutating func normal() -> Float {
        if let value = spare {
            spare = nil
            return value
        }
        let u1 = (Double(next() >> 11) + 1) * 0x1p-53  // (0, 1]
        let u2 = Double(next() >> 11) * 0x1p-53
        let radius = (-2 * Foundation.log(u1)).squareRoot()
        spare = Float(radius * sin(2 * Double.pi * u2))
        return Float(radius * cos(2 * Double.pi * u2))
    }
}

/// A truncated SVD A ≈ U diag(S) Vᵀ of a row-major m×n Float32 matrix: the top singular triplets, largest first.
public struct TruncatedSVD: Sendable {
    /// m×k, row-major.
    public var u: [Float]
    /// k values, descending.
    public var singularValues: [Float]
    /// k×n, row-major.
    public var vt: [Float]
    public let rows: Int
    public let columns: Int
    public var rank: Int { singularValues.count }
    /// Whether every singular value of A is here (an exact, full SVD): then the optimal error at any rank is known.
    public let isComplete: Bool
}

/// The randomized SVD of Halko, Martinsson & Tropp (2011): a Gaussian sketch of the range, power (subspace)
/// iterations with re-orthonormalisation after every product, then the exact SVD of the small projected matrix.
///
///     Ω  n×ℓ standard normal (ℓ = k + p, SurgeryRandom)
///     Q  = orth(A Ω)                      (thin QR, sgeqrf/sorgqr)
///     q times:  Q′ = orth(Aᵀ Q),  Q = orth(A Q′)
///     B  = Qᵀ A  (ℓ×n),  B = Ũ S Vᵀ       (sgesdd)
///     U  = Q Ũ
///
/// Every product is one `cblas_sgemm` over the whole matrix: 2 + 2q passes over A in all.
public enum RandomizedSVD {
    public struct Parameters: Sendable, Equatable {
        /// p: extra sketch columns beyond the rank asked for.
        public var oversampling: Int
        /// q: power iterations.
        public var powerIterations: Int
        public init(oversampling: Int = 16, powerIterations: Int = 2) {
            self.oversampling = oversampling
            self.powerIterations = powerIterations
        }
        public static let `default` = Parameters()
    }

    /// The top min(k + p, min(m, n)) triplets of `a`. When min(m, n) ≤ 4ℓ the exact SVD is computed instead: then
    /// it costs about what the 2 + 2q sketch passes and the residual pass do (sgesdd ≈ 8·min²·max flops against
    /// 2·m·n·ℓ per pass), and it is optimal — e.g. the 256 × 2048 k_proj / v_proj of a TinyLlama at rank 64.
    public static func decompose(_ a: UnsafeBufferPointer<Float>, rows m: Int, columns n: Int, rank k: Int,
                                 parameters: Parameters = .default, random: inout SurgeryRandom) throws -> TruncatedSVD {
        precondition(a.count == m * n)
        let smaller = min(m, n)
        let l = min(k + parameters.oversampling, smaller)
        if smaller <= 4 * l { return try exact(a, rows: m, columns: n) }
        let base = a.baseAddress!
        // Y = A Ω
        var omega = [Float](repeating: 0, count: n * l)
        for i in omega.indices { omega[i] = random.normal() }
        var y = [Float](repeating: 0, count: m * l)
        multiply(m: m, n: l, k: n, a: base, lda: n, transposeA: false, b: omega, ldb: l, into: &y)
        omega = []
        var q = try LinearAlgebra.ThinQR(rowMajor: y, rows: m, columns: l).q
        var z = [Float](repeating: 0, count: n * l)
        for _ in 0..<parameters.powerIterations {
            // Z = Aᵀ Q (n×ℓ), Q′ = orth(Z); Y = A Q′, Q = orth(Y)
            multiply(m: n, n: l, k: m, a: base, lda: n, transposeA: true, b: q, ldb: l, into: &z)
            let qz = try LinearAlgebra.ThinQR(rowMajor: z, rows: n, columns: l).q
            multiply(m: m, n: l, k: n, a: base, lda: n, transposeA: false, b: qz, ldb: l, into: &y)
            q = try LinearAlgebra.ThinQR(rowMajor: y, rows: m, columns: l).q
        }
        // B = Qᵀ A (ℓ×n)
        var small = [Float](repeating: 0, count: l * n)
        q.withUnsafeBufferPointer { qp in
            small.withUnsafeMutableBufferPointer { out in
                LinearAlgebra.multiplyAccumulate(m: l, n: n, k: m, alpha: 1, a: qp.baseAddress!, lda: l, transposeA: true,
                                                 b: base, ldb: n, transposeB: false, into: out.baseAddress!, ldc: n, beta: 0)
            }
        }
        let svd = try LinearAlgebra.ThinSVD(rowMajor: small, rows: l, columns: n)
        // U = Q Ũ (m×ℓ · ℓ×ℓ)
        var u = [Float](repeating: 0, count: m * l)
        multiply(m: m, n: l, k: l, a: q, lda: l, b: svd.u, ldb: l, into: &u)
        return TruncatedSVD(u: u, singularValues: svd.singularValues, vt: svd.vt, rows: m, columns: n, isComplete: false)
    }

    /// The full thin SVD (sgesdd) of `a`.
    public static func exact(_ a: UnsafeBufferPointer<Float>, rows m: Int, columns n: Int) throws -> TruncatedSVD {
        let svd = try LinearAlgebra.ThinSVD(rowMajor: Array(a), rows: m, columns: n)
        return TruncatedSVD(u: svd.u, singularValues: svd.singularValues, vt: svd.vt, rows: m, columns: n, isComplete: true)
    }

    private static func multiply(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, transposeA: Bool,
                                 b: [Float], ldb: Int, into c: inout [Float]) {
        b.withUnsafeBufferPointer { bp in
            c.withUnsafeMutableBufferPointer { cp in
                LinearAlgebra.multiplyAccumulate(m: m, n: n, k: k, alpha: 1, a: a, lda: lda, transposeA: transposeA,
                                                 b: bp.baseAddress!, ldb: ldb, transposeB: false,
                                                 into: cp.baseAddress!, ldc: n, beta: 0)
            }
        }
    }

    private static func multiply(m: Int, n: Int, k: Int, a: [Float], lda: Int, b: [Float], ldb: Int, into c: inout [Float]) {
        a.withUnsafeBufferPointer { ap in multiply(m: m, n: n, k: k, a: ap.baseAddress!, lda: lda, transposeA: false, b: b, ldb: ldb, into: &c) }
    }
}

/// LoRA factors B (out×k) and A (k×in) with B·A the product they stand for, row-major Float32.
public struct LowRankFactors: Sendable {
    public var b: [Float]
    public var a: [Float]
    public let outFeatures: Int
    public let inFeatures: Int
    public var rank: Int { outFeatures == 0 ? 0 : b.count / outFeatures }

    public init(b: [Float], a: [Float], outFeatures: Int, inFeatures: Int) {
        self.b = b
        self.a = a
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
    }

    /// The split mergekit uses (DESIGN §10): B = U_k √S_k, A = √S_k V_kᵀ, for a matrix that *is* B·A (out×in).
    /// With `transposed`, the decomposed matrix is (B·A)ᵀ (in×out: GPT-2 Conv1D weights, embeddings vocab×dim), so
    /// B = V_k √S_k and A = √S_k U_kᵀ.
    public static func split(_ svd: TruncatedSVD, rank k: Int, transposed: Bool) -> LowRankFactors {
        let m = svd.rows, n = svd.columns, full = svd.rank
        let k = min(k, full)
        let roots = svd.singularValues.prefix(k).map { $0.squareRoot() }
        if !transposed {
            var b = [Float](repeating: 0, count: m * k), a = [Float](repeating: 0, count: k * n)
            for i in 0..<m { for j in 0..<k { b[i * k + j] = svd.u[i * full + j] * roots[j] } }
            for j in 0..<k { for c in 0..<n { a[j * n + c] = svd.vt[j * n + c] * roots[j] } }
            return LowRankFactors(b: b, a: a, outFeatures: m, inFeatures: n)
        }
        // out = n, in = m
        var b = [Float](repeating: 0, count: n * k), a = [Float](repeating: 0, count: k * m)
        for j in 0..<k { for c in 0..<n { b[c * k + j] = svd.vt[j * n + c] * roots[j] } }
        for i in 0..<m { for j in 0..<k { a[j * m + i] = svd.u[i * full + j] * roots[j] } }
        return LowRankFactors(b: b, a: a, outFeatures: n, inFeatures: m)
    }

    /// `matrix −= B·A` (or `−= (B·A)ᵀ` with `transposed`), in place, with one `sgemm`.
    public func subtract(from matrix: UnsafeMutableBufferPointer<Float>, transposed: Bool) {
        let k = rank
        guard k > 0 else { return }
        b.withUnsafeBufferPointer { bp in
            a.withUnsafeBufferPointer { ap in
                if !transposed {
                    LinearAlgebra.multiplyAccumulate(m: outFeatures, n: inFeatures, k: k, alpha: -1,
                                                     a: bp.baseAddress!, lda: k, transposeA: false,
                                                     b: ap.baseAddress!, ldb: inFeatures, transposeB: false,
                                                     into: matrix.baseAddress!, ldc: inFeatures)
                } else {
                    LinearAlgebra.multiplyAccumulate(m: inFeatures, n: outFeatures, k: k, alpha: -1,
                                                     a: ap.baseAddress!, lda: inFeatures, transposeA: true,
                                                     b: bp.baseAddress!, ldb: k, transposeB: true,
                                                     into: matrix.baseAddress!, ldc: outFeatures)
                }
            }
        }
    }

    /// B·A, row-major out×in.
    public func product() -> [Float] {
        var result = [Float](repeating: 0, count: outFeatures * inFeatures)
        result.withUnsafeMutableBufferPointer { out in
            LowRankFactors(b: b.map { -$0 }, a: a, outFeatures: outFeatures, inFeatures: inFeatures)
                .subtract(from: out, transposed: false)
        }
        return result
    }
}

extension LinearAlgebra {
    /// Sets OpenBLAS's thread count (`openblas_set_num_threads`): surgery runs one large product at a time and
    /// lets OpenBLAS use every core, where the merge engine parallelises over tensors itself.
    static func useThreads(_ count: Int) {
        openblas_set_num_threads(Int32(max(1, count)))
    }

    /// Σ x², blocks of 4096 by `cblas_sdot` (Float32, SIMD partial sums), the blocks added in Double.
    static func squaredNorm(_ values: UnsafeBufferPointer<Float>) -> Double {
        guard let base = values.baseAddress else { return 0 }
        var total = 0.0
        var start = 0
        while start < values.count {
            let count = min(4096, values.count - start)
            total += Double(cblas_sdot(blasint(count), base + start, 1, base + start, 1))
            start += count
        }
        return total
    }
}
