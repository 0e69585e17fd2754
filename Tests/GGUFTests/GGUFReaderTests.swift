import Foundation
import GGUF
import SafeTensors
import Testing

/// Builds GGUF images byte by byte, independently of GGUFWriter, so the reader is tested against the format itself.
struct Image {
    var bytes: [UInt8] = Array("GGUF".utf8)
    init(version: UInt32 = 3, tensors: UInt64, kvs: UInt64) {
        u32(version)
        u64(tensors)
        u64(kvs)
    }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) {
        u64(UInt64(s.utf8.count))
        bytes += Array(s.utf8)
    }
    mutating func kvString(_ key: String, _ value: String) {
        string(key)
        u32(8)
        string(value)
    }
    mutating func kvFloat(_ key: String, _ value: Float) {
        string(key)
        u32(6)
        u32(value.bitPattern)
    }
    mutating func tensor(_ name: String, dims: [UInt64], type: UInt32, offset: UInt64) {
        string(name)
        u32(UInt32(dims.count))
        for d in dims { u64(d) }
        u32(type)
        u64(offset)
    }
    mutating func pad(to alignment: Int = 32) {
        while bytes.count % alignment != 0 { bytes.append(0) }
    }
    mutating func data(_ count: Int, value: UInt8 = 0) { bytes += [UInt8](repeating: value, count: count) }
}

/// Two F32 tensors of 2×3 (24 bytes, padded to 32) and 4 (16 bytes): a valid file.
func validImage() -> Image {
    var image = Image(tensors: 2, kvs: 2)
    image.kvString("general.type", "adapter")
    image.kvFloat("adapter.lora.alpha", 16)
    image.tensor("a.weight.lora_a", dims: [3, 2], type: 0, offset: 0)
    image.tensor("a.weight.lora_b", dims: [4], type: 0, offset: 32)
    image.pad()
    image.data(24, value: 1)
    image.pad()
    image.data(16, value: 2)
    image.pad()
    return image
}

func rule(_ bytes: [UInt8]) -> GGUFError.Rule? {
    do {
        _ = try GGUFFile(bytes: bytes)
        return nil
    } catch let error as GGUFError {
        return error.rule
    } catch {
        return nil
    }
}

@Suite struct GGUFReaderTests {
    @Test func readsAValidFile() throws {
        let file = try GGUFFile(bytes: validImage().bytes)
        #expect(file.keyValues.map(\.key) == ["general.type", "adapter.lora.alpha"])
        #expect(file.value("adapter.lora.alpha") == .float32(16))
        #expect(file.tensors.map(\.name) == ["a.weight.lora_a", "a.weight.lora_b"])
        #expect(file.tensors[0].shape == [2, 3])
        #expect(file.tensors[0].byteCount == 24)
        #expect(file.dataStart % 32 == 0)
        #expect(try file.bytes(of: file.tensors[1]) == [UInt8](repeating: 2, count: 16))
    }

    @Test func acceptsAnUnpaddedLastTensor() throws {
        var image = validImage()
        image.bytes.removeLast(16)  // the padding after the 16-byte last tensor
        #expect(rule(image.bytes) == nil)
    }

    @Test func refusesBadPreambles() {
        #expect(rule(Array("GGUF".utf8)) == .fileTooSmall)
        var image = validImage()
        image.bytes[0] = UInt8(ascii: "X")
        #expect(rule(image.bytes) == .notGGUF)
        #expect(rule(Image(version: 2, tensors: 0, kvs: 0).bytes) == .unsupportedVersion)
        #expect(rule(Image(version: UInt32(3).byteSwapped, tensors: 0, kvs: 0).bytes) == .bigEndian)
    }

    @Test func refusesHugeCountsAndStrings() {
        #expect(rule(Image(tensors: 1 << 60, kvs: 0).bytes) == .countTooLarge)
        #expect(rule(Image(tensors: 0, kvs: UInt64.max).bytes) == .countTooLarge)
        var image = Image(tensors: 0, kvs: 1)
        image.u64(1 << 62)  // key length
        image.data(16)
        #expect(rule(image.bytes) == .stringTooLong)
        var array = Image(tensors: 0, kvs: 1)
        array.string("tokens")
        array.u32(9)  // array
        array.u32(8)  // of strings
        array.u64(1 << 40)
        array.data(16)
        #expect(rule(array.bytes) == .countTooLarge)
    }

