import Foundation
import Testing
@testable import PEFTKit

/// `fixtures/legacy`, found from this file so tests need no bundled resources.
let legacyFixtures = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("fixtures/legacy")

/// The tensors of a `.safetensors` file, parsed with Foundation only: the expected side of the comparisons must not
/// share code with the reader under test (nor wait for the SafeTensors module's reader).
struct LegacyExpectedTensors {
    struct Tensor { let dtype: String; let shape: [Int]; let bytes: [UInt8] }
    let tensors: [String: Tensor]
    /// The pickle's dict order, which `make_legacy.py` records in the metadata.
    let order: [String]?

    init(contentsOf url: URL) throws {
        let file = [UInt8](try Data(contentsOf: url))
        let headerLength = Int(file[0..<8].reversed().reduce(UInt64(0)) { ($0 << 8) | UInt64($1) })
        let header = try #require(
            try JSONSerialization.jsonObject(with: Data(file[8..<(8 + headerLength)])) as? [String: Any])
        let buffer = file[(8 + headerLength)...]
        var tensors: [String: Tensor] = [:]
        for (name, value) in header where name != "__metadata__" {
            let entry = try #require(value as? [String: Any])
            let offsets = try #require(entry["data_offsets"] as? [Int])
            let begin = buffer.startIndex + offsets[0], end = buffer.startIndex + offsets[1]
            tensors[name] = Tensor(dtype: try #require(entry["dtype"] as? String),
                                   shape: try #require(entry["shape"] as? [Int]), bytes: Array(buffer[begin..<end]))
        }
        self.tensors = tensors
        if let metadata = header["__metadata__"] as? [String: String], let order = metadata["order"] {
            self.order = try JSONSerialization.jsonObject(with: Data(order.utf8)) as? [String]
        } else {
            order = nil
        }
    }
}

/// CRC-32 (IEEE), bit by bit: an independent oracle for the archives the tests build.
func legacyCRC32(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in bytes {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
    }
    return ~crc
}

extension Array where Element == UInt8 {
    fileprivate mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

/// Builds ZIP archives of stored entries, with knobs to break them in the ways the reader must refuse.
struct LegacyZipBuilder {
    struct Entry {
        var name: String
        var data: [UInt8]
        var method: UInt16 = 0
        var flags: UInt16 = 0x0800
        var recordedCRC: UInt32?
        /// Overrides the size the central directory records (local header and data stay as they are).
        var recordedSize: Int?
    }

    var entries: [Entry] = []
    /// Write 64-bit sizes and offsets in ZIP64 extra fields and a ZIP64 end record, as for files over 4 GiB.
    var zip64 = false
    /// Overrides the entry count in the end record.
    var recordedEntryCount: Int?

    mutating func add(_ name: String, _ data: [UInt8]) {
        entries.append(Entry(name: name, data: data))
    }

