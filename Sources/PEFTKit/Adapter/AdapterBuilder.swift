import SafeTensors

/// Turns a config and a list of stored tensors (from any format) into an `Adapter`, checking that they agree:
/// every module has all its tensors, shapes agree with each other and with the config, and no tensor is left over.
/// Every problem is collected and reported together.
enum AdapterBuilder {
    /// PEFT prefixes every key with the wrapper's path to the base model.
    static let keyPrefix = "base_model.model."

    static func build(config: PEFTConfig, tensors: [StoredTensor], source: String, format: Adapter.Format,
                      fingerprint: String? = nil) throws -> Adapter {
        var problems: [String] = []
        var moduleTensors: [String: [AdaptedModule.Role: StoredTensor]] = [:]
        var carried: [CarriedTensor] = []
        let roles = roles(for: config.method)

        for tensor in tensors {
            guard tensor.name.hasPrefix(keyPrefix) else {
                problems.append("tensor '\(tensor.name)' does not start with '\(keyPrefix)' (not a PEFT adapter key)")
                continue
            }
            guard [.f32, .f16, .bf16, .f64].contains(tensor.dtype) else {
                problems.append("tensor '\(tensor.name)' has dtype \(tensor.dtype.rawValue); adapter tensors must be floats")
                continue
            }
            let key = String(tensor.name.dropFirst(keyPrefix.count))
            if let role = roles.first(where: { key.hasSuffix("." + $0.rawValue) }) {
                let path = String(key.dropLast(role.rawValue.count + 1))
                if moduleTensors[path, default: [:]][role] != nil {
                    problems.append("tensor '\(tensor.name)' appears twice")
                }
                moduleTensors[path, default: [:]][role] = tensor
            } else if key.hasSuffix(".lora_magnitude_vector") || key.contains(".lora_magnitude_vector.") {
                throw PEFTKitError(.unsupported, file: source, tensor: tensor.name, "not supported yet: DoRA magnitude vectors")
            } else if key.hasSuffix(".base_layer.weight") || key.hasSuffix(".base_layer.bias") {
                let baseName = key.replacingOccurrences(of: ".base_layer.", with: ".", options: .backwards)
                carried.append(CarriedTensor(baseName: baseName, reason: .baseLayer, tensor: tensor))
            } else if let dot = key.lastIndex(of: "."), config.isModuleToSave(String(key[..<dot])) {
                carried.append(CarriedTensor(baseName: key, reason: .modulesToSave, tensor: tensor))
            } else if config.bias != "none", key.hasSuffix(".bias") {
                carried.append(CarriedTensor(baseName: key, reason: .trainedBias, tensor: tensor))
            } else {
                problems.append("tensor '\(tensor.name)' is not part of a \(config.method.peftType) adapter")
            }
        }

        var modules: [AdaptedModule] = []
        for path in moduleTensors.keys.sorted() {
            let tensors = moduleTensors[path]!
            if let module = makeModule(path: path, tensors: tensors, config: config, problems: &problems) {
                modules.append(module)
            }
        }
        if modules.isEmpty && carried.isEmpty && problems.isEmpty {
            problems.append("the adapter has no tensors")
        }
        guard problems.isEmpty else {
            throw PEFTKitError(.inconsistentAdapter, file: source,
                               "\(problems.count) problem(s) between the adapter's config and its tensors", details: problems)
        }
        return Adapter(source: source, format: format, method: config.method, variant: config.variant, config: config,
                       modules: modules, carried: carried.sorted { $0.baseName < $1.baseName },
                       base: BaseIdentity(nameOrPath: config.baseModelNameOrPath, fingerprint: fingerprint))
    }

    static func roles(for method: AdapterMethod) -> [AdaptedModule.Role] {
        switch method {
        case .lora: [.loraA, .loraB, .loraBias, .embeddingA, .embeddingB]
        case .bone: [.boneBlock]
        case .miss: [.missBlock]
        }
    }

