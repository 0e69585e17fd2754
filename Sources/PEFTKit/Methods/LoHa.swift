import SafeTensors

/// LoHa (`peft_type: LOHA`, PEFT `tuners/loha`): a weight changes by the Hadamard (elementwise) product of two
/// low-rank products.
///
///     W' = W + s · ((W1a · W1b) ⊙ (W2a · W2b))      W out×in, W1a and W2a out×r, W1b and W2b r×in
///
/// s is alpha / r (r and alpha after `rank_pattern` / `alpha_pattern`) times the merge weight; unmerging applies −s.
/// PEFT adapts only `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` with LoHa (no GPT-2 `Conv1D`, so no fan_in_fan_out);
/// convolutions are not supported here yet.
public struct LoHa: AdapterMethod {
    public static let name = "loha"
    public static let peftTypes = ["LOHA"]
    public static let summary = "LoHa: W + s·(W1a·W1b)⊙(W2a·W2b); rank/alpha patterns"

    static let w1a = TensorRole("hada_w1_a")
    static let w1b = TensorRole("hada_w1_b")
    static let w2a = TensorRole("hada_w2_a")
    static let w2b = TensorRole("hada_w2_b")
    /// The CP cores of a convolution with `use_effective_conv2d`: known so that such a module is refused by name.
    static let t1 = TensorRole("hada_t1")
    static let t2 = TensorRole("hada_t2")
    public static let roles = [w1a, w1b, w2a, w2b, t1, t2]

