import SafeTensors

/// A tensor of an adapter, wherever its bytes live (a mapped safetensors file, memory read from a legacy `.bin`, or
/// a surgery command's scratch file).
public struct StoredTensor: Sendable {
    /// The name in the adapter file.
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    private let storage: Storage

    private enum Storage: Sendable {
        case mapped(TensorView)
        case memory([UInt8])
        case spilled(SpillFile, offset: Int)
    }

    public init(view: TensorView) {
        name = view.info.name
        dtype = view.info.dtype
        shape = view.info.shape
        storage = .mapped(view)
    }

    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        storage = .memory(bytes)
    }

    /// A tensor whose bytes were written to `spill` at `offset`; they are read back when asked for.
    init(name: String, dtype: DType, shape: [Int], spill: SpillFile, offset: Int) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        storage = .spilled(spill, offset: offset)
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { elementCount * dtype.bitWidth / 8 }

    /// Calls `body` with the raw little-endian bytes. For a mapped tensor, the file is checked before and after:
    /// if it shrank meanwhile, what `body` read is not the tensor, and this throws.
    /// - Throws: `SafeTensorsError` when the mapped file changed size; whatever `body` throws.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        switch storage {
        case .mapped(let view):
            try view.file.checkUnchanged()
            let result: R
            do {
                result = try body(view.bytes)
            } catch {
                try view.file.checkUnchanged()  // a failed write from a vanished page: say why
                throw error
            }
            try view.file.checkUnchanged()
            return result
        case .memory(let bytes):
            return try bytes.withUnsafeBytes(body)
        case .spilled(let spill, let offset):
            return try spill.read(offset: offset, count: byteCount).withUnsafeBytes(body)
        }
    }

    /// Drops the pages of `bytes` (a range within the tensor) from the resident set, for mapped tensors.
    public func release(bytes range: Range<Int>) {
        guard case .mapped(let view) = storage else { return }
        let offsets = view.info.dataOffsets
        view.file.release(TensorInfo(name: name, dtype: dtype, shape: [range.count / max(dtype.bitWidth / 8, 1)],
                                     dataOffsets: offsets.lowerBound + range.lowerBound ..< offsets.lowerBound + range.upperBound))
    }

    /// The values as Float32 (every adapter tensor is a float type; checked when the adapter is built). The mapped
    /// pages read are released afterwards: the decoded copy is what callers keep.
    /// - Throws: `SafeTensorsError` when the mapped file changed size.
    public func floats() throws -> [Float] {
        defer { release(bytes: 0..<byteCount) }
        return try withBytes { raw in Codec.decode(raw, as: dtype, count: elementCount) }
    }
}
