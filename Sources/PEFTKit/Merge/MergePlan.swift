import Foundation
import SafeTensors

/// What happens to one tensor of the output: it starts from the base's value (or a whole tensor an adapter carries
/// in its place) and is then changed by adapter modules, in order.
struct OutputTensor: Sendable {
    /// One module's change to this tensor, with the multiplier it is applied with.
    struct Change: Sendable {
        let change: ModuleChange
        /// The module's scaling × the adapter's merge weight.
        let scale: Float
        let adapterIndex: Int
        /// Unmerge: what the merge recorded for this change (UnmergeRecord).
        var recorded: UnmergeRecord.Entry? = nil
    }

    /// How the output's unmerge record changes with this tensor.
    enum RecordUpdate: Sendable {
        /// Merge: every change is pushed onto the tensor's stack (this one), with the hash of the output.
        case push(onto: [UnmergeRecord.Entry])
        /// Unmerge: the input's bytes must have this hash; the stack left is these entries (none: dropped).
        case pop(expecting: UInt64, leaving: [UnmergeRecord.Entry])
    }

    let name: String
    /// Where the base's value comes from (nil only for a tensor the adapter adds whole).
    let source: Checkpoint.Location?
    let shape: [Int]
    let outputDType: DType
    /// A whole tensor from an adapter that replaces the base's value (modules_to_save, an embedding's base_layer).
    var replacement: StoredTensor?
    var changes: [Change] = []
    var recordUpdate: RecordUpdate?

    var outputBytes: Int { shape.reduce(1, *) * outputDType.bitWidth / 8 }

    /// spec/tolerance.md §1: one ulp, or one per adapter change for a 16-bit result (a merge may round after each,
    /// as PEFT does); for an F32/F64 result, one per Float32 reduction it depends on.
    var mergedMaxULP: Double {
        guard Comparison.floorsAtTensorMaximum(outputDType) else { return Double(max(changes.count, 1)) }
        return Double(max(changes.map(\.change.float32Reductions).reduce(0, +), 1))
    }
}

/// A validated plan: every check that can refuse the merge has run before anything is written.
struct MergePlan: Sendable {
    let request: MergeRequest
    let base: Checkpoint
    let adapters: [Adapter]
    /// Output files in order, each with its tensors.
    let files: [(name: String, tensors: [OutputTensor])]
    /// Whether to write an index (the base was sharded, or re-sharding gave several files).
    let writesIndex: Bool
    /// Changes to config.json (key → new value) that keep it consistent with the output.
    let configChanges: [(key: String, value: JSONValue)]
    let notes: [String]
    /// The base's unmerge record for tensors the run leaves as they are (the writer adds the ones it changes).
    let keptRecord: UnmergeRecord

    var tensorCount: Int { files.reduce(0) { $0 + $1.tensors.count } }
    var outputBytes: Int { files.reduce(0) { $0 + $1.tensors.reduce(0) { $0 + $1.outputBytes } } }

    /// Plans `request`: checks the request, opens the base and the adapters, lays every adapter onto the base's
    /// tensors and assigns the tensors to output files.
    static func make(_ request: MergeRequest) throws -> MergePlan {
        try check(request)
        let base = try Checkpoint(path: request.base)
        let adapters = try request.adapters.map { try AdapterLoader.load($0, base: request.base) }
        var builder = try Builder(request: request, base: base)
        for (index, adapter) in adapters.enumerated() {
            try builder.check(adapter)
            try builder.placeCarriedTensors(of: adapter, index: index)
            try builder.placeModules(of: adapter, index: index)
        }
        let (tensors, notes, configChanges) = try builder.finish()
        let files = layout(tensors, base: base, request: request)
        let writesIndex = base.isSharded ? files.count > 1 || request.maxShardSize == nil : files.count > 1
        return MergePlan(request: request, base: base, adapters: adapters, files: files, writesIndex: writesIndex,
                         configChanges: configChanges, notes: notes, keptRecord: builder.keptRecord)
    }

    private static func check(_ request: MergeRequest) throws {
        guard !request.adapters.isEmpty else { throw PEFTKitError(.invalidConfig, "no adapter given") }
        guard request.weights.count == request.adapters.count else {
            throw PEFTKitError(.invalidConfig, "\(request.weights.count) weights for \(request.adapters.count) adapters")
        }
        if request.direction == .unmerge, request.adapters.count > 1 {
            throw PEFTKitError(.unsupported, "unmerge takes one adapter at a time")
        }
        if let dtype = request.outputDType, !Codec.canEncode(dtype) {
            throw PEFTKitError(.unsupported, "not supported yet: output dtype \(dtype.rawValue)")
        }
        guard request.sliceElements > 0 else { throw PEFTKitError(.invalidConfig, "the slice size must be positive") }
    }