    func build() -> [UInt8] {
        var out: [UInt8] = []
        var offsets: [Int] = []
        for entry in entries {
            offsets.append(out.count)
            let crc = entry.recordedCRC ?? legacyCRC32(entry.data)
            out.appendLittleEndian(UInt32(0x0403_4B50))
            out.appendLittleEndian(UInt16(20))
            out.appendLittleEndian(entry.flags)
            out.appendLittleEndian(entry.method)
            out.appendLittleEndian(UInt32(0))  // time, date
            out.appendLittleEndian(crc)
            out.appendLittleEndian(UInt32(entry.recordedSize ?? entry.data.count))
            out.appendLittleEndian(UInt32(entry.recordedSize ?? entry.data.count))
            out.appendLittleEndian(UInt16(entry.name.utf8.count))
            out.appendLittleEndian(UInt16(0))
            out.append(contentsOf: Array(entry.name.utf8))
            out.append(contentsOf: entry.data)
        }
        let directoryOffset = out.count
        for (entry, offset) in zip(entries, offsets) {
            let size = entry.recordedSize ?? entry.data.count
            var extra: [UInt8] = []
            if zip64 {
                extra.appendLittleEndian(UInt16(1))
                extra.appendLittleEndian(UInt16(24))
                extra.appendLittleEndian(UInt64(size))
                extra.appendLittleEndian(UInt64(size))
                extra.appendLittleEndian(UInt64(offset))
            }
            out.appendLittleEndian(UInt32(0x0201_4B50))
            out.appendLittleEndian(UInt16(45))
            out.appendLittleEndian(UInt16(45))
            out.appendLittleEndian(entry.flags)
            out.appendLittleEndian(entry.method)
            out.appendLittleEndian(UInt32(0))
            out.appendLittleEndian(entry.recordedCRC ?? legacyCRC32(entry.data))
            out.appendLittleEndian(zip64 ? UInt32.max : UInt32(size))
            out.appendLittleEndian(zip64 ? UInt32.max : UInt32(size))
            out.appendLittleEndian(UInt16(entry.name.utf8.count))
            out.appendLittleEndian(UInt16(extra.count))
            out.appendLittleEndian(UInt16(0))  // comment
            out.appendLittleEndian(UInt16(0))  // disk
            out.appendLittleEndian(UInt16(0))
            out.appendLittleEndian(UInt32(0))
            out.appendLittleEndian(zip64 ? UInt32.max : UInt32(offset))
            out.append(contentsOf: Array(entry.name.utf8))
            out.append(contentsOf: extra)
        }
        let directorySize = out.count - directoryOffset
        let count = recordedEntryCount ?? entries.count
        if zip64 {
            let recordOffset = out.count
            out.appendLittleEndian(UInt32(0x0606_4B50))
            out.appendLittleEndian(UInt64(44))
            out.appendLittleEndian(UInt16(45))
            out.appendLittleEndian(UInt16(45))
            out.appendLittleEndian(UInt32(0))
            out.appendLittleEndian(UInt32(0))
            out.appendLittleEndian(UInt64(count))
            out.appendLittleEndian(UInt64(count))
            out.appendLittleEndian(UInt64(directorySize))
            out.appendLittleEndian(UInt64(directoryOffset))
            out.appendLittleEndian(UInt32(0x0706_4B50))
            out.appendLittleEndian(UInt32(0))
            out.appendLittleEndian(UInt64(recordOffset))
            out.appendLittleEndian(UInt32(1))
        }
        out.appendLittleEndian(UInt32(0x0605_4B50))
        out.appendLittleEndian(UInt16(0))
        out.appendLittleEndian(UInt16(0))
        out.appendLittleEndian(zip64 ? UInt16.max : UInt16(count))
        out.appendLittleEndian(zip64 ? UInt16.max : UInt16(count))
        out.appendLittleEndian(zip64 ? UInt32.max : UInt32(directorySize))
        out.appendLittleEndian(zip64 ? UInt32.max : UInt32(directoryOffset))
        out.appendLittleEndian(UInt16(0))
        return out
    }
}

/// Writes pickle opcodes the way `torch.save` lays out a state dict, plus raw opcodes for hostile inputs.
struct LegacyPickleWriter {
    var bytes: [UInt8] = [0x80, 0x02]  // PROTO 2

    mutating func raw(_ values: UInt8...) { bytes.append(contentsOf: values) }
    mutating func mark() { raw(0x28) }
    mutating func tuple() { raw(0x74) }
    mutating func emptyTuple() { raw(0x29) }
    mutating func emptyDict() { raw(0x7D) }
    mutating func reduce() { raw(0x52) }
    mutating func setItems() { raw(0x75) }
    mutating func stop() { raw(0x2E) }

    mutating func global(_ module: String, _ name: String) {
        raw(0x63)
        bytes.append(contentsOf: Array("\(module)\n\(name)\n".utf8))
    }

