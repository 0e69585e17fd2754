import Foundation
import SafeTensors

/// What a merge or unmerge is asked to do.
public struct MergeRequest: Sendable {
    public enum Direction: String, Sendable {
        case merge
        case unmerge
    }

    public var base: String
    public var adapters: [String]
    /// One per adapter (default 1): scales that adapter's change.
    public var weights: [Double]
    public var output: String
    public var direction: Direction
    /// Output dtype for floating tensors; nil keeps each tensor's own.
    public var outputDType: DType?
    /// Re-shard to this many bytes per file (transformers' rule); nil keeps the base's files.
    public var maxShardSize: Int?
    public var force: Bool
    public var allowNonFinite: Bool

    public init(base: String, adapters: [String], weights: [Double]? = nil, output: String,
                direction: Direction = .merge, outputDType: DType? = nil, maxShardSize: Int? = nil,
                force: Bool = false, allowNonFinite: Bool = false) {
        self.base = base
        self.adapters = adapters
        self.weights = weights ?? Array(repeating: 1, count: adapters.count)
        self.output = output
        self.direction = direction
        self.outputDType = outputDType
        self.maxShardSize = maxShardSize
        self.force = force
        self.allowNonFinite = allowNonFinite
    }
}

/// One adapter module's contribution to one base tensor.
struct MergeStep {
    enum Target {
        /// A LoRA product on a weight stored as B·A or its transpose.
        case lora(LoRA.Layout)
        case loraBias
        /// Bone/MiSS column blocks (MiSS `mini` expanded on use).
        case columnBlock
        case bat
    }

    let adapterIndex: Int
    let module: AdaptedModule
    let target: Target
    /// The signed multiplier of the module's change: scaling × weight, negated for unmerge.
    let scale: Float
}

/// What happens to one tensor of the output: it starts from the base's value (or a whole tensor an adapter carries
/// in its place) and is then changed by adapter modules, in order.
struct TensorTask {
    let name: String
    /// Where the base's value comes from (nil only for a tensor the adapter adds whole).
    let source: Checkpoint.Location?
    let shape: [Int]
    let outputDType: DType
    /// A whole tensor from an adapter that replaces the base's value (modules_to_save, an embedding's base_layer).
    var replacement: StoredTensor?
    var steps: [MergeStep] = []

    var outputBytes: Int { shape.reduce(1, *) * outputDType.bitWidth / 8 }
}

/// A validated plan: every check that can refuse the merge has run before anything is written.
struct MergePlan {
    let request: MergeRequest
    let base: Checkpoint
    let adapters: [Adapter]
    /// Output files in order, each with its tasks.
    let files: [(name: String, tasks: [TensorTask])]
    /// Whether to write an index (the base was sharded, or re-sharding gave several files).
    let writesIndex: Bool
    /// Changes to config.json (key → new value) that keep it consistent with the output.
    let configChanges: [(key: String, value: JSONValue)]
    let notes: [String]

