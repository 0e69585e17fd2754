import SafeTensors

/// (IA)³ (`peft_type: IA3`): a learned vector rescales a layer's inputs (feedforward modules) or its outputs.
/// Merged into the weight, it scales W's columns or rows, and for an output scaling also the bias:
///
///     feedforward:  W'[o, i] = W[o, i] · l[i]          ia3_l: 1 × in
///     otherwise:    W'[o, i] = W[o, i] · l[o]          ia3_l: out × 1,   b'[o] = b[o] · l[o]
///
/// With `fan_in_fan_out` (GPT-2 Conv1D, W stored in × out) PEFT transposes l, so the roles of rows and columns swap.
/// Unmerging divides by l (exactly: PEFT adds 1e-8 to l first); a zero in l is refused. The product is formed in
/// Float32 and rounded once, as PEFT does.
public struct IA3: AdapterMethod {
    public static let name = "ia3"
    public static let peftTypes = ["IA3"]
    public static let summary = "(IA)³: W·diag(l) (feedforward) or diag(l)·W and b·l (attention)"
    static let vector = TensorRole("ia3_l")
    public static let roles = [vector]

    public let fanInFanOut: Bool
    public var variant: String { "default" }
    /// A multiplicative change has no weight to scale it by.
    public var acceptsMergeWeight: Bool { false }

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        fanInFanOut = PEFTConfig.flag(json, "fan_in_fan_out", &problems)
    }

    /// Whether the module scales its inputs (ia3_l is 1 × in) rather than its outputs (out × 1).
    private func isFeedforward(_ module: AdaptedModule) -> Bool { module.tensors[Self.vector]!.shape[0] == 1 }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        guard let shape = tensors[Self.vector]?.shape else { return nil }
        if shape.count > 2 {
            throw PEFTKitError(.unsupported, tensor: path, "not supported yet: IA³ on convolutions (ia3_l has shape \(shape))")
        }
        guard shape.count == 2, shape[0] == 1 || shape[1] == 1 else {
            problems.append("module '\(path)': ia3_l has shape \(shape); expected [1, in_features] or [out_features, 1]")
            return nil
        }
        return AdaptedModule(path: path, kind: .linear, rank: 1, alpha: nil, scaling: 1, tensors: tensors)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        [("feedforward", .bool(isFeedforward(module))), ("fan_in_fan_out", .bool(fanInFanOut))]
    }

    public var settings: [(key: String, value: JSONValue)] { [("fan_in_fan_out", .bool(fanInFanOut))] }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        guard let (rows, columns) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        let vector = module.tensors[Self.vector]!, feedforward = isFeedforward(module)
        let length = feedforward ? vector.shape[1] : vector.shape[0]
        // l scales what W holds along one axis: inputs are columns of a Linear weight, rows of a Conv1D one.
        let scalesColumns: Bool
        switch (columns == length, rows == length) {
        case (true, true): scalesColumns = feedforward != fanInFanOut  // square: the config says how W is stored
        case (true, false): scalesColumns = true
        case (false, true): scalesColumns = false
        case (false, false):
            problems.append("module '\(module.path)': ia3_l has \(length) entries but the base weight has shape \([rows, columns])")
            return []
        }
        let path = module.path
        var changes = [ModuleChange(tensor: module.weightName) { _, direction in
            try Scale(vector: try vector.floats(), alongColumns: scalesColumns, direction: direction, module: path)
        }]
        if !feedforward, let biasShape = baseShape(module.biasName) {
            guard biasShape == [length] else {
                problems.append("module '\(module.path)': base bias has shape \(biasShape); ia3_l scales \(length) outputs")
                return []
            }
            changes.append(ModuleChange(tensor: module.biasName) { _, direction in
                try Scale(vector: try vector.floats(), alongColumns: true, direction: direction, module: path)
            })
        }
        return changes
    }

    /// Multiplies (merge) or divides (unmerge) the rows or the columns of a slice by the vector's entries. A vector
    /// (a bias) is one row, so its entries are its columns.
    struct Scale: WeightOperation {
        let factors: [Float]
        let alongColumns: Bool
        let unmerge: Bool

        init(vector: [Float], alongColumns: Bool, direction: MergeDirection, module: String) throws {
            if direction == .unmerge, let zero = vector.firstIndex(of: 0) {
                throw PEFTKitError(.numerics, tensor: module,
                                   "ia3_l[\(zero)] is 0: the merge erased what it scaled, and cannot be undone")
            }
            factors = vector
            self.alongColumns = alongColumns
            unmerge = direction == .unmerge
        }

        func apply(to slice: WeightRows) {
            for o in slice.rows {
                let row = slice.row(o)
                switch (alongColumns, unmerge) {
                case (true, false): for i in 0..<slice.columns { row[i] *= factors[i] }
                case (true, true): for i in 0..<slice.columns { row[i] /= factors[i] }
                case (false, false): for i in 0..<slice.columns { row[i] *= factors[o] }
                case (false, true): for i in 0..<slice.columns { row[i] /= factors[o] }
                }
            }
        }

        /// Dividing by l magnifies the merged file's rounding by up to 1 / min |l|.
        var roundingAmplification: Double {
            unmerge ? Double(factors.map { 1 / $0.magnitude }.max() ?? 1) : 1
        }
    }
}
