import Foundation
import SafeTensors

/// One tensor of an audited checkpoint against what peftkit computes it must be.
public struct AuditedTensor: Sendable {
    public enum Status: String, Sendable {
        case passed
        case failed
        /// The plan has this tensor, the checkpoint does not.
        case missing
        /// The checkpoint has a tensor the plan does not produce.
        case extra
        case dtypeMismatch = "dtype_mismatch"
        case shapeMismatch = "shape_mismatch"
    }

    public let name: String
    public let status: Status
    /// Whether an adapter changes or replaces this tensor.
    public let adapted: Bool
    public let expectedDType: DType?
    public let expectedShape: [Int]?
    public let actualDType: DType?
    public let actualShape: [Int]?
    public let maxAbsoluteError: Double
    /// Ulps at operand magnitude (merged) or the ratio to the drift bound (unmerged); ∞ when not comparable.
    public let measure: Double
    public let identicalFraction: Double
    /// Unmerged: the drift bound the measure is a ratio to.
    public let bound: Double?

    public var passed: Bool { status == .passed }
}

/// A checkpoint held against the merge (or unmerge) of adapters into a base, tensor by tensor.
public struct CheckpointAudit: Sendable {
    public enum Mode: String, Sendable {
        case merged
        case unmerged
    }

    public let mode: Mode
    public let checkpoint: String
    public let base: String
    public let adapters: [String]
    public let weights: [Double]
    public let tensors: [AuditedTensor]
    /// The largest measure that passes (1 ulp for merged weights, 1 × bound for unmerge drift).
    public let tolerance: Double
    public let unit: String
    /// Problems beyond single tensors, e.g. an output head saved tied while the adapter changed only one of the two.
    public let findings: [String]
    public let notes: [String]

    public var passedCount: Int { tensors.filter(\.passed).count }
    public var failedCount: Int { tensors.count - passedCount + findings.count }
    public var passed: Bool { failedCount == 0 }

    /// The failing tensor with the largest measure (a tensor that cannot be compared at all counts as ∞).
    public var worst: AuditedTensor? {
        tensors.filter { !$0.passed }.max { ($0.measure.isNaN ? .infinity : $0.measure) < ($1.measure.isNaN ? .infinity : $1.measure) }
            ?? tensors.max { $0.measure < $1.measure }
    }
}

/// `verify --merged` / `--unmerged`: recomputes, streaming, what merging the adapters into BASE yields (through the
/// same `MergePlan` and the methods' own operations as `peftkit merge`) and holds the user's checkpoint against it with
/// the tolerance policy of spec/tolerance.md.
public enum CheckpointAuditor {
    /// `merged_max_ulp` of spec/tolerance.md §1 (a tensor whose F32 result holds two Float32 reductions, DoRA's, allows
    /// two: `OutputTensor.mergedMaxULP`).
    public static let mergedMaxULP = 1.0

