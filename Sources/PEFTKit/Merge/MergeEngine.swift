import Foundation
import SafeTensors

/// Where a running merge is, for progress display.
public struct MergeProgress: Sendable {
    public let tensorsDone: Int
    public let tensorsTotal: Int
    public let bytesDone: Int
    public let bytesTotal: Int
    public let currentTensor: String
}

/// What a merge or unmerge did.
public struct MergeSummary: Sendable {
    public struct AdapterUse: Sendable {
        public let source: String
        public let method: AdapterMethod
        public let variant: AdapterVariant
        public let weight: Double
        public let modules: Int
    }

    public let direction: MergeRequest.Direction
    public let output: String
    public let files: [String]
    public let adapters: [AdapterUse]
    /// Tensors changed by adapter modules.
    public let transformed: Int
    /// Their names, in output order.
    public let transformedTensors: [String]
    /// Tensors replaced whole by tensors the adapter carries.
    public let replaced: Int
    /// Tensors copied byte for byte.
    public let copied: Int
    /// Tensors copied with a dtype conversion.
    public let converted: Int
    public let bytesWritten: Int
    public let seconds: Double
    public let notes: [String]
    /// Unmerge: an upper bound on |result − true base| over all unmerged elements (the merged file's rounding).
    public let driftBound: Double?
    /// Bat unmerge: the largest condition number of the systems I + B_j that were solved.
    public let worstCondition: Double?
}

/// The streaming merge: one tensor at a time, decode → apply every adapter module that touches it → encode → write,
/// in row slices of bounded size, so memory stays flat whatever the model's size. Untouched tensors are copied as
/// bytes. Output appears under its final name only when complete.
public enum MergeEngine {
    /// Working-set size of one slice, in Float32 elements (1 MiB): small enough that decode → apply → check → encode
    /// stay in the CPU cache, large enough for efficient BLAS calls.
    static let sliceElements = 1 << 18
    /// Untouched tensors are copied in pieces of this many bytes, each released from memory once written; transformed
    /// tensors release their input in batches of this size too. Fewer, larger releases matter: each one interrupts
    /// the other core to flush its TLB.
    static let copyChunkBytes = 8 << 20
    /// Condition number above which an unmerge warns that the solve amplifies the merged file's rounding.
    public static let conditionWarningThreshold = 1e4

    public static func run(_ request: MergeRequest,
                           progress: (@Sendable (MergeProgress) -> Void)? = nil) throws -> MergeSummary {
        let start = Date()
        let plan = try MergePlan.make(request)
        let folder = try OutputFolder(finalPath: request.output, force: request.force)
        // Each worker runs BLAS on its own slices: OpenBLAS's own threads only spin on these small products.
        LinearAlgebra.useOneThread()
        let state = RunState(plan: plan, progress: progress)
        try writeFiles(plan, into: folder, state: state)
        if plan.writesIndex { try writeIndex(plan, into: folder) }
        var sideNotes: [String] = []
        try copySideFiles(plan, into: folder, notes: &sideNotes)
        try folder.publish()

        var notes = plan.notes + sideNotes
        if let condition = state.worstCondition, condition > conditionWarningThreshold {
            notes.append(String(format: "warning: I + B is ill-conditioned (condition number %.3g): the unmerged values "
                + "can be off by that factor times the merged file's rounding", condition))
        }
        return MergeSummary(
            direction: request.direction, output: folder.finalPath, files: plan.files.map(\.name)
                + (plan.writesIndex ? [indexName(plan)] : []),
            adapters: plan.adapters.enumerated().map { i, adapter in
                MergeSummary.AdapterUse(source: request.adapters[i], method: adapter.method, variant: adapter.variant,
                                        weight: request.weights[i], modules: adapter.modules.count)
            },
            transformed: state.transformed, transformedTensors: state.transformedTensors, replaced: state.replaced, copied: state.copied, converted: state.converted,
            bytesWritten: state.bytesDone, seconds: Date().timeIntervalSince(start), notes: notes,
            driftBound: request.direction == .unmerge ? state.driftBound : nil, worstCondition: state.worstCondition)
    }