    let lycoris: LycorisSettings
    public var variant: String { "default" }

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        lycoris = LycorisSettings(config: json, problems: &problems)
    }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        let before = problems.count
        if let core = tensors[Self.t1] ?? tensors[Self.t2] {
            throw PEFTKitError(.unsupported, tensor: path, "not supported yet: LoHa on convolutions (\(core.name) has shape \(core.shape))")
        }
        let rank = lycoris.rank(for: path)
        for role in [Self.w1a, Self.w1b, Self.w2a, Self.w2b] where tensors[role] == nil {
            problems.append("module '\(path)': missing tensor '\(role)'")
        }
        guard problems.count == before else { return nil }
        let shapes = [Self.w1a, Self.w1b, Self.w2a, Self.w2b].map { tensors[$0]!.shape }
        for (role, shape) in zip([Self.w1a, Self.w1b, Self.w2a, Self.w2b], shapes) where shape.count != 2 {
            problems.append("module '\(path)': \(role) has shape \(shape); expected a matrix")
        }
        guard problems.count == before else { return nil }
        let (a1, b1, a2, b2) = (shapes[0], shapes[1], shapes[2], shapes[3])
        func expect(_ condition: Bool, _ text: @autoclosure () -> String) {
            if !condition { problems.append("module '\(path)': \(text())") }
        }
        expect(a1[1] == rank, "hada_w1_a has \(a1[1]) columns but the module's r is \(rank)")
        expect(b1[0] == rank, "hada_w1_b has \(b1[0]) rows but the module's r is \(rank)")
        expect(a2[1] == rank, "hada_w2_a has \(a2[1]) columns but the module's r is \(rank)")
        expect(b2[0] == rank, "hada_w2_b has \(b2[0]) rows but the module's r is \(rank)")
        // Both products must have the shape of W for their Hadamard product to exist.
        expect(a1[0] == a2[0], "hada_w1_a has \(a1[0]) rows but hada_w2_a has \(a2[0])")
        expect(b1[1] == b2[1], "hada_w1_b has \(b1[1]) columns but hada_w2_b has \(b2[1])")
        guard problems.count == before else { return nil }
        return AdaptedModule(path: path, kind: .linear, rank: rank, alpha: lycoris.alpha(for: path),
                             scaling: lycoris.scaling(for: path), tensors: tensors)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        lycoris.recordedParameters(of: module)
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        let outFeatures = module.tensors[Self.w1a]!.shape[0], inFeatures = module.tensors[Self.w1b]!.shape[1]
        if let shape = baseShape(module.weightName), shape.count > 2 {
            throw PEFTKitError(.unsupported, tensor: module.path, "not supported yet: LoHa on convolutions (base weight has shape \(shape))")
        }
        guard let (rows, columns) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        // PEFT reshapes ΔW to W's shape without transposing: the weight must be out × in as nn.Linear stores it.
        guard rows == outFeatures, columns == inFeatures else {
            problems.append("module '\(module.path)': LoHa maps \(inFeatures) → \(outFeatures) features but the base "
                + "weight has shape \([rows, columns])")
            return []
        }
        let tensors = module.tensors, rank = module.rank
        return [ModuleChange(tensor: module.weightName) { scale, direction in
            Hadamard(w1a: try tensors[Self.w1a]!.floats(), w1b: try tensors[Self.w1b]!.floats(),
                     w2a: try tensors[Self.w2a]!.floats(), w2b: try tensors[Self.w2b]!.floats(),
                     rank: rank, inFeatures: inFeatures, scale: direction == .merge ? scale : -scale)
        }]
    }

    /// W[rows] += ((W1a[rows] · W1b) ⊙ (W2a[rows] · W2b)) · s, with the two products of a slice formed by `sgemm`
    /// and then combined in PEFT's order: product, Hadamard, scale, each rounded in Float32. A negated s gives exactly
    /// PEFT's `W -= ΔW`.
    ///
    /// The products go through scratch kept from slice to slice, in bands of rows small enough that both stay in the
    /// core's cache until the Hadamard step reads them (a fresh 1 MiB buffer per product and slice cost a page fault
    /// per 4 KiB, and a slice-sized product left the cache before it was used).
    final class Hadamard: WeightOperation {
        let w1a: [Float]
        let w1b: [Float]
        let w2a: [Float]
        let w2b: [Float]
        let rank: Int
        let inFeatures: Int
        let scale: Float
        private var scratch: [Float] = []
        /// Elements of each product per band: 2 × 64 KiB, well inside a 512 KiB L2.
        static let bandElements = 16 * 1024

        init(w1a: [Float], w1b: [Float], w2a: [Float], w2b: [Float], rank: Int, inFeatures: Int, scale: Float) {
            (self.w1a, self.w1b, self.w2a, self.w2b) = (w1a, w1b, w2a, w2b)
            (self.rank, self.inFeatures, self.scale) = (rank, inFeatures, scale)
        }

        func apply(to slice: WeightRows) {
            let r = rank, n = slice.columns
            precondition(n == inFeatures)
            let bandRows = max(1, Self.bandElements / max(n, 1))
            if scratch.count < 2 * bandRows * n { scratch = [Float](repeating: 0, count: 2 * bandRows * n) }
            let s = scale
            scratch.withUnsafeMutableBufferPointer { scratch in
                let first = scratch.baseAddress!, second = first + bandRows * n
                for start in stride(from: slice.rows.lowerBound, to: slice.rows.upperBound, by: bandRows) {
                    let rows = min(bandRows, slice.rows.upperBound - start)
                    for (a, b, into) in [(w1a, w1b, first), (w2a, w2b, second)] {
                        a.withUnsafeBufferPointer { a in
                            b.withUnsafeBufferPointer { b in
                                LinearAlgebra.multiplyAccumulate(
                                    m: rows, n: n, k: r, alpha: 1,
                                    a: a.baseAddress! + start * r, lda: r, transposeA: false,
                                    b: b.baseAddress!, ldb: n, transposeB: false, into: into, ldc: n, beta: 0)
                            }
                        }
                    }
                    let values = slice.row(start)
                    for i in 0..<(rows * n) {
                        let hadamard = first[i] * second[i]
                        values[i] += hadamard * s
                    }
                }
            }
        }

        /// Each product's sum is off by at most r · 2⁻²⁴ · P (P bounding its entries by a row sum of magnitudes times
        /// the largest magnitude), and the Hadamard product and the scaling round once more each:
        /// (2r + 3) · 2⁻²⁴ · |s| · P1 · P2, twice.
        var summationError: Double {
            let p1 = LinearAlgebra.largestRowSum(w1a, columns: rank) * LinearAlgebra.largestMagnitude(w1b)
            let p2 = LinearAlgebra.largestRowSum(w2a, columns: rank) * LinearAlgebra.largestMagnitude(w2b)
            return 2 * Double(2 * rank + 3) * 0x1p-24 * Double(scale.magnitude) * p1 * p2
        }
    }
}
