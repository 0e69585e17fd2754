import SafeTensors

/// Trainable tokens (`peft_type: TRAINABLE_TOKENS`, PEFT `tuners/trainable_tokens`): chosen rows of an embedding are
/// trained whole, and the merge writes them in place of the base's rows:
///
///     W'[token_indices[i], :] = trainable_tokens_delta[i, :]       every other row unchanged
///
/// (PEFT's `index_copy`, despite the tensor's name). A tied output head shares the embedding's rows and so changes
/// with it, as in PEFT. The replaced rows are not in the adapter, so the merge cannot be undone, and a merge weight
/// has nothing to scale.
public struct TrainableTokens: AdapterMethod {
    public static let name = "trainable_tokens"
    public static let peftTypes = ["TRAINABLE_TOKENS"]
    public static let summary = "trainable tokens: rows of an embedding replaced by trained ones"
    static let rows = TensorRole("trainable_tokens_delta")
    public static let roles = [rows]

    /// `token_indices`: the embedding rows replaced, in the order of the delta's rows.
    public let tokenIndices: [Int]
    public var variant: String { "default" }
    public var acceptsMergeWeight: Bool { false }

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        guard let items = json["token_indices"]?.arrayValue, !items.isEmpty else {
            problems.append("field 'token_indices' must be a non-empty list of token ids")
            tokenIndices = []
            return
        }
        var indices: [Int] = []
        for item in items {
            guard let value = item.integerValue, value >= 0, let index = Int(exactly: value) else {
                problems.append("token_indices holds \(PEFTConfig.describe(item)); expected non-negative integers")
                continue
            }
            indices.append(index)
        }
        if Set(indices).count != indices.count {
            problems.append("token_indices names a token twice (which replacement wins would depend on the order)")
        }
        tokenIndices = indices
    }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        guard let shape = tensors[Self.rows]?.shape else { return nil }
        guard shape.count == 2, shape[0] == tokenIndices.count else {
            problems.append("module '\(path)': trainable_tokens_delta has shape \(shape); expected [\(tokenIndices.count) "
                + "token_indices, embedding_dim]")
            return nil
        }
        return AdaptedModule(path: path, kind: .embedding, rank: tokenIndices.count, alpha: nil, scaling: 1, tensors: tensors)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        [("token_indices", .array(tokenIndices.map { .integer(Int64($0)) }))]
    }

    public func unmergeRefusal(of module: AdaptedModule) -> String? {
        "the merge replaced rows whose original values the adapter does not keep"
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        guard let (vocabulary, dimension) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        let delta = module.tensors[Self.rows]!
        guard delta.shape[1] == dimension else {
            problems.append("module '\(module.path)': trainable_tokens_delta rows have \(delta.shape[1]) entries but the "
                + "embedding has \(dimension)")
            return []
        }
        if let outside = tokenIndices.first(where: { $0 >= vocabulary }) {
            problems.append("module '\(module.path)': token index \(outside) is past the embedding's \(vocabulary) rows")
            return []
        }
        let indices = tokenIndices
        return [ModuleChange(tensor: module.weightName) { _, _ in ReplaceRows(indices: indices, rows: try delta.floats()) }]
    }

    /// Copies row i of `rows` over row `indices[i]` of the weight, for the rows a slice holds.
    struct ReplaceRows: WeightOperation {
        /// Weight row → row of `rows`.
        let replacement: [Int: Int]
        let rows: [Float]

        init(indices: [Int], rows: [Float]) {
            replacement = Dictionary(uniqueKeysWithValues: indices.enumerated().map { ($1, $0) })
            self.rows = rows
        }

        func apply(to slice: WeightRows) {
            for (row, source) in replacement where slice.rows.contains(row) {
                let target = slice.row(row), start = source * slice.columns
                for c in 0..<slice.columns { target[c] = rows[start + c] }
            }
        }
    }
}
