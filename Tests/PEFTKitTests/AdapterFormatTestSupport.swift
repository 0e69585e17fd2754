import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

/// `fixtures/cases`: adapters and bases written by real HF PEFT (`fixtures/generate.py`).
let caseFixtures = URL(fileURLWithPath: fixtureCases)

/// The cases whose `adapter/` folder is complete, by name. Cases still being generated are skipped.
let fixtureAdapterCases: [String] = {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: caseFixtures.path)) ?? []
    return names.filter { name in
        let adapter = caseFixtures.appendingPathComponent(name).appendingPathComponent("adapter")
        return FileManager.default.fileExists(atPath: adapter.appendingPathComponent("adapter_config.json").path)
            && FileManager.default.fileExists(atPath: adapter.appendingPathComponent("adapter_model.safetensors").path)
    }.sorted()
}()

/// The cases that also have their base model, for fingerprints.
let fixtureCasesWithBase: [String] = fixtureAdapterCases.filter { name in
    let base = caseFixtures.appendingPathComponent(name).appendingPathComponent("base")
    let files = (try? FileManager.default.contentsOfDirectory(atPath: base.path)) ?? []
    return files.contains { $0.hasSuffix(".safetensors") }
}

/// A fresh empty folder under the system's temporary folder.
func scratchFolder() -> String {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("peftkit-format-tests-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func join(_ folder: String, _ names: String...) -> String {
    names.reduce(folder) { ($0 as NSString).appendingPathComponent($1) }
}

func fileBytes(_ path: String) -> [UInt8] {
    [UInt8](FileManager.default.contents(atPath: path) ?? Data())
}

func folderListing(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

func float32Bytes(_ values: [Float]) -> [UInt8] {
    values.flatMap { value in withUnsafeBytes(of: value.bitPattern.littleEndian) { Array($0) } }
}

/// Writes a safetensors file with the SafeTensors writer (tested on its own in SafeTensorsTests).
func writeSafetensors(_ path: String, _ tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])],
                      metadata: [(key: String, value: String)]? = [("format", "pt")]) throws {
    let writer = try SafeTensorsWriter(path: path, tensors: tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                       metadata: metadata)
    for tensor in tensors {
        try tensor.bytes.withUnsafeBytes { try writer.write(tensor.name, bytes: $0) }
    }
    try writer.finish(sync: false)
}

/// A LoRA adapter small enough to read by eye: r = 1 on one 2×2 module `q`, plus the base it was made for.
enum TinyLoRA {
    static let config = """
        {
          "base_model_name_or_path": "tiny-base",
          "lora_alpha": 2,
          "peft_type": "LORA",
          "r": 1,
          "target_modules": [
            "q"
          ]
        }
        """
    static let loraA = ("base_model.model.q.lora_A.weight", DType.f32, [1, 2], float32Bytes([0.5, -1]))
    static let loraB = ("base_model.model.q.lora_B.weight", DType.f32, [2, 1], float32Bytes([2, 0.25]))

    /// Writes the PEFT folder and returns its path.
    static func writePEFTFolder(in parent: String, name: String = "tiny-adapter", config: String = config) throws -> String {
        let folder = join(parent, name)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try Data(config.utf8).write(to: URL(fileURLWithPath: join(folder, "adapter_config.json")))
        try writeSafetensors(join(folder, "adapter_model.safetensors"), [loraA, loraB])
        return folder
    }

    /// The base: `q.weight` (targeted) and `k.weight` (not), optionally with one byte of one tensor flipped or a
    /// tensor left out.
    static func writeBase(in parent: String, name: String = "base.safetensors", flipping flipped: String? = nil,
                          omitting omitted: String? = nil) throws -> String {
        var tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])] = [
            ("q.weight", .f32, [2, 2], float32Bytes([1, 2, 3, 4])),
            ("k.weight", .f32, [2, 2], float32Bytes([5, 6, 7, 8])),
        ]
        for index in tensors.indices where tensors[index].name == flipped { tensors[index].bytes[1] ^= 0x01 }
        tensors.removeAll { $0.name == omitted }
        let path = join(parent, name)
        try writeSafetensors(path, tensors)
        return path
    }

    /// The tiny adapter, converted to a peftkit file at `parent/name`.
    static func writePeftkitFile(in parent: String, name: String = "tiny.safetensors", fingerprint: String? = nil) throws -> String {
        let adapter = try AdapterLoader.load(try writePEFTFolder(in: parent, name: "source-" + name))
        let path = join(parent, name)
        try PeftkitFormat.write(adapter, to: path, options: AdapterWriteOptions(baseFingerprint: fingerprint))
        return path
    }
}

/// Rewrites a safetensors file with the same tensors and an edited `__metadata__` (to craft files the reader must
/// refuse or tolerate).
func rewriteMetadata(of path: String, to output: String, _ edit: (inout [(key: String, value: String)]) -> Void) throws {
    let file = try SafeTensorsFile(path: path)
    var metadata = file.metadata ?? []
    edit(&metadata)
    var tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])] = []
    for info in file.tensors {
        tensors.append((info.name, info.dtype, info.shape, Array(try file.view(info).bytes)))
    }
    try writeSafetensors(output, tensors, metadata: metadata)
}

func setMetadata(_ metadata: inout [(key: String, value: String)], _ key: String, _ value: String?) {
    if let index = metadata.firstIndex(where: { $0.key == key }) {
        if let value { metadata[index].value = value } else { metadata.remove(at: index) }
    } else if let value {
        metadata.append((key, value))
    }
}

/// The PEFTKitError `body` throws, recording an issue when it throws nothing or something else.
func peftkitError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) -> PEFTKitError? {
    do {
        try body()
        Issue.record("expected a PEFTKitError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as PEFTKitError {
        return error
    } catch {
        Issue.record("expected a PEFTKitError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

func strictJSON(_ path: String) throws -> JSONValue {
    try StrictJSON.parse(fileBytes(path), source: path)
}
