import Foundation
import SafeTensors

/// An mlx-lm LoRA adapter folder: `adapter_config.json` (`fine_tune_type`, `num_layers`,
/// `lora_parameters {rank, scale, dropout, keys}`) and `adapters.safetensors`, whose keys are the model's module paths
/// (`model.layers.0.self_attn.q_proj.lora_a`). mlx-lm computes `y = W·x + scale · (x · lora_a) · lora_b`, so
/// lora_a = Aᵀ (in × r) and lora_b = Bᵀ (r × out) of PEFT's A and B (for an embedding, lora_a = lora_embedding_Aᵀ,
/// lora_b = lora_embedding_Bᵀ); no Q/K permutation.
///
/// mlx-lm has one rank and one scale per adapter. Written exactly anyway: modules of smaller rank are padded with
/// zeros to the largest (a zero term adds exactly nothing), and a module whose scale differs from the adapter's by a
/// power of two has that factor folded into lora_b (exact). Other differences would round, and are refused. The keys
/// name every module by its full path, which mlx-lm matches at the model level wherever the module sits, so
/// `num_layers` (-1) restricts nothing.
public enum MLXFormat: AdapterFormat {
    public static let id = "mlx-lm"
    public static let writeName: String? = "mlx"
    public static let summary = "mlx-lm adapter folder (adapters.safetensors)"

    public static let configFileName = "adapter_config.json"
    public static let weightsFileName = "adapters.safetensors"

    static let sourceFormat = SourceFormat(id: id, description: "mlx-lm adapter folder")
    /// A LoRA on the input embedding or the output head is right in mlx-lm only on a base whose head is its own.
    public static var usesBase: Bool { true }

    /// The folder `path` is or lies in, when it holds mlx-lm's two files and the config is mlx-lm's (it has
    /// `lora_parameters` or `fine_tune_type`, which PEFT's never has).
    static func folder(of path: String) -> String? {
        guard let folder = adapterFolder(of: path) else { return nil }
        let file = { (name: String) in (folder as NSString).appendingPathComponent(name) }
        guard FileManager.default.fileExists(atPath: file(weightsFileName)),
              let config = try? AdapterLoader.readJSON(file(configFileName)),
              config["lora_parameters"] != nil || config["fine_tune_type"] != nil else { return nil }
        return folder
    }

    public static func claims(_ path: String) throws -> Bool { folder(of: path) != nil }

    // MARK: Reading

