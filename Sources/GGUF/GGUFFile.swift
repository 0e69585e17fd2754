#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A GGUF file (version 3, little-endian), its header read and checked in full before anything else happens.
///
/// The reader is as strict as llama.cpp's loader, and stricter where that one trusts the file: every count and string
/// length is bounded by the bytes left in the file before anything is allocated; value types and tensor types must be
/// known; bools are 0 or 1; arrays do not nest; keys and tensor names are non-empty UTF-8, unique, and names shorter
/// than ggml's 64 bytes; dimensions are 1 to 4 values whose product and byte size do not overflow, with rows a whole
/// number of blocks; `general.alignment` (UINT32, a power of two, default 32) aligns every offset; offsets are exactly
/// contiguous in declaration order (each tensor starts where the previous one's data, padded to the alignment, ends);
/// the data lies inside the file and nothing follows it but the last tensor's padding.
///
/// Tensor data is copied out with `pread` on request (never mapped, so a file that shrinks while in use gives an
/// error, not SIGBUS).
public final class GGUFFile: @unchecked Sendable {
    // @unchecked: immutable after init; reads go through pread on a descriptor only this object closes.

    public static let magic: [UInt8] = Array("GGUF".utf8)
    public static let version: UInt32 = 3
    public static let defaultAlignment = 32
    /// ggml's GGML_MAX_NAME: names are stored in 64-byte buffers with a terminating NUL.
    public static let maxNameLength = 63
    /// ggml's GGML_MAX_DIMS.
    public static let maxDimensions = 4

