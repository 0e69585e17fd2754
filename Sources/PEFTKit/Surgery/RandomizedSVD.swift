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

/// A truncated SVD by randomized block Krylov iteration (Musco & Musco 2015; the range finder of Halko, Martinsson &
/// Tropp 2011 with every block kept): the Rayleigh–Ritz approximation of A from the Krylov space
/// span{Ω, (MᵀM)Ω, …, (MᵀM)^q Ω}, M = A or Aᵀ so that the space lives on the smaller side d (M is e×d, e ≥ d).
///
///     P₀ = orth(Ω),  Ω d×b standard normal (SurgeryRandom)
///     for j = 0…q:   Cⱼ = M Pⱼ;   if j < q:  Pⱼ₊₁ = orth(Mᵀ Cⱼ − K Kᵀ Mᵀ Cⱼ)  (projected twice)   K = [P₀ … Pⱼ]
///     C = M K = [C₀ … C_q]                     (e × (q+1)b, no further pass over M)
///     CᵀC = V Λ Vᵀ  (Double, dsyevd),  M ≈ (C V_k Λ_k^-½) Λ_k^½ (K V_k)ᵀ
///
/// One pass over M per block: Cⱼ = M Pⱼ and Mᵀ Cⱼ are formed panel by panel (1 MB of M, still in cache for the second
/// product), 2q + 1 products of b columns in all. Keeping every block, where subspace iteration keeps only the last,
/// is what gets close to the optimum on the spectrum of a fine-tune — a few dominant directions over a flat floor of
/// noise, with the rank-k cut inside the floor: on a 5632 × 2048 module like the benchmark's synthetic fine-tune's,
/// at rank 64, subspace iteration (k + 16 columns, 2 power iterations) ends 4.6·10⁻³ above the optimal error, this
/// with b = 32 and q = 12 1.8·10⁻⁵ above it (q = 16: 7·10⁻⁷).
public enum RandomizedSVD {
    public struct Parameters: Sendable, Equatable {
        /// b: columns per Krylov block; nil: half the rank, at least 8 (and at most the rank).
        public var blockSize: Int?
        /// q: Krylov blocks after the first.
        public var iterations: Int
        public init(blockSize: Int? = nil, iterations: Int = 12) {
            self.blockSize = blockSize
            self.iterations = iterations
        }
        public static let `default` = Parameters()

        /// The block size used for rank k.
        public func block(rank k: Int) -> Int { max(1, blockSize ?? min(k, max(8, (k + 1) / 2))) }
    }