    public static func read(_ path: String) throws -> Adapter {
        let folder = folder(of: path) ?? path
        let configPath = (folder as NSString).appendingPathComponent(configFileName)
        let weightsPath = (folder as NSString).appendingPathComponent(weightsFileName)
        let json = try AdapterLoader.readJSON(configPath)
        let fineTuneType = json["fine_tune_type"]?.stringValue ?? "lora"
        guard fineTuneType == "lora" || fineTuneType == "dora" else {
            throw PEFTKitError(.unsupported, file: configPath, "not supported yet: mlx-lm fine_tune_type '\(fineTuneType)' "
                               + "(peftkit reads mlx-lm LoRA and DoRA adapters)")
        }
        let dora = fineTuneType == "dora"
        guard let parameters = json["lora_parameters"],
              let rank = parameters["rank"]?.integerValue, rank > 0, rank <= Int64(Int32.max),
              let scale = parameters["scale"]?.doubleValue, scale.isFinite else {
            throw PEFTKitError(.invalidConfig, file: configPath,
                               "'lora_parameters' needs a positive integer 'rank' and a finite number 'scale'")
        }

        let weights = try SafeTensorsFile(path: weightsPath)
        var tensors: [StoredTensor] = []
        var targets = Set<String>()
        for info in weights.tensors {
            if dora && info.name.hasSuffix(".m") && info.shape.count == 1 {
                // DoRA's magnitude: mlx-lm's m is PEFT's lora_magnitude_vector (one entry per output), as stored.
                let module = String(info.name.dropLast(2))
                guard !MergePlan.isInputEmbedding(module + ".weight") else {
                    throw PEFTKitError(.unsupported, file: weightsPath, tensor: info.name,
                                       "not supported: a DoRA embedding (mlx-lm's DoRAEmbedding and PEFT's differ)")
                }
                var view = StoredTensor(view: try weights.view(info))
                view = StoredTensor(name: PEFTKeys.prefix + module + "." + LoRA.magnitude.rawValue, dtype: view.dtype,
                                    shape: view.shape, bytes: try view.withBytes { Array($0) })
                tensors.append(view)
                continue
            }
            let isA = info.name.hasSuffix(".lora_a"), isB = info.name.hasSuffix(".lora_b")
            guard isA || isB, info.shape.count == 2 else {
                throw PEFTKitError(.inconsistentAdapter, file: weightsPath, tensor: info.name,
                                   "not an mlx-lm LoRA tensor (a matrix named <module>.lora_a or <module>.lora_b)")
            }
            let module = String(info.name.dropLast(7))
            let embedding = MergePlan.isInputEmbedding(module + ".weight")
            let role = isA ? (embedding ? LoRA.embeddingA : LoRA.a) : (embedding ? LoRA.embeddingB : LoRA.b)
            let view = StoredTensor(view: try weights.view(info))
            tensors.append(try transposed(view, name: PEFTKeys.prefix + module + "." + role.rawValue))
            targets.insert(String(module.split(separator: ".").last ?? Substring(module)))
        }
        let patterns = try unpad(&tensors, rank: Int(rank), scale: scale)
        // PEFT's scaling is alpha / r: alpha = scale · r gives back mlx-lm's scale.
        let config = JSONValue.object([
            ("base_model_name_or_path", .null),
            ("lora_alpha", .finite(scale * Double(rank))),
            ("peft_type", .string("LORA")),
            ("r", .integer(rank)),
            ("target_modules", .array(targets.sorted().map { .string($0) })),
        ] + (dora ? [("use_dora", .bool(true))] : [])
          + (patterns.isEmpty ? [] : [
            ("rank_pattern", .object(patterns.map { ($0.module, .integer(Int64($0.rank))) })),
            ("alpha_pattern", .object(patterns.map { ($0.module, .finite(scale * Double($0.rank))) })),
          ]))
        return try PEFTKeys.adapter(config: try PEFTConfig.parse(config, source: configPath), tensors: tensors,
                                    source: weightsPath, format: sourceFormat)
    }