    /// Holds `merged` against the merge of `adapters` (with `weights`) into `base`, its floating tensors written as
    /// `outputDType` (nil: each keeps the base's dtype), as `peftkit merge --dtype` would.
    /// - Throws: what planning the merge throws (`.baseMismatch` when an adapter does not fit the base …), and the
    ///   readers' errors for malformed inputs. A checkpoint that differs is a result, not an error.
    public static func verifyMerged(_ merged: String, base: String, adapters: [String], weights: [Double]? = nil,
                                    outputDType: DType? = nil,
                                    sliceElements: Int = MergeRequest.defaultSliceElements) throws -> CheckpointAudit {
        let plan = try MergePlan.make(MergeRequest(base: base, adapters: adapters, weights: weights, output: merged,
                                                   outputDType: outputDType, sliceElements: sliceElements))
        // As in the merge engine: one BLAS thread sums in the same order as `peftkit merge`, so that its output
        // compares bit for bit.
        LinearAlgebra.useOneThread()
        let actual = try Checkpoint(path: merged)
        var results: [AuditedTensor] = []
        var findings: [String] = []
        let planned = plan.files.flatMap(\.tensors)
        let plannedNames = Set(planned.map(\.name))
        var buffers = Buffers()
        for tensor in planned {
            guard let location = actual.location(of: tensor.name) else {
                results.append(missing(tensor))
                continue
            }
            if let mismatch = headerMismatch(tensor, location) { results.append(mismatch); continue }
            let expected = try PreparedTensor(tensor, plan: plan)
            let comparison = try compare(expected, with: location, buffers: &buffers)
            results.append(.init(name: tensor.name, status: comparison.maxScaledULP <= expected.mergedMaxULP ? .passed : .failed,
                                 adapted: tensor.isAdapted, expectedDType: tensor.outputDType, expectedShape: tensor.shape,
                                 actualDType: location.info.dtype, actualShape: location.info.shape,
                                 maxAbsoluteError: comparison.maxAbsoluteError, measure: comparison.maxScaledULP,
                                 identicalFraction: comparison.identicalFraction, bound: nil))
        }
        results += try extras(in: actual, plannedNames: plannedNames, plan: plan, buffers: &buffers)
        findings += tiedHeadFindings(plan: plan, planned: planned, actual: actual, results: results)
        return CheckpointAudit(mode: .merged, checkpoint: merged, base: base, adapters: adapters,
                               weights: plan.request.weights, tensors: results, tolerance: mergedMaxULP, unit: "ulp",
                               findings: findings, notes: plan.notes)
    }

    /// Holds `unmerged` (the result of removing the adapters from a merged model) against `base`: tensors no
    /// adapter touches must equal the base within `mergedMaxULP`; every adapted tensor must be within the drift bound
    /// `peftkit unmerge` reports for the correctly rounded merge of the adapters into `base` (spec/tolerance.md §3),
    /// plus, for F32/F64, one ulp at the tensor's largest magnitude for the BLAS summation order. A tensor an adapter
    /// replaced whole cannot be recovered: it may equal either the base or the adapter's copy.
    public static func verifyUnmerged(_ unmerged: String, base: String, adapters: [String], weights: [Double]? = nil,
                                      sliceElements: Int = MergeRequest.defaultSliceElements) throws -> CheckpointAudit {
        let plan = try MergePlan.make(MergeRequest(base: base, adapters: adapters, weights: weights, output: unmerged,
                                                   sliceElements: sliceElements))
        LinearAlgebra.useOneThread()
        let actual = try Checkpoint(path: unmerged)
        var results: [AuditedTensor] = []
        var buffers = Buffers()
        // The unmerge restores the base's tensors only: an untied head the merge adds is not expected back.
        let planned = plan.files.flatMap(\.tensors).filter { $0.source?.info.name == $0.name }
        for tensor in planned {
            guard let location = actual.location(of: tensor.name) else {
                results.append(missing(tensor))
                continue
            }
            if let mismatch = headerMismatch(tensor, location) { results.append(mismatch); continue }
            var restored = tensor
            restored.replacement = nil
            restored.changes = []
            let baseValue = try PreparedTensor(restored, plan: plan)
            if tensor.changes.isEmpty {
                var comparison = try compare(baseValue, with: location, buffers: &buffers)
                if comparison.maxScaledULP > mergedMaxULP, tensor.replacement != nil {
                    comparison = try compare(try PreparedTensor(tensor, plan: plan), with: location, buffers: &buffers)
                }
                results.append(.init(name: tensor.name, status: comparison.maxScaledULP <= tensor.mergedMaxULP ? .passed : .failed,
                                     adapted: tensor.isAdapted, expectedDType: tensor.outputDType, expectedShape: tensor.shape,
                                     actualDType: location.info.dtype, actualShape: location.info.shape,
                                     maxAbsoluteError: comparison.maxAbsoluteError, measure: comparison.maxScaledULP,
                                     identicalFraction: comparison.identicalFraction, bound: nil))
                continue
            }
            let merged = try PreparedTensor(tensor, plan: plan)
            let undo = try PreparedTensor(tensor, plan: plan, direction: .unmerge)
            let bound = try driftBound(merged: merged, undo: undo, base: baseValue, buffers: &buffers)
            let drift = try compare(baseValue, with: location, buffers: &buffers)
            let ratio = drift.maxAbsoluteError == 0 && drift.differing == 0 ? 0
                : (bound > 0 ? drift.maxAbsoluteError / bound : .infinity)
            results.append(.init(name: tensor.name, status: ratio <= 1 ? .passed : .failed, adapted: true,
                                 expectedDType: tensor.outputDType, expectedShape: tensor.shape,
                                 actualDType: location.info.dtype, actualShape: location.info.shape,
                                 maxAbsoluteError: drift.maxAbsoluteError, measure: ratio,
                                 identicalFraction: drift.identicalFraction, bound: bound))
        }
        let baseNames = Set(planned.map(\.name))
        for location in actual.tensors where !baseNames.contains(location.info.name) {
            results.append(.init(name: location.info.name, status: .extra, adapted: false, expectedDType: nil,
                                 expectedShape: nil, actualDType: location.info.dtype, actualShape: location.info.shape,
                                 maxAbsoluteError: .infinity, measure: .infinity, identicalFraction: 0, bound: nil))
        }
        return CheckpointAudit(mode: .unmerged, checkpoint: unmerged, base: base, adapters: adapters,
                               weights: plan.request.weights, tensors: results, tolerance: 1, unit: "× bound",
                               findings: [], notes: plan.notes)
    }