    /// Checks one module's tensors against each other and the config; nil (with problems noted) when they disagree.
    private static func makeModule(path: String, tensors: [AdaptedModule.Role: StoredTensor], config: PEFTConfig,
                                   problems: inout [String]) -> AdaptedModule? {
        let before = problems.count
        func shape(_ role: AdaptedModule.Role) -> [Int]? { tensors[role]?.shape }
        func require(_ role: AdaptedModule.Role) {
            if tensors[role] == nil { problems.append("module '\(path)': missing tensor '\(role.rawValue)'") }
        }
        func expect(_ condition: Bool, _ text: @autoclosure () -> String) {
            if !condition { problems.append("module '\(path)': \(text())") }
        }

        switch config.method {
        case .lora:
            let rank = config.rank(for: path)
            let isEmbedding = tensors[.embeddingA] != nil || tensors[.embeddingB] != nil
            if isEmbedding {
                require(.embeddingA)
                require(.embeddingB)
                expect(tensors[.loraA] == nil && tensors[.loraB] == nil && tensors[.loraBias] == nil,
                       "mixes embedding and linear LoRA tensors")
                if let a = shape(.embeddingA), let b = shape(.embeddingB) {
                    expect(a.count == 2 && b.count == 2, "lora_embedding_A \(a) and lora_embedding_B \(b) must be matrices")
                    if a.count == 2, b.count == 2 {
                        expect(a[0] == rank, "lora_embedding_A has \(a[0]) rows but the module's r is \(rank)")
                        expect(b[1] == rank, "lora_embedding_B has \(b[1]) columns but the module's r is \(rank)")
                    }
                }
            } else {
                require(.loraA)
                require(.loraB)
                if let a = shape(.loraA), a.count > 2 {
                    problems.append("module '\(path)': not supported yet: LoRA on convolutions (lora_A has shape \(a))")
                    return nil
                }
                if let a = shape(.loraA), let b = shape(.loraB) {
                    expect(a.count == 2 && b.count == 2, "lora_A \(a) and lora_B \(b) must be matrices")
                    if a.count == 2, b.count == 2 {
                        expect(a[0] == rank, "lora_A has \(a[0]) rows but the module's r is \(rank)")
                        expect(b[1] == rank, "lora_B has \(b[1]) columns but the module's r is \(rank)")
                        if let bias = shape(.loraBias) {
                            expect(bias == [b[0]], "lora_B.bias has shape \(bias), expected [\(b[0])]")
                        }
                    }
                }
                if tensors[.loraBias] != nil && !config.loraBias {
                    problems.append("module '\(path)': has lora_B.bias but the config says lora_bias: false")
                }
                if tensors[.loraBias] == nil && config.loraBias && tensors[.loraB] != nil {
                    problems.append("module '\(path)': config says lora_bias: true but lora_B.bias is missing")
                }
            }
            guard problems.count == before else { return nil }
            return AdaptedModule(path: path, kind: isEmbedding ? .embedding : .linear, rank: rank,
                                 alpha: config.alpha(for: path), scaling: config.scaling(for: path), miniRank: nil,
                                 tensors: tensors)

        case .bone, .miss:
            let role: AdaptedModule.Role = config.method == .bone ? .boneBlock : .missBlock
            let r = config.rank
            guard let block = shape(role) else { return nil }
            switch config.variant {
            case .standard:
                expect(block.count == 2 && block[0] == r,
                       "\(role.rawValue) has shape \(block); expected [r=\(r), out_features]")
            case .bat:
                expect(block.count == 3 && block[1] == r && block[2] == r,
                       "\(role.rawValue) has shape \(block); expected [out_features/r, r=\(r), r=\(r)]")
            case .mini:
                let mini = config.miniRank ?? 0
                expect(block == [r, mini], "\(role.rawValue) has shape \(block); expected [r=\(r), mini_r=\(mini)]")
            }
            guard problems.count == before else { return nil }
            return AdaptedModule(path: path, kind: .linear, rank: r, alpha: nil, scaling: 1, miniRank: config.miniRank,
                                 tensors: tensors)
        }
    }
}
