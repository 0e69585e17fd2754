import Foundation
import SafeTensors

/// LoRA (`peft_type: LORA`): a weight changes by a scaled low-rank product.
///
///     W' = W + s · (B · A)       nn.Linear: W is out×in, B out×r, A r×in
///     W' = W + s · (B · A)ᵀ      GPT-2 Conv1D (fan_in_fan_out, W stored in×out) and embeddings
///                                (W vocab×dim, lora_embedding_A r×vocab, lora_embedding_B dim×r)
///     b' = b + s · b_B           lora_bias
///
/// s is alpha / r (alpha / √r with rsLoRA) — r and alpha after `rank_pattern` / `alpha_pattern` — times the merge
/// weight; unmerging applies −s.
public struct LoRA: AdapterMethod {
    public static let name = "lora"
    public static let peftTypes = ["LORA"]
    public static let summary = "LoRA: W + s·B·A; DoRA, rsLoRA, rank patterns, Conv1D, lora_bias"

    static let a = TensorRole("lora_A.weight")
    static let b = TensorRole("lora_B.weight")
    static let bias = TensorRole("lora_B.bias")
    static let embeddingA = TensorRole("lora_embedding_A")
    static let embeddingB = TensorRole("lora_embedding_B")
    /// `trainable_token_indices` (TrainableTokens.swift's rows, saved inside the embedding's token adapter).
    static let tokens = TensorRole("token_adapter.trainable_tokens_delta")
    public static let roles = [a, b, bias, embeddingA, embeddingB, magnitude, tokens]

    /// `r`, `lora_alpha`, `rank_pattern` and `alpha_pattern`.
    public let ranks: RankPatterns
    public let useRSLoRA: Bool
    public let fanInFanOut: Bool
    public let loraBias: Bool
    /// DoRA (DoRA.swift): every module renormalised to its `lora_magnitude_vector`.
    public let useDoRA: Bool
    /// PiSSA / OLoRA (PiSSA.swift): the adapter belongs to a residual of the base that the merge recomputes.
    public let baseRewrite: BaseRewrite?
    /// `trainable_token_indices`: a list (for the input embedding), or module name → list; nil when unset.
    public let trainableTokens: [(module: String?, indices: [Int])]?
    public var variant: String { useDoRA ? "dora" : baseRewrite?.rawValue ?? "default" }

    // Every field PEFT's LoraConfig (0.18 to 0.21) and PeftConfig write is in exactly one of the three lists below or
    // read by `init`; a field in none of them that is set is refused, since peftkit cannot tell what it does.

