import Foundation
import SafeTensors

/// One tensor of a legacy checkpoint, copied out of its storage.
public struct LegacyTensor: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Contiguous, row-major, little-endian: exactly element count × element size bytes.
    public let bytes: [UInt8]

    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}

/// Reads the state dicts `torch.save` writes (what PEFT calls `adapter_model.bin`) without running anything from
/// the file: a strict ZIP reader, a pickle machine that only knows how to describe tensors, and a gather step that
/// checks every view against its storage.
public enum LegacyCheckpoint {
    /// Real state dict pickles are a few hundred bytes per tensor; this is far beyond any adapter.
    static let maxPickleBytes = 64 << 20
    static let maxDimensions = 64
    static let maxExpandedViewBytes = 1 << 30

    /// Reads every tensor of a torch.save'd state dict (a ZIP with `<root>/data.pkl`, `<root>/data/<key>`,
    /// `<root>/byteorder`), in the pickle's dict order.
    public static func read(contentsOf url: URL) throws -> [LegacyTensor] {
        let file = url.relativePath
        let archive = try ZipArchive(url: url, file: file)

        if let byteOrder = archive.entry(named: "\(archive.root)/byteorder") {
            let text = String(decoding: try archive.contents(of: byteOrder), as: UTF8.self)
            guard text == "little" else {
                throw legacyError(file, "byteorder is '\(text.prefix(16))'; only little-endian checkpoints are supported")
            }
        }
        guard let pickleEntry = archive.entry(named: "\(archive.root)/data.pkl") else {
            throw legacyError(file, "no '\(archive.root)/data.pkl' in the archive: not a torch.save checkpoint")
        }
        guard pickleEntry.size <= maxPickleBytes else {
            throw legacyError(file, "data.pkl holds \(pickleEntry.size) bytes; at most \(maxPickleBytes) are accepted")
        }
        let stateDict = try PickleMachine.stateDict(from: try archive.contents(of: pickleEntry), file: file)

        var storages: [String: (description: PickledStorage, bytes: [UInt8])] = [:]
        return try stateDict.map { name, tensor in
            let key = tensor.storage.key
            if storages[key] == nil {
                storages[key] = (tensor.storage, try loadStorage(tensor.storage, tensor: name, from: archive))
            }
            guard let storage = storages[key], storage.description == tensor.storage else {
                throw legacyError(file, tensor: name, "storage '\(key)' is referenced with two different types or sizes")
            }
            let bytes = try gather(tensor, from: storage.bytes, name: name, file: file)
            return LegacyTensor(name: name, dtype: tensor.dtype, shape: tensor.shape, bytes: bytes)
        }
    }

    /// A storage's entry must hold exactly what its persistent id says: `count` elements (or bytes, when untyped).
    private static func loadStorage(_ storage: PickledStorage, tensor name: String,
                                    from archive: ZipArchive) throws -> [UInt8] {
        let entryName = "\(archive.root)/data/\(storage.key)"
        guard let entry = archive.entry(named: entryName) else {
            throw legacyError(archive.file, tensor: name,
                              "storage '\(storage.key)' has no entry '\(entryName)' in the archive")
        }
        let elementSize = storage.elementType.map { $0.bitWidth / 8 } ?? 1
        let (expected, overflow) = storage.count.multipliedReportingOverflow(by: elementSize)
        guard !overflow, expected == entry.size else {
            let unit = storage.elementType.map { "elements of \($0.rawValue)" } ?? "bytes"
            throw legacyError(archive.file, tensor: name,
                              "storage '\(storage.key)' should hold \(storage.count) \(unit) but its entry has \(entry.size) bytes")
        }
        return try archive.contents(of: entry)
    }