    /// The top min(k, min(m, n)) triplets of `a`. When the Krylov space would be as wide as the smaller side of `a`
    /// ((q+1)·b ≥ min(m, n)), the exact SVD is computed instead: it is optimal and then costs about twice the products
    /// (sgesdd ≈ 8·min²·max flops against 2·m·n·b per product) — e.g. the 256 × 2048 k_proj / v_proj of a TinyLlama
    /// at rank 64.
    public static func decompose(_ a: UnsafeBufferPointer<Float>, rows m: Int, columns n: Int, rank k: Int,
                                 parameters: Parameters = .default, random: inout SurgeryRandom) throws -> TruncatedSVD {
        precondition(a.count == m * n)
        let b = parameters.block(rank: k), width = (parameters.iterations + 1) * b
        let d = min(m, n), e = max(m, n)
        if d <= width { return try exact(a, rows: m, columns: n) }
        let operatorIsTranspose = n > m  // M = Aᵀ
        // K: d×width and C: e×width, row-major; block j is columns j·b ..< (j+1)·b of each (leading dimension width).
        var basis = [Float](repeating: 0, count: d * width)
        var images = [Float](repeating: 0, count: e * width)
        for i in 0..<d { for c in 0..<b { basis[i * width + c] = random.normal() } }
        try basis.withUnsafeMutableBufferPointer { kp in
            try images.withUnsafeMutableBufferPointer { cp in
                let k0 = kp.baseAddress!, c0 = cp.baseAddress!
                try LinearAlgebra.orthonormalizeColumnsQuickly(k0, rows: d, columns: b, leading: width)
                for j in 0...parameters.iterations {
                    let next = j < parameters.iterations ? k0 + (j + 1) * b : nil
                    apply(a.baseAddress!, rows: m, columns: n, transposed: operatorIsTranspose, to: k0 + j * b,
                          images: c0 + j * b, back: next, size: b, width: width)
                    guard let next else { break }
                    try extend(basis: k0, columns: (j + 1) * b, rows: d, width: width, with: next, size: b,
                               random: &random)
                }
            }
        }
        // CᵀC = Kᵀ MᵀM K in Double (squaring the singular values costs no digits there), top k eigenpairs.
        var gram = [Double](repeating: 0, count: width * width)
        images.withUnsafeBufferPointer { cp in
            var panel = [Double](repeating: 0, count: 256 * width)
            var row = 0
            while row < e {
                let count = min(256, e - row)
                for i in 0..<(count * width) { panel[i] = Double(cp[row * width + i]) }
                cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, blasint(width), blasint(count), 1, panel,
                            blasint(width), row == 0 ? 0 : 1, &gram, blasint(width))
                row += count
            }
        }
        let eigen = try LinearAlgebra.symmetricEigen(gram, order: width)
        let kept = min(k, width)
        let values = eigen.values.prefix(kept).map { Float(max($0, 0).squareRoot()) }
        // V_k (width×k) and V_k Λ_k^-½, Float32.
        var vk = [Float](repeating: 0, count: width * kept), scaled = vk
        for i in 0..<width {
            for j in 0..<kept {
                vk[i * kept + j] = Float(eigen.vectors[i * width + j])
                scaled[i * kept + j] = values[j] > 0 ? vk[i * kept + j] / values[j] : 0
            }
        }
        let left = multiply(images, rows: e, inner: width, by: scaled, columns: kept)  // C V_k Λ^-½: e×k
        let right = multiply(basis, rows: d, inner: width, by: vk, columns: kept)      // K V_k: d×k
        // Backstop for a basis that lost orthogonality (it would count a direction twice): the Ritz values of an
        // orthonormal basis never hold more than ‖A‖²_F.
        let energy = values.reduce(0.0) { $0 + Double($1) * Double($1) }
        if energy > LinearAlgebra.squaredNorm(a) * (1 + 1e-4) { return try exact(a, rows: m, columns: n) }
        // M ≈ left S rightᵀ: A = M gives U = left, Vᵀ = rightᵀ; A = Mᵀ gives U = right, Vᵀ = leftᵀ.
        let (u, v) = operatorIsTranspose ? (right, left) : (left, right)
        return TruncatedSVD(u: u, singularValues: values, vt: LinearAlgebra.transpose(v, rows: n, columns: kept), rows: m, columns: n, isComplete: false)
    }

    /// images = M·P and, with `back`, back = Mᵀ·images, in one pass over M: for each panel of about 1 MB of M's rows
    /// (rows of A for M = A; columns of A, strided, for M = Aᵀ) the panel's images, then their share of Mᵀ·images
    /// while the panel is still in cache. P, images and back have `size` columns and leading dimension `width`.
    private static func apply(_ a: UnsafePointer<Float>, rows m: Int, columns n: Int, transposed: Bool,
                              to p: UnsafePointer<Float>, images: UnsafeMutablePointer<Float>,
                              back: UnsafeMutablePointer<Float>?, size b: Int, width: Int) {
        let e = transposed ? n : m, d = transposed ? m : n
        let step = back == nil ? e : max(16, (1 << 20) / (4 * d))
        var start = 0
        while start < e {
            let count = min(step, e - start)
            let panel = transposed ? a + start : a + start * n  // M's rows start..<start+count
            LinearAlgebra.multiplyAccumulate(m: count, n: b, k: d, alpha: 1, a: panel, lda: n, transposeA: transposed,
                                             b: p, ldb: width, transposeB: false, into: images + start * width,
                                             ldc: width, beta: 0)
            if let back {
                LinearAlgebra.multiplyAccumulate(m: d, n: b, k: count, alpha: 1, a: panel, lda: n, transposeA: !transposed,
                                                 b: images + start * width, ldb: width, transposeB: false, into: back,
                                                 ldc: width, beta: start == 0 ? 0 : 1)
            }
            start += count
        }
    }

    /// Makes the block v (the new Mᵀ Cⱼ) orthonormal and orthogonal to the first `columns` columns K of the basis:
    /// project out K and orthonormalise, twice ("twice is enough"). Where M has lower rank than the space the block
    /// is mostly rounding noise, and a block that still leans on K afterwards (|Kᵀv| > 10⁻⁵) is replaced by random
    /// directions made orthogonal to K the same way — the range is then already in K, and any orthonormal extension
    /// keeps the Rayleigh–Ritz projection exact.
    private static func extend(basis: UnsafeMutablePointer<Float>, columns: Int, rows d: Int, width: Int,
                               with v: UnsafeMutablePointer<Float>, size b: Int, random: inout SurgeryRandom) throws {
        for attempt in 0..<3 {
            if attempt > 0 { for i in 0..<d { for c in 0..<b { v[i * width + c] = random.normal() } } }
            for _ in 0..<2 {
                removeProjection(on: basis, columns: columns, rows: d, width: width, from: v, size: b)
                try LinearAlgebra.orthonormalizeColumnsQuickly(v, rows: d, columns: b, leading: width)
            }
            var overlap = [Float](repeating: 0, count: columns * b)
            LinearAlgebra.multiplyAccumulate(m: columns, n: b, k: d, alpha: 1, a: basis, lda: width, transposeA: true,
                                             b: v, ldb: width, transposeB: false, into: &overlap, ldc: b, beta: 0)
            if overlap.allSatisfy({ abs($0) <= 1e-5 }) { return }
        }
        throw LinearAlgebra.DecompositionFailure(routine: "block Krylov orthogonalisation", info: 0)
    }

    /// v −= K Kᵀ v for the first `columns` columns K of the basis (d × columns, leading dimension width) and a block v
    /// of `size` columns (same leading dimension).
    private static func removeProjection(on basis: UnsafeMutablePointer<Float>, columns: Int, rows d: Int, width: Int,
                                         from v: UnsafeMutablePointer<Float>, size b: Int) {
        var coefficients = [Float](repeating: 0, count: columns * b)
        coefficients.withUnsafeMutableBufferPointer { cp in
            LinearAlgebra.multiplyAccumulate(m: columns, n: b, k: d, alpha: 1, a: basis, lda: width, transposeA: true,
                                             b: v, ldb: width, transposeB: false, into: cp.baseAddress!, ldc: b, beta: 0)
            LinearAlgebra.multiplyAccumulate(m: d, n: b, k: columns, alpha: -1, a: basis, lda: width, transposeA: false,
                                             b: cp.baseAddress!, ldb: b, transposeB: false, into: v, ldc: width, beta: 1)
        }
    }

    /// x (rows×inner) · y (inner×columns), row-major.
    private static func multiply(_ x: [Float], rows: Int, inner: Int, by y: [Float], columns: Int) -> [Float] {
        var out = [Float](repeating: 0, count: rows * columns)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                out.withUnsafeMutableBufferPointer { op in
                    LinearAlgebra.multiplyAccumulate(m: rows, n: columns, k: inner, alpha: 1, a: xp.baseAddress!,
                                                     lda: inner, transposeA: false, b: yp.baseAddress!, ldb: columns,
                                                     transposeB: false, into: op.baseAddress!, ldc: columns, beta: 0)
                }
            }
        }
        return out
    }

    /// The full thin SVD (sgesdd) of `a`.
    public static func exact(_ a: UnsafeBufferPointer<Float>, rows m: Int, columns n: Int) throws -> TruncatedSVD {
        let svd = try LinearAlgebra.ThinSVD(rowMajor: Array(a), rows: m, columns: n)
        return TruncatedSVD(u: svd.u, singularValues: svd.singularValues, vt: svd.vt, rows: m, columns: n, isComplete: true)
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