    /// Options that change what a merge must compute and that peftkit does not implement yet.
    static let unsupportedOptions: [(key: String, what: String)] = [
        ("target_parameters", "LoRA on parameters (target_parameters)"),
        ("layer_replication", "layer replication"),
        ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)"),
        ("arrow_config", "Arrow routing"),
        ("use_qalora", "QA-LoRA"),
        ("megatron_config", "Megatron parallel layers (megatron_config)"),
        ("velora_config", "VeLoRA (velora_config)"),
        ("monteclora_config", "MonteCLoRA (monteclora_config)"),
        ("use_bdlora", "block-diagonal LoRA (use_bdlora)"),
        ("kasa_config", "KaSA, which truncates the base weight's singular values (kasa_config)"),
        ("ensure_weight_tying", "adapters tied across tied layers (ensure_weight_tying)"),
    ]

    /// Fields that do not change the merged weights: bookkeeping, training-only settings, which modules were
    /// targeted (the saved tensors say that), and the configs of inits `initWeights` judges.
    static let mathNeutralFields: Set<String> = [
        "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
        "inference_mode", "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
        "bias", "lora_dropout", "megatron_core", "runtime_config", "qalora_group_size", "loftq_config", "eva_config",
        "corda_config", "lora_ga_config",
    ]

    /// `init_lora_weights` values that only choose the starting A and B: the merge is W + s·B·A whatever they were.
    /// (EVA starts A from activations and B at zero; it leaves W alone, and the ranks it redistributes are saved in
    /// `rank_pattern`.)
    static let plainInits: Set<String> = ["gaussian", "eva", "orthogonal"]

    /// Inits that rewrote W from data, randomness or quantisation peftkit cannot reproduce: the residual they left is
    /// not a function of the base on disk.
    static let irreproducibleInits: [(prefix: String, why: String)] = [
        ("pissa_niter_", "a randomized SVD (torch.svd_lowrank) whose random draws are not saved"),
        ("corda", "the base's activations on the training data"),
        ("lora_ga", "gradients on the training data"),
        ("loftq", "a quantisation of the base"),
    ]

    /// Fields `init` reads itself.
    static let readFields: Set<String> = [
        "r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "fan_in_fan_out", "lora_bias", "init_lora_weights",
        "use_dora", "trainable_token_indices",
    ]

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        for option in Self.unsupportedOptions where PEFTConfig.isSet(json[option.key]) {
            throw PEFTKitError(.unsupported, file: source, "not supported yet: \(option.what)")
        }
        baseRewrite = try Self.checkInit(json["init_lora_weights"], source: source)
        let known = Self.mathNeutralFields.union(Self.readFields).union(Self.unsupportedOptions.map(\.key))
        if let unknown = json.objectValue?.first(where: { !known.contains($0.key) && PEFTConfig.isSet($0.value) }) {
            throw PEFTKitError(.unsupported, file: source,
                               "not supported: LoRA config field '\(unknown.key)' is set, and peftkit cannot tell whether it "
                               + "changes the merge (a newer PEFT?)")
        }
        ranks = RankPatterns(config: json, alphaKey: "lora_alpha", problems: &problems)
        useRSLoRA = PEFTConfig.flag(json, "use_rslora", &problems)
        fanInFanOut = PEFTConfig.flag(json, "fan_in_fan_out", &problems)
        loraBias = PEFTConfig.flag(json, "lora_bias", &problems)
        useDoRA = PEFTConfig.flag(json, "use_dora", &problems)
        trainableTokens = Self.tokenIndices(json["trainable_token_indices"], &problems)
        if useDoRA, let baseRewrite {
            throw PEFTKitError(.unsupported, file: source, "not supported yet: DoRA with init_lora_weights "
                               + "\"\(baseRewrite.rawValue)\" (the norms would be of the recomputed residual)")
        }
    }

    /// The init's rewrite of the base that the merge must recompute (PiSSA, OLoRA), or nil for an init that only
    /// chose A and B. Refuses inits whose rewrite cannot be recomputed from the base on disk (randomized PiSSA, CorDA,
    /// LoRA-GA, LoftQ): the adapter belongs to a residual peftkit cannot rebuild.
    private static func checkInit(_ value: JSONValue?, source: String) throws -> BaseRewrite? {
        switch value {
        case nil, .null?, .bool?: return nil
        case .string(let name)? where plainInits.contains(name): return nil
        // PEFT's own tests: `== "pissa"`, and `.lower() == "olora"`.
        case .string("pissa")?: return .pissa
        case .string(let name)? where name.lowercased() == "olora": return .olora
        case .string(let name)?:
            if let rewrite = irreproducibleInits.first(where: { name.hasPrefix($0.prefix) }) {
                throw PEFTKitError(.unsupported, file: source,
                    "not supported: init_lora_weights \"\(name)\" rewrote the base weights before training from "
                    + "\(rewrite.why), so the residual base this adapter belongs to cannot be rebuilt from the base on disk. "
                    + "Have PEFT convert it to a plain LoRA of the original base (save_pretrained with "
                    + "path_initial_model_for_weight_conversion), then merge that")
            }
            throw PEFTKitError(.unsupported, file: source, "not supported: init_lora_weights \"\(name)\" (peftkit knows "
                               + "true, false, " + (plainInits.sorted() + ["pissa", "olora"]).map { "\"\($0)\"" }
                                   .joined(separator: ", ") + ")")
        case let other?:
            throw PEFTKitError(.invalidConfig, file: source,
                               "field 'init_lora_weights' is \(PEFTConfig.describe(other)); expected true, false or a name")
        }
    }

    // MARK: Per-module parameters

    public func rank(for modulePath: String) -> Int { ranks.rank(for: modulePath) }
    public func alpha(for modulePath: String) -> Double { ranks.alpha(for: modulePath) }

    /// alpha / r, or alpha / √r with rsLoRA (computed in Double, as Python does).
    public func scaling(for modulePath: String) -> Double {
        let r = Double(rank(for: modulePath)), alpha = alpha(for: modulePath)
        return useRSLoRA ? alpha / r.squareRoot() : alpha / r
    }

    // MARK: Modules

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        let before = problems.count
        let rank = rank(for: path)
        func shape(_ role: TensorRole) -> [Int]? { tensors[role]?.shape }
        func require(_ role: TensorRole) {
            if tensors[role] == nil { problems.append("module '\(path)': missing tensor '\(role)'") }
        }
        func expect(_ condition: Bool, _ text: @autoclosure () -> String) {
            if !condition { problems.append("module '\(path)': \(text())") }
        }
        if let delta = tensors[Self.tokens] {
            return try tokenModule(path: path, delta: delta, others: tensors.count - 1, problems: &problems)
        }
        let isEmbedding = tensors[Self.embeddingA] != nil || tensors[Self.embeddingB] != nil
        if tensors[Self.magnitude] != nil && !useDoRA {
            problems.append("module '\(path)': has lora_magnitude_vector but the config says use_dora: false")
        }
        if isEmbedding {
            require(Self.embeddingA)
            require(Self.embeddingB)
            expect(tensors[Self.a] == nil && tensors[Self.b] == nil && tensors[Self.bias] == nil,
                   "mixes embedding and linear LoRA tensors")
            if let a = shape(Self.embeddingA), let b = shape(Self.embeddingB) {
                expect(a.count == 2 && b.count == 2, "lora_embedding_A \(a) and lora_embedding_B \(b) must be matrices")
                if a.count == 2, b.count == 2 {
                    expect(a[0] == rank, "lora_embedding_A has \(a[0]) rows but the module's r is \(rank)")
                    expect(b[1] == rank, "lora_embedding_B has \(b[1]) columns but the module's r is \(rank)")
                }
            }
            if useDoRA {
                require(Self.magnitude)
                if let m = shape(Self.magnitude), let b = shape(Self.embeddingB), b.count == 2 {
                    expect(m == [b[0]], "lora_magnitude_vector has shape \(m), expected [\(b[0])] (one entry per embedding channel)")
                }
            }
        } else {
            require(Self.a)
            require(Self.b)
            if let a = shape(Self.a), a.count > 2 {
                throw PEFTKitError(.unsupported, tensor: path, "not supported yet: LoRA on convolutions (lora_A has shape \(a))")
            }
            if let a = shape(Self.a), let b = shape(Self.b) {
                expect(a.count == 2 && b.count == 2, "lora_A \(a) and lora_B \(b) must be matrices")
                if a.count == 2, b.count == 2 {
                    expect(a[0] == rank, "lora_A has \(a[0]) rows but the module's r is \(rank)")
                    expect(b[1] == rank, "lora_B has \(b[1]) columns but the module's r is \(rank)")
                    if let bias = shape(Self.bias) {
                        expect(bias == [b[0]], "lora_B.bias has shape \(bias), expected [\(b[0])]")
                    }
                }
            }
            if tensors[Self.bias] != nil && !loraBias {
                problems.append("module '\(path)': has lora_B.bias but the config says lora_bias: false")
            }
            if tensors[Self.bias] == nil && loraBias && tensors[Self.b] != nil {
                problems.append("module '\(path)': config says lora_bias: true but lora_B.bias is missing")
            }
            if useDoRA {
                require(Self.magnitude)
                if let m = shape(Self.magnitude), let b = shape(Self.b), b.count == 2 {
                    expect(m == [b[0]], "lora_magnitude_vector has shape \(m), expected [\(b[0])] (one entry per output)")
                }
            }
        }
        guard problems.count == before else { return nil }
        return AdaptedModule(path: path, kind: isEmbedding ? .embedding : .linear, rank: rank, alpha: alpha(for: path),
                             scaling: scaling(for: path), tensors: tensors)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        if module.tensors[Self.tokens] != nil, let indices = tokenIndices(for: module.path) {
            return [("token_indices", .array(indices.map { .integer(Int64($0)) }))]
        }
        return [("alpha", .finite(module.alpha ?? ranks.alpha)), ("scaling", .finite(module.scaling)),
         ("fan_in_fan_out", .bool(module.kind == .linear && fanInFanOut))]
    }

    public func baseTensors(of module: AdaptedModule) -> [String] {
        [module.weightName] + (module.tensors[Self.bias] != nil ? [module.biasName] : [])
    }

    public var settings: [(key: String, value: JSONValue)] {
        [("use_rslora", .bool(useRSLoRA))] + (useDoRA ? [("use_dora", .bool(true))] : [])
            + (baseRewrite.map { [("init_lora_weights", .string($0.rawValue))] } ?? [])
    }

    /// Replaced rows have nothing to scale.
    public var acceptsMergeWeight: Bool { trainableTokens == nil }

    public func unmergeRefusal(of module: AdaptedModule) -> String? {
        if module.tensors[Self.tokens] != nil {
            return "the merge replaced embedding rows (trainable_token_indices) whose original values the adapter does not keep"
        }
        if let baseRewrite, module.kind == .linear {
            return "a \(baseRewrite.title) merge replaced the rank-\(module.rank) top of W's factorisation, which the merged "
                + "weights no longer hold"
        }
        return nil
    }

    // MARK: Fitting the base

    /// How the base weight is stored relative to B · A.
    enum Layout: String, Sendable {
        /// W has the shape of B · A (out × in).
        case product
        /// W has the shape of (B · A)ᵀ (in × out, or vocab × dim for embeddings).
        case transposedProduct
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        if module.tensors[Self.tokens] != nil { return tokenChanges(of: module, baseShape: baseShape, problems: &problems) }
        guard let layout = layout(of: module, baseShape: baseShape, problems: &problems) else { return [] }
        let (aRole, bRole) = module.kind == .embedding ? (Self.embeddingA, Self.embeddingB) : (Self.a, Self.b)
        let a = module.tensors[aRole]!, b = module.tensors[bRole]!, rank = module.rank
        var changes: [ModuleChange]
        if let baseRewrite, module.kind == .linear, let shape = baseShape(module.weightName) {
            // Embeddings: PEFT's Embedding layer runs no PiSSA/OLoRA init, so they merge as plain LoRA.
            changes = [try rewrittenChange(baseRewrite, module: module, shape: (shape[0], shape[1]), layout: layout, a: a, b: b)]
        } else if let magnitude = module.tensors[Self.magnitude] {
            let path = module.path
            changes = [ModuleChange(tensor: module.weightName, composition: .loraTerm(dora: true), float32Reductions: 2,
                                    rewritesBase: false) { context in
                try Renormalized(product: Product(a: try a.floats(), b: try b.floats(), rank: rank, layout: layout,
                                                  scale: context.direction == .merge ? context.scale : -context.scale),
                                 magnitude: try magnitude.floats(), context: context, module: path)
            }]
        } else {
            changes = [ModuleChange(tensor: module.weightName, composition: .loraTerm(dora: false)) { scale, direction in
                Product(a: try a.floats(), b: try b.floats(), rank: rank, layout: layout,
                        scale: direction == .merge ? scale : -scale)
            }]
        }
        if let loraBias = module.tensors[Self.bias] {
            guard let biasShape = baseShape(module.biasName) else {
                problems.append("module '\(module.path)': lora_bias needs a base bias '\(module.biasName)', which the base lacks")
                return []
            }
            guard biasShape == loraBias.shape else {
                problems.append("module '\(module.path)': lora_B.bias has shape \(loraBias.shape), base bias \(biasShape)")
                return []
            }
            changes.append(ModuleChange(tensor: module.biasName) { scale, direction in
                BiasShift(bias: try loraBias.floats(), scale: direction == .merge ? scale : -scale)
            })
        }
        return changes
    }

    private func layout(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) -> Layout? {
        guard let (rows, columns) = module.baseMatrixShape(baseShape, problems: &problems) else { return nil }
        let name = "module '\(module.path)'", shape = [rows, columns]
        let (aRole, bRole) = module.kind == .embedding ? (Self.embeddingA, Self.embeddingB) : (Self.a, Self.b)
        let inFeatures = module.tensors[aRole]!.shape[1], outFeatures = module.tensors[bRole]!.shape[0]
        if module.kind == .embedding {
            // Embeddings store W as vocab × dim, the transpose of B·A.
            guard shape == [inFeatures, outFeatures] else {
                problems.append("\(name): embedding LoRA needs a [\(inFeatures), \(outFeatures)] weight, the base has \(shape)")
                return nil
            }
            return .transposedProduct
        }
        switch (shape == [outFeatures, inFeatures], shape == [inFeatures, outFeatures]) {
        // A square weight fits both ways: the config's fan_in_fan_out says how it is stored (PEFT decides it from the
        // layer type, which a checkpoint does not record).
        case (true, true): return fanInFanOut ? .transposedProduct : .product
        case (true, false): return .product
        case (false, true): return .transposedProduct
        default:
            problems.append("\(name): LoRA maps \(inFeatures) → \(outFeatures) features but the base weight has shape \(shape)")
            return nil
        }
    }

    // MARK: The math

    /// s · (B · A) (or its transpose) added to row slices, with one `sgemm` accumulating straight into the weight.
    /// `b` is out×r, `a` is r×in, both row-major.
    struct Product: WeightOperation {
        let a: [Float]
        let b: [Float]
        let rank: Int
        let layout: Layout
        let scale: Float
        var inFeatures: Int { rank == 0 ? 0 : a.count / rank }
        var outFeatures: Int { rank == 0 ? 0 : b.count / rank }

        func apply(to slice: WeightRows) {
            let r = rank, rowCount = slice.rows.count
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    switch layout {
                    case .product:
                        // rows of W are outputs o: W[o, :] += s · B[o, :] · A
                        LinearAlgebra.multiplyAccumulate(
                            m: rowCount, n: slice.columns, k: r, alpha: scale,
                            a: b.baseAddress! + slice.rows.lowerBound * r, lda: r, transposeA: false,
                            b: a.baseAddress!, ldb: inFeatures, transposeB: false,
                            into: slice.values, ldc: slice.columns)
                    case .transposedProduct:
                        // rows of W are inputs i: W[i, :] += s · A[:, i]ᵀ · Bᵀ
                        LinearAlgebra.multiplyAccumulate(
                            m: rowCount, n: slice.columns, k: r, alpha: scale,
                            a: a.baseAddress! + slice.rows.lowerBound, lda: inFeatures, transposeA: true,
                            b: b.baseAddress!, ldb: r, transposeB: true,
                            into: slice.values, ldc: slice.columns)
                    }
                }
            }
        }

        /// The classic γ bound of a sum of r + 1 roundings, (r + 1) · 2⁻²⁴ · |s| · max Σₖ |B[o, k] · A[k, i]|, with
        /// the sum bounded by B's largest row sum of magnitudes times A's largest magnitude; twice.
        var summationError: Double {
            guard rank > 0 else { return 0 }
            let largestRowSum = (0..<outFeatures).map { o in
                b[(o * rank)..<((o + 1) * rank)].reduce(0.0) { $0 + Double($1.magnitude) }
            }.max() ?? 0
            let largestA = a.reduce(0.0) { max($0, Double($1.magnitude)) }
            return 2 * Double(rank + 1) * 0x1p-24 * Double(scale.magnitude) * largestRowSum * largestA
        }
    }

    /// b' = b + s · b_B, on the bias vector (one row).
    struct BiasShift: WeightOperation {
        let bias: [Float]
        let scale: Float

        func apply(to slice: WeightRows) {
            let values = slice.row(slice.rows.lowerBound)
            for i in 0..<slice.columns { values[i] += bias[i] * scale }
        }
    }
}

extension JSONValue {
    /// A finite Double as the shortest literal that reads back to the same value (Swift prints `2.0`, `1e-05`,
    /// `1e+16`: all valid JSON).
    static func finite(_ value: Double) -> JSONValue { .number(value, literal: "\(value)") }
}
