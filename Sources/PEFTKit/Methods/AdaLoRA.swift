import SafeTensors

/// AdaLoRA (`peft_type: ADALORA`, PEFT `tuners/adalora`): LoRA in SVD form, P·Λ·Q, whose triplets a budget prunes
/// during training. Per module `lora_A` (r × in, Q), `lora_E` (r × 1, Λ) and `lora_B` (out × r, P):
///
///     W' = W + B · (A ⊙ E) · alpha / (ranknum + 1e-5)       E scales A's rows
///     W' = W + (B · (A ⊙ E))ᵀ · alpha / (ranknum + 1e-5)    fan_in_fan_out (GPT-2 Conv1D)
///
/// as PEFT's `SVDLinear.get_delta_weight`. What a loaded model holds (`AdaLoraModel`): every module starts at
/// `init_r` triplets with ranknum = init_r; `rank_pattern` (module → one boolean per initial triplet, written by the
/// final rank allocation) says which triplets were kept, and the saved tensors hold only those rows. Loading resizes
/// those modules to the kept count but copies the old ranknum back, so ranknum is init_r for every module, pruned
/// or not (ranknum itself is not saved). alpha is `lora_alpha`, or the module's rank when it is 0; PEFT's AdaLoRA
/// ignores `use_rslora`. A module with every triplet pruned changes nothing. On a 16-bit base PEFT rounds the
/// factors of the modules `rank_pattern` resizes to the base dtype when it loads them; peftkit does the same, so the
/// merge is PEFT's loaded model (see `changes`). Unmerging subtracts the same change.
public struct AdaLoRA: AdapterMethod {
    public static let name = "adalora"
    public static let peftTypes = ["ADALORA"]
    public static let summary = "AdaLoRA: W + B·(A⊙E)·alpha/ranknum, ranks pruned by rank_pattern"
    static let a = TensorRole("lora_A")
    static let e = TensorRole("lora_E")
    static let b = TensorRole("lora_B")
    public static let roles = [a, e, b]

    public let initialRank: Int
    public let alpha: Double
    public let fanInFanOut: Bool
    /// Module path → which of the `init_r` triplets were kept.
    public let kept: [String: [Bool]]
    public var variant: String { "default" }