    /// The path as the caller gave it, used in every message.
    public let path: String
    public let keyValues: [GGUFKeyValue]
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Where the tensor data begins (the header's end, aligned).
    public let dataStart: Int
    public let fileSize: Int
    /// The header's length in bytes (up to the last tensor info, before alignment padding).
    public let headerLength: Int

    private let source: Source
    private let keyIndex: [String: Int]
    private let tensorIndex: [String: Int]

    enum Source {
        case file(Int32)
        case memory([UInt8])
    }

    /// Opens and checks `path`.
    /// - Throws: `GGUFError` naming the rule broken.
    public convenience init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GGUFError(.io, file: path, "cannot open: \(String(cString: strerror(errno)))") }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw GGUFError(.io, file: path, "not a regular file")
        }
        do {
            try self.init(source: .file(fd), size: Int(info.st_size), path: path)
        } catch {
            close(fd)
            throw error
        }
    }

    /// Parses a GGUF image held in memory (tests, the fuzzer).
    public convenience init(bytes: [UInt8], name: String = "<memory>") throws {
        try self.init(source: .memory(bytes), size: bytes.count, path: name)
    }

    deinit {
        if case .file(let fd) = source { close(fd) }
    }

    /// Whether `path` starts with the GGUF magic (reads four bytes; false when it cannot be read).
    public static func hasMagic(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
        var bytes = [UInt8](repeating: 0, count: 4)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4, 0) }
        return n == 4 && bytes == magic
    }

    private init(source: Source, size: Int, path: String) throws {
        self.source = source
        self.path = path
        self.fileSize = size
        var cursor = Cursor(source: source, size: size, path: path)
        let fail = { (rule: GGUFError.Rule, subject: String?, detail: String) in GGUFError(rule, file: path, subject: subject, detail) }

        guard size >= 24 else {
            if size >= 4, try cursor.bytes(4) != Self.magic { throw fail(.notGGUF, nil, "not a GGUF file (no 'GGUF' magic)") }
            throw fail(.fileTooSmall, nil, "\(size) bytes is too small for a GGUF file (24-byte preamble)")
        }
        guard try cursor.bytes(4) == Self.magic else { throw fail(.notGGUF, nil, "not a GGUF file (no 'GGUF' magic)") }
        let version = try cursor.u32()
        if version != Self.version {
            if [1, 2, 3].contains(version.byteSwapped) {
                throw fail(.bigEndian, nil, "a big-endian GGUF file (version field \(version)); only little-endian files are read")
            }
            throw fail(.unsupportedVersion, nil, "GGUF version \(version); peftkit reads version 3 (what llama.cpp writes)")
        }
        let tensorCount = try cursor.u64()
        let kvCount = try cursor.u64()
        // The smallest key-value pair: an 8-byte length, a 1-byte key, the type, a 1-byte value.
        guard kvCount <= UInt64(cursor.remaining / 14) else {
            throw fail(.countTooLarge, nil, "\(kvCount) key-value pairs cannot fit in the \(cursor.remaining) bytes left")
        }
        // The smallest tensor info: length, a 1-byte name, n_dims, one dimension, type, offset.
        guard tensorCount <= UInt64(cursor.remaining / 33) else {
            throw fail(.countTooLarge, nil, "\(tensorCount) tensors cannot fit in the \(cursor.remaining) bytes left")
        }

        var keyValues: [GGUFKeyValue] = []
        var keyIndex: [String: Int] = [:]
        keyValues.reserveCapacity(Int(kvCount))
        for _ in 0..<Int(kvCount) {
            let key = try cursor.string(what: "key")
            guard !key.isEmpty else { throw fail(.emptyName, nil, "a key-value pair has an empty key") }
            guard keyIndex[key] == nil else { throw fail(.duplicateKey, key, "key appears more than once") }
            let rawType = try cursor.u32()
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw fail(.unknownValueType, key, "unknown value type \(rawType)")
            }
            let value = try cursor.value(type, key: key)
            keyIndex[key] = keyValues.count
            keyValues.append(GGUFKeyValue(key, value))
        }

        var alignment = Self.defaultAlignment
        if let index = keyIndex["general.alignment"] {
            guard case .uint32(let a) = keyValues[index].value else {
                throw fail(.invalidAlignment, "general.alignment", "is \(keyValues[index].value.type.name); must be UINT32")
            }
            guard a > 0, a & (a - 1) == 0 else {
                throw fail(.invalidAlignment, "general.alignment", "is \(a); must be a power of two")
            }
            alignment = Int(a)
        }

        var tensors: [GGUFTensorInfo] = []
        var tensorIndex: [String: Int] = [:]
        tensors.reserveCapacity(Int(tensorCount))
        var expectedOffset = 0
        for _ in 0..<Int(tensorCount) {
            let name = try cursor.string(what: "tensor name")
            guard !name.isEmpty else { throw fail(.emptyName, nil, "a tensor has an empty name") }
            guard name.utf8.count <= Self.maxNameLength else {
                throw fail(.nameTooLong, name, "tensor name of \(name.utf8.count) bytes; ggml allows at most \(Self.maxNameLength)")
            }
            guard tensorIndex[name] == nil else { throw fail(.duplicateTensor, name, "tensor appears more than once") }
            let nDims = try cursor.u32()
            guard (1...UInt32(Self.maxDimensions)).contains(nDims) else {
                throw fail(.invalidDimensions, name, "\(nDims) dimensions; GGUF tensors have 1 to \(Self.maxDimensions)")
            }
            var dims: [Int] = []
            var elements = 1
            for _ in 0..<Int(nDims) {
                let d = try cursor.u64()
                guard d <= UInt64(Int64.max), let dim = Int(exactly: d) else {
                    throw fail(.sizeOverflow, name, "dimension \(d) overflows a signed 64-bit count")
                }
                let (product, overflow) = elements.multipliedReportingOverflow(by: dim)
                guard !overflow else { throw fail(.sizeOverflow, name, "element count overflows 64 bits") }
                elements = product
                dims.append(dim)
            }
            let rawType = try cursor.u32()
            guard let type = GGMLType(rawValue: rawType) else {
                throw fail(.unknownTensorType, name, "unknown ggml type \(rawType)")
            }
            guard dims[0] % type.blockSize == 0 else {
                throw fail(.partialBlock, name, "rows of \(dims[0]) elements are not a whole number of \(type.name) blocks of \(type.blockSize)")
            }
            guard let byteCount = type.byteCount(elements: elements, rowLength: dims[0]) else {
                throw fail(.sizeOverflow, name, "byte count overflows 64 bits")
            }
            let rawOffset = try cursor.u64()
            guard let offset = Int(exactly: rawOffset), rawOffset <= UInt64(Int64.max) else {
                throw fail(.dataPastEnd, name, "offset \(rawOffset) is past the end of the \(size)-byte file")
            }
            guard offset % alignment == 0 else {
                throw fail(.misalignedOffset, name, "offset \(offset) is not a multiple of the alignment \(alignment)")
            }
            if offset < expectedOffset {
                let previous = tensors.last.map { "'\(GGUFError.quoted($0.name))'" } ?? "the start of the data"
                throw fail(.dataOverlap, name, "offset \(offset) overlaps \(previous), whose data ends at \(expectedOffset)")
            }
            if offset > expectedOffset {
                throw fail(.dataHole, name, "offset \(offset) leaves unused bytes \(expectedOffset)..<\(offset) before it "
                           + "(offsets must be contiguous, as llama.cpp requires)")
            }
            guard let next = Self.aligned(offset, byteCount, alignment) else {
                throw fail(.sizeOverflow, name, "data end overflows 64 bits")
            }
            expectedOffset = next
            tensorIndex[name] = tensors.count
            tensors.append(GGUFTensorInfo(name: name, dimensions: dims, type: type, offset: offset, byteCount: byteCount))
        }

        let headerEnd = cursor.position
        guard let dataStart = Self.aligned(headerEnd, 0, alignment) else {
            throw fail(.sizeOverflow, nil, "data start overflows 64 bits")
        }
        if let last = tensors.last {
            let (end, overflow) = dataStart.addingReportingOverflow(last.offset + last.byteCount)
            guard !overflow, end <= size else {
                throw fail(.dataPastEnd, last.name, "data ends at byte \(overflow ? "(overflow)" : "\(end)"), past the end of the \(size)-byte file (truncated?)")
            }
            let (paddedEnd, o2) = dataStart.addingReportingOverflow(expectedOffset)
            if !o2 && size > paddedEnd {
                throw fail(.trailingBytes, nil, "\(size - paddedEnd) bytes after the last tensor's data and padding")
            }
        } else if size > dataStart {
            throw fail(.trailingBytes, nil, "\(size - dataStart) bytes after the header of a file without tensors")
        }

        self.keyValues = keyValues
        self.tensors = tensors
        self.alignment = alignment
        self.dataStart = dataStart
        self.headerLength = headerEnd
        self.keyIndex = keyIndex
        self.tensorIndex = tensorIndex
    }

    /// `offset + count` rounded up to `alignment`; nil on overflow.
    static func aligned(_ offset: Int, _ count: Int, _ alignment: Int) -> Int? {
        let (end, o1) = offset.addingReportingOverflow(count)
        let (padded, o2) = end.addingReportingOverflow(alignment - 1)
        return o1 || o2 ? nil : padded / alignment * alignment
    }

    // MARK: Access

    public func value(_ key: String) -> GGUFValue? { keyIndex[key].map { keyValues[$0].value } }
    public func tensor(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// A copy of the tensor's bytes.
    /// - Throws: `GGUFError` `.fileChanged` when the file shrank since it was opened, `.io` when reading fails.
    public func bytes(of tensor: GGUFTensorInfo) throws -> [UInt8] {
        let start = dataStart + tensor.offset
        switch source {
        case .memory(let bytes):
            return Array(bytes[start..<start + tensor.byteCount])
        case .file(let fd):
            var out = [UInt8](repeating: 0, count: tensor.byteCount)
            var done = 0
            while done < out.count {
                let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(start + done)) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw GGUFError(.io, file: path, subject: tensor.name, "read failed: \(String(cString: strerror(errno)))")
                }
                if n == 0 {
                    throw GGUFError(.fileChanged, file: path, subject: tensor.name,
                                    "the file ended at byte \(start + done): it shrank while in use")
                }
                done += n
            }
            return out
        }
    }
}