    /// Drops the zero padding of every module whose trailing ranks are zero in both lora_a and lora_b (as peftkit
    /// writes a module of smaller rank): the module gets its own rank back, through `rank_pattern` and an
    /// `alpha_pattern` entry that keeps its scaling (alpha = scale · k, only where (scale · k) / k is scale exactly),
    /// under its full path. The products are the same; what changes is that PEFT then multiplies no zero terms, so
    /// that an adapter converted to mlx-lm and back computes in PEFT exactly what the original did.
    /// `tensors` are in PEFT's layout (A: r × in, B: out × r).
    static func unpad(_ tensors: inout [StoredTensor], rank: Int, scale: Double) throws -> [(module: String, rank: Int)] {
        var index: [String: Int] = [:]
        for (i, t) in tensors.enumerated() { index[t.name] = i }
        var patterns: [(module: String, rank: Int)] = []
        for (i, a) in tensors.enumerated() {
            let suffixes = [(LoRA.a.rawValue, LoRA.b.rawValue), (LoRA.embeddingA.rawValue, LoRA.embeddingB.rawValue)]
            guard let (aSuffix, bSuffix) = suffixes.first(where: { a.name.hasSuffix("." + $0.0) }) else { continue }
            let stem = String(a.name.dropLast(aSuffix.count + 1))
            guard let j = index[stem + "." + bSuffix] else { continue }
            let b = tensors[j]
            guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == rank, b.shape[1] == rank,
                  a.dtype == b.dtype, a.dtype.bitWidth % 8 == 0 else { continue }  // PEFTKeys reports mismatches
            let inputs = a.shape[1], outputs = b.shape[0]
            let av = try a.floats(), bv = try b.floats()
            var k = rank
            while k > 1, av[(k - 1) * inputs ..< k * inputs].allSatisfy({ $0 == 0 }),
                  (0..<outputs).allSatisfy({ bv[$0 * rank + k - 1] == 0 }) {
                k -= 1
            }
            guard k < rank, (scale * Double(k)) / Double(k) == scale else { continue }
            let size = a.dtype.bitWidth / 8
            let aBytes = try a.withBytes { Array($0[0 ..< k * inputs * size]) }
            let bBytes = try b.withBytes { raw -> [UInt8] in
                var out: [UInt8] = []
                out.reserveCapacity(outputs * k * size)
                for r in 0..<outputs { out += raw[(r * rank * size) ..< ((r * rank + k) * size)] }
                return out
            }
            tensors[i] = StoredTensor(name: a.name, dtype: a.dtype, shape: [k, inputs], bytes: aBytes)
            tensors[j] = StoredTensor(name: b.name, dtype: b.dtype, shape: [outputs, k], bytes: bBytes)
            patterns.append((String(stem.dropFirst(PEFTKeys.prefix.count)), k))
        }
        return patterns.sorted { $0.module < $1.module }
    }

    // MARK: Writing

    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws {
        let plan = try layout(adapter, path: path, base: options.base)
        try checkHead(adapter, base: options.base)
        let folder = try OutputFolder(finalPath: path, force: options.force)
        let config = JSONValue.object([
            ("fine_tune_type", .string(plan.dora ? "dora" : "lora")),
            ("num_layers", .integer(-1)),
            ("lora_parameters", .object([
                ("rank", .integer(Int64(plan.rank))),
                ("scale", .finite(plan.scale)),
                ("dropout", .finite(0)),
                ("keys", .array(adapter.modules.map { .string($0.path) })),
            ])),
        ])
        try OutputPath.writeFile(folder.path(of: configFileName), contents: Array((config.prettyText(indent: 2) + "\n").utf8),
                                 reportedAs: path)
        let writer = try SafeTensorsWriter(path: folder.path(of: weightsFileName),
                                           tensors: plan.tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                           metadata: [("format", "mlx")])
        do {
            for tensor in plan.tensors { try tensor.withBytes { try writer.write(tensor.name, bytes: $0) } }
            try writer.finish()
        } catch {
            writer.abort()
            throw error
        }
        try folder.publish()
    }

    /// mlx-lm's Llama, Qwen2/3, Phi-3 and Gemma ports compute a tied output head as `embed_tokens.as_linear`, which for
    /// a LoRAEmbedding adds the LoRA's product to the head as well (PEFT's tied head is the base weight alone), and
    /// have no lm_head module to adapt. A LoRA on either is written only when the base (`--base`) is known to have
    /// its own head: config.json's `tie_word_embeddings` false and an `lm_head.weight` in its tensors.
    /// - Throws: `.unsupported` naming the reason.
    static func checkHead(_ adapter: Adapter, base: String?) throws {
        let embedding = adapter.modules.first { $0.kind == .embedding }?.path
        let head = adapter.modules.first { $0.path == "lm_head" || $0.path.hasSuffix(".lm_head") }?.path
        guard let module = embedding ?? head else { return }
        let why = embedding != nil
            ? "mlx-lm applies an embed_tokens LoRA to a tied output head too (embed_tokens.as_linear), PEFT does not"
            : "mlx-lm's model of a base with tied embeddings has no lm_head module to adapt"
        guard let base else {
            throw PEFTKitError(.unsupported, file: adapter.source, "a LoRA on \(module) is exact in mlx-lm only on a base "
                               + "whose embeddings are not tied (\(why)); give --base, the base model folder, to check")
        }
        let configPath = (base as NSString).appendingPathComponent("config.json")
        let json = try AdapterLoader.readJSON(configPath)
        let checkpoint = try Checkpoint(path: base)
        let tied = json["tie_word_embeddings"]?.boolValue != false || checkpoint.location(of: "lm_head.weight") == nil
        if tied {
            throw PEFTKitError(.unsupported, file: adapter.source, "an mlx-lm adapter cannot express a LoRA on \(module) "
                               + "of a base with tied embeddings (\(base)): \(why)")
        }
    }