    /// Copies a (possibly strided) view out of its storage into contiguous row-major bytes, after proving with
    /// overflow-checked arithmetic that the furthest element it reaches lies inside the storage.
    static func gather(_ tensor: PickledTensor, from storage: [UInt8], name: String, file: String) throws -> [UInt8] {
        func refuse(_ message: String) -> PEFTKitError { legacyError(file, tensor: name, message) }
        let elementSize = tensor.dtype.bitWidth / 8
        let shape = tensor.shape, strides = tensor.strides, offset = tensor.storageOffset
        guard shape.count == strides.count else {
            throw refuse("size has \(shape.count) dimensions but stride has \(strides.count)")
        }
        guard shape.count <= maxDimensions else { throw refuse("more than \(maxDimensions) dimensions") }
        if let dimension = shape.firstIndex(where: { $0 < 0 }) {
            throw refuse("negative size \(shape[dimension]) in dimension \(dimension)")
        }
        if let dimension = strides.firstIndex(where: { $0 < 0 }) {
            throw refuse("negative stride \(strides[dimension]) in dimension \(dimension)")
        }
        guard offset >= 0 else { throw refuse("negative storage offset \(offset)") }

        var elementCount = 1
        for size in shape {
            let (product, overflow) = elementCount.multipliedReportingOverflow(by: size)
            guard !overflow else { throw refuse("element count of shape \(shape) overflows") }
            elementCount = product
        }
        guard elementCount > 0 else { return [] }

        // The furthest element: offset + Σ (size - 1) · stride.
        var lastIndex = offset
        for (size, stride) in zip(shape, strides) {
            let (step, stepOverflow) = (size - 1).multipliedReportingOverflow(by: stride)
            let (sum, sumOverflow) = lastIndex.addingReportingOverflow(step)
            guard !stepOverflow, !sumOverflow else { throw refuse("offset and strides overflow") }
            lastIndex = sum
        }
        let (endElement, endOverflow) = lastIndex.addingReportingOverflow(1)
        let (requiredBytes, bytesOverflow) = endElement.multipliedReportingOverflow(by: elementSize)
        guard !endOverflow, !bytesOverflow, requiredBytes <= storage.count else {
            throw refuse("size \(shape), stride \(strides) and offset \(offset) "
                         + "reach past storage '\(tensor.storage.key)' (\(storage.count) bytes)")
        }
        // A view that repeats elements (stride 0, as `expand` makes) can outgrow its storage: bound what it expands to.
        let (byteCount, countOverflow) = elementCount.multipliedReportingOverflow(by: elementSize)
        guard !countOverflow, byteCount <= max(storage.count, maxExpandedViewBytes) else {
            throw refuse("size \(shape) with stride \(strides) repeats storage elements "
                         + "into more than \(maxExpandedViewBytes) bytes")
        }

        if isRowMajor(shape: shape, strides: strides) {
            let start = offset * elementSize
            if start == 0, byteCount == storage.count { return storage }
            return Array(storage[start..<(start + byteCount)])
        }
        // Strided: copy the innermost dimension as a run when its elements are adjacent, else one element at a time.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(byteCount)
        let innerSize = shape.last ?? 1, innerStride = strides.last ?? 1
        let outer = Array(shape.dropLast()), outerStrides = Array(strides.dropLast())
        var index = [Int](repeating: 0, count: outer.count)
        while true {
            var base = offset
            for (position, stride) in zip(index, outerStrides) { base += position * stride }
            if innerStride == 1 {
                bytes.append(contentsOf: storage[(base * elementSize)..<((base + innerSize) * elementSize)])
            } else {
                for element in 0..<innerSize {
                    let start = (base + element * innerStride) * elementSize
                    bytes.append(contentsOf: storage[start..<(start + elementSize)])
                }
            }
            // Advance the outer index like an odometer.
            var dimension = outer.count - 1
            while dimension >= 0 {
                index[dimension] += 1
                if index[dimension] < outer[dimension] { break }
                index[dimension] = 0
                dimension -= 1
            }
            if dimension < 0 { return bytes }
        }
    }

    /// Row-major contiguity; a dimension of size 1 may carry any stride.
    private static func isRowMajor(shape: [Int], strides: [Int]) -> Bool {
        var expected = 1
        for (size, stride) in zip(shape, strides).reversed() {
            if size != 1, stride != expected { return false }
            expected *= size
        }
        return true
    }
}
