import SafeTensors

/// Bone (block affine adaptation, `peft_type: BONE`; PEFT ≤ 0.18, then replaced by MiSS). Two variants, as PEFT
/// implements them:
///
/// Column blocks (the default): the input columns are grouped in runs of r, and every group receives the same
/// r×out block, transposed; a last partial group takes the block's first rows.
///
///     W'[o, c] = W[o, c] + s · block[c mod r, o]          block: r × out
///
/// Bat (`init_weights: "bat"`): W is cut into r×r tiles T(j, i) (j over output bands, i over input bands), and every
/// tile of band j is transformed by the same block B_j.
///
///     T'(j, i) = T(j, i) · (I + B_j) + B_j                 blocks: out/r × r × r, here with B_j scaled by s
///     T(j, i)  = (T'(j, i) − B_j) · (I + B_j)⁻¹            unmerge, by solving rather than inverting
///
/// As configured: the block size r and the variant (`init_weights`).
public struct Bone: AdapterMethod {
    public static let name = "bone"
    public static let peftTypes = ["BONE"]
    public static let summary = "Bone: column blocks, or Bat T·(I + B) + B (init_weights: bat)"
    static let block = TensorRole("bone_block")
    public static let roles = [block]

    let blocks: BlockSettings
    public var variant: String { blocks.variant.rawValue }

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        blocks = BlockSettings(config: json, role: Self.block, allowsMini: false, problems: &problems)
    }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        try blocks.makeModule(path: path, tensors: tensors, problems: &problems)
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        try blocks.changes(of: module, baseShape: baseShape, problems: &problems)
    }
}

/// The math of Bone's two variants, on row slices (MiSS applies the same).
extension Bone {
    /// Adds s · block[c mod r, o] to every element of a slice of rows.
    struct ColumnBlock: WeightOperation {
        let block: [Float]
        let rank: Int
        let scale: Float

        func apply(to slice: WeightRows) {
            let r = rank, s = scale, outFeatures = block.count / r
            let column = UnsafeMutablePointer<Float>.allocate(capacity: r)
            defer { column.deallocate() }
            block.withUnsafeBufferPointer { block in
                for o in slice.rows {
                    for t in 0..<r { column[t] = s * block[t * outFeatures + o] }  // block[:, o]: this row's addend
                    let row = slice.row(o)
                    var start = 0
                    while start < slice.columns {
                        let group = row + start
                        for t in 0..<min(r, slice.columns - start) { group[t] += column[t] }
                        start += r
                    }
                }
            }
        }
    }

    /// T'(j, i) = T(j, i) + (T(j, i) · sB_j + sB_j) for every tile in a slice whose rows are whole bands of r.
    ///
    /// A band (r rows × in columns, row-major) is also the (in × r) matrix whose row a·(in/r) + i is row a of tile i,
    /// so one `sgemm` per band computes every tile product. The change is formed first and then added, in PEFT's
    /// order: the buffer starts as the sB_j rows and `sgemm` adds the products to it (β = 1).
    struct Bat: WeightOperation {
        let blocks: [Float]
        let rank: Int
        let scale: Float
        var rowAlignment: Int { rank }

        func apply(to slice: WeightRows) {
            let r = rank, s = scale
            precondition(slice.rows.lowerBound % r == 0 && slice.rows.count % r == 0 && slice.columns % r == 0)
            let tilesPerBand = slice.columns / r, bandCount = r * slice.columns
            let change = UnsafeMutablePointer<Float>.allocate(capacity: bandCount)
            defer { change.deallocate() }
            blocks.withUnsafeBufferPointer { blocks in
                for bandStart in stride(from: slice.rows.lowerBound, to: slice.rows.upperBound, by: r) {
                    let band = slice.row(bandStart)
                    let block = blocks.baseAddress! + (bandStart / r) * r * r
                    // View row k of the band is row a = k / tilesPerBand of its tile: it gets sB_j[a].
                    for a in 0..<r {
                        let blockRow = block + a * r
                        for k in (a * tilesPerBand)..<((a + 1) * tilesPerBand) {
                            let start = change + k * r
                            for c in 0..<r { start[c] = s * blockRow[c] }
                        }
                    }
                    LinearAlgebra.multiplyAccumulate(
                        m: slice.columns, n: r, k: r, alpha: s,
                        a: band, lda: r, transposeA: false, b: block, ldb: r, transposeB: false,
                        into: change, ldc: r, beta: 1)
                    for i in 0..<bandCount { band[i] += change[i] }
                }
            }
        }
    }

    /// T(j, i) = (T'(j, i) − sB_j) · (I + sB_j)⁻¹ for every tile in a slice whose rows are whole bands of r, with the
    /// factorised systems I + sB_j of every band prepared once per module.
    ///
    /// Row-major X · M = Y is column-major Mᵀ · Xᵀ = Yᵀ, and a row-major (in × r) band is a column-major r × in
    /// matrix, so each band is solved in place with its LU factors and `in` right-hand sides.
    struct BatInverse: WeightOperation {
        let rank: Int
        let scale: Float
        let blocks: [Float]
        let systems: [LinearAlgebra.LUFactorization]
        var rowAlignment: Int { rank }

        /// Largest condition number (∞-norm of I + sB_j) over the bands: how much the solve can amplify the merged
        /// file's rounding.
        var conditionNumber: Double? {
            Double(systems.map { $0.reciprocalCondition > 0 ? 1 / $0.reciprocalCondition : .infinity }.max() ?? 1)
        }