    /// The one rank and scale of the written adapter, and its tensors under mlx-lm's names, padded and folded.
    /// - Throws: `.unsupported` for what mlx-lm cannot express exactly.
    private static func layout(_ adapter: Adapter, path: String, base: String?) throws
        -> (rank: Int, scale: Double, dora: Bool, tensors: [StoredTensor]) {
        guard let lora = adapter.method as? LoRA else {
            throw PEFTKitError(.unsupported, file: adapter.source,
                               "mlx-lm adapters are LoRA; this is \(adapter.config.peftType), which mlx-lm cannot express")
        }
        var refusals: [String] = []
        if lora.loraBias { refusals.append("lora_bias (mlx-lm's LoRA has no bias)") }
        if lora.fanInFanOut { refusals.append("fan_in_fan_out (Conv1D weights; mlx-lm's layers are Linear)") }
        if lora.trainableTokens != nil { refusals.append("trainable_token_indices (mlx-lm has no trainable tokens)") }
        if let rewrite = lora.baseRewrite {
            refusals.append("init_lora_weights \"\(rewrite.rawValue)\" (the adapter belongs to a residual of the base that "
                            + "mlx-lm does not recompute)")
        }
        if lora.useDoRA, adapter.modules.contains(where: { $0.kind == .embedding }) {
            refusals.append("DoRA on an embedding (mlx-lm's DoRAEmbedding normalises differently from PEFT's)")
        }
        // PEFT saves a copy of a targeted embedding (or head) weight; mlx-lm needs none, so a copy may be left out
        // when it is the base's own, value for value.
        let baseCheckpoint = try base.map { try Checkpoint(path: $0) }
        let kept = try adapter.carried.filter { carried in
            guard let baseCheckpoint else { return true }
            return try !carried.isUnchangedCopy(in: baseCheckpoint)
        }
        if !kept.isEmpty {
            let copies = kept.contains { $0.reason == .baseLayer }
            refusals.append("whole tensors carried by the adapter (\(kept.map(\.baseName).joined(separator: ", ")))"
                + (copies ? (base == nil ? "; PEFT's saved copies of a layer can be left out once --base shows they are the base's"
                                          : "; a saved layer copy differs from the base's (new tokens?)") : ""))
        }
        guard refusals.isEmpty, !adapter.modules.isEmpty else {
            throw PEFTKitError(.unsupported, file: adapter.source, "an mlx-lm adapter cannot express "
                               + (refusals.isEmpty ? "an adapter without LoRA modules" : refusals.joined(separator: "; ")))
        }
        let rank = adapter.modules.map(\.rank).max()!
        // The scale most modules have; ties go to the largest, so that folded factors are ≤ 1 (no overflow).
        let counts = Dictionary(grouping: adapter.modules, by: \.scaling).mapValues(\.count)
        let scale = counts.max { ($0.value, $0.key) < ($1.value, $1.key) }!.key
        var tensors: [StoredTensor] = []
        var inexact: [String] = []
        for module in adapter.modules {
            let factor = module.scaling / scale
            guard factor > 0, factor.significandBitPattern == 0 else {
                inexact.append("\(module.path) (scaling \(module.scaling))")
                continue
            }
            let (aRole, bRole) = module.kind == .embedding ? (LoRA.embeddingA, LoRA.embeddingB) : (LoRA.a, LoRA.b)
            let a = module.tensors[aRole]!, b = module.tensors[bRole]!
            tensors.append(try padded(transposed(a, name: module.path + ".lora_a"), columns: rank, scale: 1)!)  // scale 1 never fails
            guard let folded = try padded(transposed(b, name: module.path + ".lora_b"), rows: rank, scale: Float(factor)) else {
                inexact.append("\(module.path) (scaling \(module.scaling): folding ×\(factor) into lora_b leaves its dtype's range)")
                continue
            }
            tensors.append(folded)
            if lora.useDoRA {
                // mlx-lm's DoRALinear: m / ‖W + scale·lora_bᵀ·lora_aᵀ‖_row ⊙ (W·x + scale·(x·lora_a)·lora_b), PEFT's
                // DoRA; the magnitude is stored as it is (folding keeps scale·lora_b, so the norms are the same).
                guard let m = module.tensors[LoRA.magnitude] else {
                    inexact.append("\(module.path) (DoRA without lora_magnitude_vector)")
                    continue
                }
                tensors.append(StoredTensor(name: module.path + ".m", dtype: m.dtype, shape: m.shape,
                                            bytes: try m.withBytes { Array($0) }))
            }
        }
        guard inexact.isEmpty else {
            throw PEFTKitError(.unsupported, file: adapter.source,
                               "mlx-lm has one scale per adapter (\(scale) here); these modules' scales differ from it by a "
                               + "factor that is not a power of two, and folding it into lora_b would round. Convert to peft "
                               + "or peftkit instead", details: inexact)
        }
        return (rank, scale, lora.useDoRA, tensors)
    }

