import Foundation
import SafeTensors

/// `peftkit extract BASE TUNED`: a LoRA whose B·A best approximates ΔW = W_tuned − W_base, module by module.
///
/// Streaming: both checkpoints are mapped; tensors are visited one at a time in name order, compared byte for byte
/// (pages released as they are passed), and a changed module's ΔW is decoded to Float32 — the only large buffer.
/// Its rank-k factors (randomized SVD, or the exact one with `exact`) are rounded to the output dtype at once; the
/// error reported is the exact ‖ΔW − B̃Ã‖_F / ‖ΔW‖_F of the rounded factors B̃, Ã, computed in place with one more
/// `sgemm`.
public struct ExtractRequest: Sendable {
    /// What to do with changed embedding matrices.
    public enum Embeddings: String, Sendable, CaseIterable {
        /// A LoRA on the embedding (`lora_embedding_A` / `_B`).
        case lora
        /// The tuned matrix whole, in `modules_to_save`.
        case full
        /// Left out (reported).
        case skip
    }

    public var base: String
    public var tuned: String
    public var output: String
    public var ranks: RankChoice
    /// PEFT-style module patterns (`(.*\.)?(PATTERN)$` on the module path); empty: every 2-D weight.
    public var modules: [String]
    public var embeddings: Embeddings
    public var exact: Bool
    public var seed: UInt64
    public var parameters: RandomizedSVD.Parameters
    /// The factors' dtype; nil: each module's base dtype (F32 for a base in another float type).
    public var dtype: DType?
    public var format: any AdapterFormat.Type
    public var force: Bool

    public init(base: String, tuned: String, output: String, ranks: RankChoice, modules: [String] = [],
                embeddings: Embeddings = .lora, exact: Bool = false, seed: UInt64 = 0,
                parameters: RandomizedSVD.Parameters = .default, dtype: DType? = nil,
                format: any AdapterFormat.Type = PEFTFolderFormat.self, force: Bool = false) {
        self.base = base
        self.tuned = tuned
        self.output = output
        self.ranks = ranks
        self.modules = modules
        self.embeddings = embeddings
        self.exact = exact
        self.seed = seed
        self.parameters = parameters
        self.dtype = dtype
        self.format = format
        self.force = force
    }
}

public struct ExtractReport: Sendable {
    public struct Module: Sendable {
        public let path: String
        public let kind: AdaptedModule.Kind
        /// The weight's shape as stored.
        public let shape: [Int]
        public let rank: Int
        /// ‖ΔW‖_F.
        public let norm: Double
        /// ‖ΔW − B̃Ã‖_F / ‖ΔW‖_F with the factors as written.
        public let relativeError: Double
        /// The Eckart–Young optimum at this rank, √(Σ_{i>k} σᵢ²) / ‖ΔW‖_F, when every singular value is known (--exact,
        /// or a matrix small enough that the exact SVD was the cheaper one).
        public let optimalError: Double?
        /// Fraction of ‖ΔW‖²_F the factors hold: 1 − relativeError².
        public var energyKept: Double { 1 - relativeError * relativeError }
    }

    public let base: String
    public let tuned: String
    public let output: String
    public let modules: [Module]
    /// Whole tensors written to `modules_to_save`.
    public let carried: [String]
    /// Changed tensors left out, with why.
    public let skipped: [(tensor: String, reason: String)]
    public let unchanged: Int
    public let seconds: Double
    public let randomized: RandomizedSVD.Parameters?
    public let seed: UInt64
}

public enum Extract {
    static let chunkBytes = 4 << 20

