/// A tensor as declared by a header: name, element type, shape and where its bytes sit in the data buffer.
public struct TensorInfo: Sendable, Equatable, Hashable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Byte range relative to the start of the data buffer (the byte after the header).
    public let dataOffsets: Range<Int>

    public init(name: String, dtype: DType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    /// Product of the shape (1 for a scalar). Validated headers guarantee it does not overflow.
    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataOffsets.count }
}

/// What a writer needs to know of a tensor before its bytes arrive.
public struct TensorSpec: Sendable, Equatable, Hashable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    public init(_ info: TensorInfo) {
        self.init(name: info.name, dtype: info.dtype, shape: info.shape)
    }

    public var elementCount: Int { shape.reduce(1, *) }

    /// Bytes of the tensor's data, or nil when the count overflows or is not a whole number of bytes.
    public var byteCount: Int? { Header.byteCount(dtype: dtype, shape: shape) }
}

/// A parsed and fully validated safetensors header.
public struct Header: Sendable {
    /// Largest header the reference implementation accepts; anything larger is refused before allocating.
    public static let maxLength = 100_000_000
    /// The reserved key of the free-form string-to-string metadata.
    public static let metadataKey = "__metadata__"

    /// Tensors in data-buffer order (by their first byte).
    public let tensors: [TensorInfo]
    /// `__metadata__`, in the order written, or nil when the header has none.
    public let metadata: [(key: String, value: String)]?
    /// The header's JSON length N (the file's data buffer starts at 8 + N).
    public let length: Int

    public var dataStart: Int { 8 + length }

    public func metadataValue(_ key: String) -> String? {
        metadata?.first(where: { $0.key == key })?.value
    }

    /// Element count times element size in bytes; nil on overflow or a partial byte.
    public static func byteCount(dtype: DType, shape: [Int]) -> Int? {
        var elements = 1
        for dimension in shape {
            guard dimension >= 0 else { return nil }
            let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
            guard !overflow else { return nil }
            elements = product
        }
        let (bits, overflow) = elements.multipliedReportingOverflow(by: dtype.bitWidth)
        guard !overflow, bits % 8 == 0 else { return nil }
        return bits / 8
    }

    /// Parses and validates the JSON of a header against every rule of the format.
    /// - Parameters:
    ///   - json: the N header bytes.
    ///   - bufferSize: bytes in the file after the header; the tensors must tile it exactly.
    ///   - file: names the file in error messages.
    public static func parse(json: UnsafeRawBufferPointer, bufferSize: Int,
                             file: String) throws -> Header {
        guard String(validating: json, as: UTF8.self) != nil else { throw SafeTensorsError.headerNotUTF8(file: file) }
        guard case .object(let members) = try StrictJSON.parse(json, source: file) else {
            throw SafeTensorsError.headerNotObject(file: file)
        }
        var metadata: [(key: String, value: String)]?
        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(members.count)
        for (key, value) in members {
            if key == metadataKey {
                metadata = try parseMetadata(value, file: file)
            } else {
                tensors.append(try parseEntry(name: key, value, file: file))
            }
        }
        try validateLayout(tensors, bufferSize: bufferSize, file: file)
        let ordered = tensors.enumerated().sorted {
            ($0.element.dataOffsets.lowerBound, $0.offset) < ($1.element.dataOffsets.lowerBound, $1.offset)
        }.map(\.element)
        return Header(tensors: ordered, metadata: metadata, length: json.count)
    }

    private static func parseMetadata(_ value: JSONValue,
                                      file: String) throws -> [(key: String, value: String)] {
        guard case .object(let entries) = value else {
            throw SafeTensorsError.invalidMetadata(file: file, detail: "expected an object of strings, found \(value.typeName)")
        }
        var pairs: [(key: String, value: String)] = []
        for (key, entry) in entries {
            guard case .string(let text) = entry else {
                throw SafeTensorsError.invalidMetadata(file: file,
                                       detail: "value of '\(SafeTensorsError.quoted(key))' is \(entry.typeName), not a string")
            }
            pairs.append((key, text))
        }
        return pairs
    }