    /// Counters shared by the workers of one run, behind a lock.
    private final class RunState: @unchecked Sendable {
        // @unchecked: every mutable property is only touched under `lock` (see `update`).
        let plan: MergePlan
        let progress: (@Sendable (MergeProgress) -> Void)?
        let tensorsTotal: Int
        let bytesTotal: Int
        private let lock = NSLock()
        var tensorsDone = 0
        var bytesDone = 0
        var transformed = 0, replaced = 0, copied = 0, converted = 0
        var transformedTensors: [String] = []
        var driftBound = 0.0
        var worstCondition: Double?

        init(plan: MergePlan, progress: (@Sendable (MergeProgress) -> Void)?) {
            self.plan = plan
            self.progress = progress
            tensorsTotal = plan.files.reduce(0) { $0 + $1.tasks.count }
            bytesTotal = plan.files.reduce(0) { $0 + $1.tasks.reduce(0) { $0 + $1.outputBytes } }
        }

        func update(_ body: (RunState) -> Void) { lock.withLock { body(self) } }

        func finished(_ task: TensorTask) {
            let report = lock.withLock { () -> MergeProgress in
                tensorsDone += 1
                bytesDone += task.outputBytes
                return MergeProgress(tensorsDone: tensorsDone, tensorsTotal: tensorsTotal, bytesDone: bytesDone,
                                     bytesTotal: bytesTotal, currentTensor: task.name)
            }
            progress?(report)
        }
    }

    /// One worker's Float32 buffer and encoded slices, reused from task to task.
    private final class Worker {
        var floats = [Float]()
        let slices = SliceWriter(capacity: MergeEngine.slicesPerWorker)
    }

    /// Encoded slices a worker may hold while its output file is busy.
    static let slicesPerWorker = 8

    /// Workers per run.
    static var workerCount: Int { max(1, min(2, ProcessInfo.processInfo.activeProcessorCount)) }

    /// Writes every output file. Each worker keeps to a file of its own while there is one (two files are written in
    /// parallel by the kernel, one file only in turns) and helps with another when its own is done; the worker that
    /// finishes a file's last tensor syncs it and renames it into place.
    private static func writeFiles(_ plan: MergePlan, into folder: OutputFolder, state: RunState) throws {
        let files = try plan.files.map { planned -> (file: SharedOutputFile, tasks: [TensorTask]) in
            let metadata = planned.tasks.first?.source?.file.metadata ?? [("format", "pt")]
            let file = SharedOutputFile(
                try SafeTensorsWriter(path: folder.path(of: planned.name),
                                      tensors: planned.tasks.map { TensorSpec(name: $0.name, dtype: $0.outputDType, shape: $0.shape) },
                                      metadata: metadata))
            let taskByName = Dictionary(uniqueKeysWithValues: planned.tasks.map { ($0.name, $0) })
            // In file order, so that each file is written front to back.
            return (file, file.writer.tensors.map { taskByName[$0.name]! })
        }
        guard !files.isEmpty else { return }
        let scheduler = Scheduler(files.map { $0.tasks.map(\.outputBytes) })
        DispatchQueue.concurrentPerform(iterations: workerCount) { _ in
            let worker = Worker()
            var current: Int?
            while let (index, task) = scheduler.next(after: current) {
                current = index
                let file = files[index].file
                do {
                    try process(files[index].tasks[task], worker: worker, file: file, state: state)
                    try worker.slices.flush()
                    if scheduler.finished(file: index) { try file.writer.finish() }
                    state.finished(files[index].tasks[task])
                } catch {
                    scheduler.fail(error)
                }
            }
        }
        if let error = scheduler.error { throw error }
    }

