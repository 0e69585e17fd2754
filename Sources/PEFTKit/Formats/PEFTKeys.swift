import SafeTensors

/// PEFT's tensor names, shared by the formats that keep them (PEFT folders, legacy `.bin`, peftkit files): every key
/// is `base_model.model.` + the module path + `.` + the role (`lora_A.weight`), or names a whole tensor the adapter
/// carries (`modules_to_save`, an embedding's `base_layer`, trained biases), or is `base_model.` + a role the whole
/// adapter shares (VeRA's `vera_A`).
enum PEFTKeys {
    /// PEFT prefixes every key with the wrapper's path to the base model.
    static let prefix = "base_model.model."
    /// A tensor the whole adapter shares (`AdapterMethod.sharedRoles`) sits at the wrapper itself: `base_model.vera_A`.
    static let sharedPrefix = "base_model."

    /// Sorts stored tensors into modules (by the method's roles) and carried tensors, and has the method check each
    /// module, collecting every problem.
    /// - Throws: `PEFTKitError` `.inconsistentAdapter` listing every problem, `.unsupported` for what the method
    ///   cannot apply exactly (a convolution module, DoRA magnitudes in a method without DoRA).
    static func adapter(config: PEFTConfig, tensors: [StoredTensor], source: String, format: SourceFormat,
                        fingerprint: String? = nil) throws -> Adapter {
        var problems: [String] = []
        var moduleTensors: [String: [TensorRole: StoredTensor]] = [:]
        var carried: [CarriedTensor] = []
        var shared: [TensorRole: StoredTensor] = [:]
        let method = config.method

        for tensor in tensors {
            if let role = method.sharedRoles.first(where: { tensor.name == sharedPrefix + $0.rawValue }) {
                if shared[role] != nil { problems.append("tensor '\(tensor.name)' appears twice") }
                if ![.f32, .f16, .bf16, .f64].contains(tensor.dtype) {
                    problems.append("tensor '\(tensor.name)' has dtype \(tensor.dtype.rawValue); adapter tensors must be floats")
                }
                shared[role] = tensor
                continue
            }
            guard tensor.name.hasPrefix(prefix) else {
                problems.append("tensor '\(tensor.name)' does not start with '\(prefix)' (not a PEFT adapter key)")
                continue
            }
            guard [.f32, .f16, .bf16, .f64].contains(tensor.dtype) else {
                problems.append("tensor '\(tensor.name)' has dtype \(tensor.dtype.rawValue); adapter tensors must be floats")
                continue
            }
            let key = String(tensor.name.dropFirst(prefix.count))
            if let role = method.roles.first(where: { key.hasSuffix("." + $0.rawValue) }) {
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
                problems.append("tensor '\(tensor.name)' is not part of a \(config.peftType) adapter")
            }
        }

        let modules: [AdaptedModule]
        do {
            try method.checkShared(shared, problems: &problems)
            modules = try moduleTensors.keys.sorted().compactMap { path in
                try method.makeModule(path: path, tensors: moduleTensors[path]!, shared: shared, problems: &problems)
            }
        } catch var error as PEFTKitError where error.file == nil {
            error.file = source
            throw error
        }
        if modules.isEmpty && carried.isEmpty && problems.isEmpty {
            problems.append("the adapter has no tensors")
        }
        guard problems.isEmpty else {
            throw PEFTKitError(.inconsistentAdapter, file: source,
                               "\(problems.count) problem(s) between the adapter's config and its tensors", details: problems)
        }
        return Adapter(source: source, format: format, config: config, modules: modules,
                       carried: carried.sorted { $0.baseName < $1.baseName }, shared: shared,
                       base: BaseIdentity(nameOrPath: config.baseModelNameOrPath, fingerprint: fingerprint))
    }

    /// The PEFT key of a module's tensor.
    static func key(_ module: AdaptedModule, _ role: TensorRole) -> String { prefix + module.path + "." + role.rawValue }

    /// The PEFT key of a carried tensor: an embedding's `base_layer` sits inside the module
    /// (`model.embed_tokens.base_layer.weight`), the others under the base tensor's own name.
    static func key(_ carried: CarriedTensor) -> String {
        guard carried.reason == .baseLayer, let dot = carried.baseName.lastIndex(of: ".") else {
            return prefix + carried.baseName
        }
        return prefix + carried.baseName[..<dot] + ".base_layer" + carried.baseName[dot...]
    }

    /// Every tensor of `adapter` under its PEFT key, in `Adapter.allTensors` order.
    static func namedTensors(_ adapter: Adapter) -> [(name: String, tensor: StoredTensor)] {
        adapter.modules.flatMap { module in
            adapter.method.roles.compactMap { role in module.tensors[role].map { (key(module, role), $0) } }
        } + adapter.carried.map { (key($0), $0.tensor) }
            + adapter.method.sharedRoles.compactMap { role in adapter.shared[role].map { (sharedPrefix + role.rawValue, $0) } }
    }
}