    // MARK: Pieces

    /// Reused Float32 and encoded buffers, so that streaming allocates once per run.
    struct Buffers {
        var floats = [Float]()
        var encoded = [UInt8]()
        var scale = [UInt8]()

        mutating func reserve(_ count: Int, bytes: Int) {
            if floats.count < count { floats = [Float](repeating: 0, count: count) }
            if encoded.count < bytes { encoded = [UInt8](repeating: 0, count: bytes) }
            if scale.count < bytes { scale = [UInt8](repeating: 0, count: bytes) }
        }
    }

    /// The result for a planned tensor the checkpoint does not have.
    private static func missing(_ tensor: OutputTensor) -> AuditedTensor {
        AuditedTensor(name: tensor.name, status: .missing, adapted: tensor.isAdapted, expectedDType: tensor.outputDType,
                      expectedShape: tensor.shape, actualDType: nil, actualShape: nil, maxAbsoluteError: .infinity,
                      measure: .infinity, identicalFraction: 0, bound: nil)
    }

    private static func headerMismatch(_ tensor: OutputTensor, _ location: Checkpoint.Location) -> AuditedTensor? {
        let status: AuditedTensor.Status
        if location.info.shape != tensor.shape { status = .shapeMismatch }
        else if location.info.dtype != tensor.outputDType { status = .dtypeMismatch }
        else { return nil }
        return AuditedTensor(name: tensor.name, status: status, adapted: tensor.isAdapted, expectedDType: tensor.outputDType,
                             expectedShape: tensor.shape, actualDType: location.info.dtype, actualShape: location.info.shape,
                             maxAbsoluteError: .infinity, measure: .infinity, identicalFraction: 0, bound: nil)
    }

