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
        Self.replacingRows(of: module, indices: tokenIndices, delta: module.tensors[Self.rows]!, baseShape: baseShape,
                           problems: &problems)
    }

    /// The change that writes `delta`'s rows over rows `indices` of the module's embedding, once they fit it.
    static func replacingRows(of module: AdaptedModule, indices: [Int], delta: StoredTensor,
                              baseShape: (String) -> [Int]?, problems: inout [String]) -> [ModuleChange] {
        guard let (vocabulary, dimension) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        guard delta.shape[1] == dimension else {
            problems.append("module '\(module.path)': trainable_tokens_delta rows have \(delta.shape[1]) entries but the "
                + "embedding has \(dimension)")
            return []
        }
        if let outside = indices.first(where: { $0 >= vocabulary }) {
            problems.append("module '\(module.path)': token index \(outside) is past the embedding's \(vocabulary) rows")
            return []
        }
        // PEFT replaces the rows of the weight itself, which a tied head shares (ModuleChange.rewritesBase).
        return [ModuleChange(tensor: module.weightName, rewritesBase: true) { _ in
            ReplaceRows(indices: indices, rows: try delta.floats())
        }]
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

/// LoRA's `trainable_token_indices`: besides the LoRA modules, chosen rows of an embedding are trained whole
/// (PEFT wraps the embedding in a TrainableTokens layer and saves `<embedding>.token_adapter.trainable_tokens_delta`).
/// The merge replaces those rows as the standalone method does; a head tied to the embedding shares them, as in PEFT.
extension LoRA {
    /// `trainable_token_indices`: a list of token ids (for the input embedding) or module name → list.
    static func tokenIndices(_ value: JSONValue?, _ problems: inout [String]) -> [(module: String?, indices: [Int])]? {
        func indices(_ items: [JSONValue], _ what: String) -> [Int] {
            let ids = items.compactMap { $0.integerValue.flatMap { $0 >= 0 ? Int(exactly: $0) : nil } }
            if ids.count != items.count || ids.isEmpty {
                problems.append("\(what) must be a non-empty list of non-negative token ids")
            }
            if Set(ids).count != ids.count { problems.append("\(what) names a token twice") }
            return ids
        }
        switch value {
        case nil, .null?: return nil
        case .array(let items)?: return [(nil, indices(items, "trainable_token_indices"))]
        case .object(let members)?:
            return members.map { (Optional($0.key), indices($0.value.arrayValue ?? [], "trainable_token_indices['\($0.key)']")) }
        case let other?:
            problems.append("field 'trainable_token_indices' is \(PEFTConfig.describe(other)); expected a list or an object")
            return nil
        }
    }

    /// The token ids of the embedding at `path`: the list form's, or the entry whose name the path ends with.
    func tokenIndices(for path: String) -> [Int]? {
        guard let trainableTokens else { return nil }
        return trainableTokens.first { entry in
            entry.module.map { path == $0 || path.hasSuffix("." + $0) } ?? true
        }?.indices
    }

    func tokenModule(path: String, delta: StoredTensor, others: Int, problems: inout [String]) throws -> AdaptedModule? {
        if others > 0 {
            throw PEFTKitError(.unsupported, tensor: path, "not supported: LoRA tensors and trainable tokens on the same module")
        }
        guard let indices = tokenIndices(for: path) else {
            problems.append("module '\(path)': has trainable_tokens_delta but trainable_token_indices does not name it")
            return nil
        }
        guard delta.shape.count == 2, delta.shape[0] == indices.count else {
            problems.append("module '\(path)': trainable_tokens_delta has shape \(delta.shape); expected [\(indices.count) "
                + "token indices, embedding_dim]")
            return nil
        }
        return AdaptedModule(path: path, kind: .embedding, rank: indices.count, alpha: nil, scaling: 1,
                             tensors: [Self.tokens: delta])
    }

    func tokenChanges(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) -> [ModuleChange] {
        guard let indices = tokenIndices(for: module.path) else { return [] }
        return TrainableTokens.replacingRows(of: module, indices: indices, delta: module.tensors[Self.tokens]!,
                                             baseShape: baseShape, problems: &problems)
    }
}
