import Foundation
import GGUF
import SafeTensors

/// A llama.cpp LoRA adapter: one GGUF file (`general.type` "adapter", `adapter.type` "lora", `adapter.lora.alpha`
/// FLOAT32, `general.architecture` the base's) whose tensors are `<llama.cpp name>.weight.lora_a` and `.lora_b`.
/// spec/gguf.md is the full mapping; in short:
///
/// - lora_a is PEFT's A (numpy r × in, ggml [in, r]), lora_b is PEFT's B (out × r, ggml [r, out]); for token_embd,
///   lora_a is lora_embedding_Aᵀ (vocab × r) and lora_b lora_embedding_B (dim × r).
/// - For Llama-family bases (llama, mistral) lora_b of q_proj and k_proj carries llama.cpp's per-head row permutation
///   of Q and K (n_head for Q, n_kv_head for K, from the base's config.json); reading undoes it.
/// - llama.cpp scales each pair by alpha / r, r being that lora_b's rank. peftkit writes one alpha, the one that makes
///   alpha / r equal PEFT's scaling for most modules, and folds the ratio of the true scaling into lora_b for the rest
///   (rsLoRA, alpha_pattern), so that every module's effect is PEFT's.
///
/// A GGUF adapter names llama.cpp's tensors, not the model's modules, so both directions need the base model
/// (`--base`): its config.json gives the architecture and head counts, its tensors the shapes to check.
public enum GGUFFormat: AdapterFormat {
    public static let id = "gguf"
    public static let writeName: String? = "gguf"
    public static let summary = "llama.cpp LoRA adapter (.gguf; needs --base)"
    public static var needsBase: Bool { true }
    /// `--outtype` values, as llama.cpp's convert_lora_to_gguf.py names them; the first is the default.
    public static let outputTypes = ["f32", "f16", "bf16", "q8_0"]

    static let sourceFormat = SourceFormat(id: id, description: "llama.cpp LoRA adapter (GGUF)")

    /// By the GGUF magic, never by the name.
    public static func claims(_ path: String) throws -> Bool { GGUFFile.hasMagic(path) }

    public static func read(_ path: String) throws -> Adapter {
        throw PEFTKitError(.unsupported, file: path, "a GGUF adapter names llama.cpp's tensors, not the model's modules: "
                           + "reading it needs the base model it belongs to (--base)")
    }

    // MARK: The base

    /// What the conversion needs of the Hugging Face base: architecture, head counts, tensor shapes.
    struct Base {
        let path: String
        let modelType: String
        let architecture: GGUFArchitecture
        let heads: Int
        let kvHeads: Int
        let checkpoint: Checkpoint
        /// No separate lm_head: llama.cpp's GGUF of the base then has no `output` tensor either.
        let tiedEmbeddings: Bool

        init(path: String) throws {
            guard let folder = adapterFolder(of: path) else { throw PEFTKitError(.io, file: path, "no such file or folder") }
            let configPath = (folder as NSString).appendingPathComponent("config.json")
            guard FileManager.default.fileExists(atPath: configPath) else {
                throw PEFTKitError(.invalidConfig, file: configPath, "the base has no config.json (it gives the architecture "
                                   + "and head counts a GGUF conversion needs)")
            }
            let json = try AdapterLoader.readJSON(configPath)
            guard let modelType = json["model_type"]?.stringValue else {
                throw PEFTKitError(.invalidConfig, file: configPath, "missing or non-string field 'model_type'")
            }
            guard let architecture = GGUFArchitecture.forModelType(modelType) else {
                throw PEFTKitError(.unsupported, file: configPath, "not supported: model_type '\(modelType)' has no llama.cpp "
                                   + "tensor mapping in peftkit (it converts \(GGUFFormat.modelTypes))")
            }
            guard let heads = json["num_attention_heads"]?.integerValue, heads > 0, heads <= Int64(Int32.max) else {
                throw PEFTKitError(.invalidConfig, file: configPath, "missing or invalid 'num_attention_heads'")
            }
            let kvHeads = json["num_key_value_heads"]?.integerValue ?? heads
            guard kvHeads > 0, kvHeads <= heads else {
                throw PEFTKitError(.invalidConfig, file: configPath, "invalid 'num_key_value_heads' \(kvHeads)")
            }
            self.path = path
            self.modelType = modelType
            self.architecture = architecture
            self.heads = Int(heads)
            self.kvHeads = Int(kvHeads)
            self.checkpoint = try Checkpoint(path: path)
            self.tiedEmbeddings = json["tie_word_embeddings"]?.boolValue == true || checkpoint.location(of: "lm_head.weight") == nil
        }