        /// Fails, with the band, when some I + sB_j is exactly singular.
        static func prepare(_ blocks: [Float], rank r: Int, scale s: Float) -> Result<BatInverse, SingularBand> {
            var systems: [LinearAlgebra.LUFactorization] = []
            for j in 0..<(blocks.count / (r * r)) {
                // I + sB_j in row-major memory is (I + sB_j)ᵀ to column-major LAPACK: exactly the system we solve.
                var matrix = Array(blocks[(j * r * r)..<((j + 1) * r * r)]).map { $0 * s }
                for d in 0..<r { matrix[d * r + d] += 1 }
                guard let lu = LinearAlgebra.LUFactorization(columnMajor: matrix, order: r) else {
                    return .failure(SingularBand(band: j))
                }
                systems.append(lu)
            }
            return .success(BatInverse(rank: r, scale: s, blocks: blocks, systems: systems))
        }

        func apply(to slice: WeightRows) {
            let r = rank, s = scale
            precondition(slice.rows.lowerBound % r == 0 && slice.rows.count % r == 0 && slice.columns % r == 0)
            let tilesPerBand = slice.columns / r
            for bandStart in stride(from: slice.rows.lowerBound, to: slice.rows.upperBound, by: r) {
                let band = slice.row(bandStart)
                let j = bandStart / r
                for k in 0..<slice.columns {
                    let a = k / tilesPerBand
                    for c in 0..<r { band[k * r + c] -= s * blocks[j * r * r + a * r + c] }
                }
                systems[j].solve(band, columns: slice.columns)
            }
        }
    }

    struct SingularBand: Error { let band: Int }
}

/// What Bone and MiSS share: a block tensor of block size r, and the variant that says how it applies.
struct BlockSettings: Sendable {
    enum Variant: String, Sendable {
        case standard = "default"
        case bat
        /// MiSS only: one r × mini_r block shared across the outputs.
        case mini
    }

    let role: TensorRole
    /// `r`: the block size.
    let rank: Int
    let variant: Variant
    /// MiSS `mini_r`.
    let miniRank: Int?

    init(config json: JSONValue, role: TensorRole, allowsMini: Bool, problems: inout [String]) {
        self.role = role
        rank = PEFTConfig.positiveInteger(json, "r", required: true, &problems) ?? 1
        var variant = Variant.standard
        switch json["init_weights"] {
        case nil, .null?, .bool?: break
        case .string("bat")?: variant = .bat
        case .string("mini")? where allowsMini: variant = .mini
        case let other?:
            problems.append("field 'init_weights' is \(PEFTConfig.describe(other)); expected true, false, \"bat\""
                + (allowsMini ? " or \"mini\"" : ""))
        }
        self.variant = variant
        miniRank = variant == .mini ? PEFTConfig.positiveInteger(json, "mini_r", required: true, &problems) : nil
    }

    func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        guard let block = tensors[role]?.shape else { return nil }
        let r = rank
        let fits: Bool, expected: String
        switch variant {
        case .standard: (fits, expected) = (block.count == 2 && block[0] == r, "[r=\(r), out_features]")
        case .bat: (fits, expected) = (block.count == 3 && block[1] == r && block[2] == r, "[out_features/r, r=\(r), r=\(r)]")
        case .mini: (fits, expected) = (block == [r, miniRank ?? 0], "[r=\(r), mini_r=\(miniRank ?? 0)]")
        }
        guard fits else {
            problems.append("module '\(path)': \(role) has shape \(block); expected \(expected)")
            return nil
        }
        return AdaptedModule(path: path, kind: .linear, rank: r, alpha: nil, scaling: 1, tensors: tensors)
    }

    func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        guard let (rows, columns) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        let name = "module '\(module.path)'", r = rank, block = module.tensors[role]!, shape = block.shape
        switch variant {
        case .standard:
            guard shape[1] == rows else {
                problems.append("\(name): block has \(shape[1]) columns but the weight has \(rows) output rows")
                return []
            }
            return [ModuleChange(tensor: module.weightName) { scale, direction in
                Bone.ColumnBlock(block: try block.floats(), rank: r, scale: direction == .merge ? scale : -scale)
            }]
        case .mini:
            guard let mini = miniRank, rows % mini == 0 else {
                problems.append("\(name): \(rows) output rows are not a multiple of mini_r \(miniRank ?? 0)")
                return []
            }
            return [ModuleChange(tensor: module.weightName) { scale, direction in
                let full = MiSS.expandMini(try block.floats(), rank: r, miniRank: mini, outFeatures: rows)
                return Bone.ColumnBlock(block: full, rank: r, scale: direction == .merge ? scale : -scale)
            }]
        case .bat:
            guard rows % r == 0, columns % r == 0, shape[0] == rows / r else {
                problems.append("\(name): Bat with r=\(r) needs a weight whose sides are multiples of r and "
                    + "\(shape[0]) × \(r) rows; the base has \([rows, columns])")
                return []
            }
            let path = module.path
            return [ModuleChange(tensor: module.weightName) { scale, direction in
                let blocks = try block.floats()
                guard direction == .unmerge else { return Bone.Bat(blocks: blocks, rank: r, scale: scale) }
                switch Bone.BatInverse.prepare(blocks, rank: r, scale: scale) {
                case .success(let inverse): return inverse
                case .failure(let singular):
                    throw PEFTKitError(.numerics, tensor: path,
                                       "I + B for output band \(singular.band) is singular: this merge cannot be undone")
                }
            }]
        }
    }
}
