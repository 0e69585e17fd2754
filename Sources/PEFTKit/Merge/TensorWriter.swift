import Foundation
import SafeTensors

/// One worker's way of producing output tensors: copies untouched ones as bytes, converts dtypes, and streams
/// changed ones slice by slice through a reused Float32 buffer (decode → apply every change → check → encode).
final class TensorWriter {
    private var floats = [Float]()
    private let slices = SliceWriter(capacity: TensorWriter.slicesPerWorker)
    private let run: MergeRun

    /// Encoded slices a worker may hold while its output file is busy.
    static let slicesPerWorker = 8
    /// Untouched tensors are copied in pieces of this many bytes, each released from memory once written; changed
    /// tensors release their input in batches of this size too. Fewer, larger releases matter: each one interrupts
    /// the other core to flush its TLB.
    static let releaseBytes = 8 << 20

    init(run: MergeRun) { self.run = run }

    private var request: MergeRequest { run.plan.request }

    /// Writes `tensor` into `file`, and every slice still pending.
    func write(_ tensor: OutputTensor, into file: SharedOutputFile) throws {
        if !tensor.changes.isEmpty {
            try transform(tensor, into: file)
            run.update {
                $0.transformed += 1
                $0.transformedTensors.append(tensor.name)
            }
        } else if let replacement = tensor.replacement {
            try convert(replacement, name: tensor.name, to: tensor.outputDType, into: file)
            run.update { $0.replaced += 1 }
        } else {
            try copy(tensor, into: file)
        }
        try slices.flush()
    }

    // MARK: Copying