    /// AdaLoraConfig's own fields that only steer training (the budget schedule, the orthogonal regulariser), and
    /// `r`, which AdaLoRA replaces by `init_r`.
    static let trainingFields: Set<String> = ["target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "orth_reg_weight",
                                              "total_step", "r", "use_rslora"]
    /// Inherited LoraConfig fields AdaLoRA does not apply the way LoRA does: refused when set.
    static let refusedFields: [(key: String, what: String)] = [
        ("use_dora", "DoRA with AdaLoRA"), ("lora_bias", "lora_bias with AdaLoRA"),
        ("alpha_pattern", "alpha_pattern with AdaLoRA (PEFT's AdaLoRA uses lora_alpha for every module)"),
        ("trainable_token_indices", "trainable tokens with AdaLoRA"),
    ]

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        for option in LoRA.unsupportedOptions + Self.refusedFields where PEFTConfig.isSet(json[option.key]) {
            throw PEFTKitError(.unsupported, file: source, "not supported: \(option.what)")
        }
        if let value = json["init_lora_weights"], value.boolValue == nil, value != .null {
            throw PEFTKitError(.unsupported, file: source, "not supported: AdaLoRA with init_lora_weights "
                               + "\(PEFTConfig.describe(value)) (PEFT's AdaLoRA knows true and false)")
        }
        let known = LoRA.mathNeutralFields.union(Self.trainingFields)
            .union(["init_r", "lora_alpha", "rank_pattern", "fan_in_fan_out", "init_lora_weights"])
            .union((LoRA.unsupportedOptions + Self.refusedFields).map(\.key))
        if let unknown = json.objectValue?.first(where: { !known.contains($0.key) && PEFTConfig.isSet($0.value) }) {
            throw PEFTKitError(.unsupported, file: source, "not supported: AdaLoRA config field '\(unknown.key)' is set, "
                               + "and peftkit cannot tell whether it changes the merge (a newer PEFT?)")
        }
        initialRank = PEFTConfig.positiveInteger(json, "init_r", required: true, &problems) ?? 1
        alpha = PEFTConfig.number(json, "lora_alpha", required: true, &problems) ?? 0
        fanInFanOut = PEFTConfig.flag(json, "fan_in_fan_out", &problems)
        var kept: [String: [Bool]] = [:]
        for (key, value) in PEFTConfig.patternEntries(json, "rank_pattern", &problems) {
            // PEFT names the pattern by the parameter (`<module>.lora_E`) and resizes the module before the last dot.
            guard let dot = key.lastIndex(of: "."), key[key.index(after: dot)...] == "lora_E" else {
                problems.append("rank_pattern key '\(key)' does not name a module's lora_E")
                continue
            }
            guard let items = value.arrayValue, items.count == initialRank, items.allSatisfy({ $0.boolValue != nil }) else {
                problems.append("rank_pattern['\(key)'] is \(PEFTConfig.describe(value)); expected \(initialRank) booleans "
                                + "(one per initial triplet)")
                continue
            }
            kept[String(key[..<dot])] = items.map { $0.boolValue! }
        }
        self.kept = kept
    }

    /// ranknum + 1e-5 as PEFT forms it: a Float32 parameter holding init_r, plus a Python float.
    var rankDivisor: Double { Double(Float(initialRank) + Float(1e-5)) }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        let before = problems.count
        for role in Self.roles where tensors[role] == nil { problems.append("module '\(path)': missing tensor '\(role)'") }
        guard let a = tensors[Self.a]?.shape, let e = tensors[Self.e]?.shape, let b = tensors[Self.b]?.shape else { return nil }
        guard a.count == 2, b.count == 2 else {
            problems.append("module '\(path)': lora_A \(a) and lora_B \(b) must be matrices")
            return nil
        }
        let rank = a[0]
        let expected = kept[path].map { $0.filter { $0 }.count } ?? initialRank
        if rank != expected {
            problems.append("module '\(path)': lora_A has \(rank) rows but " + (kept[path] == nil
                ? "init_r is \(initialRank) and rank_pattern does not prune this module"
                : "rank_pattern keeps \(expected) of its \(initialRank) triplets"))
        }
        if e != [rank, 1] { problems.append("module '\(path)': lora_E has shape \(e), expected [\(rank), 1]") }
        if b[1] != rank { problems.append("module '\(path)': lora_B has \(b[1]) columns, lora_A \(rank) rows") }
        guard problems.count == before else { return nil }
        // PEFT: scaling = lora_alpha if lora_alpha > 0 else float(r), with r the module's (resized) rank.
        let moduleAlpha = alpha > 0 ? alpha : Double(rank)
        return AdaptedModule(path: path, kind: .linear, rank: rank, alpha: moduleAlpha, scaling: moduleAlpha / rankDivisor,
                             tensors: tensors)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        [("alpha", .finite(module.alpha ?? alpha)), ("scaling", .finite(module.scaling)),
         ("ranknum", .integer(Int64(initialRank))), ("fan_in_fan_out", .bool(fanInFanOut))]
    }

    /// ranknum, one frozen parameter per module. On a 16-bit base PEFT 0.21 counts it as trainable: the parameter is
    /// created in the base dtype and `autocast_adapter_dtype` re-wraps it as a new (trainable) Float32 parameter.
    public func unsavedParameters(of module: AdaptedModule, baseDType: DType) -> (trainable: Int, frozen: Int) {
        [.bf16, .f16].contains(baseDType) ? (1, 0) : (0, 1)
    }

    public var settings: [(key: String, value: JSONValue)] {
        [("init_r", .integer(Int64(initialRank))), ("pruned_modules", .integer(Int64(kept.count)))]
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        guard let (rows, columns) = module.baseMatrixShape(baseShape, problems: &problems) else { return [] }
        let a = module.tensors[Self.a]!, e = module.tensors[Self.e]!, b = module.tensors[Self.b]!
        let inFeatures = a.shape[1], outFeatures = b.shape[0], rank = module.rank
        let layout: LoRA.Layout
        switch ([rows, columns] == [outFeatures, inFeatures], [rows, columns] == [inFeatures, outFeatures]) {
        case (true, true): layout = fanInFanOut ? .transposedProduct : .product
        case (true, false): layout = .product
        case (false, true): layout = .transposedProduct
        default:
            problems.append("module '\(module.path)': AdaLoRA maps \(inFeatures) → \(outFeatures) features but the base "
                            + "weight has shape \([rows, columns])")
            return []
        }
        guard rank > 0 else { return [] }  // every triplet pruned: no change
        let resized = kept[module.path] != nil
        return [ModuleChange(tensor: module.weightName, rewritesBase: false) { context in
            // PEFT 0.21 resizes a rank_pattern module with update_layer, which casts the new parameters to the base
            // layer's dtype before the saved values are loaded into them: on a 16-bit base those modules' A, E and B
            // are the saved values rounded to that dtype (then upcast again), and that is the model PEFT loads.
            let round: ([Float]) -> [Float] = resized ? { Self.rounded($0, to: context.baseDType) } : { $0 }
            var scaledA = round(try a.floats())
            let singular = round(try e.floats())
            for k in 0..<rank { for i in 0..<inFeatures { scaledA[k * inFeatures + i] *= singular[k] } }
            return LoRA.Product(a: scaledA, b: round(try b.floats()), rank: rank, layout: layout,
                                scale: context.direction == .merge ? context.scale : -context.scale)
        }]
    }

    /// Values rounded to a 16-bit dtype and back (unchanged for 32/64-bit).
    static func rounded(_ values: [Float], to dtype: DType) -> [Float] {
        switch dtype {
        case .bf16: values.map { Codec.float(fromBF16: Codec.bf16(from: $0)) }
        case .f16: values.map { Codec.float(fromF16: Codec.f16(from: $0)) }
        default: values
        }
    }
}
