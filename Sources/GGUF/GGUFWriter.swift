import SafeTensors

/// Lays out a GGUF version 3 file in memory: the preamble, the key-value pairs and tensor infos in the order given,
/// then each tensor's data at its offset, padded with zeros to the alignment (the last one too), as gguf-py writes.
/// Writing the bytes to disk atomically is the caller's (an adapter is small; see GGUFFormat).
public enum GGUFWriter {
    /// One tensor to write: `dimensions` in ggml order (numpy's shape reversed), `bytes` already encoded in `type`.
    public struct Tensor: Sendable {
        public let name: String
        public let type: GGMLType
        public let dimensions: [Int]
        public let bytes: [UInt8]

        public init(name: String, type: GGMLType, dimensions: [Int], bytes: [UInt8]) {
            self.name = name
            self.type = type
            self.dimensions = dimensions
            self.bytes = bytes
        }
    }

    /// The file's bytes.
    /// - Throws: `GGUFError` `.writerInvalid` for what the reader would refuse: a duplicate key or tensor name, an
    ///   empty or over-long name, a nested array or an array of mixed types, an alignment that is not a UINT32 power
    ///   of two, dimensions that are not 1 to 4 or do not match the byte count.
    public static func serialize(keyValues: [GGUFKeyValue], tensors: [Tensor], file: String) throws -> [UInt8] {
        func invalid(_ subject: String?, _ detail: String) -> GGUFError { GGUFError(.writerInvalid, file: file, subject: subject, detail) }
        var alignment = GGUFFile.defaultAlignment
        var keys = Set<String>()
        for kv in keyValues {
            guard !kv.key.isEmpty, keys.insert(kv.key).inserted else { throw invalid(kv.key, "empty or duplicate key") }
            if case .array(let type, let items) = kv.value {
                guard type != .array, items.allSatisfy({ $0.type == type }) else {
                    throw invalid(kv.key, "arrays hold values of their one declared type, never arrays")
                }
            }
            if kv.key == "general.alignment" {
                guard case .uint32(let a) = kv.value, a > 0, a & (a - 1) == 0 else {
                    throw invalid(kv.key, "must be a UINT32 power of two")
                }
                alignment = Int(a)
            }
        }
        var names = Set<String>()
        var out: [UInt8] = []
        out += GGUFFile.magic
        append(GGUFFile.version, to: &out)
        append(UInt64(tensors.count), to: &out)
        append(UInt64(keyValues.count), to: &out)
        for kv in keyValues {
            appendString(kv.key, to: &out)
            append(kv.value.type.rawValue, to: &out)
            appendValue(kv.value, to: &out)
        }
        var offset = 0
        var offsets: [Int] = []
        for tensor in tensors {
            guard !tensor.name.isEmpty, tensor.name.utf8.count <= GGUFFile.maxNameLength, names.insert(tensor.name).inserted else {
                throw invalid(tensor.name, "tensor names must be unique, non-empty and at most \(GGUFFile.maxNameLength) bytes")
            }
            let elements = tensor.dimensions.reduce(1, *)
            guard (1...GGUFFile.maxDimensions).contains(tensor.dimensions.count), tensor.dimensions.allSatisfy({ $0 >= 0 }),
                  tensor.type.byteCount(elements: elements, rowLength: tensor.dimensions[0]) == tensor.bytes.count else {
                throw invalid(tensor.name, "dimensions \(tensor.dimensions) of \(tensor.type.name) do not match \(tensor.bytes.count) bytes")
            }
            appendString(tensor.name, to: &out)
            append(UInt32(tensor.dimensions.count), to: &out)
            for d in tensor.dimensions { append(UInt64(d), to: &out) }
            append(tensor.type.rawValue, to: &out)
            append(UInt64(offset), to: &out)
            offsets.append(offset)
            offset = GGUFFile.aligned(offset, tensor.bytes.count, alignment)!
        }
        if !tensors.isEmpty {
            pad(&out, to: alignment)
            for tensor in tensors {
                out += tensor.bytes
                pad(&out, to: alignment)
            }
        }
        return out
    }

    private static func pad(_ out: inout [UInt8], to alignment: Int) {
        let extra = (alignment - out.count % alignment) % alignment
        out += [UInt8](repeating: 0, count: extra)
    }

    static func append<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out += $0 }
    }

    static func appendString(_ text: String, to out: inout [UInt8]) {
        append(UInt64(text.utf8.count), to: &out)
        out += Array(text.utf8)
    }

    static func appendValue(_ value: GGUFValue, to out: inout [UInt8]) {
        switch value {
        case .uint8(let v): append(v, to: &out)
        case .int8(let v): append(v, to: &out)
        case .uint16(let v): append(v, to: &out)
        case .int16(let v): append(v, to: &out)
        case .uint32(let v): append(v, to: &out)
        case .int32(let v): append(v, to: &out)
        case .float32(let v): append(v.bitPattern, to: &out)
        case .bool(let v): append(UInt8(v ? 1 : 0), to: &out)
        case .string(let v): appendString(v, to: &out)
        case .uint64(let v): append(v, to: &out)
        case .int64(let v): append(v, to: &out)
        case .float64(let v): append(v.bitPattern, to: &out)
        case .array(let type, let items):
            append(type.rawValue, to: &out)
            append(UInt64(items.count), to: &out)
            for item in items { appendValue(item, to: &out) }
        }
    }
}

/// ggml's Q8_0: blocks of 32 values, each an f16 scale d followed by 32 signed bytes q, value = d · q.
public enum Q8_0 {
    public static let blockSize = 32
    public static let blockBytes = 34

    /// Quantizes as gguf-py does (`quants.py`): per block d = max|x| / 127 in float32, q = round-half-away(x · (1/d))
    /// (0 when d is 0), and the f16 of d stored.
    public static func quantize(_ values: [Float]) -> [UInt8] {
        precondition(values.count % blockSize == 0, "Q8_0 needs whole blocks of 32")
        var out = [UInt8](repeating: 0, count: values.count / blockSize * blockBytes)
        for block in 0..<(values.count / blockSize) {
            let slice = values[(block * blockSize)..<((block + 1) * blockSize)]
            let amax = slice.reduce(Float(0)) { max($0, abs($1)) }
            let d = amax / 127
            let inverse: Float = d == 0 ? 0 : 1 / d
            let scale = Codec.f16(from: d)
            out[block * blockBytes] = UInt8(scale & 0xFF)
            out[block * blockBytes + 1] = UInt8(scale >> 8)
            for (i, x) in slice.enumerated() {
                let q = (x * inverse).rounded(.toNearestOrAwayFromZero)
                out[block * blockBytes + 2 + i] = UInt8(bitPattern: Int8(max(-128, min(127, q))))
            }
        }
        return out
    }

    /// The values of `count` elements, as ggml dequantizes them: Float(f16 d) · q.
    public static func dequantize(_ bytes: [UInt8], count: Int) -> [Float] {
        var out = [Float](repeating: 0, count: count)
        for block in 0..<(count / blockSize) {
            let base = block * blockBytes
            let d = Codec.float(fromF16: UInt16(bytes[base]) | UInt16(bytes[base + 1]) << 8)
            for i in 0..<blockSize { out[block * blockSize + i] = d * Float(Int8(bitPattern: bytes[base + 2 + i])) }
        }
        return out
    }
}