    @Test func refusesMalformedKeyValues() {
        var duplicate = Image(tensors: 0, kvs: 2)
        duplicate.kvString("general.type", "adapter")
        duplicate.kvString("general.type", "model")
        #expect(rule(duplicate.bytes) == .duplicateKey)
        var unknown = Image(tensors: 0, kvs: 1)
        unknown.string("k")
        unknown.u32(13)
        unknown.data(8)
        #expect(rule(unknown.bytes) == .unknownValueType)
        var nested = Image(tensors: 0, kvs: 1)
        nested.string("k")
        nested.u32(9)
        nested.u32(9)
        nested.u64(1)
        nested.data(16)
        #expect(rule(nested.bytes) == .nestedArray)
        var badBool = Image(tensors: 0, kvs: 1)
        badBool.string("k")
        badBool.u32(7)
        badBool.bytes.append(2)
        #expect(rule(badBool.bytes) == .invalidBool)
        var badUTF8 = Image(tensors: 0, kvs: 1)
        badUTF8.u64(2)
        badUTF8.bytes += [0xC3, 0x28]
        badUTF8.u32(7)
        badUTF8.bytes.append(0)
        #expect(rule(badUTF8.bytes) == .invalidUTF8)
        var alignment = Image(tensors: 0, kvs: 1)
        alignment.string("general.alignment")
        alignment.u32(4)
        alignment.u32(24)
        #expect(rule(alignment.bytes) == .invalidAlignment)
        var alignmentType = Image(tensors: 0, kvs: 1)
        alignmentType.string("general.alignment")
        alignmentType.u32(5)  // INT32
        alignmentType.u32(32)
        #expect(rule(alignmentType.bytes) == .invalidAlignment)
    }

    func oneTensor(dims: [UInt64], type: UInt32 = 0, offset: UInt64 = 0, data: Int) -> [UInt8] {
        var image = Image(tensors: 1, kvs: 0)
        image.tensor("t", dims: dims, type: type, offset: offset)
        image.pad()
        image.data(data)
        return image.bytes
    }

    @Test func refusesBadTensorInfos() {
        #expect(rule(oneTensor(dims: [4], data: 16)) == nil)
        #expect(rule(oneTensor(dims: [4], type: 31, data: 16)) == .unknownTensorType)
        #expect(rule(oneTensor(dims: [1 << 32, 1 << 32, 1 << 32], data: 16)) == .sizeOverflow)
        #expect(rule(oneTensor(dims: [UInt64.max], data: 16)) == .sizeOverflow)
        #expect(rule(oneTensor(dims: [], data: 16)) == .invalidDimensions)
        #expect(rule(oneTensor(dims: [1, 1, 1, 1, 1], data: 16)) == .invalidDimensions)
        #expect(rule(oneTensor(dims: [33], type: 8, data: 64)) == .partialBlock)
        #expect(rule(oneTensor(dims: [32], type: 8, data: 34)) == nil)  // one Q8_0 block
        #expect(rule(oneTensor(dims: [4], data: 8)) == .dataPastEnd)
        #expect(rule(oneTensor(dims: [4], offset: 8, data: 48)) == .misalignedOffset)
        #expect(rule(oneTensor(dims: [4], offset: 32, data: 48)) == .dataHole)
        #expect(rule(oneTensor(dims: [4], data: 16 + 32)) == .trailingBytes)
        var long = Image(tensors: 1, kvs: 0)
        long.tensor(String(repeating: "x", count: 64), dims: [4], type: 0, offset: 0)
        long.pad()
        long.data(16)
        #expect(rule(long.bytes) == .nameTooLong)
    }

    @Test func refusesOverlapsAndDuplicates() {
        var overlap = Image(tensors: 2, kvs: 0)
        overlap.tensor("a", dims: [8], type: 0, offset: 0)
        overlap.tensor("b", dims: [8], type: 0, offset: 0)
        overlap.pad()
        overlap.data(64)
        #expect(rule(overlap.bytes) == .dataOverlap)
        var duplicate = Image(tensors: 2, kvs: 0)
        duplicate.tensor("a", dims: [8], type: 0, offset: 0)
        duplicate.tensor("a", dims: [8], type: 0, offset: 32)
        duplicate.pad()
        duplicate.data(64)
        #expect(rule(duplicate.bytes) == .duplicateTensor)
    }