    /// Compares the checkpoint's tensor at `location` (same dtype and shape) with `expected`, one slice of rows at a
    /// time: expected values rounded to the output dtype, the starting value as the operand magnitude (W of W + ΔW),
    /// and for F32/F64 the floor at the expected tensor's largest magnitude, found in a first pass.
    static func compare(_ expected: PreparedTensor, with location: Checkpoint.Location,
                        buffers: inout Buffers) throws -> TensorComparison {
        let tensor = expected.tensor, dtype = tensor.outputDType
        let actual = try location.file.view(location.info)
        defer {
            location.file.release(location.info)
            expected.release()
        }
        let size = dtype.bitWidth / 8
        guard dtype.isArithmetic, Codec.canDecode(expected.start.dtype) else {
            // Integer or boolean tensors (never adapted): byte for byte.
            let same = try expected.start.withBytes { $0.elementsEqual(actual.bytes) }
            return TensorComparison(name: tensor.name, dtype: dtype, elements: location.info.elementCount,
                                    differing: same ? 0 : location.info.elementCount, beyondOneULP: same ? 0 : 1,
                                    maxAbsoluteError: same ? 0 : .infinity, maxULP: same ? 0 : Int.max,
                                    maxScaledULP: same ? 0 : .infinity)
        }
        // An untouched tensor in its own dtype is compared with the starting bytes as they are.
        let asStored = expected.operations.isEmpty && expected.start.dtype == dtype
        var floor = 0.0
        var released = 0..<0
        if Comparison.floorsAtTensorMaximum(dtype) {
            for rowRange in expected.slices {
                let count = rowRange.count * expected.columns
                buffers.reserve(count, bytes: count * size)
                try buffers.floats.withUnsafeMutableBufferPointer { all in
                    let floats = UnsafeMutableBufferPointer(rebasing: all[0..<count])
                    try expected.values(rowRange, into: floats)
                    for v in floats where v.isFinite { floor = max(floor, Double(v.magnitude)) }
                }
                expected.release(&released, upTo: rowRange.upperBound, alongWith: nil)
            }
        }
        var result: TensorComparison?
        released = 0..<0
        for rowRange in expected.slices {
            let count = rowRange.count * expected.columns, offset = rowRange.lowerBound * expected.columns * size
            buffers.reserve(count, bytes: count * size)
            let actualSlice = UnsafeRawBufferPointer(rebasing: actual.bytes[offset..<(offset + count * size)])
            let piece: TensorComparison
            if asStored {
                piece = try expected.start.withBytes { raw in
                    Comparison.compare(name: tensor.name, dtype: dtype, count: count, actual: actualSlice,
                                       expected: UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + count * size)]),
                                       scale: nil, floor: floor)
                }
            } else {
                piece = try buffers.floats.withUnsafeMutableBufferPointer { all in
                    let floats = UnsafeMutableBufferPointer(rebasing: all[0..<count])
                    return try buffers.encoded.withUnsafeMutableBytes { encoded in
                        try buffers.scale.withUnsafeMutableBytes { scale in
                            try expected.startValues(rowRange, into: floats)
                            Codec.encode(UnsafeBufferPointer(floats), as: dtype, into: scale)
                            try expected.values(rowRange, into: floats)
                            Codec.encode(UnsafeBufferPointer(floats), as: dtype, into: encoded)
                            return Comparison.compare(name: tensor.name, dtype: dtype, count: count, actual: actualSlice,
                                                      expected: UnsafeRawBufferPointer(encoded),
                                                      scale: expected.operations.isEmpty ? nil : UnsafeRawBufferPointer(scale),
                                                      floor: floor)
                        }
                    }
                }
            }
            result = result.map { $0.combined(with: piece) } ?? piece
            // Each slice's pages are dropped once compared (TensorWriter releases its input the same way).
            expected.release(&released, upTo: rowRange.upperBound, alongWith: location)
        }
        return result ?? TensorComparison(name: tensor.name, dtype: dtype, elements: 0, differing: 0, beyondOneULP: 0,
                                          maxAbsoluteError: 0, maxULP: 0, maxScaledULP: 0)
    }

    /// The bound `peftkit unmerge` reports (TensorWriter), evaluated on the correctly rounded merge of the adapters
    /// into the base: half an ulp at the merged values' largest magnitude times the undo's amplification, half an ulp
    /// for the result's rounding, the change's Float32 sum; for F32/F64 one ulp at the tensor's largest magnitude for
    /// the summation order (spec/tolerance.md §3).
    private static func driftBound(merged: PreparedTensor, undo: PreparedTensor, base: PreparedTensor,
                                   buffers: inout Buffers) throws -> Double {
        let dtype = merged.tensor.outputDType
        let amplification = undo.operations.reduce(1.0) { $0 * $1.roundingAmplification }
        let summation = undo.operations.reduce(0) { $0 + $1.summationError }
        var bound = 0.0, baseLargest = 0.0
        for rowRange in merged.slices {
            let count = rowRange.count * merged.columns
            buffers.reserve(count, bytes: 0)
            var input: Float = 0, output: Float = 0
            try buffers.floats.withUnsafeMutableBufferPointer { all in
                let floats = UnsafeMutableBufferPointer(rebasing: all[0..<count])
                try merged.values(rowRange, into: floats)
                for v in floats where v.isFinite { input = max(input, v.magnitude) }
                try base.startValues(rowRange, into: floats)
                for v in floats where v.isFinite { output = max(output, v.magnitude) }
            }
            baseLargest = max(baseLargest, Double(output))
            bound = max(bound, Comparison.ulp(at: Double(input), in: dtype) / 2 * amplification
                + Comparison.ulp(at: Double(max(input, output)), in: dtype) / 2 + summation)
        }
        merged.release()
        if Comparison.floorsAtTensorMaximum(dtype) { bound += Comparison.ulp(at: baseLargest, in: dtype) }
        return bound
    }

    /// Tensors the checkpoint has beyond the plan. An output head saved although it is tied passes when it equals the
    /// embedding it is tied to (an untied copy computes the same logits); anything else is reported as extra.
    private static func extras(in actual: Checkpoint, plannedNames: Set<String>, plan: MergePlan,
                               buffers: inout Buffers) throws -> [AuditedTensor] {
        var results: [AuditedTensor] = []
        let planned = plan.files.flatMap(\.tensors)
        let embedding = planned.first { MergePlan.isInputEmbedding($0.name) }
        for location in actual.tensors where !plannedNames.contains(location.info.name) {
            let name = location.info.name
            if name.hasSuffix("lm_head.weight"), let embedding, location.info.shape == embedding.shape,
               location.info.dtype == embedding.outputDType {
                let comparison = try compare(try PreparedTensor(embedding, plan: plan), with: location, buffers: &buffers)
                results.append(.init(name: name, status: comparison.maxScaledULP <= mergedMaxULP ? .passed : .failed,
                                     adapted: embedding.isAdapted, expectedDType: embedding.outputDType,
                                     expectedShape: embedding.shape, actualDType: location.info.dtype,
                                     actualShape: location.info.shape, maxAbsoluteError: comparison.maxAbsoluteError,
                                     measure: comparison.maxScaledULP, identicalFraction: comparison.identicalFraction,
                                     bound: nil))
                continue
            }
            results.append(.init(name: name, status: .extra, adapted: false, expectedDType: nil, expectedShape: nil,
                                 actualDType: location.info.dtype, actualShape: location.info.shape,
                                 maxAbsoluteError: .infinity, measure: .infinity, identicalFraction: 0, bound: nil))
        }
        return results
    }

    /// PEFT's tied-embedding merge bug: the adapter changes the output head of a model whose head is tied to the
    /// input embedding, so a correct merge unties them; a checkpoint that still ties them (no head saved, or
    /// `tie_word_embeddings: true`) while its embedding changed computes wrong logits.
    private static func tiedHeadFindings(plan: MergePlan, planned: [OutputTensor], actual: Checkpoint,
                                         results: [AuditedTensor]) -> [String] {
        // The plan starts an untied head from the embedding: the one tensor whose source has another name.
        guard let head = planned.first(where: { $0.name.hasSuffix("lm_head.weight") && $0.source?.info.name != $0.name }),
              let embeddingName = head.source?.info.name else { return [] }
        let config = try? AdapterLoader.readJSON((actual.folder as NSString).appendingPathComponent("config.json"))
        let savedTied = actual.location(of: head.name) == nil || config?["tie_word_embeddings"]?.boolValue == true
        guard savedTied else { return [] }
        let embeddingChanged = results.first { $0.name == embeddingName }.map { !$0.passed } ?? false
        return ["\(head.name) is changed by the adapter but the checkpoint keeps it tied to \(embeddingName)"
            + (actual.location(of: head.name) == nil ? " (no head saved)" : " (tie_word_embeddings: true)")
            + (embeddingChanged ? " while the embedding changed: the logits are wrong (the tied-embedding merge bug)"
                : "; a correct merge unties them and saves both")]
    }
}

extension OutputTensor {
    /// Whether an adapter changes this tensor or replaces it whole.
    var isAdapted: Bool { !changes.isEmpty || replacement != nil }
}