/// Reads the header sequentially, from memory or through pread in 1 MiB chunks, never past the file's size.
struct Cursor {
    let source: GGUFFile.Source
    let size: Int
    let path: String
    private(set) var position = 0
    private var buffer: [UInt8] = []
    private var bufferStart = 0

    init(source: GGUFFile.Source, size: Int, path: String) {
        self.source = source
        self.size = size
        self.path = path
    }

    var remaining: Int { size - position }

    /// The next `count` bytes.
    mutating func bytes(_ count: Int) throws -> [UInt8] {
        guard count <= remaining else {
            throw GGUFError(.truncated, file: path, "the header needs \(count) bytes at byte \(position) but the file ends at \(size)")
        }
        switch source {
        case .memory(let all):
            defer { position += count }
            return Array(all[position..<position + count])
        case .file(let fd):
            var out: [UInt8] = []
            out.reserveCapacity(count)
            var left = count
            while left > 0 {
                let inBuffer = bufferStart + buffer.count - position
                if inBuffer <= 0 || position < bufferStart {
                    try refill(fd)
                    continue
                }
                let take = min(left, inBuffer)
                let from = position - bufferStart
                out.append(contentsOf: buffer[from..<from + take])
                position += take
                left -= take
            }
            return out
        }
    }

    private mutating func refill(_ fd: Int32) throws {
        let length = min(1 << 20, size - position)
        var chunk = [UInt8](repeating: 0, count: length)
        var done = 0
        while done < length {
            let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, length - done, off_t(position + done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw GGUFError(.io, file: path, "read failed: \(String(cString: strerror(errno)))")
            }
            if n == 0 { throw GGUFError(.fileChanged, file: path, "the file ended at byte \(position + done): it shrank while being read") }
            done += n
        }
        buffer = chunk
        bufferStart = position
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let raw = try bytes(MemoryLayout<T>.size)
        var value: T = 0
        for (i, byte) in raw.enumerated() { value |= T(truncatingIfNeeded: byte) << (8 * i) }
        return value
    }