    mutating func string(_ text: String) {
        raw(0x58)
        bytes.appendLittleEndian(UInt32(text.utf8.count))
        bytes.append(contentsOf: Array(text.utf8))
    }

    mutating func int(_ value: Int) {
        if (0...255).contains(value) {
            raw(0x4B, UInt8(value))
        } else if let small = Int32(exactly: value) {
            raw(0x4A)
            bytes.appendLittleEndian(small)
        } else {
            raw(0x8A, 8)
            bytes.appendLittleEndian(Int64(value))
        }
    }

    mutating func intTuple(_ values: [Int]) {
        mark()
        values.forEach { int($0) }
        tuple()
    }

    /// `_rebuild_tensor_v2((storage id), offset, size, stride, False, OrderedDict())`, as torch writes it.
    mutating func tensor(storage type: String = "FloatStorage", key: String = "0", count: Int,
                         offset: Int = 0, shape: [Int], stride: [Int]) {
        global("torch._utils", "_rebuild_tensor_v2")
        mark()
        mark()
        string("storage")
        global("torch", type)
        string(key)
        string("cpu")
        int(count)
        tuple()
        raw(0x51)  // BINPERSID
        int(offset)
        intTuple(shape)
        intTuple(stride)
        raw(0x89)  // NEWFALSE
        global("collections", "OrderedDict")
        emptyTuple()
        reduce()
        tuple()
        reduce()
    }

    /// A whole state dict `{name: tensor}` in torch's layout: OrderedDict(), MARK, pairs, SETITEMS, STOP.
    static func stateDict(_ body: (inout LegacyPickleWriter) -> Void) -> [UInt8] {
        var writer = LegacyPickleWriter()
        writer.global("collections", "OrderedDict")
        writer.emptyTuple()
        writer.reduce()
        writer.mark()
        body(&writer)
        writer.setItems()
        writer.stop()
        return writer.bytes
    }
}

/// Float32 values as little-endian bytes.
func legacyFloat32Bytes(_ values: [Float]) -> [UInt8] {
    var bytes: [UInt8] = []
    values.forEach { bytes.appendLittleEndian($0.bitPattern) }
    return bytes
}

/// A torch-shaped archive: `<root>/data.pkl`, `<root>/byteorder`, `<root>/data/<key>` for each storage.
func legacyTorchArchive(root: String = "archive", pickle: [UInt8], storages: [(String, [UInt8])] = [],
                  byteOrder: String? = "little") -> LegacyZipBuilder {
    var zip = LegacyZipBuilder()
    zip.add("\(root)/data.pkl", pickle)
    if let byteOrder { zip.add("\(root)/byteorder", Array(byteOrder.utf8)) }
    for (key, data) in storages { zip.add("\(root)/data/\(key)", data) }
    return zip
}

/// Writes bytes to a fresh temporary file; the caller removes it.
func legacyTemporaryFile(_ bytes: [UInt8]) throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("peftkit-legacy-\(UUID().uuidString).bin")
    try Data(bytes).write(to: url)
    return url
}

func readLegacy(_ bytes: [UInt8]) throws -> [LegacyTensor] {
    let url = try legacyTemporaryFile(bytes)
    defer { try? FileManager.default.removeItem(at: url) }
    return try LegacyCheckpoint.read(contentsOf: url)
}

/// Expects `bytes` to be refused with a `.legacyCheckpoint` error whose message contains every fragment.
func expectLegacyRefusal(_ bytes: [UInt8], mentioning fragments: String...,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    let error = #expect(throws: PEFTKitError.self, sourceLocation: sourceLocation) { try readLegacy(bytes) }
    guard let error else { return }
    #expect(error.kind == .legacyCheckpoint, sourceLocation: sourceLocation)
    for fragment in fragments {
        #expect(error.message.contains(fragment), "message was: \(error.message)", sourceLocation: sourceLocation)
    }
}