    /// Hands out tasks, in order within each file, until all are done or a worker fails. A worker whose file has no
    /// tasks left moves to the file with the fewest workers, then the most bytes left.
    private final class Scheduler: @unchecked Sendable {
        // @unchecked: every property is only touched under `lock`.
        private let lock = NSLock()
        private let taskBytes: [[Int]]
        private var nextTask: [Int]
        private var bytesLeft: [Int]
        private var unfinished: [Int]
        private var workers: [Int]
        private var failure: Error?

        init(_ taskBytes: [[Int]]) {
            self.taskBytes = taskBytes
            nextTask = taskBytes.map { _ in 0 }
            bytesLeft = taskBytes.map { $0.reduce(0, +) }
            unfinished = taskBytes.map(\.count)
            workers = taskBytes.map { _ in 0 }
        }

        var error: Error? { lock.withLock { failure } }

        /// The next (file, task) for a worker that was on file `current`.
        func next(after current: Int?) -> (file: Int, task: Int)? {
            lock.withLock {
                guard failure == nil else { return nil }
                let file: Int
                if let current, nextTask[current] < taskBytes[current].count {
                    file = current
                } else {
                    if let current { workers[current] -= 1 }
                    guard let other = taskBytes.indices.filter({ nextTask[$0] < taskBytes[$0].count })
                        .min(by: { (workers[$0], -bytesLeft[$0]) < (workers[$1], -bytesLeft[$1]) }) else { return nil }
                    file = other
                    workers[file] += 1
                }
                let task = nextTask[file]
                nextTask[file] += 1
                bytesLeft[file] -= taskBytes[file][task]
                return (file, task)
            }
        }

        /// Records a finished task; true when it was its file's last.
        func finished(file: Int) -> Bool {
            lock.withLock {
                unfinished[file] -= 1
                return unfinished[file] == 0
            }
        }

        func fail(_ error: Error) { lock.withLock { if failure == nil { failure = error } } }
    }

    private static func process(_ task: TensorTask, worker: Worker, file: SharedOutputFile, state: RunState) throws {
        if !task.steps.isEmpty {
            try transform(task, worker: worker, file: file, state: state)
            state.update {
                $0.transformed += 1
                $0.transformedTensors.append(task.name)
            }
        } else if let replacement = task.replacement {
            try convert(replacement, name: task.name, to: task.outputDType, worker: worker, file: file)
            state.update { $0.replaced += 1 }
        } else {
            try copy(task, worker: worker, file: file, state: state)
        }
    }