    private static func parseEntry(name: String, _ value: JSONValue,
                                   file: String) throws -> TensorInfo {
        guard case .object(let fields) = value else {
            throw SafeTensorsError.invalidEntry(file: file, tensor: name, detail: "entry is \(value.typeName), not an object")
        }
        for (key, _) in fields where !["dtype", "shape", "data_offsets"].contains(key) {
            throw SafeTensorsError.invalidEntry(file: file, tensor: name, detail: "unexpected field '\(SafeTensorsError.quoted(key))'")
        }
        guard let dtypeValue = value["dtype"] else {
            throw SafeTensorsError.invalidEntry(file: file, tensor: name, detail: "missing field 'dtype'")
        }
        guard case .string(let dtypeText) = dtypeValue else {
            throw SafeTensorsError.invalidEntry(file: file, tensor: name, detail: "dtype is \(dtypeValue.typeName), not a string")
        }
        guard let dtype = DType(rawValue: dtypeText) else {
            throw SafeTensorsError.unknownDType(file: file, tensor: name, dtype: dtypeText)
        }
        guard let shapeValue = value["shape"] else {
            throw SafeTensorsError.invalidEntry(file: file, tensor: name, detail: "missing field 'shape'")
        }
        guard case .array(let dimensions) = shapeValue else {
            throw SafeTensorsError.invalidShape(file: file, tensor: name, detail: "\(shapeValue.typeName), not an array")
        }
        var shape: [Int] = []
        shape.reserveCapacity(dimensions.count)
        for dimension in dimensions {
            guard case .integer(let size) = dimension else {
                throw SafeTensorsError.invalidShape(file: file, tensor: name, detail: "dimension \(describe(dimension)) is not an integer")
            }
            guard size >= 0 else {
                throw SafeTensorsError.invalidShape(file: file, tensor: name, detail: "negative dimension \(size)")
            }
            shape.append(Int(size))
        }
        var elements = 1
        for dimension in shape {
            let (product, overflow) = elements.multipliedReportingOverflow(by: dimension)
            guard !overflow else { throw SafeTensorsError.sizeOverflow(file: file, tensor: name) }
            elements = product
        }
        let (bits, overflow) = elements.multipliedReportingOverflow(by: dtype.bitWidth)
        guard !overflow else { throw SafeTensorsError.sizeOverflow(file: file, tensor: name) }
        guard bits % 8 == 0 else { throw SafeTensorsError.partialByte(file: file, tensor: name, bits: bits) }

        guard let offsetsValue = value["data_offsets"] else {
            throw SafeTensorsError.invalidEntry(file: file, tensor: name, detail: "missing field 'data_offsets'")
        }
        guard case .array(let offsets) = offsetsValue, offsets.count == 2 else {
            throw SafeTensorsError.invalidOffsets(file: file, tensor: name, detail: "expected exactly two integers [begin, end]")
        }
        guard case .integer(let begin) = offsets[0], case .integer(let end) = offsets[1] else {
            throw SafeTensorsError.invalidOffsets(file: file, tensor: name, detail: "begin and end must be integers")
        }
        guard begin >= 0, end >= 0 else {
            throw SafeTensorsError.invalidOffsets(file: file, tensor: name, detail: "negative offset in [\(begin), \(end)]")
        }
        guard end >= begin else {
            throw SafeTensorsError.invalidOffsets(file: file, tensor: name, detail: "end \(end) is before begin \(begin)")
        }
        guard Int(end - begin) == bits / 8 else {
            throw SafeTensorsError.byteLengthMismatch(file: file, tensor: name, expected: bits / 8, actual: Int(end - begin))
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: Int(begin)..<Int(end))
    }

