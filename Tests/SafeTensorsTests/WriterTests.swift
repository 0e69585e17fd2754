import Foundation
import Testing
@testable import SafeTensors

@Test func writerReproducesHFSaveFileByteForByte() throws {
    // fixtures/reference/hf_save_file.safetensors was written by safetensors.torch.save_file (fixtures/generate.py).
    let reference = repositoryRoot + "/fixtures/reference/hf_save_file.safetensors"
    let original = try SafeTensorsFile(path: reference)
    #expect(original.tensors.count == 17)
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // Hand the tensors over in reverse name order: the writer must still produce the reference layout.
    let tensors = try original.tensors.sorted { $0.name > $1.name }.map { info in
        (info.name, info.dtype, info.shape, [UInt8](try original.view(info).bytes))
    }
    let copy = try writeTensors(tensors, to: folder + "/copy.safetensors")
    #expect(readBytes(copy) == readBytes(reference))
}

@Test func hfReferenceValuesDecodeToTheDocumentedArange() throws {
    // fixtures/generate.py (HF_SAVE_FILE_TENSORS): f32.cube holds -2 + arange(24) / 6 in float32.
    let file = try SafeTensorsFile(path: repositoryRoot + "/fixtures/reference/hf_save_file.safetensors")
    let cube = try file.view("f32.cube")
    var values = [Float](repeating: -1, count: cube.info.elementCount)
    values.withUnsafeMutableBufferPointer { Codec.decode(cube.bytes, as: .f32, into: $0) }
    #expect(values.count == 24)
    #expect(values.enumerated().allSatisfy { abs($0.element - (-2 + Float($0.offset) / 6)) <= 1e-6 })
}

@Test func writerRoundTripsAndIsDeterministic() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tensors: [(String, DType, [Int], [UInt8])] = [
        ("b.weight", .f32, [2, 2], (0..<16).map(UInt8.init)),
        ("a.weight", .bf16, [3], [1, 2, 3, 4, 5, 6]),
        ("c", .i64, [], [9, 0, 0, 0, 0, 0, 0, 0]),
        ("empty", .f16, [0, 4], []),
    ]
    let first = try writeTensors(tensors, to: folder + "/one.safetensors", metadata: [("format", "pt"), ("by", "test")])
    let second = try writeTensors(tensors.reversed(), to: folder + "/two.safetensors",
                                  metadata: [("format", "pt"), ("by", "test")])
    #expect(readBytes(first) == readBytes(second))
    let bytes = readBytes(first)
    let headerLength = bytes[0..<8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
    #expect(headerLength % 8 == 0)
    let header = String(decoding: bytes[8..<(8 + headerLength)], as: UTF8.self)
    #expect(header.hasPrefix("{\"__metadata__\":{\"format\":\"pt\",\"by\":\"test\"},\"c\":"))
    let file = try SafeTensorsFile(path: first)
    for (name, dtype, shape, data) in tensors {
        let view = try file.view(name)
        #expect(view.info.dtype == dtype)
        #expect(view.info.shape == shape)
        #expect([UInt8](view.bytes) == data)
    }
    // Nothing but the two outputs is left in the folder.
    #expect(try FileManager.default.contentsOfDirectory(atPath: folder).sorted() == ["one.safetensors", "two.safetensors"])
}

@Test func writerRefusesWrongInputAndLeavesNothingBehind() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = folder + "/out.safetensors"
    var writer: SafeTensorsWriter? = try SafeTensorsWriter(
        path: path, tensors: [TensorSpec(name: "a", dtype: .f32, shape: [2]), TensorSpec(name: "b", dtype: .f32, shape: [1])])
    let eight = [UInt8](repeating: 0, count: 8)
    #expect(throws: SafeTensorsError.writerUnknownTensor(file: path, tensor: "zz")) {
        try eight.withUnsafeBytes { try writer!.write("zz", bytes: $0) }
    }
    #expect(throws: SafeTensorsError.writerByteCount(file: path, tensor: "b", expected: 4, actual: 8)) {
        try eight.withUnsafeBytes { try writer!.write("b", bytes: $0) }
    }
    try eight.withUnsafeBytes { try writer!.write("a", bytes: $0) }
    #expect(throws: SafeTensorsError.writerDuplicateTensor(file: path, tensor: "a")) {
        try eight.withUnsafeBytes { try writer!.write("a", bytes: $0) }
    }
    #expect(throws: SafeTensorsError.writerIncomplete(file: path, missing: ["b"])) { try writer!.finish() }
    let temporary = writer!.temporaryPath
    #expect(FileManager.default.fileExists(atPath: temporary))
    writer = nil  // dropping an unfinished writer removes its temporary file
    #expect(!FileManager.default.fileExists(atPath: temporary))
    #expect(try FileManager.default.contentsOfDirectory(atPath: folder).isEmpty)
    #expect(throws: SafeTensorsError.writerDuplicateTensor(file: path, tensor: "a")) {
        try SafeTensorsWriter(path: path, tensors: [TensorSpec(name: "a", dtype: .f32, shape: [1]),
                                                    TensorSpec(name: "a", dtype: .f16, shape: [1])])
    }
}

/// The writer skips posix_fallocate on tmpfs only, so the check must tell tmpfs from other file systems.
@Suite struct MemoryBackedTests {
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/shm"), "needs Linux's /dev/shm tmpfs"))
    func sharedMemoryIsMemoryBacked() throws {
        let path = "/dev/shm/safetensors-tests-" + UUID().uuidString
        let descriptor = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
        try #require(descriptor >= 0)
        defer { close(descriptor); unlink(path) }
        #expect(SafeTensorsWriter.isMemoryBacked(descriptor))
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/proc/self/stat"), "needs Linux's procfs"))
    func procfsIsNotMemoryBacked() throws {
        let descriptor = open("/proc/self/stat", O_RDONLY)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        #expect(!SafeTensorsWriter.isMemoryBacked(descriptor))
    }

    @Test func aClosedDescriptorIsNotMemoryBacked() {
        #expect(!SafeTensorsWriter.isMemoryBacked(-1))
    }
}