    private static func copy(_ task: TensorTask, worker: Worker, file: SharedOutputFile, state: RunState) throws {
        let source = task.source!
        if task.outputDType == source.info.dtype && task.name == source.info.name {
            let tensor = StoredTensor(view: try source.file.view(source.info))
            var offset = 0
            repeat {
                let end = min(tensor.byteCount, offset + copyChunkBytes)
                try tensor.withBytes { bytes in
                    try file.write(task.name, chunk: UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), at: offset)
                }
                tensor.release(bytes: offset..<end)
                offset = end
            } while offset < tensor.byteCount
            state.update { $0.copied += 1 }
        } else {
            try convert(StoredTensor(view: try source.file.view(source.info)), name: task.name, to: task.outputDType,
                        worker: worker, file: file)
            source.file.release(source.info)
            let converted = task.outputDType != source.info.dtype
            state.update { if converted { $0.converted += 1 } else { $0.copied += 1 } }
        }
    }

    /// Writes `tensor` as `dtype`, byte for byte when the dtype already matches, else through Float32 in slices.
    private static func convert(_ tensor: StoredTensor, name: String, to dtype: DType, worker: Worker,
                                file: SharedOutputFile) throws {
        if tensor.dtype == dtype {
            try tensor.withBytes { try file.write(name, chunk: $0, at: 0) }
            return
        }
        let inSize = tensor.dtype.bitWidth / 8, outSize = dtype.bitWidth / 8
        try tensor.withBytes { source in
            var start = 0
            while start < tensor.elementCount {
                let count = min(sliceElements, tensor.elementCount - start)
                try encodeSlice(count: count, dtype: dtype, worker: worker,
                                into: file, tensor: name, at: start * outSize) { floats in
                    Codec.decode(UnsafeRawBufferPointer(rebasing: source[(start * inSize)...].prefix(count * inSize)),
                                 as: tensor.dtype, into: floats)
                }
                start += count
            }
        }
    }

    /// Fills the worker's Float32 buffer, encodes it, and writes the bytes into tensor `name` of `file` at byte
    /// `offset`.
    /// `check` sees the values, and whether the encoder met any that are not finite in `dtype`, before anything is
    /// written.
    private static func encodeSlice(count: Int, dtype: DType, worker: Worker,
                                    into file: SharedOutputFile, tensor name: String, at offset: Int,
                                    fill: (UnsafeMutableBufferPointer<Float>) throws -> Void,
                                    check: (UnsafeMutableBufferPointer<Float>, Bool) throws -> Void = { _, _ in }) throws {
        if worker.floats.count < count { worker.floats = [Float](repeating: 0, count: count) }
        try worker.floats.withUnsafeMutableBufferPointer { floats in
            let slice = UnsafeMutableBufferPointer(rebasing: floats[0..<count])
            try fill(slice)
            try worker.slices.write(name, into: file, at: offset, byteCount: count * dtype.bitWidth / 8) { encoded in
                try check(slice, Codec.encode(UnsafeBufferPointer(slice), as: dtype, into: encoded))
            }
        }
    }

    // MARK: Transforming

    /// An adapter module decoded and ready to apply to row slices.
    private enum Operation {
        case lora(LoRA.Factors, LoRA.Layout, scale: Float)
        case loraBias([Float], scale: Float)
        case columnBlock([Float], rank: Int, scale: Float)
        case bat([Float], rank: Int, scale: Float)
        case removeBat(Bone.BatInverse)

        /// A bound on how far this operation's Float32 change can be from the exact one, twice: the merge that made
        /// the input (whoever summed it, in whatever order) and the unmerge each sum it. For s · B · A that is the
        /// classic γ bound, (r + 1) · 2⁻²⁴ · |s| · max Σₖ |B[o, k] · A[k, i]|, with the sum bounded by B's largest
        /// row sum of magnitudes times A's largest magnitude.
        var summationError: Double {
            guard case .lora(let factors, _, let scale) = self, factors.rank > 0 else { return 0 }
            let r = factors.rank
            let largestRowSum = (0..<factors.outFeatures).map { o in
                factors.b[(o * r)..<((o + 1) * r)].reduce(0.0) { $0 + Double($1.magnitude) }
            }.max() ?? 0
            let largestA = factors.a.reduce(0.0) { max($0, Double($1.magnitude)) }
            return 2 * Double(r + 1) * 0x1p-24 * Double(scale.magnitude) * largestRowSum * largestA
        }

        /// Row slices must hold whole bands of r rows for Bat.
        var rowAlignment: Int {
            switch self {
            case .bat(_, let rank, _): rank
            case .removeBat(let inverse): inverse.rank
            default: 1
            }
        }
    }

    private static func prepare(_ step: MergeStep, rows: Int, direction: MergeRequest.Direction,
                                source: String) throws -> Operation {
        let module = step.module
        switch step.target {
        case .lora(let layout):
            let (a, b) = module.kind == .embedding
                ? (module.tensors[.embeddingA]!, module.tensors[.embeddingB]!)
                : (module.tensors[.loraA]!, module.tensors[.loraB]!)
            return .lora(LoRA.Factors(a: try a.floats(), b: try b.floats(), rank: module.rank), layout, scale: step.scale)
        case .loraBias:
            return .loraBias(try module.tensors[.loraBias]!.floats(), scale: step.scale)
        case .columnBlock:
            var block = try module.block!.floats()
            if let mini = module.miniRank {
                block = MiSS.expandMini(block, rank: module.rank, miniRank: mini, outFeatures: rows)
            }
            return .columnBlock(block, rank: module.rank, scale: step.scale)
        case .bat:
            let blocks = try module.block!.floats()
            guard direction == .unmerge else { return .bat(blocks, rank: module.rank, scale: step.scale) }
            // The plan negates scales for unmerging; Bat's inverse is built from the merge-time scale.
            switch Bone.BatInverse.prepare(blocks, rank: module.rank, scale: -step.scale) {
            case .success(let inverse): return .removeBat(inverse)
            case .failure(let singular):
                throw PEFTKitError(.numerics, file: source, tensor: module.path,
                                   "I + B for output band \(singular.band) is singular: this merge cannot be undone")
            }
        }
    }

    private static func transform(_ task: TensorTask, worker: Worker, file: SharedOutputFile, state: RunState) throws {
        // The starting value: the base's, or the whole tensor an adapter carries in its place.
        let start = try task.replacement ?? StoredTensor(view: try task.source!.file.view(task.source!.info))
        let rows = task.shape.first ?? 1
        let columns = task.shape.count == 2 ? task.shape[1] : (task.shape.first ?? 1)
        let operations = try task.steps.map {
            try prepare($0, rows: rows, direction: state.plan.request.direction, source: state.plan.adapters[$0.adapterIndex].source)
        }
        for case .removeBat(let inverse) in operations {
            state.update { $0.worstCondition = max($0.worstCondition ?? 0, Double(inverse.worstCondition)) }
        }
        if task.shape.count == 1 {
            try transformVector(task, operations: operations, start: start, worker: worker, file: file, state: state)
            return
        }
        let alignment = operations.reduce(1) { lcm($0, $1.rowAlignment) }
        let rowsPerSlice = max(alignment, sliceElements / max(columns, 1) / alignment * alignment)
        let inSize = start.dtype.bitWidth / 8, outSize = task.outputDType.bitWidth / 8
        let isUnmerge = state.plan.request.direction == .unmerge
        let allowNonFinite = state.plan.request.allowNonFinite
        let summationError = isUnmerge ? operations.reduce(0) { $0 + $1.summationError } : 0
        var firstRow = 0, releasedBytes = 0
        while firstRow < rows {
            let rowRange = firstRow..<min(rows, firstRow + rowsPerSlice)
            let count = rowRange.count * columns
            var maxMagnitude: Float = 0
            try encodeSlice(count: count, dtype: task.outputDType, worker: worker,
                            into: file, tensor: task.name, at: firstRow * columns * outSize) { floats in
                try start.withBytes { raw in
                    let bytes = UnsafeRawBufferPointer(rebasing: raw[(firstRow * columns * inSize)...].prefix(count * inSize))
                    Codec.decode(bytes, as: start.dtype, into: floats)
                }
                if isUnmerge { maxMagnitude = largestMagnitude(floats) }
                let slice = WeightRows(values: floats.baseAddress!, rows: rowRange, columns: columns)
                for operation in operations { apply(operation, to: slice) }
            } check: { floats, nonFinite in
                try checkFinite(floats, nonFinite: nonFinite, task: task, firstRow: firstRow, columns: columns,
                                allowed: allowNonFinite)
            }
            if isUnmerge {
                let bound = driftBound(maxMagnitude: maxMagnitude, dtype: task.outputDType, operations: operations)
                    + summationError
                state.update { $0.driftBound = max($0.driftBound, bound) }
            }
            firstRow = rowRange.upperBound
            let consumedBytes = firstRow * columns * inSize
            if consumedBytes - releasedBytes >= copyChunkBytes || firstRow == rows {
                start.release(bytes: releasedBytes..<consumedBytes)
                releasedBytes = consumedBytes
            }
        }
    }

    private static func transformVector(_ task: TensorTask, operations: [Operation], start: StoredTensor,
                                        worker: Worker, file: SharedOutputFile, state: RunState) throws {
        let count = task.shape[0]
        let allowNonFinite = state.plan.request.allowNonFinite
        try encodeSlice(count: count, dtype: task.outputDType, worker: worker,
                        into: file, tensor: task.name, at: 0) { floats in
            try start.withBytes { Codec.decode($0, as: start.dtype, into: floats) }
            for case .loraBias(let bias, let scale) in operations { LoRA.applyBias(bias, scale: scale, to: floats) }
        } check: { floats, nonFinite in
            try checkFinite(floats, nonFinite: nonFinite, task: task, firstRow: 0, columns: count, allowed: allowNonFinite)
        }
    }

    private static func apply(_ operation: Operation, to slice: WeightRows) {
        switch operation {
        case .lora(let factors, let layout, let scale): LoRA.apply(factors, scale: scale, layout: layout, to: slice)
        case .columnBlock(let block, let rank, let scale): Bone.applyColumnBlock(block, rank: rank, scale: scale, to: slice)
        case .bat(let blocks, let rank, let scale): Bone.applyBat(blocks, rank: rank, scale: scale, to: slice)
        case .removeBat(let inverse): Bone.removeBat(inverse, from: slice)
        case .loraBias: break  // vectors only
        }
    }

    /// Refuses values that are not finite, or that the output dtype would round to infinity.
    /// `nonFinite` is the encoder's screen; only when it trips are the values searched.
    private static func checkFinite(_ values: UnsafeMutableBufferPointer<Float>, nonFinite: Bool, task: TensorTask,
                                    firstRow: Int, columns: Int, allowed: Bool) throws {
        guard nonFinite, !allowed else { return }
        let limit: Float = switch task.outputDType {
        case .f16: 65520  // the f16 rounding boundary to infinity
        case .bf16: Float(bitPattern: 0x7F7F_8000)
        default: .infinity
        }
        for (i, value) in values.enumerated() where !(value.magnitude < limit) {
            let what = value.isFinite ? "\(value), beyond the largest \(task.outputDType.rawValue)" : "\(value)"
            throw PEFTKitError(.numerics, tensor: task.name,
                               "merged value at [\(firstRow + i / columns), \(i % columns)] is \(what) (--allow-non-finite to write it anyway)")
        }
    }

    private static func largestMagnitude(_ values: UnsafeMutableBufferPointer<Float>) -> Float {
        values.reduce(0) { max($0, $1.isFinite ? $1.magnitude : 0) }
    }

    /// Rounding the merged values cost at most half an ulp each; subtracting the change and rounding again adds half
    /// an ulp more. A Bat solve can amplify the first half ulp by the condition number of I + B. The change itself
    /// is a Float32 sum whose error (`summationError`) adds to this.
    private static func driftBound(maxMagnitude: Float, dtype: DType, operations: [Operation]) -> Double {
        let ulp = Comparison.ulp(at: Double(maxMagnitude), in: dtype)
        let amplification = operations.reduce(1.0) { factor, operation in
            if case .removeBat(let inverse) = operation { return factor * Double(inverse.worstCondition) }
            return factor
        }
        return ulp / 2 * amplification + ulp / 2
    }

    private static func lcm(_ a: Int, _ b: Int) -> Int {
        func gcd(_ x: Int, _ y: Int) -> Int { y == 0 ? x : gcd(y, x % y) }
        return a / gcd(a, b) * b
    }

    /// Compares the named tensors of two checkpoints (e.g. an unmerged model against the true base), with the
    /// tolerance policy's magnitude rule.
    public static func compare(_ actualPath: String, against referencePath: String,
                               tensors names: [String]) throws -> [TensorComparison] {
        let actual = try Checkpoint(path: actualPath), reference = try Checkpoint(path: referencePath)
        return try names.map { name in
            guard let want = reference.location(of: name) else {
                throw PEFTKitError(.baseMismatch, file: referencePath, tensor: name, "not in this checkpoint")
            }
            let got = try actual.view(name)
            guard got.info.dtype == want.info.dtype, got.info.shape == want.info.shape, want.info.dtype.isArithmetic else {
                throw PEFTKitError(.baseMismatch, file: referencePath, tensor: name,
                                   "is \(want.info.dtype.rawValue) \(want.info.shape), the result \(got.info.dtype.rawValue) \(got.info.shape)")
            }
            let expected = try want.file.view(want.info)
            return Comparison.compare(name: name, dtype: want.info.dtype, count: want.info.elementCount,
                                      actual: got.bytes, expected: expected.bytes,
                                      floorAtTensorMaximum: Comparison.floorsAtTensorMaximum(want.info.dtype))
        }
    }

    // MARK: Folder contents

    private static func indexName(_ plan: MergePlan) -> String {
        plan.base.indexFileName ?? "model.safetensors.index.json"
    }

    private static func writeIndex(_ plan: MergePlan, into folder: OutputFolder) throws {
        var metadata = plan.base.indexFileName.flatMap {
            try? ShardIndex.read(path: (plan.base.folder as NSString).appendingPathComponent($0)).metadata
        } ?? []
        let total = plan.files.reduce(0) { $0 + $1.tasks.reduce(0) { $0 + $1.outputBytes } }
        metadata.removeAll { $0.key == "total_size" }
        metadata.append(("total_size", .integer(Int64(total))))
        let weightMap = plan.files.flatMap { file in file.tasks.map { (tensor: $0.name, shard: file.name) } }
        let text = ShardIndex(weightMap: weightMap, metadata: metadata).serialized()
        try writeFile(text, to: folder.path(of: indexName(plan)))
    }

    /// Files that are not weights (config, tokenizer, generation config …) are copied so the output loads as a model.
    private static func copySideFiles(_ plan: MergePlan, into folder: OutputFolder, notes: inout [String]) throws {
        let base = plan.base
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: base.path, isDirectory: &isFolder), isFolder.boolValue else { return }
        let weightFiles = Set(base.files.map { ($0.path as NSString).lastPathComponent } + [base.indexFileName].compactMap { $0 })
        let otherWeightSuffixes = [".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".safetensors", ".safetensors.index.json"]
        for name in try FileManager.default.contentsOfDirectory(atPath: base.folder).sorted() where !weightFiles.contains(name) {
            let path = (base.folder as NSString).appendingPathComponent(name)
            var entryIsFolder: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &entryIsFolder), entryIsFolder.boolValue {
                notes.append("folder \(name) of the base was not copied")
                continue
            }
            if otherWeightSuffixes.contains(where: { name.hasSuffix($0) }) {
                notes.append("\(name) holds unmerged weights in another format and was not copied")
                continue
            }
            if name == "config.json" && !plan.configChanges.isEmpty {
                guard case .object(var members) = try AdapterLoader.readJSON(path) else { continue }
                for (key, value) in plan.configChanges {
                    if let index = members.firstIndex(where: { $0.key == key }) { members[index].value = value }
                    else { members.append((key, value)) }
                }
                try writeFile(JSONValue.object(members).prettyText(indent: 2) + "\n", to: folder.path(of: name))
                continue
            }
            do {
                try FileManager.default.copyItem(atPath: path, toPath: folder.path(of: name))
            } catch {
                throw PEFTKitError(.io, file: path, "cannot copy into the output: \(error.localizedDescription)")
            }
        }
    }

    private static func writeFile(_ text: String, to path: String) throws {
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        } catch {
            throw PEFTKitError(.io, file: path, "cannot write: \(error.localizedDescription)")
        }
    }
}
