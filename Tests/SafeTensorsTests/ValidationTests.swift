import Foundation
import Testing
@testable import SafeTensors

/// One crafted file per rule of the format; each must be refused with the named rule.
struct MalformedCase: CustomTestStringConvertible, Sendable {
    let label: String
    let header: [UInt8]
    let data: [UInt8]
    let declaredLength: UInt64?
    let rule: String

    init(_ label: String, _ header: String, data: Int = 0, length: UInt64? = nil, rule: String) {
        self.init(label, Array(header.utf8), data: data, length: length, rule: rule)
    }

    init(_ label: String, _ header: [UInt8], data: Int = 0, length: UInt64? = nil, rule: String) {
        self.label = label
        self.header = header
        self.data = Array(repeating: 0, count: data)
        self.declaredLength = length
        self.rule = rule
    }

    var testDescription: String { label }
}

private func entry(_ name: String, _ dtype: String = "F32", _ shape: String = "[2]", _ offsets: String = "[0,8]") -> String {
    "\"\(name)\":{\"dtype\":\"\(dtype)\",\"shape\":\(shape),\"data_offsets\":\(offsets)}"
}

let malformedCases: [MalformedCase] = [
    MalformedCase("header length over the limit", "{}", length: 100_000_001, rule: "headerTooLarge"),
    MalformedCase("header length u64 max", "{}", length: UInt64.max, rule: "headerTooLarge"),
    MalformedCase("header past the end", "{}", length: 64, rule: "headerPastEnd"),
    MalformedCase("header length zero", "", length: 0, rule: "invalidJSON"),
    MalformedCase("invalid UTF-8", [0x7B, 0x22, 0xFF, 0x22, 0x3A, 0x31, 0x7D], rule: "headerNotUTF8"),
    MalformedCase("byte order mark", [0xEF, 0xBB, 0xBF] + Array("{}".utf8), rule: "invalidJSON"),
    MalformedCase("not an object", "[1,2]", rule: "headerNotObject"),
    MalformedCase("comment", "{/* c */}", rule: "invalidJSON"),
    MalformedCase("trailing comma", "{\(entry("a")),}", data: 8, rule: "invalidJSON"),
    MalformedCase("NUL inside the header", [0x7B, 0x7D, 0x00, 0x20], rule: "invalidJSON"),
    MalformedCase("single quotes", "{'a':{}}", rule: "invalidJSON"),
    MalformedCase("NaN literal", "{\"__metadata__\":{\"x\":NaN}}", rule: "invalidJSON"),
    MalformedCase("truncated JSON", "{\(entry("a"))", data: 8, rule: "invalidJSON"),
    MalformedCase("lone surrogate in a name", "{\(entry("a\\ud800"))}", data: 8, rule: "invalidJSON"),
    MalformedCase("raw control character in a name", "{\(entry("a\tb"))}", data: 8, rule: "invalidJSON"),
    MalformedCase("deep nesting", "{\"__metadata__\":" + String(repeating: "[", count: 200) + String(repeating: "]", count: 200) + "}",
                  rule: "invalidJSON"),
    MalformedCase("duplicate tensor key", "{\(entry("a")),\(entry("a", "F32", "[2]", "[8,16]"))}", data: 16, rule: "duplicateKey"),
    MalformedCase("duplicate key spelled with an escape", "{\(entry("a")),\(entry("\\u0061", "F32", "[2]", "[8,16]"))}", data: 16,
                  rule: "duplicateKey"),
    MalformedCase("non-string metadata value", "{\"__metadata__\":{\"format\":1}}", rule: "invalidMetadata"),
    MalformedCase("metadata not an object", "{\"__metadata__\":\"pt\"}", rule: "invalidMetadata"),
    MalformedCase("entry not an object", "{\"a\":[1]}", rule: "invalidEntry"),
    MalformedCase("missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", data: 8, rule: "invalidEntry"),
    MalformedCase("missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data: 8, rule: "invalidEntry"),
    MalformedCase("missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", data: 8, rule: "invalidEntry"),
    MalformedCase("unexpected field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", data: 8, rule: "invalidEntry"),
    MalformedCase("unknown dtype", "{\(entry("a", "F48"))}", data: 8, rule: "unknownDType"),
    MalformedCase("lowercase dtype", "{\(entry("a", "f32"))}", data: 8, rule: "unknownDType"),
    MalformedCase("negative dimension", "{\(entry("a", "F32", "[-2]"))}", data: 8, rule: "invalidShape"),
    MalformedCase("float dimension", "{\(entry("a", "F32", "[2.0]"))}", data: 8, rule: "invalidShape"),
    MalformedCase("string dimension", "{\(entry("a", "F32", "[\"2\"]"))}", data: 8, rule: "invalidShape"),
    MalformedCase("shape not an array", "{\(entry("a", "F32", "2"))}", data: 8, rule: "invalidShape"),
    MalformedCase("dimension beyond 64 bits", "{\(entry("a", "F32", "[18446744073709551616]"))}", data: 8, rule: "invalidJSON"),
    MalformedCase("element count overflow", "{\(entry("a", "F32", "[4294967296,4294967296]"))}", data: 8, rule: "sizeOverflow"),
    MalformedCase("bit count overflow", "{\(entry("a", "F64", "[1152921504606846976]"))}", data: 8, rule: "sizeOverflow"),
    MalformedCase("shape product that wraps to a small number", "{\(entry("a", "U8", "[4294967296,4294967296,4]"))}", data: 8,
                  rule: "sizeOverflow"),
    MalformedCase("odd count of 4-bit elements", "{\(entry("a", "F4", "[3]", "[0,2]"))}", data: 2, rule: "partialByte"),
    MalformedCase("three offsets", "{\(entry("a", "F32", "[2]", "[0,8,8]"))}", data: 8, rule: "invalidOffsets"),
    MalformedCase("one offset", "{\(entry("a", "F32", "[2]", "[0]"))}", data: 8, rule: "invalidOffsets"),
    MalformedCase("float offset", "{\(entry("a", "F32", "[2]", "[0,8.0]"))}", data: 8, rule: "invalidOffsets"),
    MalformedCase("negative offset", "{\(entry("a", "F32", "[2]", "[-8,0]"))}", data: 8, rule: "invalidOffsets"),
    MalformedCase("end before begin", "{\(entry("a", "F32", "[0]", "[8,0]"))}", data: 8, rule: "invalidOffsets"),
    MalformedCase("byte length differs from shape", "{\(entry("a", "F32", "[3]", "[0,8]"))}", data: 8, rule: "byteLengthMismatch"),
    MalformedCase("hole at the start", "{\(entry("a", "F32", "[2]", "[4,12]"))}", data: 12, rule: "dataHole"),
    MalformedCase("hole between tensors", "{\(entry("a")),\(entry("b", "F32", "[2]", "[12,20]"))}", data: 20, rule: "dataHole"),
    MalformedCase("overlap", "{\(entry("a")),\(entry("b", "F32", "[2]", "[4,12]"))}", data: 12, rule: "dataOverlap"),
    MalformedCase("trailing bytes", "{\(entry("a"))}", data: 12, rule: "trailingBytes"),
    MalformedCase("missing bytes", "{\(entry("a"))}", data: 4, rule: "dataPastEnd"),
    MalformedCase("no tensors but data", "{}", data: 4, rule: "trailingBytes"),
]