    /// The plan's state while adapters are laid onto the base, one stage per method.
    private struct Builder {
        let request: MergeRequest
        let base: Checkpoint
        let tiedEmbeddings: Bool
        let baseConfig: JSONValue?
        var tensors: [String: OutputTensor] = [:]
        var order: [String]
        var notes: [String] = []
        var configChanges: [(key: String, value: JSONValue)] = []
        var problems: [String] = []
        /// Unmerge: tensors restored from a carried copy of their pre-merge value, which no module then changes.
        var restoredExactly = Set<String>()
        /// The unmerge record of a base merged by peftkit (empty for any other base).
        let record: UnmergeRecord
        /// Its stacks for tensors the run leaves alone, once `finish` has run.
        var keptRecord = UnmergeRecord()

        init(request: MergeRequest, base: Checkpoint) throws {
            self.request = request
            self.base = base
            var isFolder: ObjCBool = false
            record = FileManager.default.fileExists(atPath: base.path, isDirectory: &isFolder) && isFolder.boolValue
                ? try UnmergeRecord.read(folder: base.path) : UnmergeRecord()
            baseConfig = try? AdapterLoader.readJSON((base.folder as NSString).appendingPathComponent("config.json"))
            tiedEmbeddings = baseConfig?["tie_word_embeddings"]?.boolValue ?? false
            order = base.tensors.map(\.info.name)
            for location in base.tensors {
                tensors[location.info.name] = OutputTensor(name: location.info.name, source: location,
                                                           shape: location.info.shape,
                                                           outputDType: outputDType(for: location.info.dtype))
            }
        }

        func outputDType(for dtype: DType) -> DType {
            guard let wanted = request.outputDType, dtype.isArithmetic else { return dtype }
            return wanted
        }

        var inputEmbedding: Checkpoint.Location? { base.tensors.first { MergePlan.isInputEmbedding($0.info.name) } }

        /// The output tensor `name`, or — for an output head tied to the input embedding and so not stored — a new
        /// one started from the embedding, untying the two in the saved config.
        mutating func tensor(_ name: String) -> OutputTensor? {
            if let tensor = tensors[name] { return tensor }
            guard tiedEmbeddings, name.hasSuffix("lm_head.weight"), let embedding = inputEmbedding else { return nil }
            notes.append("\(name) was tied to \(embedding.info.name); the adapter changes only one of them, so both "
                + "are saved and config.json gets tie_word_embeddings: false")
            configChanges.append(("tie_word_embeddings", .bool(false)))
            order.append(name)
            let head = OutputTensor(name: name, source: embedding, shape: embedding.info.shape,
                                    outputDType: outputDType(for: embedding.info.dtype))
            tensors[name] = head
            return head
        }

        /// Refuses non-finite adapter values and, for a merge, a base that is not the one the adapter records.
        mutating func check(_ adapter: Adapter) throws {
            if !request.allowNonFinite { try MergePlan.checkFinite(adapter) }
            guard request.direction == .merge else { return }
            // A fingerprint recorded at conversion time proves this is the base the adapter was made for.
            switch try BaseFingerprint.verify(adapter: adapter, base: base) {
            case .matches, .absent: break
            case .unknownScheme(let recorded):
                notes.append("\(adapter.source) records a base fingerprint of an unknown scheme (\(recorded)); not checked")
            }
        }

        /// Whole tensors the adapter carries replace the base's (merge), or restore it where the copy is the value
        /// before the merge (unmerge).
        mutating func placeCarriedTensors(of adapter: Adapter, index: Int) throws {
            let weight = request.weights[index]
            for carried in adapter.carried {
                guard var tensor = tensor(carried.baseName) else {
                    throw PEFTKitError(.baseMismatch, file: adapter.source, tensor: carried.baseName,
                                       "the adapter needs base tensor '\(carried.baseName)', which \(base.path) does not have")
                }
                guard tensor.shape == carried.tensor.shape else {
                    problems.append("\(carried.baseName): the adapter carries shape \(carried.tensor.shape), the base has \(tensor.shape)")
                    continue
                }
                if request.direction == .unmerge {
                    // An embedding's saved base_layer is its value before the merge: restore it exactly. A
                    // modules_to_save copy or a trained bias replaced the original, which the adapter does not keep.
                    if carried.reason == .baseLayer {
                        tensor.replacement = carried.tensor
                        tensor.changes = []
                        tensors[carried.baseName] = tensor
                        restoredExactly.insert(carried.baseName)
                    } else {
                        notes.append("\(carried.baseName) was replaced whole by the adapter (\(carried.reason.rawValue)); "
                            + "the original cannot be recovered and is kept as merged")
                    }
                    continue
                }
                if weight != 1 {
                    notes.append("\(carried.baseName) is replaced whole (\(carried.reason.rawValue)); the merge weight does not scale it")
                }
                if !tensor.changes.isEmpty {
                    notes.append("\(carried.baseName) is replaced whole by \(adapter.source), discarding earlier adapters' changes to it")
                }
                tensor.replacement = carried.tensor
                tensor.changes = []
                tensors[carried.baseName] = tensor
            }
        }

