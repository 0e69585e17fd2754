import Foundation

/// The one error type of the SafeTensors module: a case per rule of the format, each naming the file, the tensor where
/// there is one, and the rule that was broken.
public enum SafeTensorsError: LocalizedError, Equatable, Sendable {
    // Framing
    case fileTooSmall(file: String, size: Int)
    case headerTooLarge(file: String, length: UInt64, limit: Int)
    case headerPastEnd(file: String, length: UInt64, fileSize: Int)
    case headerNotUTF8(file: String)
    case invalidJSON(file: String, detail: String)
    case duplicateKey(file: String, key: String)
    case headerNotObject(file: String)
    case invalidMetadata(file: String, detail: String)
    // Tensor entries
    case invalidEntry(file: String, tensor: String, detail: String)
    case unknownDType(file: String, tensor: String, dtype: String)
    case invalidShape(file: String, tensor: String, detail: String)
    case sizeOverflow(file: String, tensor: String)
    case partialByte(file: String, tensor: String, bits: Int)
    case invalidOffsets(file: String, tensor: String, detail: String)
    case byteLengthMismatch(file: String, tensor: String, expected: Int, actual: Int)
    // Data buffer layout
    case dataHole(file: String, tensor: String, gapStart: Int, gapEnd: Int)
    case dataOverlap(file: String, tensor: String, previous: String)
    case dataPastEnd(file: String, tensor: String, end: Int, bufferSize: Int)
    case trailingBytes(file: String, count: Int)
    // Access
    case tensorNotFound(file: String, tensor: String)
    case fileChanged(file: String, detail: String)
    case io(file: String, operation: String, reason: String)
    case unsupportedDType(file: String, tensor: String, dtype: DType, operation: String)
    // Sharded checkpoints
    case invalidIndex(file: String, detail: String)
    case shardNameNotPlain(file: String, shard: String)
    case tensorNotInNamedShard(file: String, tensor: String, shard: String)
    case tensorMissingFromIndex(file: String, tensor: String, shard: String)
    case duplicateTensor(file: String, tensor: String)
    case noCheckpoint(path: String, detail: String)
    // Writing
    case writerUnknownTensor(file: String, tensor: String)
    case writerDuplicateTensor(file: String, tensor: String)
    case writerByteCount(file: String, tensor: String, expected: Int, actual: Int)
    case writerIncomplete(file: String, missing: [String])
    case invalidTensorName(file: String, tensor: String, detail: String)
    case invalidShardSize(text: String)

    /// The rule that was broken, as a stable identifier (the case name), for tests and JSON output.
    public var rule: String {
        Mirror(reflecting: self).children.first?.label ?? String(describing: self)
    }

