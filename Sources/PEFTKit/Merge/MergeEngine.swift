import Foundation
import SafeTensors

/// The streaming merge: one tensor at a time, decode → apply every adapter module that touches it → encode → write,
/// in row slices of bounded size, so memory stays flat whatever the model's size. Untouched tensors are copied as
/// bytes. Output appears under its final name only when complete.
///
/// The pieces: `MergePlan` checks everything and decides what each output tensor is; `MergeScheduler` hands the
/// tensors to the workers; each worker's `TensorWriter` produces them; `ModelFolderFiles` writes what else the folder
/// holds.
public enum MergeEngine {
    /// Condition number above which an unmerge warns that the solve amplifies the merged file's rounding.
    public static let conditionWarningThreshold = 1e4

    /// Merges (or unmerges) as `request` says.
    /// - Parameter progress: called from the workers after each tensor.
    /// - Throws: `PEFTKitError` — `.baseMismatch` when an adapter does not fit the base (every misfit listed),
    ///   `.unsupported` for a method or option peftkit cannot apply exactly, `.numerics` for non-finite values (unless
    ///   allowed) or a singular Bat system, `.io` when the output exists (unless `force`) or cannot be written; the
    ///   readers' errors (`PEFTKitError`, `SafeTensorsError`) for malformed inputs. Nothing is left at the output path.
    public static func run(_ request: MergeRequest,
                           progress: (@Sendable (MergeProgress) -> Void)? = nil) throws -> MergeSummary {
        let start = Date()
        let plan = try MergePlan.make(request)
        let folder = try OutputFolder(finalPath: request.output, force: request.force)
        // Each worker runs BLAS on its own slices: OpenBLAS's own threads only spin on these small products.
        LinearAlgebra.useOneThread()
        let run = MergeRun(plan: plan, progress: progress)
        try writeFiles(plan, into: folder, run: run)
        if plan.writesIndex { try ModelFolderFiles.writeIndex(plan, into: folder) }
        try run.record.write(to: folder.path(of: UnmergeRecord.fileName))
        var sideNotes: [String] = []
        try ModelFolderFiles.copySideFiles(plan, into: folder, notes: &sideNotes)
        try folder.publish()

        var notes = plan.notes + sideNotes
        if !run.record.stacks.isEmpty {
            notes.append("\(UnmergeRecord.fileName) records what unmerging needs for \(run.record.stacks.count) tensor(s) "
                + "(DoRA's norms, which the merged weights do not keep); keep it with the weights")
        }
        if let condition = run.worstCondition, condition > conditionWarningThreshold {
            notes.append(String(format: "warning: I + B is ill-conditioned (condition number %.3g): the unmerged values "
                + "can be off by that factor times the merged file's rounding", condition))
        }
        return MergeSummary(
            direction: request.direction, output: folder.finalPath, files: plan.files.map(\.name)
                + (plan.writesIndex ? [ModelFolderFiles.indexName(plan)] : []),
            adapters: plan.adapters.enumerated().map { i, adapter in
                MergeSummary.AdapterUse(source: request.adapters[i], method: adapter.method.name,
                                        peftType: adapter.config.peftType, variant: adapter.variant,
                                        weight: request.weights[i], modules: adapter.modules.count)
            },
            transformed: run.transformed, transformedTensors: run.transformedTensors, replaced: run.replaced,
            copied: run.copied, converted: run.converted, bytesWritten: run.bytesDone,
            seconds: Date().timeIntervalSince(start), notes: notes,
            driftBound: request.direction == .unmerge ? run.driftBound : nil,
            summationBound: request.direction == .unmerge ? run.summationBound : nil, worstCondition: run.worstCondition)
    }

    /// Workers per run.
    static var workerCount: Int { max(1, min(2, ProcessInfo.processInfo.activeProcessorCount)) }

    /// Writes every output file. Each worker keeps to a file of its own while there is one (two files are written in
    /// parallel by the kernel, one file only in turns) and helps with another when its own is done; the worker that
    /// finishes a file's last tensor syncs it and renames it into place.
    private static func writeFiles(_ plan: MergePlan, into folder: OutputFolder, run: MergeRun) throws {
        let files = try plan.files.map { planned -> (file: SharedOutputFile, tensors: [OutputTensor]) in
            let metadata = planned.tensors.first?.source?.file.metadata ?? [("format", "pt")]
            let file = SharedOutputFile(
                try SafeTensorsWriter(path: folder.path(of: planned.name),
                                      tensors: planned.tensors.map { TensorSpec(name: $0.name, dtype: $0.outputDType, shape: $0.shape) },
                                      metadata: metadata))
            let byName = Dictionary(uniqueKeysWithValues: planned.tensors.map { ($0.name, $0) })
            // In file order, so that each file is written front to back.
            return (file, file.writer.tensors.map { byName[$0.name]! })
        }
        guard !files.isEmpty else { return }
        let scheduler = MergeScheduler(files.map { $0.tensors.map(\.outputBytes) })
        DispatchQueue.concurrentPerform(iterations: workerCount) { _ in
            let writer = TensorWriter(run: run)
            var current: Int?
            while let (index, tensor) = scheduler.next(after: current) {
                current = index
                let file = files[index].file
                do {
                    try writer.write(files[index].tensors[tensor], into: file)
                    if scheduler.finished(file: index) { try file.writer.finish() }
                    run.finished(files[index].tensors[tensor])
                } catch {
                    scheduler.fail(error)
                }
            }
        }
        if let error = scheduler.error { throw error }
    }
}

/// One run's plan and the counters its workers share, behind a lock.
final class MergeRun: @unchecked Sendable {
    // @unchecked: every mutable property is only touched under `lock` (see `update`).
    let plan: MergePlan
    private let progress: (@Sendable (MergeProgress) -> Void)?
    private let lock = NSLock()
    var tensorsDone = 0
    var bytesDone = 0
    var transformed = 0, replaced = 0, copied = 0, converted = 0
    var transformedTensors: [String] = []
    var driftBound = 0.0
    var summationBound = 0.0
    var worstCondition: Double?
    /// The output's unmerge record: the base's for tensors left alone, and what the workers add.
    var record: UnmergeRecord

    init(plan: MergePlan, progress: (@Sendable (MergeProgress) -> Void)?) {
        self.plan = plan
        record = plan.keptRecord
        self.progress = progress
    }

    func update(_ body: (MergeRun) -> Void) { lock.withLock { body(self) } }

    func finished(_ tensor: OutputTensor) {
        let report = lock.withLock { () -> MergeProgress in
            tensorsDone += 1
            bytesDone += tensor.outputBytes
            return MergeProgress(tensorsDone: tensorsDone, tensorsTotal: plan.tensorCount, bytesDone: bytesDone,
                                 bytesTotal: plan.outputBytes, currentTensor: tensor.name)
        }
        progress?(report)
    }
}
