import SafeTensors

/// VeRA (`peft_type: VERA`, PEFT `tuners/vera`): one pair of frozen random projections shared by every module,
/// `vera_A` (r × max_in) and `vera_B` (max_out × r), and per module two trained scaling vectors, `vera_lambda_b`
/// (out) and `vera_lambda_d` (r). A module uses the leading part of the projections that fits it:
///
///     W' = W + (λ_b ⊙ B[:out, :]) · (λ_d ⊙ A[:, :in])       λ_b scales B's rows, λ_d A's rows
///     W' = W + ((λ_b ⊙ B[:out, :]) · (λ_d ⊙ A[:, :in]))ᵀ    fan_in_fan_out (GPT-2 Conv1D, W stored in × out)
///
/// There is no alpha (scaling 1). The projections are in the adapter only when it was saved with
/// `save_projection=True` (`base_model.vera_A`, `base_model.vera_B`); otherwise PEFT regenerates them from
/// `projection_prng_key` with torch's generator, which peftkit cannot reproduce, and refuses. Unmerging subtracts the
/// same change.
public struct VeRA: AdapterMethod {
    public static let name = "vera"
    public static let peftTypes = ["VERA"]
    public static let summary = "VeRA: W + (λ_b⊙B)·(λ_d⊙A), shared saved projections A, B"
    static let lambdaB = TensorRole("vera_lambda_b")
    static let lambdaD = TensorRole("vera_lambda_d")
    static let projectionA = TensorRole("vera_A")
    static let projectionB = TensorRole("vera_B")
    public static let roles = [lambdaB, lambdaD]
    public static let sharedRoles = [projectionA, projectionB]

    public let rank: Int
    public let fanInFanOut: Bool
    public var variant: String { "default" }

    /// VeraConfig's fields (PEFT 0.18 to 0.21) that do not change the merged weights.
    static let mathNeutralFields: Set<String> = [
        "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
        "inference_mode", "target_modules", "layers_to_transform", "layers_pattern", "modules_to_save", "bias",
        "vera_dropout", "d_initial", "init_weights", "projection_prng_key", "runtime_config", "exclude_modules",
    ]

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        let known = Self.mathNeutralFields.union(["r", "fan_in_fan_out", "save_projection"])
        if let unknown = json.objectValue?.first(where: { !known.contains($0.key) && PEFTConfig.isSet($0.value) }) {
            throw PEFTKitError(.unsupported, file: source, "not supported: VeRA config field '\(unknown.key)' is set, and "
                               + "peftkit cannot tell whether it changes the merge (a newer PEFT?)")
        }
        // PEFT's default is save_projection=True; only an explicit false leaves the projections out.
        if json["save_projection"] == .bool(false) {
            throw PEFTKitError(.unsupported, file: source, "not supported: a VeRA adapter saved with save_projection=False "
                               + "holds no vera_A / vera_B; PEFT regenerates them from projection_prng_key with torch's "
                               + "random generator, which peftkit cannot reproduce exactly. Save the adapter with "
                               + "save_projection=True (VeraConfig) and merge that")
        }
        rank = PEFTConfig.positiveInteger(json, "r", required: true, &problems) ?? 1
        fanInFanOut = PEFTConfig.flag(json, "fan_in_fan_out", &problems)
    }

    public func checkShared(_ shared: [TensorRole: StoredTensor], problems: inout [String]) throws {
        for role in Self.sharedRoles where shared[role] == nil {
            problems.append("missing shared tensor 'base_model.\(role)' (VeRA's projection; the adapter must be saved with "
                            + "save_projection=True)")
        }
        if let a = shared[Self.projectionA]?.shape, !(a.count == 2 && a[0] == rank) {
            problems.append("base_model.vera_A has shape \(a); expected [r = \(rank), max in_features]")
        }
        if let b = shared[Self.projectionB]?.shape, !(b.count == 2 && b[1] == rank) {
            problems.append("base_model.vera_B has shape \(b); expected [max out_features, r = \(rank)]")
        }
    }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        try makeModule(path: path, tensors: tensors, shared: [:], problems: &problems)
    }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], shared: [TensorRole: StoredTensor],
                           problems: inout [String]) throws -> AdaptedModule? {
        let before = problems.count
        for role in Self.roles where tensors[role] == nil { problems.append("module '\(path)': missing tensor '\(role)'") }
        if let d = tensors[Self.lambdaD]?.shape, d != [rank] {
            problems.append("module '\(path)': vera_lambda_d has shape \(d), expected [\(rank)] (r)")
        }
        if let b = tensors[Self.lambdaB]?.shape {
            if b.count != 1 {
                problems.append("module '\(path)': vera_lambda_b has shape \(b); expected [out_features]")
            } else if let projection = shared[Self.projectionB]?.shape, projection.count == 2, b[0] > projection[0] {
                problems.append("module '\(path)': vera_lambda_b has \(b[0]) entries but vera_B only \(projection[0]) rows")
            }
        }
        guard problems.count == before, shared[Self.projectionA] != nil, shared[Self.projectionB] != nil else { return nil }
        return AdaptedModule(path: path, kind: .linear, rank: rank, alpha: nil, scaling: 1, tensors: tensors,
                             shared: shared.filter { Self.sharedRoles.contains($0.key) })
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        [("fan_in_fan_out", .bool(fanInFanOut))]
    }

    public var settings: [(key: String, value: JSONValue)] { [("fan_in_fan_out", .bool(fanInFanOut))] }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        guard let (rows, columns) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        let lambdaB = module.tensors[Self.lambdaB]!, lambdaD = module.tensors[Self.lambdaD]!
        let a = module.shared[Self.projectionA]!, b = module.shared[Self.projectionB]!
        // PEFT takes in/out features from the layer: (in, out) = W's shape for Conv1D, (columns, rows) for Linear.
        let (inFeatures, outFeatures) = fanInFanOut ? (rows, columns) : (columns, rows)
        guard outFeatures == lambdaB.shape[0] else {
            problems.append("module '\(module.path)': vera_lambda_b has \(lambdaB.shape[0]) entries but the base weight "
                + "\(module.weightName) has shape \([rows, columns]) (\(outFeatures) outputs"
                + (fanInFanOut ? ", fan_in_fan_out)" : ")"))
            return []
        }
        guard inFeatures <= a.shape[1] else {
            problems.append("module '\(module.path)': the base weight has \(inFeatures) inputs but vera_A only \(a.shape[1]) columns")
            return []
        }
        let rank = module.rank
        let layout: LoRA.Layout = fanInFanOut ? .transposedProduct : .product
        return [ModuleChange(tensor: module.weightName) { scale, direction in
            let aValues = try a.floats(), bValues = try b.floats(), lb = try lambdaB.floats(), ld = try lambdaD.floats()
            let maxIn = a.shape[1]
            // λ_d ⊙ A[:, :in] (r × in) and λ_b ⊙ B[:out, :] (out × r), as PEFT forms them before the product.
            var scaledA = [Float](repeating: 0, count: rank * inFeatures)
            for k in 0..<rank { for i in 0..<inFeatures { scaledA[k * inFeatures + i] = ld[k] * aValues[k * maxIn + i] } }
            var scaledB = [Float](repeating: 0, count: outFeatures * rank)
            for o in 0..<outFeatures { for k in 0..<rank { scaledB[o * rank + k] = lb[o] * bValues[o * rank + k] } }
            return LoRA.Product(a: scaledA, b: scaledB, rank: rank, layout: layout,
                                scale: direction == .merge ? scale : -scale)
        }]
    }
}