    public var errorDescription: String? {
        switch self {
        case let .fileTooSmall(file, size):
            "\(file): \(size) bytes is too small for a safetensors file (the 8-byte header length is missing)"
        case let .headerTooLarge(file, length, limit):
            "\(file): header length \(length) exceeds the limit of \(limit) bytes"
        case let .headerPastEnd(file, length, fileSize):
            "\(file): header length \(length) runs past the end of the \(fileSize)-byte file"
        case let .headerNotUTF8(file):
            "\(file): header is not valid UTF-8"
        case let .invalidJSON(file, detail):
            "\(file): header is not strict JSON: \(detail)"
        case let .duplicateKey(file, key):
            "\(file): duplicate key '\(Self.quoted(key))' in JSON"
        case let .headerNotObject(file):
            "\(file): header is not a JSON object"
        case let .invalidMetadata(file, detail):
            "\(file): invalid __metadata__: \(detail)"
        case let .invalidEntry(file, tensor, detail):
            "\(file): tensor '\(Self.quoted(tensor))': \(detail)"
        case let .unknownDType(file, tensor, dtype):
            "\(file): tensor '\(Self.quoted(tensor))': unknown dtype '\(Self.quoted(dtype))'"
        case let .invalidShape(file, tensor, detail):
            "\(file): tensor '\(Self.quoted(tensor))': invalid shape: \(detail)"
        case let .sizeOverflow(file, tensor):
            "\(file): tensor '\(Self.quoted(tensor))': element or byte count overflows 64 bits"
        case let .partialByte(file, tensor, bits):
            "\(file): tensor '\(Self.quoted(tensor))': \(bits) bits is not a whole number of bytes"
        case let .invalidOffsets(file, tensor, detail):
            "\(file): tensor '\(Self.quoted(tensor))': invalid data_offsets: \(detail)"
        case let .byteLengthMismatch(file, tensor, expected, actual):
            "\(file): tensor '\(Self.quoted(tensor))': data_offsets span \(actual) bytes but dtype and shape need \(expected)"
        case let .dataHole(file, tensor, gapStart, gapEnd):
            "\(file): tensor '\(Self.quoted(tensor))': unused bytes \(gapStart)..<\(gapEnd) before it in the data buffer"
        case let .dataOverlap(file, tensor, previous):
            "\(file): tensor '\(Self.quoted(tensor))' overlaps tensor '\(Self.quoted(previous))' in the data buffer"
        case let .dataPastEnd(file, tensor, end, bufferSize):
            "\(file): tensor '\(Self.quoted(tensor))': data ends at \(end), past the \(bufferSize)-byte data buffer (missing bytes)"
        case let .trailingBytes(file, count):
            "\(file): \(count) trailing bytes after the last tensor"
        case let .tensorNotFound(file, tensor):
            "\(file): no tensor named '\(Self.quoted(tensor))'"
        case let .fileChanged(file, detail):
            "\(file): file changed while in use: \(detail)"
        case let .io(file, operation, reason):
            "\(file): \(operation) failed: \(reason)"
        case let .unsupportedDType(file, tensor, dtype, operation):
            "\(file): tensor '\(Self.quoted(tensor))': cannot \(operation) dtype \(dtype.rawValue)"
        case let .invalidIndex(file, detail):
            "\(file): invalid index: \(detail)"
        case let .shardNameNotPlain(file, shard):
            "\(file): shard name '\(Self.quoted(shard))' is not a plain file name inside the folder"
        case let .tensorNotInNamedShard(file, tensor, shard):
            "\(file): tensor '\(Self.quoted(tensor))' is mapped to shard \(shard) but that shard does not contain it"
        case let .tensorMissingFromIndex(file, tensor, shard):
            "\(file): tensor '\(Self.quoted(tensor))' in shard \(shard) is not listed in the index's weight_map"
        case let .duplicateTensor(file, tensor):
            "\(file): tensor '\(Self.quoted(tensor))' appears more than once"
        case let .noCheckpoint(path, detail):
            "\(path): \(detail)"
        case let .writerUnknownTensor(file, tensor):
            "\(file): tensor '\(Self.quoted(tensor))' was not declared to the writer"
        case let .writerDuplicateTensor(file, tensor):
            "\(file): tensor '\(Self.quoted(tensor))' written twice"
        case let .writerByteCount(file, tensor, expected, actual):
            "\(file): tensor '\(Self.quoted(tensor))': got \(actual) bytes, expected \(expected)"
        case let .writerIncomplete(file, missing):
            "\(file): \(missing.count) declared tensor(s) never written, first '\(Self.quoted(missing.first ?? ""))'"
        case let .invalidTensorName(file, tensor, detail):
            "\(file): tensor name '\(Self.quoted(tensor))': \(detail)"
        case let .invalidShardSize(text):
            "invalid shard size '\(text)': expected a byte count such as 5GB, 500MB, 2GiB or 1000000"
        }
    }

    /// Tensor names and keys are untrusted text: show control characters escaped and cut very long names.
    package static func quoted(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars.prefix(200) {
            if scalar.value < 0x20 || scalar.value == 0x7F || (0x80..<0xA0).contains(scalar.value) {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        if text.unicodeScalars.count > 200 { out += "…" }
        return out
    }
}