        /// Asks the method how each module lies on the base, and queues its changes on those tensors.
        mutating func placeModules(of adapter: Adapter, index: Int) throws {
            let weight = request.weights[index]
            if weight != 1 && !adapter.method.acceptsMergeWeight {
                throw PEFTKitError(.unsupported, file: adapter.source,
                                   "a merge weight of \(weight) has no meaning for \(adapter.config.peftType), whose change is a "
                                   + "product or a replacement rather than a sum; merge it with weight 1")
            }
            for module in adapter.modules {
                if request.direction == .unmerge, let refusal = adapter.method.unmergeRefusal(of: module) {
                    throw PEFTKitError(.unsupported, file: adapter.source, tensor: module.path,
                                       "not supported: unmerging this module: \(refusal)")
                }
                var found: [String] = []
                let changes: [ModuleChange]
                do {
                    changes = try adapter.method.changes(of: module, baseShape: { self.tensor($0)?.shape }, problems: &found)
                } catch var error as PEFTKitError where error.file == nil {
                    error.file = adapter.source
                    throw error
                }
                problems += found
                for change in changes {
                    var tensor = tensors[change.tensor]!
                    let dtype = tensor.source?.info.dtype ?? .f32
                    guard Codec.canDecode(dtype), dtype.isArithmetic else {
                        problems.append("module '\(module.path)': base dtype \(dtype.rawValue) cannot be merged into")
                        break
                    }
                    if change.rewritesBase, let source = tensor.source?.info.name, source != change.tensor {
                        throw PEFTKitError(.unsupported, file: adapter.source, tensor: module.path,
                                           "not supported: \(change.tensor) shares its weights with \(source) (tied), and "
                                           + "PEFT rewrites the shared weight for this adapter's init, changing both")
                    }
                    if !tensor.changes.isEmpty { try checkComposition(tensor.changes.map(\.change) + [change], adapter: adapter,
                                                                       module: module.path) }
                    if !restoredExactly.contains(change.tensor) {
                        tensor.changes.append(OutputTensor.Change(change: change, scale: Float(module.scaling * weight),
                                                                  adapterIndex: index))
                    }
                    tensors[change.tensor] = tensor
                }
            }
        }

        /// Refuses changes to one tensor that do not compose exactly: PiSSA/OLoRA rewrite the base itself, and DoRA's
        /// norms are of the base weight plus its own change, which PEFT's forward defines only among LoRA terms.
        func checkComposition(_ changes: [ModuleChange], adapter: Adapter, module: String) throws {
            let tensor = changes[0].tensor
            for change in changes {
                if case .alone(let name) = change.composition {
                    throw PEFTKitError(.unsupported, file: adapter.source, tensor: module,
                                       "not supported: \(name) combined with other adapter changes to \(tensor) (it "
                                       + "rewrites the base weight itself)")
                }
            }
            let allLoRATerms = changes.allSatisfy { if case .loraTerm = $0.composition { true } else { false } }
            if changes.contains(where: \.isDoRA), !allLoRATerms {
                throw PEFTKitError(.unsupported, file: adapter.source, tensor: module,
                                   "not supported: DoRA combined with a change to \(tensor) that is not a LoRA product "
                                   + "(PEFT's forward composes DoRA with LoRA adapters only)")
            }
            if request.direction == .unmerge, changes.contains(where: \.isDoRA) {
                throw PEFTKitError(.unsupported, file: adapter.source, tensor: module,
                                   "not supported: unmerging DoRA together with another change to \(tensor)")
            }
        }