    mutating func u32() throws -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws -> UInt64 { try integer(UInt64.self) }

    mutating func string(what: String, key: String? = nil) throws -> String {
        let length = try u64()
        guard length <= UInt64(remaining) else {
            throw GGUFError(.stringTooLong, file: path, subject: key,
                            "\(what) of \(length) bytes at byte \(position - 8) runs past the end of the \(size)-byte file")
        }
        let raw = try bytes(Int(length))
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw GGUFError(.invalidUTF8, file: path, subject: key, "\(what) at byte \(position - raw.count) is not valid UTF-8")
        }
        return text
    }

    mutating func value(_ type: GGUFValueType, key: String, inArray: Bool = false) throws -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try integer(UInt8.self))
        case .int8: return .int8(try integer(Int8.self))
        case .uint16: return .uint16(try integer(UInt16.self))
        case .int16: return .int16(try integer(Int16.self))
        case .uint32: return .uint32(try integer(UInt32.self))
        case .int32: return .int32(try integer(Int32.self))
        case .float32: return .float32(Float(bitPattern: try integer(UInt32.self)))
        case .uint64: return .uint64(try integer(UInt64.self))
        case .int64: return .int64(try integer(Int64.self))
        case .float64: return .float64(Double(bitPattern: try integer(UInt64.self)))
        case .bool:
            let b = try integer(UInt8.self)
            guard b <= 1 else { throw GGUFError(.invalidBool, file: path, subject: key, "bool value \(b); must be 0 or 1") }
            return .bool(b == 1)
        case .string: return .string(try string(what: "string value", key: key))
        case .array:
            guard !inArray else { throw GGUFError(.nestedArray, file: path, subject: key, "an array of arrays (not allowed)") }
            let rawType = try u32()
            guard let elementType = GGUFValueType(rawValue: rawType) else {
                throw GGUFError(.unknownValueType, file: path, subject: key, "array of unknown value type \(rawType)")
            }
            guard elementType != .array else {
                throw GGUFError(.nestedArray, file: path, subject: key, "an array of arrays (not allowed)")
            }
            let count = try u64()
            guard count <= UInt64(remaining / elementType.minimumSize) else {
                throw GGUFError(.countTooLarge, file: path, subject: key,
                                "array of \(count) \(elementType.name) values cannot fit in the \(remaining) bytes left")
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { items.append(try value(elementType, key: key, inArray: true)) }
            return .array(elementType, items)
        }
    }
}