    public static func run(_ request: ExtractRequest, progress: (@Sendable (MergeProgress) -> Void)? = nil) throws -> ExtractReport {
        let start = Date()
        let base = try Checkpoint(path: request.base)
        let tuned = try Checkpoint(path: request.tuned)
        try checkSameTensors(base, tuned, request)
        let conv1D = modelType(of: base) == "gpt2"
        let weightNames = Set(base.tensors.filter { $0.info.shape.count == 2 }.map(\.info.name))
        LinearAlgebra.useThreads(ProcessInfo.processInfo.activeProcessorCount)

        var random = SurgeryRandom(seed: request.seed)
        var builder: LoRABuilder?
        var moduleDType: DType?
        var reports: [ExtractReport.Module] = []
        var carried: [CarriedTensor] = []
        var modulesToSave: [String] = []
        var skipped: [(String, String)] = []
        var unchanged = 0
        var anyConv1D = false
        let names = base.tensors.map(\.info.name).sorted()
        let totalBytes = tuned.tensors.reduce(0) { $0 + $1.info.byteCount }
        var bytesDone = 0

        for (index, name) in names.enumerated() {
            let b = base.location(of: name)!, t = tuned.location(of: name)!
            let info = b.info
            defer {
                bytesDone += info.byteCount
                progress?(MergeProgress(tensorsDone: index + 1, tensorsTotal: names.count, bytesDone: bytesDone,
                                        bytesTotal: totalBytes, currentTensor: name))
            }
            let path = name.hasSuffix(".weight") ? String(name.dropLast(7)) : nil
            let isCandidate = info.shape.count == 2 && path != nil && Codec.canDecode(info.dtype) && info.dtype.isFloat
            // One pass: compare chunk by chunk; from the first differing chunk on (candidates only), decode ΔW.
            let (changed, decoded) = try compare(b, t, decode: isCandidate)
            guard changed else { unchanged += 1; continue }
            guard let path, info.dtype.isFloat else {
                throw PEFTKitError(.unsupported, file: request.tuned, tensor: name,
                                   "not supported: the tensor changed but is \(info.dtype.rawValue) \(info.shape), not a "
                                   + "float weight a LoRA or a carried tensor can express")
            }
            switch info.shape.count {
            case 1:
                // A norm's or a bias's vector, carried whole.
                let module = String(path)
                if name.hasSuffix(".bias"), weightNames.contains(module + ".weight") {
                    throw PEFTKitError(.unsupported, file: request.tuned, tensor: name,
                                       "not supported: the bias of the 2-D module '\(module)' changed; a LoRA adapter can "
                                       + "carry it only by saving the whole module (modules_to_save), which would replace "
                                       + "its LoRA. Extract from checkpoints whose biases are equal, or merge the bias yourself")
                }
                let moduleName = String(name[..<name.lastIndex(of: ".")!])
                if request.modules.isEmpty || PEFTConfig.patternKey(request.modules, matching: moduleName) != nil {
                    carried.append(CarriedTensor(baseName: name, reason: .modulesToSave, tensor: StoredTensor(view: try t.file.view(t.info))))
                    if !modulesToSave.contains(moduleName) { modulesToSave.append(moduleName) }
                } else {
                    skipped.append((name, "not matched by --modules"))
                }
                continue
            case 2: break
            default:
                throw PEFTKitError(.unsupported, file: request.tuned, tensor: name,
                                   "not supported: the \(info.shape.count)-D tensor changed (shape \(info.shape)); extract "
                                   + "handles 2-D weights (Linear, Conv1D, Embedding) and carries 1-D ones")
            }
            let isEmbedding = Self.isEmbedding(path)
            if !isEmbedding, !request.modules.isEmpty, PEFTConfig.patternKey(request.modules, matching: path) == nil {
                skipped.append((name, "not matched by --modules"))
                continue
            }
            if isEmbedding {
                switch request.embeddings {
                case .skip:
                    skipped.append((name, "embedding, --embeddings skip"))
                    continue
                case .full:
                    carried.append(CarriedTensor(baseName: name, reason: .modulesToSave, tensor: StoredTensor(view: try t.file.view(t.info))))
                    modulesToSave.append(path)
                    continue
                case .lora:
                    if !request.modules.isEmpty, PEFTConfig.patternKey(request.modules, matching: path) == nil {
                        skipped.append((name, "not matched by --modules"))
                        continue
                    }
                }
            }
            guard var delta = decoded else { preconditionFailure("a changed candidate has its difference decoded") }
            let rows = info.shape[0], columns = info.shape[1]
            // Conv1D (GPT-2) stores in × out and embeddings vocab × dim: both are (B·A)ᵀ.
            let isConv1D = conv1D && !isEmbedding && !path.hasSuffix("lm_head")
            anyConv1D = anyConv1D || isConv1D
            let transposed = isEmbedding || isConv1D
            let squared = delta.withUnsafeBufferPointer { LinearAlgebra.squaredNorm($0) }
            guard squared.isFinite else {
                let bad = delta.firstIndex { !$0.isFinite } ?? 0
                throw PEFTKitError(.numerics, file: request.tuned, tensor: name,
                                   "the difference tuned − base is not finite at flat index \(bad) (\(delta[bad]))")
            }
            if squared == 0 { unchanged += 1; continue }  // only signed zeros differed
            let dtype = request.dtype ?? ([.f32, .f16, .bf16].contains(info.dtype) ? info.dtype : .f32)
            if builder == nil { builder = LoRABuilder(dtype: dtype); moduleDType = dtype }

            let svd = try decompose(delta, rows: rows, columns: columns, squared: squared, request: request, random: &random)
            let k = chooseRank(svd, squared: squared, choice: request.ranks)
            let factors = LowRankFactors.split(svd, rank: k, transposed: transposed)
            let optimal: Double? = svd.isComplete
                ? (svd.singularValues.dropFirst(k).reduce(0.0) { $0 + Double($1) * Double($1) }).squareRoot() / squared.squareRoot()
                : nil
            let module = LoRABuilder.Module(path: path, kind: isEmbedding ? .embedding : .linear, factors: factors,
                                            dtype: moduleDType!)
            // The error of the factors as written: ΔW −= B̃Ã in place.
            let stored = LoRABuilder.stored(module, moduleDType!)
            let residual = delta.withUnsafeMutableBufferPointer { buffer -> Double in
                stored.subtract(from: buffer, transposed: transposed)
                return LinearAlgebra.squaredNorm(UnsafeBufferPointer(buffer))
            }
            delta = []
            builder!.modules.append(module)
            reports.append(ExtractReport.Module(path: path, kind: module.kind, shape: info.shape, rank: k,
                                                norm: squared.squareRoot(), relativeError: (residual / squared).squareRoot(),
                                                optimalError: optimal))
        }

        guard !reports.isEmpty || !carried.isEmpty else {
            throw PEFTKitError(.baseMismatch, file: request.tuned,
                               skipped.isEmpty ? "TUNED has the same tensor values as BASE: there is nothing to extract"
                                               : "every tensor that differs was left out, so there is nothing to extract",
                               details: skipped.map { "\($0.0): \($0.1)" })
        }
        var output = builder ?? LoRABuilder(dtype: request.dtype ?? .f32)
        output.carried = carried
        let template: [(key: String, value: JSONValue)] = [
            ("alpha_pattern", .object([])),
            ("base_model_name_or_path", .string(request.base)),
            ("bias", .string("none")),
            ("fan_in_fan_out", .bool(anyConv1D)),
            ("inference_mode", .bool(true)),
            ("init_lora_weights", .bool(true)),
            ("lora_alpha", .integer(1)),
            ("lora_dropout", .number(0, literal: "0.0")),
            ("modules_to_save", .null),
            ("peft_type", .string("LORA")),
            ("r", .integer(1)),
            ("rank_pattern", .object([])),
            ("target_modules", .null),
            ("task_type", .null),
            ("use_dora", .bool(false)),
            ("use_rslora", .bool(false)),
        ]
        let targets: JSONValue = .array(output.modules.map { .string($0.path) })
        let json = output.config(template: template, targetModules: targets, modulesToSave: modulesToSave)
        let adapter = try output.adapter(config: json, source: request.output)
        try request.format.write(adapter, to: request.output, options: AdapterWriteOptions(force: request.force))
        return ExtractReport(base: request.base, tuned: request.tuned, output: request.output, modules: reports,
                             carried: carried.map(\.baseName), skipped: skipped, unchanged: unchanged,
                             seconds: Date().timeIntervalSince(start),
                             randomized: request.exact ? nil : request.parameters, seed: request.seed)
    }