    private func copy(_ tensor: OutputTensor, into file: SharedOutputFile) throws {
        let source = tensor.source!
        let stored = StoredTensor(view: try source.file.view(source.info))
        if tensor.outputDType == source.info.dtype && tensor.name == source.info.name {
            var offset = 0
            repeat {
                let end = min(stored.byteCount, offset + Self.releaseBytes)
                try stored.withBytes { bytes in
                    try file.write(tensor.name, chunk: UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), at: offset)
                }
                stored.release(bytes: offset..<end)
                offset = end
            } while offset < stored.byteCount
            run.update { $0.copied += 1 }
        } else {
            try convert(stored, name: tensor.name, to: tensor.outputDType, into: file)
            source.file.release(source.info)
            let converted = tensor.outputDType != source.info.dtype
            run.update { if converted { $0.converted += 1 } else { $0.copied += 1 } }
        }
    }

    /// Writes `stored` as `dtype`, byte for byte when the dtype already matches, else through Float32 in slices.
    private func convert(_ stored: StoredTensor, name: String, to dtype: DType, into file: SharedOutputFile) throws {
        if stored.dtype == dtype {
            try stored.withBytes { try file.write(name, chunk: $0, at: 0) }
            return
        }
        let inSize = stored.dtype.bitWidth / 8, outSize = dtype.bitWidth / 8
        try stored.withBytes { source in
            var start = 0
            while start < stored.elementCount {
                let count = min(request.sliceElements, stored.elementCount - start)
                try encodeSlice(count: count, dtype: dtype, into: file, tensor: name, at: start * outSize) { floats in
                    Codec.decode(UnsafeRawBufferPointer(rebasing: source[(start * inSize)...].prefix(count * inSize)),
                                 as: stored.dtype, into: floats)
                }
                start += count
            }
        }
    }

    // MARK: Changing

    private func transform(_ tensor: OutputTensor, into file: SharedOutputFile) throws {
        if case .pop(let expected, _) = tensor.recordUpdate {
            let input = StoredTensor(view: try tensor.source!.file.view(tensor.source!.info))
            let found = try input.withBytes { ContentHash.of($0) }
            // Read whole, so its pages are dropped at once, as the slice loop drops them as it goes.
            input.release(bytes: 0..<input.byteCount)
            guard found == expected else {
                throw PEFTKitError(.baseMismatch, file: request.base, tensor: tensor.name,
                                   "the tensor has changed since peftkit last merged into it (hash \(ContentHash.hex(found)), "
                                   + "recorded \(ContentHash.hex(expected))): what changed it must be undone first")
            }
        }
        let prepared = try PreparedTensor(tensor, plan: run.plan, direction: request.direction)
        if let worst = prepared.operations.compactMap(\.conditionNumber).max() {
            run.update { $0.worstCondition = max($0.worstCondition ?? 0, worst) }
        }
        let columns = prepared.columns, outSize = tensor.outputDType.bitWidth / 8
        let isUnmerge = request.direction == .unmerge
        let summationError = isUnmerge ? prepared.operations.reduce(0) { $0 + $1.summationError } : 0
        if isUnmerge { run.update { $0.summationBound = max($0.summationBound, summationError) } }
        let amplification = prepared.operations.reduce(1.0) { $0 * $1.roundingAmplification }
        var released = 0..<0
        var outputHash = ContentHash()
        let hashesOutput = switch tensor.recordUpdate {
        case .push: true
        case .pop(_, let leaving): !leaving.isEmpty
        case nil: false
        }
        for rowRange in prepared.slices {
            var inputMagnitude: Float = 0, outputMagnitude: Float = 0
            try encodeSlice(count: rowRange.count * columns, dtype: tensor.outputDType, into: file, tensor: tensor.name,
                            at: rowRange.lowerBound * columns * outSize) { floats in
                try prepared.startValues(rowRange, into: floats)
                if isUnmerge { inputMagnitude = Self.largestMagnitude(floats) }
                prepared.applyChanges(rowRange, to: floats)
                if isUnmerge { outputMagnitude = Self.largestMagnitude(floats) }
            } check: { floats, nonFinite, encoded in
                try checkFinite(floats, nonFinite: nonFinite, tensor: tensor, firstRow: rowRange.lowerBound, columns: columns)
                if hashesOutput { outputHash.update(UnsafeRawBufferPointer(encoded)) }
            }
            if isUnmerge {
                // Rounding the merged values cost at most half an ulp each, which undoing can amplify; rounding the
                // result adds half an ulp more (at the larger of the two magnitudes: a division can grow the values),
                // and the change's own Float32 sum its error.
                let bound = Comparison.ulp(at: Double(inputMagnitude), in: tensor.outputDType) / 2 * amplification
                    + Comparison.ulp(at: Double(max(inputMagnitude, outputMagnitude)), in: tensor.outputDType) / 2
                    + summationError
                run.update { $0.driftBound = max($0.driftBound, bound) }
            }
            prepared.release(&released, upTo: rowRange.upperBound, alongWith: nil)
        }
        switch tensor.recordUpdate {
        case .push(let earlier):
            let entries = zip(tensor.changes, prepared.operations).map { planned, operation in
                UnmergeRecord.Entry(scale: planned.scale, dora: operation.recordForUnmerge)
            }
            run.update { $0.record.stacks[tensor.name] = UnmergeRecord.Stack(entries: earlier + entries, hash: outputHash.finalize()) }
        case .pop(_, let leaving) where !leaving.isEmpty:
            run.update { $0.record.stacks[tensor.name] = UnmergeRecord.Stack(entries: leaving, hash: outputHash.finalize()) }
        case .pop, nil:
            break
        }
    }

    // MARK: Encoding

    /// Calls `body` with the first `count` elements of the reused Float32 buffer.
    private func withBuffer(count: Int, _ body: (UnsafeMutableBufferPointer<Float>) throws -> Void) throws {
        if floats.count < count { floats = [Float](repeating: 0, count: count) }
        try floats.withUnsafeMutableBufferPointer { try body(UnsafeMutableBufferPointer(rebasing: $0[0..<count])) }
    }

    /// Fills the Float32 buffer, encodes it, and writes the bytes into tensor `name` of `file` at byte `offset`.
    /// `check` sees the values, whether the encoder met any that are not finite in `dtype`, and the encoded bytes,
    /// before anything is written.
    private func encodeSlice(count: Int, dtype: DType, into file: SharedOutputFile, tensor name: String, at offset: Int,
                             fill: (UnsafeMutableBufferPointer<Float>) throws -> Void,
                             check: (UnsafeMutableBufferPointer<Float>, Bool, UnsafeMutableRawBufferPointer) throws -> Void
                                 = { _, _, _ in }) throws {
        try withBuffer(count: count) { slice in
            try fill(slice)
            try slices.write(name, into: file, at: offset, byteCount: count * dtype.bitWidth / 8) { encoded in
                try check(slice, Codec.encode(UnsafeBufferPointer(slice), as: dtype, into: encoded), encoded)
            }
        }
    }

    /// Refuses values that are not finite, or that the output dtype would round to infinity.
    /// `nonFinite` is the encoder's screen; only when it trips are the values searched.
    private func checkFinite(_ values: UnsafeMutableBufferPointer<Float>, nonFinite: Bool, tensor: OutputTensor,
                             firstRow: Int, columns: Int) throws {
        guard nonFinite, !request.allowNonFinite else { return }
        let limit: Float = switch tensor.outputDType {
        case .f16: 65520  // the f16 rounding boundary to infinity
        case .bf16: Float(bitPattern: 0x7F7F_8000)
        default: .infinity
        }
        for (i, value) in values.enumerated() where !(value.magnitude < limit) {
            let what = value.isFinite ? "\(value), beyond the largest \(tensor.outputDType.rawValue)" : "\(value)"
            throw PEFTKitError(.numerics, tensor: tensor.name,
                               "merged value at [\(firstRow + i / columns), \(i % columns)] is \(what)",
                               remedy: .allowNonFinite)
        }
    }

    private static func largestMagnitude(_ values: UnsafeMutableBufferPointer<Float>) -> Float {
        values.reduce(0) { max($0, $1.isFinite ? $1.magnitude : 0) }
    }
}