    /// The transpose of a matrix, in memory, under `name`.
    static func transposed(_ tensor: StoredTensor, name: String) throws -> StoredTensor {
        let rows = tensor.shape[0], columns = tensor.shape[1], size = tensor.dtype.bitWidth / 8
        var bytes = [UInt8](repeating: 0, count: tensor.byteCount)
        try tensor.withBytes { source in
            for r in 0..<rows {
                for c in 0..<columns {
                    for k in 0..<size { bytes[(c * rows + r) * size + k] = source[(r * columns + c) * size + k] }
                }
            }
        }
        return StoredTensor(name: name, dtype: tensor.dtype, shape: [columns, rows], bytes: bytes)
    }

    /// `tensor` with zero columns (or rows) appended up to `columns` (`rows`), each value multiplied by `scale` (a
    /// power of two); nil when that is not exact in the tensor's dtype (overflow or underflow).
    static func padded(_ tensor: StoredTensor, columns: Int? = nil, rows: Int? = nil, scale: Float) throws -> StoredTensor? {
        let (height, width) = (tensor.shape[0], tensor.shape[1])
        let newHeight = rows ?? height, newWidth = columns ?? width
        if newHeight == height && newWidth == width && scale == 1 { return tensor }
        var values = try tensor.floats()
        if scale != 1 {
            let scaled = values.map { $0 * scale }
            guard zip(scaled, values).allSatisfy({ $1 == 0 || ($0 / scale == $1 && $0.isNormal == $1.isNormal) }) else { return nil }
            values = scaled
        }
        var out = [Float](repeating: 0, count: newHeight * newWidth)
        for r in 0..<height { for c in 0..<width { out[r * newWidth + c] = values[r * width + c] } }
        var bytes = [UInt8](repeating: 0, count: out.count * tensor.dtype.bitWidth / 8)
        _ = bytes.withUnsafeMutableBytes { raw in out.withUnsafeBufferPointer { Codec.encode($0, as: tensor.dtype, into: raw) } }
        // Every value came from this dtype and was scaled by a power of two it can hold: encoding must round nothing.
        let back = bytes.withUnsafeBytes { Codec.decode($0, as: tensor.dtype, count: out.count) }
        guard back == out else { return nil }
        return StoredTensor(name: tensor.name, dtype: tensor.dtype, shape: [newHeight, newWidth], bytes: bytes)
    }
}