    // MARK: Steps

    /// The rank a module gets: `fixed` capped by what was computed, or the smallest reaching the energy fraction (all
    /// computed values when none does: then the decomposition was exact and rounding kept the sum just short).
    static func chooseRank(_ svd: TruncatedSVD, squared: Double, choice: RankChoice) -> Int {
        max(1, choice.rank(singularValues: svd.singularValues, totalEnergy: squared) ?? svd.rank)
    }

    /// The SVD a module needs: exact with `--exact`; else randomized at the rank asked for, or, for `--energy`, at
    /// growing sketch sizes until the fraction is reached (the sketch's singular values never exceed the true ones, so
    /// a sketch that reaches F really holds F).
    static func decompose(_ delta: [Float], rows: Int, columns: Int, squared: Double, request: ExtractRequest,
                          random: inout SurgeryRandom) throws -> TruncatedSVD {
        try delta.withUnsafeBufferPointer { a in
            if request.exact { return try RandomizedSVD.exact(a, rows: rows, columns: columns) }
            switch request.ranks {
            case .fixed(let r):
                return try RandomizedSVD.decompose(a, rows: rows, columns: columns, rank: min(r, min(rows, columns)),
                                                   parameters: request.parameters, random: &random)
            case .energy:
                var k = 32
                while true {
                    let svd = try RandomizedSVD.decompose(a, rows: rows, columns: columns, rank: k,
                                                          parameters: request.parameters, random: &random)
                    if svd.isComplete || request.ranks.rank(singularValues: svd.singularValues, totalEnergy: squared) != nil {
                        return svd
                    }
                    k *= 2
                }
            }
        }
    }

