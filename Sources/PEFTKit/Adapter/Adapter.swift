import SafeTensors

/// The fine-tuning methods peftkit can apply.
public enum AdapterMethod: String, Sendable, CaseIterable {
    case lora, bone, miss

    /// `peft_type` as written in `adapter_config.json`.
    public var peftType: String { rawValue.uppercased() }
}

/// The variant of a method: Bone and MiSS have a block-affine one (`bat`), MiSS a shared-block one (`mini`).
public enum AdapterVariant: String, Sendable {
    case standard = "default"
    case bat
    case mini
}

/// A tensor of an adapter, wherever its bytes live (a mapped safetensors file or memory read from a legacy `.bin`).
public struct StoredTensor: Sendable {
    /// The name in the adapter file.
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    private let storage: Storage

    private enum Storage: Sendable {
        case mapped(TensorView)
        case memory([UInt8])
    }

    public init(view: TensorView) {
        name = view.info.name
        dtype = view.info.dtype
        shape = view.info.shape
        storage = .mapped(view)
    }

    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        storage = .memory(bytes)
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { elementCount * dtype.bitWidth / 8 }

    /// Calls `body` with the raw little-endian bytes. For a mapped tensor, the file is checked before and after:
    /// if it shrank meanwhile, what `body` read is not the tensor, and this throws.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        switch storage {
        case .mapped(let view):
            try view.file.checkUnchanged()
            let result: R
            do {
                result = try body(view.bytes)
            } catch {
                try view.file.checkUnchanged()  // a failed write from a vanished page: say why
                throw error
            }
            try view.file.checkUnchanged()
            return result
        case .memory(let bytes):
            return try bytes.withUnsafeBytes(body)
        }
    }

    /// Drops the pages of `bytes` (a range within the tensor) from the resident set, for mapped tensors.
    public func release(bytes range: Range<Int>) {
        guard case .mapped(let view) = storage else { return }
        let offsets = view.info.dataOffsets
        view.file.release(TensorInfo(name: name, dtype: dtype, shape: [range.count / max(dtype.bitWidth / 8, 1)],
                                     dataOffsets: offsets.lowerBound + range.lowerBound ..< offsets.lowerBound + range.upperBound))
    }

    /// The values as Float32 (every adapter tensor is a float type; checked when the adapter is built). The mapped
    /// pages read are released afterwards: the decoded copy is what callers keep.
    public func floats() throws -> [Float] {
        defer { release(bytes: 0..<byteCount) }
        return try withBytes { raw in
            [Float](unsafeUninitializedCapacity: elementCount) { buffer, initialized in
                Codec.decode(raw, as: dtype, into: buffer)
                initialized = elementCount
            }
        }
    }
}

/// One module of the base model changed by the adapter, with every parameter needed to apply it resolved.
public struct AdaptedModule: Sendable {
    /// What the module computes, which decides how a LoRA delta is laid onto its weight.
    public enum Kind: String, Sendable {
        case linear
        case embedding
    }

    /// The module's path in the base model, e.g. `model.layers.0.self_attn.q_proj`.
    public let path: String
    public let kind: Kind
    /// The rank: LoRA's r after `rank_pattern`, or the Bone/MiSS block size r.
    public let rank: Int
    /// LoRA's alpha after `alpha_pattern`; nil for block methods.
    public let alpha: Double?
    /// LoRA's scaling (alpha / r, or alpha / √r with rsLoRA); 1 for block methods.
    public let scaling: Double
    /// MiSS `mini`: the width of the shared block.
    public let miniRank: Int?
    /// The adapter's tensors for this module, by role.
    public let tensors: [Role: StoredTensor]

    /// What each tensor is for; the raw value is the suffix PEFT gives it after the module path.
    public enum Role: String, Sendable, CaseIterable {
        case loraA = "lora_A.weight"
        case loraB = "lora_B.weight"
        case loraBias = "lora_B.bias"
        case embeddingA = "lora_embedding_A"
        case embeddingB = "lora_embedding_B"
        case boneBlock = "bone_block"
        case missBlock = "miss_block"
    }

    public init(path: String, kind: Kind, rank: Int, alpha: Double?, scaling: Double, miniRank: Int?,
                tensors: [Role: StoredTensor]) {
        self.path = path
        self.kind = kind
        self.rank = rank
        self.alpha = alpha
        self.scaling = scaling
        self.miniRank = miniRank
        self.tensors = tensors
    }

    public var weightName: String { path + ".weight" }
    public var biasName: String { path + ".bias" }
    public var parameterCount: Int { tensors.values.reduce(0) { $0 + $1.elementCount } }

    /// The Bone or MiSS block, whichever the module has.
    public var block: StoredTensor? { tensors[.boneBlock] ?? tensors[.missBlock] }
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

/// A fine-tuning adapter: its method, config, and every adapted module with its tensors.
public struct Adapter: Sendable {
    public enum Format: Sendable, Equatable {
        /// A PEFT folder with `adapter_model.safetensors`.
        case peftSafetensors
        /// A PEFT folder with a legacy pickled `adapter_model.bin`.
        case peftBin
        /// A single peftkit file, with its spec version.
        case peftkit(version: String)

        public var description: String {
            switch self {
            case .peftSafetensors: "PEFT folder (safetensors)"
            case .peftBin: "PEFT folder (legacy adapter_model.bin)"
            case .peftkit(let version): "peftkit file, format \(version)"
            }
        }
    }

    /// The path as given by the user.
    public let source: String
    public let format: Format
    public let method: AdapterMethod
    public let variant: AdapterVariant
    public let config: PEFTConfig
    /// Sorted by module path.
    public let modules: [AdaptedModule]
    public let carried: [CarriedTensor]
    public var base: BaseIdentity

    /// Parameters of the adapter proper (LoRA A/B and biases, embedding A/B, Bone/MiSS blocks).
    public var parameterCount: Int { modules.reduce(0) { $0 + $1.parameterCount } }
    public var carriedParameterCount: Int { carried.reduce(0) { $0 + $1.tensor.elementCount } }
    public var carriedBytes: Int { carried.reduce(0) { $0 + $1.tensor.byteCount } }

    /// Every stored tensor, in a stable order, with the name PEFT gives it in `adapter_model.safetensors`.
    public var allTensors: [StoredTensor] {
        let moduleTensors = modules.flatMap { module in
            AdaptedModule.Role.allCases.compactMap { module.tensors[$0] }
        }
        return moduleTensors + carried.map(\.tensor)
    }

    public func module(_ path: String) -> AdaptedModule? { modules.first { $0.path == path } }
}
