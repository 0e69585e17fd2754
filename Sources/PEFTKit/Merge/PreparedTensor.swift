import Foundation
import SafeTensors

/// A planned output tensor with its changes prepared (tensors decoded, first passes done), producing its values slice
/// by slice of rows into a caller's buffer: decode the starting value, apply every change in Float32. `TensorWriter`
/// encodes and writes them; an audit holds a checkpoint against them without writing a second model to disk.
final class PreparedTensor {
    let tensor: OutputTensor
    let start: StoredTensor
    let operations: [any WeightOperation]
    let rows: Int
    let columns: Int
    /// Row ranges of at most about `sliceElements` elements, aligned as the operations need.
    let slices: [Range<Int>]

    init(_ tensor: OutputTensor, plan: MergePlan, direction: MergeDirection = .merge) throws {
        self.tensor = tensor
        start = try tensor.replacement ?? StoredTensor(view: try tensor.source!.file.view(tensor.source!.info))
        let startDType = start.dtype
        operations = try tensor.changes.enumerated().map { index, planned in
            do {
                return try planned.change.prepare(ModuleChange.Context(
                    scale: planned.scale, direction: direction, baseDType: startDType, followsOtherChanges: index > 0,
                    recorded: planned.recorded))
            } catch var error as PEFTKitError where error.file == nil {
                error.file = plan.adapters[planned.adapterIndex].source
                throw error
            }
        }
        let (rows, columns) = tensor.shape.count == 2 ? (tensor.shape[0], tensor.shape[1]) : (1, max(tensor.shape.reduce(1, *), 1))
        self.rows = rows
        self.columns = columns
        func lcm(_ a: Int, _ b: Int) -> Int {
            func gcd(_ x: Int, _ y: Int) -> Int { y == 0 ? x : gcd(y, x % y) }
            return a / gcd(a, b) * b
        }
        let alignment = operations.reduce(1) { lcm($0, $1.rowAlignment) }
        let sliceElements = plan.request.sliceElements
        let rowsPerSlice = max(alignment, sliceElements / max(columns, 1) / alignment * alignment)
        slices = stride(from: 0, to: rows, by: rowsPerSlice).map { $0..<min(rows, $0 + rowsPerSlice) }
        try firstPasses()
    }

    var elementCount: Int { rows * columns }

    /// The merged tensor's tolerance (spec/tolerance.md §1): the plan's, widened for an F32/F64 result by what a
    /// factorising change allows (`WeightOperation.factorisationULP`).
    var mergedMaxULP: Double {
        guard Comparison.floorsAtTensorMaximum(tensor.outputDType) else { return tensor.mergedMaxULP }
        return operations.compactMap(\.factorisationULP).reduce(tensor.mergedMaxULP, max)
    }

    /// Decodes rows `rowRange` of the starting value (before any change) into `floats`.
    func startValues(_ rowRange: Range<Int>, into floats: UnsafeMutableBufferPointer<Float>) throws {
        let inSize = start.dtype.bitWidth / 8
        try start.withBytes { raw in
            Codec.decode(UnsafeRawBufferPointer(rebasing: raw[(rowRange.lowerBound * columns * inSize)...]
                            .prefix(rowRange.count * columns * inSize)), as: start.dtype, into: floats)
        }
    }

    /// Rows `rowRange` of the result, in Float32 (not yet rounded to the output dtype).
    func values(_ rowRange: Range<Int>, into floats: UnsafeMutableBufferPointer<Float>) throws {
        try startValues(rowRange, into: floats)
        applyChanges(rowRange, to: floats)
    }

    /// Applies every change to rows `rowRange` of the starting value, held in `floats`.
    func applyChanges(_ rowRange: Range<Int>, to floats: UnsafeMutableBufferPointer<Float>) {
        let slice = WeightRows(values: floats.baseAddress!, rows: rowRange, columns: columns)
        for operation in operations { operation.apply(to: slice) }
    }

    /// Drops the starting value's mapped pages once the tensor is done.
    func release() { start.release(bytes: 0..<start.byteCount) }

    /// Drops the mapped pages of the starting value's rows `rowRange`, and of the same rows of `other` (the
    /// checkpoint's tensor compared with it), so that memory stays flat while a large tensor streams through. Only
    /// every 8 MiB or so, like `TensorWriter`: each release interrupts the other core to flush its TLB.
    func release(_ rowRange: inout Range<Int>, upTo row: Int, alongWith other: Checkpoint.Location?) {
        let rowBytes = columns * start.dtype.bitWidth / 8
        guard (row - rowRange.lowerBound) * rowBytes >= TensorWriter.releaseBytes || row == rows else { return }
        start.release(bytes: rowRange.lowerBound * rowBytes..<row * rowBytes)
        if let other {
            let otherRowBytes = columns * other.info.dtype.bitWidth / 8, begin = other.info.dataOffsets.lowerBound
            other.file.release(TensorInfo(name: other.info.name, dtype: .u8, shape: [(row - rowRange.lowerBound) * otherRowBytes],
                                          dataOffsets: (begin + rowRange.lowerBound * otherRowBytes)..<(begin + row * otherRowBytes)))
        }
        rowRange = row..<row
    }

    /// An operation that needs a first pass sees the whole tensor as it stands after the operations before it, each of
    /// which is complete by then (or its starting value, if it asks for that): one pass per such operation.
    private func firstPasses() throws {
        var buffer = [Float]()
        for (index, operation) in operations.enumerated() where operation.needsFirstPass {
            for rowRange in slices {
                if buffer.count < rowRange.count * columns { buffer = [Float](repeating: 0, count: rowRange.count * columns) }
                try buffer.withUnsafeMutableBufferPointer { all in
                    let floats = UnsafeMutableBufferPointer(rebasing: all[0..<(rowRange.count * columns)])
                    try startValues(rowRange, into: floats)
                    let slice = WeightRows(values: floats.baseAddress!, rows: rowRange, columns: columns)
                    if !operation.observesStartValue { for earlier in operations[..<index] { earlier.apply(to: slice) } }
                    operation.observe(slice)
                }
            }
            try operation.finishFirstPass()
        }
    }
}