        /// Ties each changed tensor to the unmerge record: a merge pushes onto the tensor's stack (started by a DoRA
        /// change), an unmerge pops the top, which must be this adapter's merge; replaced tensors lose their stack.
        mutating func planRecord() throws {
            for name in order {
                var tensor = tensors[name]!
                let stack = record.stacks[name]
                if tensor.changes.isEmpty {
                    if tensor.replacement == nil, let stack { keptRecord.stacks[name] = stack }
                    continue
                }
                switch request.direction {
                case .merge:
                    if stack != nil || tensor.changes.contains(where: \.change.isDoRA) {
                        tensor.recordUpdate = .push(onto: stack?.entries ?? [])
                    }
                case .unmerge:
                    guard let stack else {
                        if let dora = tensor.changes.first(where: \.change.isDoRA) {
                            throw PEFTKitError(.unsupported, file: base.path, tensor: name,
                                "not supported: unmerging DoRA here: a DoRA merge divides each output by ‖W + s·B·A‖, which "
                                + "the merged weights do not keep. peftkit's merge records it in \(UnmergeRecord.fileName) "
                                + "beside them; this model has no record of a merge into this tensor (merged by another "
                                + "tool, or the record was removed)", details: ["adapter: \(request.adapters[dora.adapterIndex])"])
                        }
                        continue
                    }
                    // One adapter at a time (checked), so one change per tensor.
                    let change = tensor.changes[0], top = stack.entries.last!
                    guard (top.dora != nil) == change.change.isDoRA, top.scale == change.scale else {
                        throw PEFTKitError(.baseMismatch, file: base.path, tensor: name,
                            "the last merge recorded for this tensor was \(top.dora != nil ? "a DoRA" : "a non-DoRA") merge "
                            + "with scale \(top.scale), not this adapter's \(change.change.isDoRA ? "DoRA" : "non-DoRA") "
                            + "change with scale \(change.scale): unmerge adapters in the reverse order of merging, each "
                            + "with the weight it was merged with")
                    }
                    tensor.changes[0].recorded = top
                    tensor.recordUpdate = .pop(expecting: stack.hash, leaving: Array(stack.entries.dropLast()))
                }
                tensors[name] = tensor
            }
        }

        /// The tensors in output order, once every module fits; the notes and config changes that go with them.
        mutating func finish() throws -> ([OutputTensor], [String], [(key: String, value: JSONValue)]) {
            guard problems.isEmpty else {
                throw PEFTKitError(.baseMismatch, file: base.path, "\(problems.count) module(s) do not fit this base model",
                                   details: problems)
            }
            if request.direction == .unmerge {
                // Undo in reverse order of application.
                for name in tensors.keys { tensors[name]!.changes.reverse() }
            }
            try planRecord()
            if let embedding = inputEmbedding, configChanges.contains(where: { $0.key == "tie_word_embeddings" }),
               tensors[embedding.info.name]?.changes.contains(where: { $0.change.rewritesBase }) == true {
                // The untied head started from the embedding as stored, but PEFT's change (replaced token rows) is to
                // the weight both share.
                throw PEFTKitError(.unsupported, tensor: embedding.info.name,
                                   "not supported: the adapter changes the tied output head and rewrites rows of the "
                                   + "embedding it shares; the untied head would miss those rows")
            }
            if tiedEmbeddings, let embedding = inputEmbedding,
               !base.tensors.contains(where: { $0.info.name.hasSuffix("lm_head.weight") }),
               tensors[embedding.info.name]?.changes.isEmpty == false,
               !configChanges.contains(where: { $0.key == "tie_word_embeddings" }) {
                notes.append("the output head is tied to \(embedding.info.name) and changes with it, as in the merged PEFT model")
            }
            if let dtype = request.outputDType, let baseConfig {
                for key in ["torch_dtype", "dtype"] where baseConfig[key] != nil {
                    configChanges.append((key, .string(MergePlan.torchName(dtype))))
                }
            }
            return (order.map { tensors[$0]! }, notes, configChanges)
        }
    }

    /// A NaN or infinity in an adapter would poison every merged value it touches: refuse before writing anything.
    private static func checkFinite(_ adapter: Adapter) throws {
        for tensor in adapter.allTensors {
            let values = try tensor.floats()
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw PEFTKitError(.numerics, file: adapter.source, tensor: tensor.name,
                                   "element \(bad) is \(values[bad]); merging would spread it",
                                   remedy: .allowNonFinite)
            }
        }
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
    private static func layout(_ tensors: [OutputTensor], base: Checkpoint,
                               request: MergeRequest) -> [(name: String, tensors: [OutputTensor])] {
        if let maxShardSize = request.maxShardSize {
            let plan = ShardPlanner.plan(sizes: tensors.map(\.outputBytes), maxShardSize: maxShardSize)
            return plan.enumerated().map { (i, members) in
                (ShardPlanner.shardName(i, of: plan.count), members.map { tensors[$0] })
            }
        }
        var files: [(name: String, tensors: [OutputTensor])] = base.files.map { (($0.path as NSString).lastPathComponent, []) }
        for tensor in tensors {
            // A tensor new to the output (an untied head) goes with the embedding it started from.
            let file = tensor.source.flatMap { source in base.files.firstIndex { $0 === source.file } } ?? files.count - 1
            files[file].tensors.append(tensor)
        }
        return files
    }
}