@Test(arguments: malformedCases)
func malformedFileIsRefusedWithItsRule(_ testCase: MalformedCase) throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = writeCraftedFile(at: folder + "/bad.safetensors", header: testCase.header, data: testCase.data,
                                declaredLength: testCase.declaredLength)
    do {
        _ = try SafeTensorsFile(path: path)
        Issue.record("\(testCase.label): accepted")
    } catch let error as SafeTensorsError {
        #expect(error.rule == testCase.rule, "\(testCase.label): \(error.localizedDescription)")
        #expect(error.localizedDescription.contains(path), "message must name the file")
    }
}

@Test func fileShorterThanEightBytesIsRefused() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = folder + "/tiny.safetensors"
    _ = FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3]))
    #expect(throws: SafeTensorsError.fileTooSmall(file: path, size: 3)) { try SafeTensorsFile(path: path) }
}

@Test func errorMessagesNameTheTensorAndEscapeControlCharacters() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = writeCraftedFile(at: folder + "/x.safetensors", header: "{\(entry("layer\\u001b[31m.weight", "F32", "[3]"))}",
                                data: [UInt8](repeating: 0, count: 8))
    do {
        _ = try SafeTensorsFile(path: path)
        Issue.record("accepted")
    } catch let error as SafeTensorsError {
        let message = error.localizedDescription
        #expect(message.contains("layer\\u{1b}[31m.weight"))
        #expect(!message.contains("\u{1b}"))
        #expect(message.contains("need 12"))
    }
}