    static func make(_ request: MergeRequest) throws -> MergePlan {
        guard !request.adapters.isEmpty else { throw PEFTKitError(.invalidConfig, "no adapter given") }
        guard request.weights.count == request.adapters.count else {
            throw PEFTKitError(.invalidConfig, "\(request.weights.count) weights for \(request.adapters.count) adapters")
        }
        if let dtype = request.outputDType, !Codec.canEncode(dtype) {
            throw PEFTKitError(.unsupported, "not supported yet: output dtype \(dtype.rawValue)")
        }
        let base = try Checkpoint(path: request.base)
        let adapters = try request.adapters.map(AdapterLoader.load)
        var notes: [String] = []
        var configChanges: [(key: String, value: JSONValue)] = []
        let baseConfig = try? AdapterLoader.readJSON((base.folder as NSString).appendingPathComponent("config.json"))
        let tiedEmbeddings = baseConfig?["tie_word_embeddings"]?.boolValue ?? false

        var tasksByName: [String: TensorTask] = [:]
        var order: [String] = base.tensors.map(\.info.name)
        for location in base.tensors {
            let dtype = outputDType(for: location.info.dtype, request: request)
            tasksByName[location.info.name] = TensorTask(name: location.info.name, source: location,
                                                         shape: location.info.shape, outputDType: dtype)
        }

        /// Finds the base tensor `name`, or — for an output head tied to the input embedding and so not stored —
        /// starts it from the embedding and unties the two in the saved config.
        func task(for name: String, adapter: Adapter) throws -> TensorTask {
            if let task = tasksByName[name] { return task }
            if tiedEmbeddings, name.hasSuffix("lm_head.weight"),
               let embedding = base.tensors.first(where: { isInputEmbedding($0.info.name) }) {
                notes.append("\(name) was tied to \(embedding.info.name); the adapter changes only one of them, so both "
                    + "are saved and config.json gets tie_word_embeddings: false")
                configChanges.append(("tie_word_embeddings", .bool(false)))
                order.append(name)
                let dtype = outputDType(for: embedding.info.dtype, request: request)
                return TensorTask(name: name, source: embedding, shape: embedding.info.shape, outputDType: dtype)
            }
            throw PEFTKitError(.baseMismatch, file: adapter.source, tensor: name,
                               "the adapter needs base tensor '\(name)', which \(base.path) does not have")
        }

        var problems: [String] = []
        /// Unmerge: tensors restored from a carried copy of their pre-merge value, which no module then changes.
        var restoredExactly = Set<String>()
        for (index, adapter) in adapters.enumerated() {
            if request.direction == .unmerge, adapters.count > 1 {
                throw PEFTKitError(.unsupported, "unmerge takes one adapter at a time")
            }
            if !request.allowNonFinite { try checkFinite(adapter) }
            if request.direction == .merge {
                // A fingerprint recorded at conversion time proves this is the base the adapter was made for.
                switch try BaseFingerprint.verify(adapter: adapter, base: base) {
                case .matches, .absent: break
                case .unknownScheme(let recorded):
                    notes.append("\(adapter.source) records a base fingerprint of an unknown scheme (\(recorded)); not checked")
                }
            }
            let weight = request.weights[index]
            for carried in adapter.carried {
                var task = try task(for: carried.baseName, adapter: adapter)
                guard task.shape == carried.tensor.shape else {
                    problems.append("\(carried.baseName): the adapter carries shape \(carried.tensor.shape), the base has \(task.shape)")
                    continue
                }
                if request.direction == .unmerge {
                    // An embedding's saved base_layer is its value before the merge: restore it exactly. A
                    // modules_to_save copy or a trained bias replaced the original, which the adapter does not keep.
                    if carried.reason == .baseLayer {
                        task.replacement = carried.tensor
                        task.steps = []
                        tasksByName[carried.baseName] = task
                        restoredExactly.insert(carried.baseName)
                    } else {
                        notes.append("\(carried.baseName) was replaced whole by the adapter (\(carried.reason.rawValue)); "
                            + "the original cannot be recovered and is kept as merged")
                    }
                    continue
                }
                if weight != 1 {
                    notes.append("\(carried.baseName) is replaced whole (\(carried.reason.rawValue)); --weight does not scale it")
                }
                if !task.steps.isEmpty {
                    notes.append("\(carried.baseName) is replaced whole by \(adapter.source), discarding earlier adapters' changes to it")
                }
                task.replacement = carried.tensor
                task.steps = []
                tasksByName[carried.baseName] = task
            }
            for module in adapter.modules {
                let sign: Double = request.direction == .merge ? 1 : -1
                let scale = Float(module.scaling * weight * sign)
                guard var weightTask = try? task(for: module.weightName, adapter: adapter) else {
                    problems.append("module '\(module.path)': base has no tensor '\(module.weightName)'")
                    continue
                }
                guard let target = target(of: module, adapter: adapter, baseShape: weightTask.shape, problems: &problems) else {
                    continue
                }
                guard Codec.canDecode(weightTask.source?.info.dtype ?? .f32),
                      (weightTask.source?.info.dtype ?? .f32).isArithmetic else {
                    problems.append("module '\(module.path)': base dtype \(weightTask.source!.info.dtype.rawValue) cannot be merged into")
                    continue
                }
                if !restoredExactly.contains(module.weightName) {
                    weightTask.steps.append(MergeStep(adapterIndex: index, module: module, target: target, scale: scale))
                }
                tasksByName[module.weightName] = weightTask
                if let loraBias = module.tensors[.loraBias] {
                    guard var biasTask = tasksByName[module.biasName] else {
                        problems.append("module '\(module.path)': lora_bias needs a base bias '\(module.biasName)', which the base lacks")
                        continue
                    }
                    guard biasTask.shape == loraBias.shape else {
                        problems.append("module '\(module.path)': lora_B.bias has shape \(loraBias.shape), base bias \(biasTask.shape)")
                        continue
                    }
                    biasTask.steps.append(MergeStep(adapterIndex: index, module: module, target: .loraBias, scale: scale))
                    tasksByName[module.biasName] = biasTask
                }
            }
        }
        guard problems.isEmpty else {
            throw PEFTKitError(.baseMismatch, file: base.path, "\(problems.count) module(s) do not fit this base model",
                               details: problems)
        }
        if request.direction == .unmerge {
            // Undo in reverse order of application.
            for name in tasksByName.keys { tasksByName[name]!.steps.reverse() }
        }
        if tiedEmbeddings, let embedding = base.tensors.first(where: { isInputEmbedding($0.info.name) }),
           !base.tensors.contains(where: { $0.info.name.hasSuffix("lm_head.weight") }),
           tasksByName[embedding.info.name]?.steps.isEmpty == false,
           !configChanges.contains(where: { $0.key == "tie_word_embeddings" }) {
            notes.append("the output head is tied to \(embedding.info.name) and changes with it, as in the merged PEFT model")
        }
        if let dtype = request.outputDType, let baseConfig {
            for key in ["torch_dtype", "dtype"] where baseConfig[key] != nil {
                configChanges.append((key, .string(torchName(dtype))))
            }
        }

        let tasks = order.map { tasksByName[$0]! }
        let files = layout(tasks, base: base, request: request)
        let writesIndex = base.isSharded ? files.count > 1 || request.maxShardSize == nil : files.count > 1
        return MergePlan(request: request, base: base, adapters: adapters, files: files, writesIndex: writesIndex,
                         configChanges: configChanges, notes: notes)
    }

