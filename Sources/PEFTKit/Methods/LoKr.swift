import SafeTensors

/// LoKr (`peft_type: LOKR`, PEFT `tuners/lokr`): a weight changes by the Kronecker product of two factors, each
/// stored whole or as a low-rank product.
///
///     W' = W + s · kron(w1, w2)        w1 = lokr_w1 or lokr_w1_a · lokr_w1_b   (m × n)
///                                      w2 = lokr_w2 or lokr_w2_a · lokr_w2_b   (p × q),   W (m·p) × (n·q)
///     kron(w1, w2)[i·p + k, j·q + l] = w1[i, j] · w2[k, l]
///
/// s is alpha / r (r and alpha after `rank_pattern` / `alpha_pattern`) times the merge weight — alpha / r even when
/// both factors are whole and no tensor has rank r, as PEFT computes it. Which factors are decomposed
/// (`decompose_both`, and r against the factor sizes) and their sizes (`decompose_factor`) are read from the
/// tensors. PEFT adapts only `nn.Linear`, `nn.Conv1d` and `nn.Conv2d` (no GPT-2 `Conv1D`); convolutions are not
/// supported here yet.
public struct LoKr: AdapterMethod {
    public static let name = "lokr"
    public static let peftTypes = ["LOKR"]
    public static let summary = "LoKr: W + s·kron(w1, w2), each factor whole or low-rank"

    static let w1 = TensorRole("lokr_w1")
    static let w1a = TensorRole("lokr_w1_a")
    static let w1b = TensorRole("lokr_w1_b")
    static let w2 = TensorRole("lokr_w2")
    static let w2a = TensorRole("lokr_w2_a")
    static let w2b = TensorRole("lokr_w2_b")
    /// The CP core of a convolution with `use_effective_conv2d`: known so that such a module is refused by name.
    static let t2 = TensorRole("lokr_t2")
    public static let roles = [w1, w1a, w1b, w2, w2a, w2b, t2]