    /// Whether the tensors at `b` and `t` differ; when they do and `delta` is given, fills it with t − b in Float32.
    /// Pages of both files are released chunk by chunk.
    static func compare(_ b: Checkpoint.Location, _ t: Checkpoint.Location, decode: Bool) throws -> (Bool, [Float]?) {
        let bView = try b.file.view(b.info), tView = try t.file.view(t.info)
        let total = b.info.byteCount, elementBytes = b.info.dtype.bitWidth / 8
        let step = max(elementBytes, chunkBytes / max(elementBytes, 1) * max(elementBytes, 1))
        var offset = 0
        var differs = false
        var delta: [Float]? = nil
        var scratch: [Float] = []
        while offset < total {
            let count = min(step, total - offset)
            let bChunk = UnsafeRawBufferPointer(rebasing: bView.bytes[offset..<(offset + count)])
            let tChunk = UnsafeRawBufferPointer(rebasing: tView.bytes[offset..<(offset + count)])
            try b.file.checkUnchanged()
            try t.file.checkUnchanged()
            if !differs && memcmp(bChunk.baseAddress!, tChunk.baseAddress!, count) != 0 {
                differs = true
                if !decode { break }
                delta = [Float](repeating: 0, count: b.info.elementCount)
            }
            if differs, decode {
                let first = offset / elementBytes, n = count / elementBytes
                if scratch.count < n { scratch = [Float](repeating: 0, count: n) }
                delta!.withUnsafeMutableBufferPointer { d in
                    let target = UnsafeMutableBufferPointer(rebasing: d[first..<(first + n)])
                    Codec.decode(tChunk, as: t.info.dtype, into: target)
                    scratch.withUnsafeMutableBufferPointer { s in
                        let base = UnsafeMutableBufferPointer(rebasing: s[0..<n])
                        Codec.decode(bChunk, as: b.info.dtype, into: base)
                        for i in 0..<n { target[i] -= base[i] }
                    }
                }
            }
            release(b, offset, count)
            release(t, offset, count)
            offset += count
        }
        try b.file.checkUnchanged()
        try t.file.checkUnchanged()
        return (differs, delta)
    }

    private static func release(_ location: Checkpoint.Location, _ offset: Int, _ count: Int) {
        let start = location.info.dataOffsets.lowerBound + offset
        location.file.release(TensorInfo(name: location.info.name, dtype: .u8, shape: [count], dataOffsets: start..<(start + count)))
    }

    /// The same names, shapes and dtypes on both sides; every difference is listed.
    static func checkSameTensors(_ base: Checkpoint, _ tuned: Checkpoint, _ request: ExtractRequest) throws {
        var problems: [String] = []
        for location in base.tensors {
            let info = location.info
            guard let other = tuned.location(of: info.name)?.info else {
                problems.append("'\(info.name)' is in BASE but not in TUNED")
                continue
            }
            if other.shape != info.shape { problems.append("'\(info.name)' has shape \(info.shape) in BASE, \(other.shape) in TUNED") }
            if other.dtype != info.dtype {
                problems.append("'\(info.name)' is \(info.dtype.rawValue) in BASE, \(other.dtype.rawValue) in TUNED")
            }
        }
        for location in tuned.tensors where base.location(of: location.info.name) == nil {
            problems.append("'\(location.info.name)' is in TUNED but not in BASE")
        }
        guard problems.isEmpty else {
            throw PEFTKitError(.baseMismatch, file: request.tuned,
                               "TUNED does not have BASE's tensors (\(problems.count) difference(s)); extract compares "
                               + "checkpoints of one architecture, tensor by tensor", details: Array(problems.prefix(20))
                                   + (problems.count > 20 ? ["… \(problems.count - 20) more"] : []))
        }
    }

    /// Embedding matrices by name: a last component containing `embed` (embed_tokens, word_embeddings …) or GPT-2's
    /// `wte` / `wpe`.
    public static func isEmbedding(_ modulePath: String) -> Bool {
        let last = modulePath.split(separator: ".").last.map(String.init) ?? modulePath
        return last.contains("embed") || last == "wte" || last == "wpe"
    }

    /// `model_type` from the checkpoint folder's config.json, when there is one.
    static func modelType(of checkpoint: Checkpoint) -> String? {
        let path = (checkpoint.folder as NSString).appendingPathComponent("config.json")
        guard let json = try? AdapterLoader.readJSON(path) else { return nil }
        return json["model_type"]?.stringValue
    }
}

extension DType {
    var isFloat: Bool { [.f16, .bf16, .f32, .f64].contains(self) }
}