@Test func validEdgeCasesAreAccepted() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // No tensors; zero-sized tensors sharing an offset; a scalar; trailing spaces in the header; metadata anywhere.
    let empty = writeCraftedFile(at: folder + "/empty.safetensors", header: "{}")
    #expect(try SafeTensorsFile(path: empty).tensors.isEmpty)
    let header = "{\(entry("z", "F32", "[0,3]", "[0,0]")),\(entry("s", "F32", "[]", "[0,4]")),\(entry("e", "BF16", "[0]", "[4,4]")),"
        + "\"__metadata__\":{\"format\":\"pt\",\"note\":\"ü\"}}    "
    let path = writeCraftedFile(at: folder + "/edge.safetensors", header: header, data: [0, 0, 128, 63])
    let file = try SafeTensorsFile(path: path)
    #expect(file.tensors.map(\.name).sorted() == ["e", "s", "z"])
    #expect(file.header.metadataValue("note") == "ü")
    let scalar = try file.view("s")
    #expect(scalar.info.elementCount == 1)
    #expect(scalar.bytes.loadUnaligned(as: Float.self) == 1.0)
}

@Test func shrunkFileIsDetectedBeforeReadingAView() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = try writeTensors([("w", .f32, [1024], [UInt8](repeating: 1, count: 4096))], to: folder + "/m.safetensors")
    let file = try SafeTensorsFile(path: path)
    #expect(truncate(path, 100) == 0)
    #expect(throws: SafeTensorsError.self) { try file.view("w") }
    do {
        _ = try file.view("w")
    } catch let error as SafeTensorsError {
        #expect(error.rule == "fileChanged")
    }
}

@Test func folderAndMissingPathsAreRefused() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    #expect(throws: SafeTensorsError.self) { try SafeTensorsFile(path: folder) }
    #expect(throws: SafeTensorsError.self) { try SafeTensorsFile(path: folder + "/missing.safetensors") }
}

@Test func strictJSONKeepsLiteralsAndOrder() throws {
    let value = try StrictJSON.parse(Array("{\"b\":1.50,\"a\":[1,-2,3e2],\"c\":\"\\ud83d\\ude00\"}".utf8), source: "t")
    #expect(value.objectValue?.map(\.key) == ["b", "a", "c"])
    #expect(value["b"] == .number(1.5, literal: "1.50"))
    #expect(value["a"]?.arrayValue?[1] == .integer(-2))
    #expect(value["c"]?.stringValue == "😀")
    #expect(value.compactText() == "{\"b\":1.50,\"a\":[1,-2,3e2],\"c\":\"😀\"}")
}

@Test func readingAMappedPagePastANewEndIsAnErrorNotACrash() throws {
    BusErrorGuard.install()
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // Two tensors of 64 KiB each; the second one's pages are cut away after the file is mapped.
    let path = try writeTensors([("a", .u8, [65536], [UInt8](repeating: 1, count: 65536)),
                                 ("b", .u8, [65536], [UInt8](repeating: 2, count: 65536))], to: folder + "/m.safetensors")
    let file = try SafeTensorsFile(path: path)
    let view = try file.view(file.tensors[1])
    #expect(truncate(path, 4096) == 0)
    // Without the guard this read would raise SIGBUS; with it, the page reads as zeros and the fault is recorded.
    let sum = view.bytes.reduce(0) { $0 + Int($1) }
    #expect(sum == 0)
    do {
        try file.checkUnchanged()
        Issue.record("the shrunk file was not noticed")
    } catch let error as SafeTensorsError {
        #expect(error.rule == "fileChanged")
    }
}