    let lycoris: LycorisSettings
    public var variant: String { "default" }

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        lycoris = LycorisSettings(config: json, problems: &problems)
    }

    /// One Kronecker factor's tensors: whole, or a low-rank pair.
    struct Factor {
        let whole: TensorRole
        let a: TensorRole
        let b: TensorRole
        var name: String { whole.rawValue }

        /// The factor's shape, checking that exactly one form is present, matrices, and a pair's inner size r.
        func shape(_ tensors: [TensorRole: StoredTensor], rank: Int, path: String, problems: inout [String]) -> [Int]? {
            let module = "module '\(path)'"
            if let whole = tensors[whole] {
                if tensors[a] != nil || tensors[b] != nil {
                    problems.append("\(module): has \(self.whole) and also \(tensors[a] != nil ? a : b); a factor is one or the other")
                    return nil
                }
                guard whole.shape.count == 2 else {
                    problems.append("\(module): \(self.whole) has shape \(whole.shape); expected a matrix")
                    return nil
                }
                return whole.shape
            }
            guard let a = tensors[a], let b = tensors[b] else {
                let present = tensors[a] != nil ? a : self.b, missing = tensors[a] != nil ? self.b : a
                problems.append(tensors[present] == nil
                    ? "\(module): missing tensor '\(whole)' (or '\(self.a)' and '\(self.b)')"
                    : "\(module): missing tensor '\(missing)'")
                return nil
            }
            guard a.shape.count == 2, b.shape.count == 2 else {
                problems.append("\(module): \(self.a) \(a.shape) and \(self.b) \(b.shape) must be matrices")
                return nil
            }
            let before = problems.count
            if a.shape[1] != rank {
                problems.append("\(module): \(self.a) has \(a.shape[1]) columns but the module's r is \(rank)")
            }
            if b.shape[0] != rank {
                problems.append("\(module): \(self.b) has \(b.shape[0]) rows but the module's r is \(rank)")
            }
            return problems.count == before ? [a.shape[0], b.shape[1]] : nil
        }

        /// The factor as a row-major matrix: the stored one, or PEFT's `a @ b`.
        func values(_ tensors: [TensorRole: StoredTensor], rank: Int) throws -> [Float] {
            if let whole = tensors[whole] { return try whole.floats() }
            let a = tensors[a]!, b = tensors[b]!
            return LinearAlgebra.product(try a.floats(), try b.floats(), m: a.shape[0], k: rank, n: b.shape[1])
        }

        /// A bound on the factor's entries and on the error of its Float32 sum (0 when stored whole).
        func bounds(_ tensors: [TensorRole: StoredTensor], rank: Int) throws -> (entries: Double, error: Double) {
            if let whole = tensors[whole] { return (LinearAlgebra.largestMagnitude(try whole.floats()), 0) }
            let entries = LinearAlgebra.largestRowSum(try tensors[a]!.floats(), columns: rank)
                * LinearAlgebra.largestMagnitude(try tensors[b]!.floats())
            return (entries, Double(rank) * 0x1p-24 * entries)
        }
    }

    static let first = Factor(whole: w1, a: w1a, b: w1b)
    static let second = Factor(whole: w2, a: w2a, b: w2b)

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        if let core = tensors[Self.t2] {
            throw PEFTKitError(.unsupported, tensor: path, "not supported yet: LoKr on convolutions (\(core.name) has shape \(core.shape))")
        }
        if let w2 = tensors[Self.w2], w2.shape.count > 2 {
            throw PEFTKitError(.unsupported, tensor: path, "not supported yet: LoKr on convolutions (\(w2.name) has shape \(w2.shape))")
        }
        let rank = lycoris.rank(for: path)
        let first = Self.first.shape(tensors, rank: rank, path: path, problems: &problems)
        let second = Self.second.shape(tensors, rank: rank, path: path, problems: &problems)
        guard first != nil, second != nil else { return nil }
        return AdaptedModule(path: path, kind: .linear, rank: rank, alpha: lycoris.alpha(for: path),
                             scaling: lycoris.scaling(for: path), tensors: tensors)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        lycoris.recordedParameters(of: module)
    }

    /// The shapes of w1 and w2, which `makeModule` checked.
    private func factorShapes(_ module: AdaptedModule) -> (first: [Int], second: [Int]) {
        var ignored: [String] = []
        return (Self.first.shape(module.tensors, rank: module.rank, path: module.path, problems: &ignored)!,
                Self.second.shape(module.tensors, rank: module.rank, path: module.path, problems: &ignored)!)
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        if let shape = baseShape(module.weightName), shape.count > 2 {
            throw PEFTKitError(.unsupported, tensor: module.path, "not supported yet: LoKr on convolutions (base weight has shape \(shape))")
        }
        guard let (rows, columns) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        let (first, second) = factorShapes(module)
        // PEFT reshapes kron(w1, w2) to W's shape; for nn.Linear that is the identity, so the shapes must agree.
        guard first[0] * second[0] == rows, first[1] * second[1] == columns else {
            problems.append("module '\(module.path)': kron of w1 \(first) and w2 \(second) has shape "
                + "\([first[0] * second[0], first[1] * second[1]]) but the base weight has shape \([rows, columns])")
            return []
        }
        let tensors = module.tensors, rank = module.rank
        return [ModuleChange(tensor: module.weightName) { scale, direction in
            let bounds = (try Self.first.bounds(tensors, rank: rank), try Self.second.bounds(tensors, rank: rank))
            return Kronecker(w1: try Self.first.values(tensors, rank: rank), w2: try Self.second.values(tensors, rank: rank),
                             w1Columns: first[1], w2Rows: second[0], w2Columns: second[1],
                             scale: direction == .merge ? scale : -scale,
                             factorBounds: bounds)
        }]
    }

    /// W[i·p + k, j·q + l] += (w1[i, j] · w2[k, l]) · s, row by row of the slice: PEFT's `torch.kron(w1, w2) * scale`,
    /// with the same two Float32 roundings, without forming kron(w1, w2). A negated s gives exactly `W -= ΔW`.
    struct Kronecker: WeightOperation {
        let w1: [Float]
        let w2: [Float]
        let w1Columns: Int
        let w2Rows: Int
        let w2Columns: Int
        let scale: Float
        let factorBounds: ((entries: Double, error: Double), (entries: Double, error: Double))

        func apply(to slice: WeightRows) {
            let n = w1Columns, p = w2Rows, q = w2Columns, s = scale
            precondition(slice.columns == n * q)
            for o in slice.rows {
                let i = o / p, k = o % p, row = slice.row(o)
                for j in 0..<n {
                    let left = w1[i * n + j], block = row + j * q, right = k * q
                    for l in 0..<q {
                        let product = left * w2[right + l]
                        block[l] += product * s
                    }
                }
            }
        }

        /// |Δ(w1 · w2)| ≤ e1 · |w2| + |w1| · e2 + e1 · e2 for the factors' sum errors, plus one rounding for the
        /// product and one for the scaling; twice.
        var summationError: Double {
            let (one, two) = factorBounds
            let product = one.error * two.entries + one.entries * two.error + one.error * two.error
            return 2 * Double(scale.magnitude) * (product + 2 * 0x1p-24 * one.entries * two.entries)
        }
    }
}