    @Test func everyTruncationIsRefused() {
        let bytes = validImage().bytes
        // Cutting anywhere before the last tensor's data ends must fail (after that, only padding goes).
        let lastEnd = bytes.count - 16
        for length in 0..<lastEnd {
            #expect(rule(Array(bytes[..<length])) != nil, "truncated at \(length)")
        }
    }

    @Test func writerOutputReadsBack() throws {
        let kvs = [GGUFKeyValue("general.architecture", .string("llama")), GGUFKeyValue("adapter.lora.alpha", .float32(8)),
                   GGUFKeyValue("list", .array(.int32, [.int32(1), .int32(-2)]))]
        let tensors = [GGUFWriter.Tensor(name: "x", type: .f32, dimensions: [3, 1], bytes: [UInt8](repeating: 7, count: 12)),
                       GGUFWriter.Tensor(name: "y", type: .f16, dimensions: [5], bytes: [UInt8](repeating: 9, count: 10))]
        let bytes = try GGUFWriter.serialize(keyValues: kvs, tensors: tensors, file: "t.gguf")
        let file = try GGUFFile(bytes: bytes)
        #expect(file.keyValues == kvs)
        #expect(file.tensors.map(\.dimensions) == [[3, 1], [5]])
        #expect(file.tensors[1].offset == 32)
        #expect(try file.bytes(of: file.tensors[1]) == [UInt8](repeating: 9, count: 10))
        #expect(bytes.count % 32 == 0)
        #expect(throws: GGUFError.self) {
            try GGUFWriter.serialize(keyValues: kvs + [kvs[0]], tensors: [], file: "t.gguf")
        }
        #expect(throws: GGUFError.self) {
            try GGUFWriter.serialize(keyValues: [], tensors: [GGUFWriter.Tensor(name: "x", type: .f32, dimensions: [4], bytes: [0])],
                                     file: "t.gguf")
        }
    }

    @Test func q8_0MatchesHandComputedBlocks() {
        // One block: max |x| = 127 → d = 1 exactly; values round half away from zero.
        var values = [Float](repeating: 0, count: 32)
        values[0] = 127
        values[1] = -2.5
        values[2] = 0.5
        values[3] = -127
        let bytes = Q8_0.quantize(values)
        #expect(bytes.count == 34)
        #expect(bytes[0] == 0x00 && bytes[1] == 0x3C)  // f16 1.0
        #expect(Int8(bitPattern: bytes[2]) == 127)
        #expect(Int8(bitPattern: bytes[3]) == -3)
        #expect(Int8(bitPattern: bytes[4]) == 1)
        #expect(Int8(bitPattern: bytes[5]) == -127)
        #expect(Q8_0.dequantize(bytes, count: 32)[1] == -3)
        // An all-zero block has d = 0 and q = 0.
        #expect(Q8_0.quantize([Float](repeating: 0, count: 32)) == [UInt8](repeating: 0, count: 34))
    }

    @Test func typeSizesAreGGMLs() {
        // ggml's type_traits (blck_size, type_size) for a few types, as ggml.c declares them.
        #expect(GGMLType.q8_0.blockSize == 32 && GGMLType.q8_0.typeSize == 34)
        #expect(GGMLType.q4_K.blockSize == 256 && GGMLType.q4_K.typeSize == 144)
        #expect(GGMLType.bf16.typeSize == 2 && GGMLType.bf16.rawValue == 30)
        #expect(GGMLType(rawValue: 4) == nil)
    }

    @Test func readsFilesFromDiskAndSeesThemShrink() throws {
        let path = NSTemporaryDirectory() + "gguf-reader-\(getpid()).gguf"
        defer { unlink(path) }
        let bytes = validImage().bytes
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        #expect(GGUFFile.hasMagic(path))
        let file = try GGUFFile(path: path)
        #expect(file.tensors.count == 2)
        truncate(path, off_t(file.dataStart + 8))
        #expect(throws: GGUFError.self) { try file.bytes(of: file.tensors[1]) }
    }
}
