import CPeftKitOpenBLAS
import Foundation
import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

/// `peftkit extract BASE TUNED`: a LoRA whose B·A best approximates ΔW = W_tuned − W_base, module by module.
///
/// Streaming: tensors are visited in name order; each candidate module's pair is read in chunks by one of two
/// workers, compared byte for byte and, where it differs, decoded to ΔW in Float32 — the only large buffer — and
/// factored there. The rank-k factors (block Krylov SVD, or the exact one with `exact`) are rounded to the output
/// dtype (`rounded`) and parked in a spill file until the adapter is written, so memory does not grow with the model;
/// the error reported is the exact ‖ΔW − B̃Ã‖_F / ‖ΔW‖_F of the rounded factors B̃, Ã, computed in place with one
/// more `sgemm`.
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
    /// The factors' dtype; nil: each module's base dtype (F32 for a base in another float type). Float32 by default,
    /// as PEFT keeps adapter weights (`autocast_adapter_dtype`): rounding the factors to bf16 costs about 10⁻⁴ of
    /// relative error, a hundred times what the block Krylov SVD leaves above the optimum.
    public var dtype: DType?
    public var format: any AdapterFormat.Type
    public var force: Bool

    public init(base: String, tuned: String, output: String, ranks: RankChoice, modules: [String] = [],
                embeddings: Embeddings = .lora, exact: Bool = false, seed: UInt64 = 0,
                parameters: RandomizedSVD.Parameters = .default, dtype: DType? = .f32,
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
    static let chunkBytes = 1 << 20

    public static func run(_ request: ExtractRequest, progress: (@Sendable (MergeProgress) -> Void)? = nil) throws -> ExtractReport {
        let start = Date()
        let base = try Checkpoint(path: request.base)
        let tuned = try Checkpoint(path: request.tuned)
        try checkSameTensors(base, tuned, request)
        let conv1D = modelType(of: base) == "gpt2"
        let weightNames = Set(base.tensors.filter { $0.info.shape.count == 2 }.map(\.info.name))
        // Modules are factored on `workers` threads, each with single-threaded BLAS (measured here: two threads of
        // OpenBLAS on one module spend their time spinning; two modules at once use both cores).
        LinearAlgebra.useOneThread()
        let workers = max(1, min(2, ProcessInfo.processInfo.activeProcessorCount))
        let reader = ChunkReader(chunkBytes: chunkBytes)
        // The factors wait in a scratch file beside the output until the adapter is written, so memory does not
        // grow with the model (200 MB of Float32 factors for a 1.1B model at rank 64).
        let spill = try SpillFile(near: request.output)
        // ΔW of the modules in flight: one buffer per worker, grown to the largest module and reused (a fresh 46 MB
        // array per module would cost its page faults every time).
        let pool = WorkspacePool(count: workers)
        let queue = DispatchQueue(label: "peftkit.extract", attributes: .concurrent)
        let group = DispatchGroup()
        defer { group.wait() }  // an error thrown below leaves no worker behind
        var ordinal: UInt64 = 0
        var builder: LoRABuilder?
        var carried: [CarriedTensor] = []
        var modulesToSave: [String] = []
        var skipped: [(String, String)] = []
        var unchanged = 0
        let names = base.tensors.map(\.info.name).sorted()
        let totalBytes = tuned.tensors.reduce(0) { $0 + $1.info.byteCount }
        var bytesDone = 0
        var noValues: [Float] = []

        for (index, name) in names.enumerated() {
            let b = base.location(of: name)!, t = tuned.location(of: name)!
            let info = b.info
            defer {
                bytesDone += info.byteCount
                progress?(MergeProgress(tensorsDone: index + 1, tensorsTotal: names.count, bytesDone: bytesDone,
                                        bytesTotal: totalBytes, currentTensor: name))
            }
            let path = name.hasSuffix(".weight") ? String(name.dropLast(7)) : nil
            let isEmbedding = path.map(Self.isEmbedding) ?? false
            let selected = path.map { request.modules.isEmpty || PEFTConfig.patternKey(request.modules, matching: $0) != nil } ?? false
            // Only a module that will be factored has its difference decoded (into its worker's buffer).
            let extractable = info.shape.count == 2 && path != nil && info.dtype.isFloat && selected
                && (!isEmbedding || request.embeddings == .lora)
            if extractable {
                // A worker compares the pair chunk by chunk and, from the first differing chunk on, decodes ΔW into
                // its buffer, then factors it — reading and factoring alternate on each core, and no core waits
                // for the other's read.
                try pool.check()
                let isConv1D = conv1D && !isEmbedding && !path!.hasSuffix("lm_head")  // Conv1D/embeddings: (B·A)ᵀ
                if builder == nil {
                    builder = LoRABuilder(dtype: request.dtype ?? ([.f32, .f16, .bf16].contains(info.dtype) ? info.dtype : .f32))
                }
                let job = Job(name: name, path: path!, shape: info.shape, kind: isEmbedding ? .embedding : .linear,
                              transposed: isEmbedding || isConv1D, dtype: builder!.dtype, ordinal: ordinal)
                ordinal += 1
                let workspace = pool.take()
                group.enter()
                queue.async {
                    defer { group.leave() }
                    do {
                        if try compare(b, t, decode: true, into: &workspace.values, reader: workspace.reader),
                           let result = try factor(job, &workspace.values, request: request, spill: spill) {
                            pool.add(result, conv1D: isConv1D)
                        } else {
                            pool.noteUnchanged()
                        }
                    } catch {
                        pool.fail(error)
                    }
                    pool.give(workspace)
                }
                continue
            }
            guard try compare(b, t, decode: false, into: &noValues, reader: reader) else {
                unchanged += 1
                continue
            }
            try classifyUnextracted(name: name, path: path, info: info, t: t, selected: selected, request: request,
                                    weightNames: weightNames, carried: &carried, modulesToSave: &modulesToSave,
                                    skipped: &skipped)
        }
        group.wait()
        pool.drain()
        try pool.check()
        if builder != nil { builder!.modules = pool.modules.map(\.module) }
        let reports = pool.modules.map(\.report)
        unchanged += pool.unchangedCount
        let anyConv1D = pool.anyConv1D

        guard !reports.isEmpty || !carried.isEmpty else {
            throw PEFTKitError(.baseMismatch, file: request.tuned,
                               skipped.isEmpty ? "TUNED has the same tensor values as BASE: there is nothing to extract"
                                               : "every tensor that differs was left out, so there is nothing to extract",
                               details: skipped.prefix(20).map { "\($0.0): \($0.1)" }
                                   + (skipped.count > 20 ? ["… \(skipped.count - 20) more"] : []))
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

    /// A changed module to factor, as the worker needs it.
    struct Job: Sendable {
        let name: String
        let path: String
        let shape: [Int]
        let kind: AdaptedModule.Kind
        /// The stored matrix is (B·A)ᵀ (Conv1D, embeddings).
        let transposed: Bool
        let dtype: DType
        /// The module's place among the factored modules, in name order: its random stream.
        let ordinal: UInt64
    }

    /// Factors the module whose ΔW is `workspace[0..<n]`; nil when ΔW is zero after all (signed zeros). The
    /// workspace is overwritten (the residual is formed in it when the error is measured exactly).
    static func factor(_ job: Job, _ workspace: inout [Float], request: ExtractRequest, spill: SpillFile?) throws
        -> (module: LoRABuilder.Module, report: ExtractReport.Module)? {
        let rows = job.shape[0], columns = job.shape[1], count = rows * columns
        let squared = workspace.withUnsafeBufferPointer { LinearAlgebra.squaredNorm(UnsafeBufferPointer(rebasing: $0[0..<count])) }
        guard squared.isFinite else {
            let bad = workspace[0..<count].firstIndex { !$0.isFinite } ?? 0
            throw PEFTKitError(.numerics, file: request.tuned, tensor: job.name,
                               "the difference tuned − base is not finite at flat index \(bad) (\(workspace[bad]))")
        }
        if squared == 0 { return nil }
        var random = SurgeryRandom(seed: request.seed, stream: job.ordinal)
        let svd = try decompose(workspace, rows: rows, columns: columns, squared: squared, request: request, random: &random)
        let k = chooseRank(svd, squared: squared, choice: request.ranks)
        let tail = svd.isComplete ? svd.singularValues.dropFirst(k).reduce(0.0) { $0 + Double($1) * Double($1) } : nil
        let factors = workspace.withUnsafeBufferPointer { whole in
            rounded(LowRankFactors.split(svd, rank: k, transposed: job.transposed),
                        delta: UnsafeBufferPointer(rebasing: whole[0..<count]), rows: rows, columns: columns,
                        transposed: job.transposed, dtype: job.dtype)
        }
        let module = try LoRABuilder.Module(path: job.path, kind: job.kind, factors: factors, dtype: job.dtype, spill: spill)
        // Float32 factors: B·A is the orthogonal projection of ΔW on k directions, so ‖ΔW − B·A‖² = ‖ΔW‖² − Σ_{i≤k} σᵢ²
        // (the tail Σ_{i>k} σᵢ² when all are known) — no pass over ΔW. Below 10⁻⁴ of ‖ΔW‖², where that difference
        // loses digits, and for 16-bit factors, whose rounding moves the error by about 10⁻⁴ relative, the error of
        // the factors as written is measured instead: ΔW −= B̃Ã in place, one more sgemm.
        let kept = svd.singularValues.prefix(k).reduce(0.0) { $0 + Double($1) * Double($1) }
        var residual = tail ?? max(0, squared - kept)
        if job.dtype != .f32 || residual < 1e-4 * squared {
            residual = workspace.withUnsafeMutableBufferPointer { whole -> Double in
                let buffer = UnsafeMutableBufferPointer(rebasing: whole[0..<count])
                factors.subtract(from: buffer, transposed: job.transposed)
                return LinearAlgebra.squaredNorm(UnsafeBufferPointer(buffer))
            }
        }
        let report = ExtractReport.Module(path: job.path, kind: job.kind, shape: job.shape, rank: k,
                                          norm: squared.squareRoot(), relativeError: (residual / squared).squareRoot(),
                                          optimalError: tail.map { ($0 / squared).squareRoot() })
        return (module, report)
    }

    /// The factors rounded to `dtype` so that the rounding costs least. In the stored orientation ΔW ≈ L·R (L rows×k,
    /// R k×columns): the factor on the smaller side of ΔW is rounded first, the other refit to ΔW given it by least
    /// squares (L = ΔW R̃ᵀ (R̃R̃ᵀ)⁻¹, or R = (L̃ᵀL̃)⁻¹ L̃ᵀ ΔW) and then rounded, which undoes the part of the first
    /// rounding's error that lies in the refit factor's span — about 1.5% of what rounding both costs at rank 64 on a
    /// TinyLlama, a systematic 1.5·10⁻⁶ of relative error. Float32 output is returned as it is; a refit whose Gram
    /// matrix is (nearly) singular falls back to rounding both.
    static func rounded(_ factors: LowRankFactors, delta: UnsafeBufferPointer<Float>, rows: Int, columns: Int,
                        transposed: Bool, dtype: DType) -> LowRankFactors {
        guard dtype != .f32, factors.rank > 0 else { return factors }
        let k = factors.rank
        func round(_ v: [Float]) -> [Float] { LoRABuilder.decode(LoRABuilder.encode(v, dtype), dtype) }
        // Stored orientation: not transposed, L = B and R = A; transposed (ΔW = (B·A)ᵀ = Aᵀ·Bᵀ), L = Aᵀ and R = Bᵀ.
        var left = transposed ? LinearAlgebra.transpose(factors.a, rows: k, columns: rows) : factors.b
        var right = transposed ? LinearAlgebra.transpose(factors.b, rows: columns, columns: k) : factors.a
        let refitLeft = columns <= rows
        let fixed = round(refitLeft ? right : left)
        // G = R̃R̃ᵀ or L̃ᵀL̃ (k×k), and T = ΔW R̃ᵀ (rows×k) or ΔWᵀ L̃ (columns×k); the refit factor is T G⁻¹ (G symmetric).
        var gram = [Float](repeating: 0, count: k * k)
        var target = [Float](repeating: 0, count: (refitLeft ? rows : columns) * k)
        fixed.withUnsafeBufferPointer { fp in
            let f = fp.baseAddress!
            if refitLeft {
                LinearAlgebra.multiplyAccumulate(m: k, n: k, k: columns, alpha: 1, a: f, lda: columns, transposeA: false,
                                                 b: f, ldb: columns, transposeB: true, into: &gram, ldc: k, beta: 0)
                LinearAlgebra.multiplyAccumulate(m: rows, n: k, k: columns, alpha: 1, a: delta.baseAddress!, lda: columns,
                                                 transposeA: false, b: f, ldb: columns, transposeB: true, into: &target,
                                                 ldc: k, beta: 0)
            } else {
                LinearAlgebra.multiplyAccumulate(m: k, n: k, k: rows, alpha: 1, a: f, lda: k, transposeA: true,
                                                 b: f, ldb: k, transposeB: false, into: &gram, ldc: k, beta: 0)
                LinearAlgebra.multiplyAccumulate(m: columns, n: k, k: rows, alpha: 1, a: delta.baseAddress!, lda: columns,
                                                 transposeA: true, b: f, ldb: k, transposeB: false, into: &target,
                                                 ldc: k, beta: 0)
            }
        }
        if let lu = LinearAlgebra.LUFactorization(columnMajor: gram, order: k), lu.reciprocalCondition > 1e-6 {
            // T row-major (·×k) is column-major k×·: solving G X = Tᵀ there gives (T G⁻¹) row-major in place.
            target.withUnsafeMutableBufferPointer { lu.solve($0.baseAddress!, columns: refitLeft ? rows : columns) }
            if refitLeft {
                left = round(target)
                right = fixed
            } else {
                left = fixed
                right = round(LinearAlgebra.transpose(target, rows: columns, columns: k))
            }
        } else {
            left = round(left)
            right = round(right)
        }
        return transposed
            ? LowRankFactors(b: LinearAlgebra.transpose(right, rows: k, columns: columns),
                             a: LinearAlgebra.transpose(left, rows: rows, columns: k), outFeatures: columns, inFeatures: rows)
            : LowRankFactors(b: left, a: right, outFeatures: rows, inFeatures: columns)
    }

    /// A changed tensor that is not factored: a 1-D tensor carried whole (or refused), a 2-D one left out or carried
    /// as --modules / --embeddings say, anything else refused.
    static func classifyUnextracted(name: String, path: String?, info: TensorInfo, t: Checkpoint.Location, selected: Bool,
                                    request: ExtractRequest, weightNames: Set<String>, carried: inout [CarriedTensor],
                                    modulesToSave: inout [String], skipped: inout [(String, String)]) throws {
        guard let path, info.dtype.isFloat else {
            throw PEFTKitError(.unsupported, file: request.tuned, tensor: name,
                               "not supported: the tensor changed but is \(info.dtype.rawValue) \(info.shape), not a "
                               + "float weight a LoRA or a carried tensor can express")
        }
        switch info.shape.count {
        case 1:
            if name.hasSuffix(".bias"), weightNames.contains(path + ".weight") {
                throw PEFTKitError(.unsupported, file: request.tuned, tensor: name,
                                   "not supported: the bias of the 2-D module '\(path)' changed; a LoRA adapter can "
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
        case 2:
            if !selected {
                skipped.append((name, "not matched by --modules"))
            } else if request.embeddings == .skip {
                skipped.append((name, "embedding, --embeddings skip"))
            } else {
                carried.append(CarriedTensor(baseName: name, reason: .modulesToSave, tensor: StoredTensor(view: try t.file.view(t.info))))
                modulesToSave.append(path)
            }
        default:
            throw PEFTKitError(.unsupported, file: request.tuned, tensor: name,
                               "not supported: the \(info.shape.count)-D tensor changed (shape \(info.shape)); extract "
                               + "handles 2-D weights (Linear, Conv1D, Embedding) and carries 1-D ones")
        }
    }

    /// The rank a module gets: `fixed` capped by what was computed, or the smallest reaching the energy fraction (all
    /// computed values when none does: then the decomposition was exact and rounding kept the sum just short).
    static func chooseRank(_ svd: TruncatedSVD, squared: Double, choice: RankChoice) -> Int {
        max(1, choice.rank(singularValues: svd.singularValues, totalEnergy: squared) ?? svd.rank)
    }

    /// The SVD a module needs: exact with `--exact`; else randomized at the rank asked for, or, for `--energy`, at
    /// growing sketch sizes until the fraction is reached (the sketch's singular values never exceed the true ones, so
    /// a sketch that reaches F really holds F).
    static func decompose(_ workspace: [Float], rows: Int, columns: Int, squared: Double, request: ExtractRequest,
                          random: inout SurgeryRandom) throws -> TruncatedSVD {
        try workspace.withUnsafeBufferPointer { whole in
            let a = UnsafeBufferPointer(rebasing: whole[0..<(rows * columns)])
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

    /// Whether the tensors at `b` and `t` differ; when they do and `decode` is set, `delta[0..<n]` is t − b in Float32
    /// (`delta` grown if it is smaller).
    /// Both are read with `pread` in chunks into two reused buffers (no page of either file is mapped, so nothing
    /// accumulates in the resident set and no page faults are taken); a short read means the file changed.
    static func compare(_ b: Checkpoint.Location, _ t: Checkpoint.Location, decode: Bool, into delta: inout [Float],
                        reader: ChunkReader) throws -> Bool {
        let total = b.info.byteCount, elementBytes = max(b.info.dtype.bitWidth / 8, 1)
        let step = max(elementBytes, chunkBytes / elementBytes * elementBytes)
        var offset = 0
        var differs = false
        while offset < total {
            let count = min(step, total - offset)
            let (bChunk, tChunk) = try reader.read(b, t, offset: offset, count: count)
            if !differs && memcmp(bChunk.baseAddress!, tChunk.baseAddress!, count) != 0 {
                differs = true
                if !decode { break }
                if delta.count < b.info.elementCount {
                    delta = [Float](repeating: 0, count: b.info.elementCount)
                } else {
                    // The chunks before this one were equal: their difference is zero.
                    let equal = offset / elementBytes
                    delta.withUnsafeMutableBufferPointer { $0.baseAddress!.update(repeating: 0, count: equal) }
                }
            }
            if differs, decode {
                let first = offset / elementBytes, n = count / elementBytes
                delta.withUnsafeMutableBufferPointer { d in
                    let target = UnsafeMutableBufferPointer(rebasing: d[first..<(first + n)])
                    Codec.decode(tChunk, as: t.info.dtype, into: target)
                    let scratch = reader.scratch(n)
                    Codec.decode(bChunk, as: b.info.dtype, into: scratch)
                    cblas_saxpy(blasint(n), -1, scratch.baseAddress!, 1, target.baseAddress!, 1)
                }
            }
            offset += count
        }
        return differs
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

/// Reads byte ranges of tensors with `pread` into two reused buffers, one per checkpoint, keeping one descriptor per
/// file open.
final class ChunkReader {
    private var descriptors: [String: Int32] = [:]
    private let first: UnsafeMutableRawBufferPointer
    private let second: UnsafeMutableRawBufferPointer
    private var floats: UnsafeMutableBufferPointer<Float>

    init(chunkBytes: Int) {
        first = .allocate(byteCount: chunkBytes, alignment: 64)
        second = .allocate(byteCount: chunkBytes, alignment: 64)
        floats = .allocate(capacity: chunkBytes / 2)
    }

    deinit {
        first.deallocate()
        second.deallocate()
        floats.deallocate()
        for fd in descriptors.values { close(fd) }
    }

    /// A Float32 buffer of `count` elements (at most a chunk of 16-bit values), reused.
    func scratch(_ count: Int) -> UnsafeMutableBufferPointer<Float> {
        if count > floats.count {
            floats.deallocate()
            floats = .allocate(capacity: count)
        }
        return UnsafeMutableBufferPointer(rebasing: floats[0..<count])
    }

    func read(_ b: Checkpoint.Location, _ t: Checkpoint.Location, offset: Int, count: Int) throws
        -> (UnsafeRawBufferPointer, UnsafeRawBufferPointer) {
        try fill(first, from: b, offset: offset, count: count)
        try fill(second, from: t, offset: offset, count: count)
        return (UnsafeRawBufferPointer(rebasing: first[0..<count]), UnsafeRawBufferPointer(rebasing: second[0..<count]))
    }

    private func fill(_ buffer: UnsafeMutableRawBufferPointer, from location: Checkpoint.Location, offset: Int, count: Int) throws {
        let path = location.file.path
        let fd: Int32
        if let open = descriptors[path] {
            fd = open
        } else {
            fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                throw PEFTKitError(.io, file: path, "cannot open for reading: \(String(cString: strerror(errno)))")
            }
            descriptors[path] = fd
        }
        let start = location.file.dataStart + location.info.dataOffsets.lowerBound + offset
        var done = 0
        while done < count {
            let n = pread(fd, buffer.baseAddress! + done, count - done, off_t(start + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw PEFTKitError(.io, file: path, tensor: location.info.name, "read failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 {
                throw PEFTKitError(.io, file: path, tensor: location.info.name,
                                   "the file ended early (it changed while being read)")
            }
            done += n
        }
    }
}

/// One ΔW buffer, passed by reference between the reading loop and a worker (an array passed by value would be
/// copied on write whenever both still held it).
final class Workspace: @unchecked Sendable {
    var values: [Float] = []
    let reader = ChunkReader(chunkBytes: Extract.chunkBytes)
}

/// The ΔW buffers of the modules in flight (one per worker, handed out by a semaphore) and what the workers found.
final class WorkspacePool: @unchecked Sendable {
    // @unchecked: every field is touched under `lock` only.
    private let lock = NSLock()
    private let available: DispatchSemaphore
    private var buffers: [Workspace]
    private var results: [(module: LoRABuilder.Module, report: ExtractReport.Module)] = []
    private var failure: (any Error)?
    private var zeroModules = 0
    private var sawConv1D = false

    init(count: Int) {
        available = DispatchSemaphore(value: count)
        buffers = (0..<count).map { _ in Workspace() }
    }

    /// Blocks until a buffer is free.
    func take() -> Workspace {
        available.wait()
        return lock.withLock { buffers.removeLast() }
    }

    func give(_ buffer: Workspace) {
        lock.withLock { buffers.append(buffer) }
        available.signal()
    }

    func add(_ result: (module: LoRABuilder.Module, report: ExtractReport.Module), conv1D: Bool) {
        lock.withLock {
            results.append(result)
            sawConv1D = sawConv1D || conv1D
        }
    }
    /// Frees the buffers (once every worker is done).
    func drain() { lock.withLock { for buffer in buffers { buffer.values = [] } } }

    func noteUnchanged() { lock.withLock { zeroModules += 1 } }
    func fail(_ error: any Error) { lock.withLock { if failure == nil { failure = error } } }

    /// Rethrows the first error a worker hit.
    func check() throws {
        if let failure = lock.withLock({ failure }) { throw failure }
    }

    /// The results in module path order.
    var modules: [(module: LoRABuilder.Module, report: ExtractReport.Module)] {
        lock.withLock { results.sorted { $0.module.path < $1.module.path } }
    }

    var unchangedCount: Int { lock.withLock { zeroModules } }
    /// Whether a factored module was a GPT-2 Conv1D.
    var anyConv1D: Bool { lock.withLock { sawConv1D } }
}