    /// How `module` lies on a base weight of `baseShape`, or nil (with the problem noted) when it does not fit.
    private static func target(of module: AdaptedModule, adapter: Adapter, baseShape: [Int],
                               problems: inout [String]) -> MergeStep.Target? {
        let name = "module '\(module.path)'"
        guard baseShape.count == 2 else {
            problems.append("\(name): base weight has shape \(baseShape); only matrices can be adapted")
            return nil
        }
        let rows = baseShape[0], columns = baseShape[1]
        switch adapter.method {
        case .lora:
            let (aRole, bRole): (AdaptedModule.Role, AdaptedModule.Role) =
                module.kind == .embedding ? (.embeddingA, .embeddingB) : (.loraA, .loraB)
            let inFeatures = module.tensors[aRole]!.shape[1], outFeatures = module.tensors[bRole]!.shape[0]
            if module.kind == .embedding {
                // Embeddings store W as vocab × dim, the transpose of B·A.
                guard baseShape == [inFeatures, outFeatures] else {
                    problems.append("\(name): embedding LoRA needs a [\(inFeatures), \(outFeatures)] weight, the base has \(baseShape)")
                    return nil
                }
                return .lora(.transposedProduct)
            }
            let fitsProduct = baseShape == [outFeatures, inFeatures]
            let fitsTransposed = baseShape == [inFeatures, outFeatures]
            switch (fitsProduct, fitsTransposed) {
            // A square weight fits both ways: the config's fan_in_fan_out says how it is stored (PEFT decides it
            // from the layer type, which a checkpoint does not record).
            case (true, true): return .lora(adapter.config.fanInFanOut ? .transposedProduct : .product)
            case (true, false): return .lora(.product)
            case (false, true): return .lora(.transposedProduct)
            default:
                problems.append("\(name): LoRA maps \(inFeatures) → \(outFeatures) features but the base weight has shape \(baseShape)")
                return nil
            }
        case .bone, .miss:
            let r = module.rank
            let shape = module.block!.shape
            switch adapter.variant {
            case .standard:
                guard shape[1] == rows else {
                    problems.append("\(name): block has \(shape[1]) columns but the weight has \(rows) output rows")
                    return nil
                }
                return .columnBlock
            case .mini:
                guard let mini = module.miniRank, rows % mini == 0 else {
                    problems.append("\(name): \(rows) output rows are not a multiple of mini_r \(module.miniRank ?? 0)")
                    return nil
                }
                return .columnBlock
            case .bat:
                guard rows % r == 0, columns % r == 0, shape[0] == rows / r else {
                    problems.append("\(name): Bat with r=\(r) needs a weight whose sides are multiples of r and "
                        + "\(shape[0]) × \(r) rows; the base has \(baseShape)")
                    return nil
                }
                return .bat
            }
        }
    }

    /// A NaN or infinity in an adapter would poison every merged value it touches: refuse before writing anything.
    private static func checkFinite(_ adapter: Adapter) throws {
        for tensor in adapter.allTensors {
            let values = try tensor.floats()
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw PEFTKitError(.numerics, file: adapter.source, tensor: tensor.name,
                                   "element \(bad) is \(values[bad]); merging would spread it (--allow-non-finite to merge anyway)")
            }
        }
    }

    private static func outputDType(for dtype: DType, request: MergeRequest) -> DType {
        guard let wanted = request.outputDType, dtype.isArithmetic else { return dtype }
        return wanted
    }

    static func isInputEmbedding(_ name: String) -> Bool {
        ["embed_tokens.weight", "wte.weight", "word_embeddings.weight"].contains { name.hasSuffix($0) }
    }

    static func torchName(_ dtype: DType) -> String {
        switch dtype {
        case .bf16: "bfloat16"
        case .f16: "float16"
        case .f64: "float64"
        default: "float32"
        }
    }

    /// Output files: the base's own files (same names and members) unless re-sharding was asked for.
    private static func layout(_ tasks: [TensorTask], base: Checkpoint,
                               request: MergeRequest) -> [(name: String, tasks: [TensorTask])] {
        if let maxShardSize = request.maxShardSize {
            let plan = ShardPlanner.plan(sizes: tasks.map(\.outputBytes), maxShardSize: maxShardSize)
            return plan.enumerated().map { (i, members) in
                (ShardPlanner.shardName(i, of: plan.count), members.map { tasks[$0] })
            }
        }
        var files: [(name: String, tasks: [TensorTask])] = base.files.map { (($0.path as NSString).lastPathComponent, []) }
        for task in tasks {
            // A tensor new to the output (an untied head) goes with the embedding it started from.
            let file = task.source.flatMap { source in base.files.firstIndex { $0 === source.file } } ?? files.count - 1
            files[file].tasks.append(task)
        }
        return files
    }
}
