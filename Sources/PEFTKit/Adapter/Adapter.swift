import SafeTensors

/// One module of the base model changed by the adapter, with every parameter needed to apply it resolved.
/// Format-neutral: a module is its path in the base model and its tensors by role, whatever container they came in.
public struct AdaptedModule: Sendable {
    /// What the module computes, which decides how a change is laid onto its weight.
    public enum Kind: String, Sendable {
        case linear
        case embedding
    }

    /// The module's path in the base model, e.g. `model.layers.0.self_attn.q_proj`.
    public let path: String
    public let kind: Kind
    /// The rank: LoRA's r after `rank_pattern`, or the Bone/MiSS block size r.
    public let rank: Int
    /// LoRA's alpha after `alpha_pattern`; nil for methods without one.
    public let alpha: Double?
    /// The multiplier of the module's change (LoRA: alpha / r, or alpha / √r with rsLoRA); 1 where there is none.
    public let scaling: Double
    /// The adapter's tensors for this module, by role.
    public let tensors: [TensorRole: StoredTensor]
    /// Tensors the module uses that the whole adapter shares (VeRA's projections, `Adapter.shared`): stored once, so
    /// neither counted nor written with the module.
    public let shared: [TensorRole: StoredTensor]

    public init(path: String, kind: Kind, rank: Int, alpha: Double?, scaling: Double, tensors: [TensorRole: StoredTensor],
                shared: [TensorRole: StoredTensor] = [:]) {
        self.path = path
        self.kind = kind
        self.rank = rank
        self.alpha = alpha
        self.scaling = scaling
        self.tensors = tensors
        self.shared = shared
    }

    public var weightName: String { path + ".weight" }
    public var biasName: String { path + ".bias" }
    public var parameterCount: Int { tensors.values.reduce(0) { $0 + $1.elementCount } }
}

/// A whole tensor an adapter carries to replace the base's: a `modules_to_save` copy, an embedding's saved
/// `base_layer.weight`, or a bias trained with `bias: all | lora_only`.
public struct CarriedTensor: Sendable {
    public enum Reason: String, Sendable {
        case modulesToSave = "modules_to_save"
        case baseLayer = "base_layer"
        case trainedBias = "bias"
    }

    /// The base tensor it replaces, e.g. `lm_head.weight`.
    public let baseName: String
    public let reason: Reason
    public let tensor: StoredTensor
}

/// What an adapter says about the base model it was trained on.
public struct BaseIdentity: Sendable, Equatable {
    /// `base_model_name_or_path` as the trainer wrote it.
    public var nameOrPath: String?
    /// The fingerprint of the targeted base tensors (peftkit format only; see spec/adapter-format.md).
    public var fingerprint: String?
}

/// The container an adapter was read from.
public struct SourceFormat: Sendable, Equatable, CustomStringConvertible {
    /// The format's stable id (`AdapterFormat.id`): `peft-safetensors`, `peft-bin`, `peftkit`.
    public let id: String
    /// The container's own format version, where it has one (the peftkit format's `MAJOR.MINOR`).
    public let version: String?
    /// For people: "PEFT folder (safetensors)".
    public let description: String

    public init(id: String, version: String? = nil, description: String) {
        self.id = id
        self.version = version
        self.description = description
    }
}

/// A fine-tuning adapter: its method (as configured), config, and every adapted module with its tensors.
public struct Adapter: Sendable {
    /// The path as given by the user.
    public let source: String
    public let format: SourceFormat
    public let config: PEFTConfig
    /// Sorted by module path.
    public let modules: [AdaptedModule]
    public let carried: [CarriedTensor]
    /// Tensors every module shares, by role (`AdapterMethod.sharedRoles`: VeRA's `vera_A`, `vera_B`).
    public let shared: [TensorRole: StoredTensor]
    public var base: BaseIdentity

    public init(source: String, format: SourceFormat, config: PEFTConfig, modules: [AdaptedModule],
                carried: [CarriedTensor], shared: [TensorRole: StoredTensor] = [:], base: BaseIdentity) {
        self.source = source
        self.format = format
        self.config = config
        self.modules = modules
        self.carried = carried
        self.shared = shared
        self.base = base
    }

    public var method: any AdapterMethod { config.method }
    public var variant: String { config.method.variant }

    /// Parameters of the adapter proper (LoRA A/B and biases, embedding A/B, Bone/MiSS blocks).
    public var parameterCount: Int { modules.reduce(0) { $0 + $1.parameterCount } }
    public var carriedParameterCount: Int { carried.reduce(0) { $0 + $1.tensor.elementCount } }
    public var carriedBytes: Int { carried.reduce(0) { $0 + $1.tensor.byteCount } }

    /// Every stored tensor in a stable order: module by module in path order, each in its method's role order, then
    /// the carried tensors, then the shared ones.
    public var allTensors: [StoredTensor] {
        modules.flatMap { module in method.roles.compactMap { module.tensors[$0] } } + carried.map(\.tensor)
            + method.sharedRoles.compactMap { shared[$0] }
    }

    public func module(_ path: String) -> AdaptedModule? { modules.first { $0.path == path } }
}
