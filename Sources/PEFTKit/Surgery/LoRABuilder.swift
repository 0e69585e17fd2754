import Foundation
import SafeTensors

/// Assembles the LoRA adapter a surgery command writes: its modules' factors (computed in Float32, rounded once to
/// the output dtype), the whole tensors it carries, and a config PEFT loads. The adapter goes through the same
/// `PEFTKeys.adapter` checks as one read from disk, so what is written is what `peftkit merge` and PEFT read.
///
/// Every module's scaling is 1: alpha = r for each module (`lora_alpha` = `r` for the most common rank, the others in
/// `rank_pattern` and `alpha_pattern` under their full module path, as PEFT's own EVA init writes them), and
/// `use_rslora` is false.
struct LoRABuilder {
    /// A module's factors, already rounded to the output dtype: the tensors as they will be written (their bytes in
    /// memory, or in a spill file when one is given).
    struct Module {
        let path: String
        let kind: AdaptedModule.Kind
        let rank: Int
        let tensors: [StoredTensor]

        /// `bias` is `lora_B.bias`, already multiplied by the module's scaling.
        init(path: String, kind: AdaptedModule.Kind, factors: LowRankFactors, bias: [Float]? = nil, dtype: DType,
             spill: SpillFile? = nil) throws {
            self.path = path
            self.kind = kind
            rank = factors.rank
            let prefix = PEFTKeys.prefix + path + "."
            let (aName, bName) = kind == .linear ? ("lora_A.weight", "lora_B.weight") : ("lora_embedding_A", "lora_embedding_B")
            var parts = [(prefix + aName, [rank, factors.inFeatures], factors.a),
                         (prefix + bName, [factors.outFeatures, rank], factors.b)]
            if let bias { parts.append((prefix + "lora_B.bias", [factors.outFeatures], bias)) }
            tensors = try parts.map { name, shape, values in
                let bytes = LoRABuilder.encode(values, dtype)
                guard let spill else { return StoredTensor(name: name, dtype: dtype, shape: shape, bytes: bytes) }
                return StoredTensor(name: name, dtype: dtype, shape: shape, spill: spill, offset: try spill.append(bytes))
            }
        }
    }

    var modules: [Module] = []
    var carried: [CarriedTensor] = []
    /// The output dtype of the factors.
    let dtype: DType

    init(dtype: DType) { self.dtype = dtype }

    static func encode(_ values: [Float], _ dtype: DType) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: values.count * dtype.bitWidth / 8)
        values.withUnsafeBufferPointer { source in
            bytes.withUnsafeMutableBytes { _ = Codec.encode(source, as: dtype, into: $0) }
        }
        return bytes
    }

    static func decode(_ bytes: [UInt8], _ dtype: DType) -> [Float] {
        bytes.withUnsafeBytes { Codec.decode($0, as: dtype, count: bytes.count / (dtype.bitWidth / 8)) }
    }

    /// The most common module rank (the larger on a tie): the config's `r`.
    var commonRank: Int {
        var counts: [Int: Int] = [:]
        for module in modules { counts[module.rank, default: 0] += 1 }
        return counts.max { ($0.value, $0.key) < ($1.value, $1.key) }?.key ?? 1
    }

    /// The config: `template`'s members (for resize and combine, the source adapter's config; for extract, a fresh
    /// LoRA config) with the rank fields, `target_modules` and `use_rslora` replaced, new members appended.
    func config(template: [(key: String, value: JSONValue)], targetModules: JSONValue? = nil,
                modulesToSave: [String]? = nil) -> JSONValue {
        let r = commonRank
        var patterns: [(key: String, value: JSONValue)] = []
        for module in modules where module.rank != r {
            patterns.append((module.path, .integer(Int64(module.rank))))
        }
        var members = template
        func set(_ key: String, _ value: JSONValue) {
            if let index = members.firstIndex(where: { $0.key == key }) { members[index].value = value }
            else { members.append((key, value)) }
        }
        set("r", .integer(Int64(r)))
        set("lora_alpha", .integer(Int64(r)))
        set("rank_pattern", .object(patterns))
        set("alpha_pattern", .object(patterns))
        set("use_rslora", .bool(false))
        if let targetModules { set("target_modules", targetModules) }
        if let modulesToSave { set("modules_to_save", modulesToSave.isEmpty ? .null : .array(modulesToSave.map { .string($0) })) }
        return .object(members)
    }

    /// The adapter, checked as a read one is.
    func adapter(config json: JSONValue, source: String) throws -> Adapter {
        let config = try PEFTConfig.parse(json, source: source)
        var tensors: [StoredTensor] = []
        for module in modules.sorted(by: { $0.path < $1.path }) { tensors += module.tensors }
        for item in carried {
            let name = PEFTKeys.key(item)
            tensors.append(item.tensor.name == name ? item.tensor
                : try item.tensor.withBytes { StoredTensor(name: name, dtype: item.tensor.dtype, shape: item.tensor.shape, bytes: [UInt8]($0)) })
        }
        return try PEFTKeys.adapter(config: config, tensors: tensors, source: source,
                                    format: SourceFormat(id: "surgery", description: "computed by peftkit"))
    }
}

extension JSONValue {
    /// A config object's members, or none.
    var members: [(key: String, value: JSONValue)] { objectValue ?? [] }
}

extension LoRA {
    /// Why resize or combine (`action`: "resizing", "combining") cannot rewrite this LoRA exactly, or nil.
    func surgeryRefusal(_ action: String) -> String? {
        if let baseRewrite {
            return "not supported: \(action) a \(baseRewrite.title) adapter (init_lora_weights \"\(baseRewrite.rawValue)\": "
                + "PEFT rebuilds the base's residual from the adapter's rank when it loads it, so a rewritten adapter "
                + "would be applied to another base; save it with PEFT's path_initial_model_for_weight_conversion first)"
        }
        if trainableTokens != nil {
            return "not supported: \(action) an adapter with trainable_token_indices (its embedding rows are not "
                + "low-rank factors, and the rewritten adapter would lose them)"
        }
        return nil
    }
}