        func shape(_ modulePath: String) -> [Int]? { checkpoint.location(of: modulePath + ".weight")?.info.shape }
    }

    static var modelTypes: String { PEFTConfig.listing(GGUFArchitecture.all.flatMap(\.modelTypes)) }

    /// The refusal of an lm_head LoRA on a tied-embedding base.
    static let tiedHeadRefusal = "a LoRA on lm_head of a base with tied embeddings: llama.cpp's GGUF of such a base has no "
        + "'output' tensor to apply it to (llama.cpp's own converter writes it anyway, and llama.cpp crashes loading it)"

    /// The refusal of an embed_tokens LoRA on a tied-embedding base.
    static let tiedEmbeddingRefusal = "a LoRA on embed_tokens of a base with tied embeddings: llama.cpp applies a "
        + "token_embd LoRA to the output projection that shares the tensor too (PEFT to the embedding only), and aborts "
        + "doing it (GGML_ASSERT in build_lora_mm, with its own converter's file as well)"

    // MARK: Writing

    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws {
        guard let basePath = options.base else {
            throw PEFTKitError(.unsupported, file: path, "writing a GGUF adapter needs the base model (--base): its config "
                               + "gives the architecture and head counts llama.cpp's names and Q/K layout depend on")
        }
        let outputType = options.outputType ?? outputTypes[0]
        guard outputTypes.contains(outputType) else {
            throw PEFTKitError(.unsupported, file: path, "GGUF output type '\(outputType)' (peftkit writes \(PEFTConfig.listing(outputTypes)))")
        }
        let base = try Base(path: basePath)
        let bytes = try serialize(adapter, base: base, outputType: outputType, path: path)
        try OutputPath.checkWritable(path, force: options.force, expectFolder: false)
        let (parent, name) = OutputPath.split(path)
        let temporary = OutputPath.sibling(of: parent, name: name, tag: SafeTensorsWriter.temporaryPrefix)
        TemporaryOutputs.shared.register(temporary)
        defer { TemporaryOutputs.shared.unregister(temporary) }
        do {
            try OutputPath.writeFile(temporary, contents: bytes, reportedAs: path)
            try TemporaryOutputs.shared.publish(temporary, as: path) {
                try OutputPath.moveIntoPlace(temporary, path, replacing: options.force)
            }
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// The GGUF image of `adapter` for `base`.
    /// - Throws: `.unsupported` naming what llama.cpp cannot express; `.baseMismatch` when a module misfits the base.
    static func serialize(_ adapter: Adapter, base: Base, outputType: String, path: String) throws -> [UInt8] {
        guard let lora = adapter.method as? LoRA else {
            throw PEFTKitError(.unsupported, file: adapter.source, "llama.cpp adapters are LoRA; this is a "
                               + "\(adapter.config.peftType) adapter, which a GGUF LoRA cannot express")
        }
        var refusals: [String] = []
        if lora.useDoRA { refusals.append("DoRA (use_dora: llama.cpp has no magnitude vectors)") }
        if lora.loraBias { refusals.append("lora_bias (llama.cpp's LoRA has no bias)") }
        if lora.fanInFanOut { refusals.append("fan_in_fan_out (Conv1D weights)") }
        if lora.trainableTokens != nil {
            refusals.append("trainable_token_indices (whole embedding rows; llama.cpp's LoRA has no trainable tokens)")
        }
        if let rewrite = lora.baseRewrite {
            refusals.append("init_lora_weights \"\(rewrite.rawValue)\" (the adapter belongs to a residual of the base, "
                            + "which llama.cpp does not recompute: it would apply the adapter to the base itself)")
        }
        for carried in adapter.carried {
            switch carried.reason {
            case .modulesToSave: refusals.append("modules_to_save: whole tensor '\(carried.baseName)' (a GGUF LoRA carries no whole tensors)")
            case .trainedBias: refusals.append("a trained bias '\(carried.baseName)' (bias: \(adapter.config.bias))")
            case .baseLayer:
                // PEFT saves a copy of a targeted embedding's weight; it may be dropped only if it is the base's own.
                if try !sameAsBase(carried, base: base) {
                    refusals.append("'\(carried.baseName)' saved with the adapter differs from the base's (new tokens?)")
                }
            }
        }
        var misfits: [String] = []
        for module in adapter.modules {
            let pairRoles: Set<TensorRole> = module.kind == .embedding ? [LoRA.embeddingA, LoRA.embeddingB] : [LoRA.a, LoRA.b]
            // DoRA's magnitudes are refused once, above.
            let roles = Set(module.tensors.keys).subtracting(lora.useDoRA ? [LoRA.magnitude] : [])
            guard roles == pairRoles else {
                let extra = roles.subtracting(pairRoles).map(\.rawValue).sorted()
                refusals.append("module '\(module.path)' has tensors a llama.cpp LoRA pair cannot hold: "
                                + (extra.isEmpty ? "no A and B" : extra.joined(separator: ", ")))
                continue
            }
            guard let name = base.architecture.ggufName(of: module.path) else {
                refusals.append("module '\(module.path)' has no llama.cpp tensor in architecture '\(base.architecture.name)'")
                continue
            }
            if name == GGUFArchitecture.head.gguf && base.tiedEmbeddings { refusals.append(tiedHeadRefusal) }
            if name == GGUFArchitecture.embedding.gguf && base.tiedEmbeddings { refusals.append(tiedEmbeddingRefusal) }
            if name == GGUFArchitecture.embedding.gguf, !base.tiedEmbeddings, let refusal = base.architecture.embeddingRefusal {
                refusals.append(refusal)
            }
            let (a, b) = pair(module)
            let expected = module.kind == .embedding ? [a.shape[1], b.shape[0]] : [b.shape[0], a.shape[1]]
            guard let actual = base.shape(module.path) else {
                if name != GGUFArchitecture.head.gguf { misfits.append("module '\(module.path)': base has no tensor '\(module.weightName)'") }
                continue
            }
            if actual != expected { misfits.append("module '\(module.path)': needs a \(expected) weight, the base has \(actual)") }
            if let heads = base.architecture.permutation(of: module.path, heads: base.heads, kvHeads: base.kvHeads),
               expected[0] % (2 * heads) != 0 {
                misfits.append("module '\(module.path)': \(expected[0]) rows do not split into \(heads) heads of even size")
            }
        }
        guard refusals.isEmpty else {
            throw PEFTKitError(.unsupported, file: adapter.source, "a llama.cpp GGUF adapter cannot express "
                               + (refusals.count == 1 ? refusals[0] : "\(refusals.count) things in this adapter"),
                               details: refusals.count == 1 ? [] : refusals)
        }
        guard misfits.isEmpty else {
            throw PEFTKitError(.baseMismatch, file: base.path, "the adapter does not fit this base model", details: misfits)
        }
        guard !adapter.modules.isEmpty else {
            throw PEFTKitError(.unsupported, file: adapter.source, "a llama.cpp GGUF adapter cannot express an adapter without LoRA modules")
        }

        let alpha = chooseAlpha(adapter.modules)
        var tensors: [GGUFWriter.Tensor] = []
        for module in adapter.modules {
            let name = base.architecture.ggufName(of: module.path)! + ".weight"
            let (a, b) = pair(module)
            let rank = module.rank
            var aValues = try a.floats()
            var aShape = a.shape  // numpy order
            if module.kind == .embedding {
                aValues = LinearAlgebra.transpose(aValues, rows: aShape[0], columns: aShape[1])
                aShape = [aShape[1], aShape[0]]
            }
            var bValues = try b.floats()
            let factor = foldFactor(scaling: module.scaling, alpha: alpha, rank: rank)
            if factor != 1 { bValues = bValues.map { Float(Double($0) * factor) } }
            if let heads = base.architecture.permutation(of: module.path, heads: base.heads, kvHeads: base.kvHeads) {
                bValues = permuteRows(bValues, rows: b.shape[0], columns: rank, heads: heads, inverse: false)
            }
            tensors.append(try encode(aValues, shape: aShape, name: name + ".lora_a", outputType: outputType, path: path))
            tensors.append(try encode(bValues, shape: b.shape, name: name + ".lora_b", outputType: outputType, path: path))
        }
        let keyValues = [
            GGUFKeyValue("general.architecture", .string(base.architecture.name)),
            GGUFKeyValue("general.type", .string("adapter")),
            GGUFKeyValue("adapter.type", .string("lora")),
            GGUFKeyValue("adapter.lora.alpha", .float32(alpha)),
        ]
        do {
            return try GGUFWriter.serialize(keyValues: keyValues, tensors: tensors, file: path)
        } catch let error as GGUFError {
            throw PEFTKitError(.unsupported, file: path, tensor: error.subject, error.detail)
        }
    }

    /// The module's A and B (embedding or linear roles).
    static func pair(_ module: AdaptedModule) -> (a: StoredTensor, b: StoredTensor) {
        module.kind == .embedding
            ? (module.tensors[LoRA.embeddingA]!, module.tensors[LoRA.embeddingB]!)
            : (module.tensors[LoRA.a]!, module.tensors[LoRA.b]!)
    }

    /// The scale llama.cpp applies to a pair of rank `rank` (llama-adapter / llama-graph: alpha / rank in float, or 1
    /// when alpha is 0).
    static func llamaScale(alpha: Float, rank: Int) -> Float { alpha == 0 ? 1 : alpha / Float(rank) }

    /// The one alpha: the value of scaling · r most modules share (so that alpha / r is their scaling and their B
    /// is written untouched); ties go to the largest.
    static func chooseAlpha(_ modules: [AdaptedModule]) -> Float {
        let products = modules.map { Float($0.scaling * Double($0.rank)) }
        let counts = Dictionary(grouping: products, by: { $0 }).mapValues(\.count)
        return counts.max { ($0.value, $0.key) < ($1.value, $1.key) }!.key
    }

    /// What lora_b must be multiplied by so that llama.cpp's scale times it is PEFT's scaling: 1 when the two scales
    /// are the same float (what PEFT multiplies by is its scaling as a float32).
    static func foldFactor(scaling: Double, alpha: Float, rank: Int) -> Double {
        let llama = llamaScale(alpha: alpha, rank: rank)
        return Float(scaling) == llama ? 1 : scaling / Double(llama)
    }

    /// Whether a carried `base_layer` copy holds exactly the base tensor's values.
    static func sameAsBase(_ carried: CarriedTensor, base: Base) throws -> Bool {
        // A tied head's saved copy is the embedding's.
        let name = carried.baseName == GGUFArchitecture.head.hf + ".weight" && base.tiedEmbeddings
            ? GGUFArchitecture.embedding.hf + ".weight" : carried.baseName
        return try carried.isUnchangedCopy(in: base.checkpoint, of: name)
    }

    /// llama.cpp's Q/K permutation of rows, `W.reshape(heads, 2, rows/heads/2, …).swapaxes(1, 2)`: within each head,
    /// row i·half + j moves to 2·j + i. `inverse` undoes it.
    static func permuteRows<T>(_ values: [T], rows: Int, columns: Int, heads: Int, inverse: Bool) -> [T] {
        let half = rows / heads / 2
        var out = values
        for h in 0..<heads {
            for i in 0..<2 {
                for j in 0..<half {
                    let natural = h * 2 * half + i * half + j, permuted = h * 2 * half + 2 * j + i
                    let (from, to) = inverse ? (permuted, natural) : (natural, permuted)
                    for c in 0..<columns { out[to * columns + c] = values[from * columns + c] }
                }
            }
        }
        return out
    }

    /// A numpy-shaped matrix of floats as a GGUF tensor of the output type. q8_0 as llama.cpp's converter does it:
    /// Q8_0 when a row is a whole number of 32-value blocks, else F16.
    static func encode(_ values: [Float], shape: [Int], name: String, outputType: String, path: String) throws -> GGUFWriter.Tensor {
        let dims = Array(shape.reversed())
        let dtype: DType
        switch outputType {
        case "q8_0" where shape[shape.count - 1] % Q8_0.blockSize == 0:
            guard values.allSatisfy({ $0.isFinite }) else { throw overflow(name, outputType, path) }
            return GGUFWriter.Tensor(name: name, type: .q8_0, dimensions: dims, bytes: Q8_0.quantize(values))
        case "q8_0", "f16": dtype = .f16
        case "bf16": dtype = .bf16
        default: dtype = .f32
        }
        var bytes = [UInt8](repeating: 0, count: values.count * dtype.bitWidth / 8)
        let nonFinite = bytes.withUnsafeMutableBytes { raw in values.withUnsafeBufferPointer { Codec.encode($0, as: dtype, into: raw) } }
        if nonFinite { throw overflow(name, outputType, path) }
        let type: GGMLType = dtype == .f16 ? .f16 : dtype == .bf16 ? .bf16 : .f32
        return GGUFWriter.Tensor(name: name, type: type, dimensions: dims, bytes: bytes)
    }

    static func overflow(_ name: String, _ outputType: String, _ path: String) -> PEFTKitError {
        PEFTKitError(.numerics, file: path, tensor: name, "has values that are not finite in \(outputType) (use --outtype f32)")
    }
}

// MARK: Reading

extension GGUFFormat {
    /// Keys of the `adapter.` namespace peftkit understands; any other (llama.cpp's aLoRA invocation tokens, a
    /// newer field) changes what the adapter does in ways peftkit cannot tell, and is refused.
    static let knownAdapterKeys: Set<String> = ["adapter.type", "adapter.lora.alpha"]

    public static func read(_ path: String, base basePath: String?) throws -> Adapter {
        guard let basePath else { return try read(path) }
        let file = try GGUFFile(path: path)
        let base = try Base(path: basePath)
        guard case .string(let type)? = file.value("general.type") else {
            throw PEFTKitError(.invalidConfig, file: path, "no string 'general.type': not a llama.cpp adapter")
        }
        guard type == "adapter" else {
            throw PEFTKitError(.invalidConfig, file: path, "general.type is '\(type)', not 'adapter'"
                               + (type == "model" ? " (a model file, not an adapter: inspect it with peftkit inspect)" : ""))
        }
        guard case .string(let adapterType)? = file.value("adapter.type") else {
            throw PEFTKitError(.invalidConfig, file: path, "no string 'adapter.type'")
        }
        guard adapterType == "lora" else {
            throw PEFTKitError(.unsupported, file: path, "not supported: adapter.type '\(adapterType)' (peftkit reads 'lora')")
        }
        var alpha: Float = 0
        switch file.value("adapter.lora.alpha") {
        case nil: break
        case .float32(let a)?:
            guard a.isFinite else { throw PEFTKitError(.invalidConfig, file: path, "adapter.lora.alpha is \(a)") }
            alpha = a
        case let other?:
            throw PEFTKitError(.invalidConfig, file: path, "adapter.lora.alpha is \(other.type.name); llama.cpp reads it "
                               + "as FLOAT32 and aborts on any other type")
        }
        if let unknown = file.keyValues.first(where: { $0.key.hasPrefix("adapter.") && !knownAdapterKeys.contains($0.key) }) {
            throw PEFTKitError(.unsupported, file: path, "not supported: '\(unknown.key)'"
                               + (unknown.key.hasPrefix("adapter.alora.") ? " (activated LoRA)" : "")
                               + "; peftkit cannot tell how it changes the adapter")
        }
        guard case .string(let architecture)? = file.value("general.architecture") else {
            throw PEFTKitError(.invalidConfig, file: path, "no string 'general.architecture'")
        }
        guard architecture == base.architecture.name else {
            if !GGUFArchitecture.all.contains(where: { $0.name == architecture }) {
                throw PEFTKitError(.unsupported, file: path, "not supported: architecture '\(architecture)' (peftkit maps "
                                   + PEFTConfig.listing(GGUFArchitecture.all.map(\.name)) + ")")
            }
            throw PEFTKitError(.baseMismatch, file: path, "the adapter is for architecture '\(architecture)', the base "
                               + "(model_type '\(base.modelType)') converts to '\(base.architecture.name)'")
        }

        // Pair the tensors up by module.
        var pairs: [String: (a: GGUFTensorInfo?, b: GGUFTensorInfo?)] = [:]
        var problems: [String] = []
        for info in file.tensors {
            guard [.f32, .f16, .bf16, .q8_0].contains(info.type) else {
                throw PEFTKitError(.unsupported, file: path, tensor: info.name,
                                   "not supported: ggml type \(info.type.name) in an adapter (peftkit reads F32, F16, BF16 and Q8_0)")
            }
            let isA = info.name.hasSuffix(".weight.lora_a"), isB = info.name.hasSuffix(".weight.lora_b")
            guard isA || isB else {
                problems.append("tensor '\(info.name)' is not a LoRA tensor (<name>.weight.lora_a or .lora_b)"
                                + (info.name.contains("_norm") ? "; whole norm tensors (mergekit's) are not converted" : ""))
                continue
            }
            let ggufName = String(info.name.dropLast(".weight.lora_a".count))
            guard let module = base.architecture.modulePath(of: ggufName) else {
                problems.append("tensor '\(info.name)': '\(ggufName)' is no module of architecture '\(architecture)' that peftkit maps")
                continue
            }
            if isA { pairs[module, default: (nil, nil)].a = info } else { pairs[module, default: (nil, nil)].b = info }
        }
        var tensors: [StoredTensor] = []
        var ranks: [String: Int] = [:]
        var misfits: [String] = []
        for module in pairs.keys.sorted() {
            let name = base.architecture.ggufName(of: module)! + ".weight"
            guard let a = pairs[module]!.a, let b = pairs[module]!.b else {
                problems.append(pairs[module]!.a == nil ? "'\(name).lora_b' has no '\(name).lora_a'" : "'\(name).lora_a' has no '\(name).lora_b'")
                continue
            }
            guard a.dimensions.count == 2, b.dimensions.count == 2 else {
                problems.append("'\(name)': lora_a \(a.dimensions) and lora_b \(b.dimensions) must be matrices")
                continue
            }
            let embedding = module == GGUFArchitecture.embedding.hf
            // numpy shapes: linear A (r, in), B (out, r); embedding lora_a (vocab, r), lora_b (dim, r).
            let rank = embedding ? a.shape[1] : a.shape[0]
            guard b.shape[1] == rank, rank > 0 else {
                problems.append("'\(name)': lora_a \(a.shape) and lora_b \(b.shape) (numpy order) disagree on the rank")
                continue
            }
            let expected = embedding ? [a.shape[0], b.shape[0]] : [b.shape[0], a.shape[1]]
            if module == GGUFArchitecture.head.hf && base.tiedEmbeddings {
                throw PEFTKitError(.unsupported, file: path, tensor: name, "not supported: " + tiedHeadRefusal)
            }
            if embedding && base.tiedEmbeddings {
                throw PEFTKitError(.unsupported, file: path, tensor: name, "not supported: " + tiedEmbeddingRefusal)
            }
            if embedding, let refusal = base.architecture.embeddingRefusal {
                throw PEFTKitError(.unsupported, file: path, tensor: name, "not supported: " + refusal)
            }
            guard let actual = base.shape(module) else {
                misfits.append("'\(name)': base has no tensor '\(module).weight'")
                continue
            }
            guard actual == expected else {
                misfits.append("'\(name)': needs a \(expected) weight '\(module).weight', the base has \(actual)")
                continue
            }
            let heads = base.architecture.permutation(of: module, heads: base.heads, kvHeads: base.kvHeads)
            if let heads, b.shape[0] % (2 * heads) != 0 {
                misfits.append("'\(name)': \(b.shape[0]) rows do not split into \(heads) heads of even size")
                continue
            }
            var aTensor = try storedTensor(file, a, path: path)
            var bTensor = try storedTensor(file, b, path: path)
            if let heads {
                let bytes = try bTensor.withBytes { Array($0) }
                let size = bTensor.dtype.bitWidth / 8
                let rows = permuteRows(bytes, rows: b.shape[0], columns: rank * size, heads: heads, inverse: true)
                bTensor = StoredTensor(name: "", dtype: bTensor.dtype, shape: bTensor.shape, bytes: rows)
            }
            let prefix = PEFTKeys.prefix + module + "."
            if embedding {
                aTensor = try MLXFormat.transposed(aTensor, name: prefix + LoRA.embeddingA.rawValue)
                bTensor = try rename(bTensor, prefix + LoRA.embeddingB.rawValue)
            } else {
                aTensor = try rename(aTensor, prefix + LoRA.a.rawValue)
                bTensor = try rename(bTensor, prefix + LoRA.b.rawValue)
            }
            tensors += [aTensor, bTensor]
            ranks[module] = rank
        }
        guard problems.isEmpty else {
            throw PEFTKitError(.inconsistentAdapter, file: path, "\(problems.count) problem(s) in the GGUF adapter's tensors",
                               details: problems)
        }
        guard misfits.isEmpty else {
            throw PEFTKitError(.baseMismatch, file: basePath, "the adapter does not fit this base model", details: misfits)
        }
        guard !ranks.isEmpty else { throw PEFTKitError(.inconsistentAdapter, file: path, "the adapter has no tensors") }
        return try PEFTKeys.adapter(config: try PEFTConfig.parse(config(ranks: ranks, alpha: alpha, base: basePath), source: path),
                                    tensors: tensors, source: path, format: sourceFormat)
    }

    /// PEFT's config for llama.cpp's scaling alpha / r of each module: r the most common rank, `lora_alpha` alpha
    /// (or, when alpha is 0 — no scaling — r, with an alpha_pattern entry equal to the rank of every other module),
    /// rank_pattern entries by full module path for the others.
    static func config(ranks: [String: Int], alpha: Float, base: String) -> JSONValue {
        let counts = Dictionary(grouping: ranks.values, by: { $0 }).mapValues(\.count)
        let r = counts.max { ($0.value, $0.key) < ($1.value, $1.key) }!.key
        let others = ranks.filter { $0.value != r }.sorted { $0.key < $1.key }
        let targets = Set(ranks.keys.map { String($0.split(separator: ".").last!) }).sorted()
        var members: [(String, JSONValue)] = [
            ("alpha_pattern", .object(alpha == 0 ? others.map { ($0.key, .integer(Int64($0.value))) } : [])),
            ("base_model_name_or_path", .string(base)),
            ("bias", .string("none")),
            ("lora_alpha", alpha == 0 ? .integer(Int64(r)) : .finite(Double(alpha))),
            ("lora_dropout", .finite(0)),
            ("peft_type", .string("LORA")),
            ("r", .integer(Int64(r))),
            ("rank_pattern", .object(others.map { ($0.key, .integer(Int64($0.value))) })),
            ("target_modules", .array(targets.map { .string($0) })),
            ("task_type", .string("CAUSAL_LM")),
        ]
        members.append(("use_rslora", .bool(false)))
        return .object(members)
    }

    /// A GGUF tensor as a PEFT tensor of the same bytes (F32, F16, BF16), or dequantized to F32 (Q8_0).
    static func storedTensor(_ file: GGUFFile, _ info: GGUFTensorInfo, path: String) throws -> StoredTensor {
        let bytes = try file.bytes(of: info)
        switch info.type {
        case .f32: return StoredTensor(name: info.name, dtype: .f32, shape: info.shape, bytes: bytes)
        case .f16: return StoredTensor(name: info.name, dtype: .f16, shape: info.shape, bytes: bytes)
        case .bf16: return StoredTensor(name: info.name, dtype: .bf16, shape: info.shape, bytes: bytes)
        case .q8_0:
            let values = Q8_0.dequantize(bytes, count: info.elementCount)
            let out = values.withUnsafeBytes { Array($0) }
            return StoredTensor(name: info.name, dtype: .f32, shape: info.shape, bytes: out)
        default:
            throw PEFTKitError(.unsupported, file: path, tensor: info.name,
                               "not supported: ggml type \(info.type.name) in an adapter (peftkit reads F32, F16, BF16 and Q8_0)")
        }
    }

    static func rename(_ tensor: StoredTensor, _ name: String) throws -> StoredTensor {
        StoredTensor(name: name, dtype: tensor.dtype, shape: tensor.shape, bytes: try tensor.withBytes { Array($0) })
    }
}