    /// The tensors must tile the data buffer: sorted by begin, the first starts at 0, each starts where the previous
    /// ended, the last ends at the buffer's end.
    private static func validateLayout(_ tensors: [TensorInfo], bufferSize: Int,
                                       file: String) throws {
        for tensor in tensors where tensor.dataOffsets.upperBound > bufferSize {
            throw SafeTensorsError.dataPastEnd(file: file, tensor: tensor.name, end: tensor.dataOffsets.upperBound, bufferSize: bufferSize)
        }
        let sorted = tensors.sorted {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound)
        }
        var expectedBegin = 0
        var previous: String?
        for tensor in sorted {
            let begin = tensor.dataOffsets.lowerBound
            if begin > expectedBegin {
                throw SafeTensorsError.dataHole(file: file, tensor: tensor.name, gapStart: expectedBegin, gapEnd: begin)
            }
            if begin < expectedBegin {
                throw SafeTensorsError.dataOverlap(file: file, tensor: tensor.name, previous: previous ?? "")
            }
            expectedBegin = tensor.dataOffsets.upperBound
            previous = tensor.name
        }
        if expectedBegin < bufferSize {
            throw SafeTensorsError.trailingBytes(file: file, count: bufferSize - expectedBegin)
        }
    }

    private static func describe(_ value: JSONValue) -> String {
        switch value {
        case .number(_, let literal): literal
        case .string(let s): "\"\(SafeTensorsError.quoted(s))\""
        default: value.typeName
        }
    }
}

// MARK: - Writing

extension Header {
    /// Orders tensors as `safetensors.save_file` does: by dtype (descending, in the reference enum order), then by name.
    public static func layoutOrder(_ tensors: [TensorSpec]) -> [TensorSpec] {
        tensors.sorted {
            $0.dtype.layoutRank != $1.dtype.layoutRank
                ? $0.dtype.layoutRank > $1.dtype.layoutRank
                : $0.name.utf8.lexicographicallyPrecedes($1.name.utf8)
        }
    }

    /// Serialises a header for `tensors` (already in layout order) with their offsets assigned back to back.
    /// Returns the padded JSON bytes (a multiple of 8 long, padded with spaces) and the resulting tensor infos.
    public static func serialize(_ tensors: [TensorSpec], metadata: [(key: String, value: String)]?,
                                 file: String) throws -> (json: [UInt8], infos: [TensorInfo]) {
        var members: [(key: String, value: JSONValue)] = []
        if let metadata {
            members.append((metadataKey, .object(metadata.map { ($0.key, .string($0.value)) })))
        }
        var infos: [TensorInfo] = []
        var names = Set<String>()
        var offset = 0
        for tensor in tensors {
            guard tensor.name != metadataKey else {
                throw SafeTensorsError.invalidTensorName(file: file, tensor: tensor.name, detail: "reserved for the metadata")
            }
            guard names.insert(tensor.name).inserted else {
                throw SafeTensorsError.writerDuplicateTensor(file: file, tensor: tensor.name)
            }
            guard let size = tensor.byteCount else { throw SafeTensorsError.sizeOverflow(file: file, tensor: tensor.name) }
            let (end, overflow) = offset.addingReportingOverflow(size)
            guard !overflow else { throw SafeTensorsError.sizeOverflow(file: file, tensor: tensor.name) }
            infos.append(TensorInfo(name: tensor.name, dtype: tensor.dtype, shape: tensor.shape, dataOffsets: offset..<end))
            members.append((tensor.name, .object([
                ("dtype", .string(tensor.dtype.rawValue)),
                ("shape", .array(tensor.shape.map { .integer(Int64($0)) })),
                ("data_offsets", .array([.integer(Int64(offset)), .integer(Int64(end))])),
            ])))
            offset = end
        }
        var json = Array(JSONValue.object(members).compactText().utf8)
        json.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - json.count % 8) % 8))
        return (json, infos)
    }
}
