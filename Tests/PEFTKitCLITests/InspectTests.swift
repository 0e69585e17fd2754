import Foundation
import SafeTensors
import Testing
@testable import PEFTKitCLI
#if canImport(Glibc)
import Glibc
#endif

/// A small file with several dtypes, a scalar, a type Codec cannot decode, and two metadata entries.
private let mixedTensors: [TestTensor] = [
    .f32("model.embed.weight", [3, 4], (0..<12).map(Float.init)),
    .f32("model.head.weight", [2, 3], [1, 2, 3, 4, 5, 6]),
    .bf16("model.norm.weight", [5], [1, 2, 3, 4, 5]),
    .filled("model.position_ids", .i64, [2, 2]),
    .filled("model.scale", .f16, []),
    .filled("model.fp8.weight", .f8e4m3, [4, 2]),
]
private let mixedMetadata: [(key: String, value: String)] = [("format", "pt"), ("note", "hello")]

/// `count` F32 tensors of shape [8, 16], named so that storage order is name order.
private func layerTensors(_ count: Int) -> [TestTensor] {
    (0..<count).map { i in
        .f32("layer.\(i < 10 ? "0" : "")\(i).weight", [8, 16], (0..<128).map { Float($0 + i) })
    }
}

@Test func summaryReportsCountsDtypesAndMetadata() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = try writeSafeTensors(mixedTensors, to: folder + "/mixed.safetensors", metadata: mixedMetadata)

    let run = await peftkit("inspect", path)
    #expect(run.status == 0)
    #expect(run.standardError.isEmpty)
    let report = run.standardOutput
    #expect(summaryValue(report, "path") == path)
    #expect(summaryValue(report, "kind") == "safetensors file")
    #expect(summaryValue(report, "format") == "safetensors, 1 file")
    #expect(summaryValue(report, "tensors") == "\(mixedTensors.count)")
    let parameters = mixedTensors.reduce(0) { $0 + $1.elementCount }
    #expect(parameters == 36)
    #expect(summaryValue(report, "parameters") == "\(parameters)")
    let bytes = mixedTensors.reduce(0) { $0 + $1.bytes.count }
    #expect(summaryValue(report, "bytes") == "\(bytes)")
    #expect(summaryValue(report, "dtypes") == "F32: 2, BF16: 1, F16: 1, F8_E4M3: 1, I64: 1")
    #expect(summaryValue(report, "metadata") == "format: pt")
    #expect(lines(report).contains { $0.hasPrefix("  ") && $0.trimmingCharacters(in: .whitespaces) == "note: hello" })
}

@Test func tableListsNameDtypeShapeAndSize() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = try writeSafeTensors(mixedTensors, to: folder + "/mixed.safetensors")

    let report = await peftkit("inspect", path).standardOutput
    let header = lines(report).first { $0.hasPrefix("NAME ") } ?? ""
    #expect(header.split(separator: " ") == ["NAME", "DTYPE", "SHAPE", "SIZE"])
    let rows = tableRows(report)
    #expect(rows.count == mixedTensors.count)
    #expect(Set(rows.map(\.[0])) == Set(mixedTensors.map(\.name)))
    for tensor in mixedTensors {
        let shape = "[" + tensor.shape.map(String.init).joined(separator: ", ") + "]"
        #expect(rows.contains([tensor.name, tensor.dtype.rawValue, shape, "\(tensor.bytes.count) B"]), "\(tensor.name)")
    }
    #expect(rows.contains(["model.scale", "F16", "[]", "2 B"]))
}

@Test func longListsShowHeadAndTailUnlessAll() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tensors = layerTensors(45)
    let path = try writeSafeTensors(tensors, to: folder + "/layers.safetensors")
    let names = tensors.map(\.name)

    let short = await peftkit("inspect", path)
    #expect(short.status == 0)
    let rows = tableRows(short.standardOutput)
    #expect(rows.count == 20 + 1 + 10)
    #expect(rows[0..<20].map(\.[0]) == Array(names[0..<20]))
    #expect(rows[20] == ["… 15 more tensors (use --all)"])
    #expect(rows[21...].map(\.[0]) == Array(names[35...]))
    // The summary still counts everything.
    let parameters = tensors.reduce(0) { $0 + $1.elementCount }
    #expect(summaryValue(short.standardOutput, "parameters") == "5,760 (5.76 K)" && parameters == 5760)

    let all = await peftkit("inspect", path, "--all")
    #expect(tableRows(all.standardOutput).map(\.[0]) == names)
    #expect(!all.standardOutput.contains("more tensors"))
}

@Test func fortyTensorsAreNotShortened() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = try writeSafeTensors(layerTensors(40), to: folder + "/layers.safetensors")
    let rows = tableRows(await peftkit("inspect", path).standardOutput)
    #expect(rows.count == 40)
    #expect(rows.allSatisfy { $0.count == 4 })
}

@Test func jsonListsEveryTensorWithIndependentlyComputedTotals() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tensors = mixedTensors + layerTensors(45)
    let path = try writeSafeTensors(tensors, to: folder + "/model.safetensors", metadata: mixedMetadata)

    let run = await peftkit("inspect", path, "--json")
    #expect(run.status == 0)
    let json = try parseJSON(run.standardOutput)
    #expect(json["schema"]?.stringValue == "peftkit.inspect/2")
    #expect(json["path"]?.stringValue == path)
    #expect(json["kind"]?.stringValue == "file")
    #expect(json["sharded"]?.boolValue == false)
    #expect(json["index"] == .null)
    #expect(json["tensor_count"]?.integerValue == Int64(tensors.count))
    #expect(json["parameters"]?.integerValue == Int64(tensors.reduce(0) { $0 + $1.shape.reduce(1, *) }))
    #expect(json["bytes"]?.integerValue == Int64(tensors.reduce(0) { $0 + $1.bytes.count }))
    #expect(json["dtypes"] == .object([("BF16", .integer(1)), ("F16", .integer(1)), ("F32", .integer(47)),
                                        ("F8_E4M3", .integer(1)), ("I64", .integer(1))]))
    #expect(json["metadata"] == .object([("format", .string("pt")), ("note", .string("hello"))]))
    #expect(json["statistics"]?.boolValue == false)

    let files = try #require(json["files"]?.arrayValue)
    #expect(files.count == 1)
    #expect(files[0]["name"]?.stringValue == "model.safetensors")
    let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int
    #expect(files[0]["size"]?.integerValue == size.map(Int64.init))
    #expect(files[0]["tensor_count"]?.integerValue == Int64(tensors.count))

    let listed = try #require(json["tensors"]?.arrayValue)
    #expect(listed.count == tensors.count)
    for tensor in tensors {
        let entry = try #require(listed.first { $0["name"]?.stringValue == tensor.name }, "\(tensor.name)")
        #expect(entry["dtype"]?.stringValue == tensor.dtype.rawValue)
        #expect(entry["shape"]?.arrayValue?.compactMap(\.integerValue) == tensor.shape.map(Int64.init))
        #expect(entry["parameters"]?.integerValue == Int64(tensor.elementCount))
        #expect(entry["bytes"]?.integerValue == Int64(tensor.bytes.count))
        #expect(entry["file"]?.stringValue == "model.safetensors")
        #expect(entry["stats"] == nil)
    }
}

@Test func shardedFoldersAreReportedPerFileWithTheIndex() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tensors = (0..<7).map { i in TestTensor.f32("layer.\(i).weight", [i + 1, 4], (0..<(4 * (i + 1))).map(Float.init)) }
    let shardOf = try writeShardedCheckpoint(tensors, maxShardSize: 100, folder: folder)
    let shardCount = Set(shardOf.values).count
    #expect(shardCount == 5)

    let text = await peftkit("inspect", folder)
    #expect(text.status == 0)
    #expect(summaryValue(text.standardOutput, "kind") == "model folder")
    #expect(summaryValue(text.standardOutput, "format") == "sharded, 5 files + index (model.safetensors.index.json)")
    #expect(summaryValue(text.standardOutput, "files")?.hasPrefix("model-00001-of-00005.safetensors") == true)
    #expect(summaryValue(text.standardOutput, "parameters") == "\(tensors.reduce(0) { $0 + $1.elementCount })")

    let run = await peftkit("inspect", folder, "--json")
    let json = try parseJSON(run.standardOutput)
    #expect(json["kind"]?.stringValue == "model")
    #expect(json["sharded"]?.boolValue == true)
    #expect(json["files"]?.arrayValue?.compactMap { $0["name"]?.stringValue }
        == (0..<5).map { ShardPlanner.shardName($0, of: 5) })
    #expect(json["index"]?["name"]?.stringValue == "model.safetensors.index.json")
    let total = Int64(tensors.reduce(0) { $0 + $1.bytes.count })
    #expect(json["index"]?["metadata"]?["total_size"]?.integerValue == total)
    #expect(json["bytes"]?.integerValue == total)
    for entry in json["tensors"]?.arrayValue ?? [] {
        let name = try #require(entry["name"]?.stringValue)
        #expect(entry["file"]?.stringValue == shardOf[name], "\(name)")
    }
}

@Test func manyShardsAreListedShortUnlessAll() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tensors = (0..<10).map { TestTensor.f32("t\($0)", [4], [1, 2, 3, 4]) }
    try writeShardedCheckpoint(tensors, maxShardSize: 16, folder: folder)
    let names = (0..<10).map { ShardPlanner.shardName($0, of: 10) }

    func listedFiles(_ report: String) -> [String] {
        let all = lines(report)
        guard let start = all.firstIndex(where: { $0.hasPrefix("files ") }),
              let end = all.firstIndex(where: { $0.hasPrefix("tensors ") }) else { return [] }
        return all[start..<end].map { String($0.dropFirst("files".count).trimmingCharacters(in: .whitespaces)) }
    }
    let short = listedFiles(await peftkit("inspect", folder).standardOutput)
    #expect(short.count == 3 + 1 + 2)
    #expect(short[0].hasPrefix(names[0] + "  1 tensor, "))
    #expect(short[3] == "… 5 more files (use --all)")
    #expect(short[5].hasPrefix(names[9]))
    let all = listedFiles(await peftkit("inspect", folder, "--all").standardOutput)
    #expect(all.map { String($0.prefix(while: { $0 != " " })) } == names)
}

@Test func aCheckpointWithoutTensorsIsReportedAsEmpty() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = try writeSafeTensors([], to: folder + "/empty.safetensors", metadata: nil)
    let run = await peftkit("inspect", path)
    #expect(run.status == 0)
    #expect(summaryValue(run.standardOutput, "tensors") == "0")
    #expect(summaryValue(run.standardOutput, "dtypes") == "(none)")
    #expect(summaryValue(run.standardOutput, "metadata") == "(none)")
    #expect(tableRows(run.standardOutput).isEmpty)
    let json = try parseJSON(await peftkit("inspect", path, "--json").standardOutput)
    #expect(json["parameters"]?.integerValue == 0)
    #expect(json["files"]?.arrayValue?.first?["metadata"] == .null)
    #expect(json["metadata"] == .object([]))
}

@Test func adaptersAreRecognisedAndTheirTensorsListed() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try #"{"peft_type": "LORA", "r": 2, "lora_alpha": 4}"#.write(toFile: folder + "/adapter_config.json", atomically: true, encoding: .utf8)
    let tensors = [
        TestTensor.f32("base_model.model.q.lora_A.weight", [2, 4], (0..<8).map(Float.init)),
        TestTensor.f32("base_model.model.q.lora_B.weight", [4, 2], (0..<8).map(Float.init)),
    ]
    try writeSafeTensors(tensors, to: folder + "/adapter_model.safetensors")

    let json = try parseJSON(await peftkit("inspect", folder, "--json").standardOutput)
    #expect(json["kind"]?.stringValue == "adapter")
    #expect(json["method"]?.stringValue == "lora")
    #expect(json["parameters"]?.integerValue == 16)
    #expect(json["tensors"]?.arrayValue?.compactMap { $0["name"]?.stringValue } == tensors.map(\.name))
    let text = await peftkit("inspect", folder + "/adapter_model.safetensors")
    #expect(summaryValue(text.standardOutput, "kind") == "adapter")
    #expect(summaryValue(text.standardOutput, "method") == "LORA (default), PEFT folder (safetensors)")
}

// MARK: - Statistics

@Test func statisticsMatchValuesComputedHere() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let values: [Float] = [1, -2, 3.5, .nan, .infinity, -.infinity, 0.25, 8]
    let tensors = [
        TestTensor.f32("mixed", [8], values),
        TestTensor.bf16("halves", [2, 2], [0.5, 1.5, -3, 4]),
        TestTensor(name: "ids", dtype: .i64, shape: [4], bytes: [10, 20, 30, 40].flatMap { littleEndianBytes(Int64($0)) }),
        TestTensor.filled("fp8", .f8e4m3, [4]),
    ]
    let path = try writeSafeTensors(tensors, to: folder + "/stats.safetensors")

    let finite = values.filter(\.isFinite).map(Double.init)
    let mean = finite.reduce(0, +) / Double(finite.count)
    let std = (finite.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(finite.count)).squareRoot()

    let json = try parseJSON(await peftkit("inspect", path, "--stats", "--json").standardOutput)
    #expect(json["statistics"]?.boolValue == true)
    let listed = try #require(json["tensors"]?.arrayValue)
    func stats(_ name: String) -> JSONValue? { listed.first { $0["name"]?.stringValue == name }?["stats"] }
    let mixed = try #require(stats("mixed"))
    #expect(mixed["finite"]?.integerValue == 5)
    #expect(mixed["nan"]?.integerValue == 1)
    #expect(mixed["inf"]?.integerValue == 2)
    #expect(mixed["min"]?.doubleValue == -2)
    #expect(mixed["max"]?.doubleValue == 8)
    #expect(abs((mixed["mean"]?.doubleValue ?? .nan) - mean) < 1e-12)
    #expect(abs((mixed["std"]?.doubleValue ?? .nan) - std) < 1e-12)
    let halves = try #require(stats("halves"))
    #expect(halves["min"]?.doubleValue == -3 && halves["max"]?.doubleValue == 4 && halves["mean"]?.doubleValue == 0.75)
    #expect(stats("ids")?["mean"]?.doubleValue == 25)
    #expect(stats("fp8") == .null)

    let text = await peftkit("inspect", path, "--stats")
    let header = lines(text.standardOutput).first { $0.hasPrefix("NAME ") } ?? ""
    #expect(header.split(separator: " ") == ["NAME", "DTYPE", "SHAPE", "SIZE", "MIN", "MAX", "MEAN", "STD", "NAN", "INF"])
    let rows = tableRows(text.standardOutput)
    #expect(rows.contains(["mixed", "F32", "[8]", "32 B", "-2", "8", String(format: "%.4g", mean),
                           String(format: "%.4g", std), "1", "2"]))
    #expect(rows.contains(["fp8", "F8_E4M3", "[4]", "4 B", "-", "-", "-", "-", "-", "-"]))
}

@Test func statisticsAreTheSameWhateverTheChunkSize() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // 1000 values with a large offset (where a naive sum of squares loses precision) and a few NaNs.
    let values: [Float] = (0..<1000).map { $0 % 97 == 0 ? .nan : 10_000 + Float(($0 * 37) % 101) / 8 }
    let path = try writeSafeTensors([.f32("v", [1000], values)], to: folder + "/v.safetensors")
    let file = try SafeTensorsFile(path: path)
    let view = try file.view("v")

    let whole = try #require(TensorStatistics.compute(view))
    let finite = values.filter(\.isFinite).map(Double.init)
    let mean = finite.reduce(0, +) / Double(finite.count)
    let std = (finite.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(finite.count)).squareRoot()
    #expect(whole.finiteCount == finite.count && whole.nanCount == 11 && whole.infinityCount == 0)
    #expect(abs(whole.mean! - mean) < 1e-9)
    #expect(abs(whole.standardDeviation! - std) < 1e-9)
    for chunk in [1, 7, 333, 999] {
        let chunked = try #require(TensorStatistics.compute(view, chunkElements: chunk))
        #expect(chunked.finiteCount == whole.finiteCount && chunked.nanCount == whole.nanCount)
        #expect(chunked.minimum == whole.minimum && chunked.maximum == whole.maximum)
        #expect(abs(chunked.mean! - mean) < 1e-9, "chunk \(chunk)")
        #expect(abs(chunked.standardDeviation! - std) < 1e-9, "chunk \(chunk)")
    }
}

// MARK: - Header only

@Test func inspectWithoutStatsReadsNoTensorData() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // A sparse file: header written, 16 MiB of data left as a hole. Nothing of the hole is in the page cache
    // until somebody reads it, so the cache tells whether inspect touched the data.
    let path = folder + "/sparse.safetensors"
    let (json, infos) = try Header.serialize([TensorSpec(name: "big", dtype: .f32, shape: [1024, 4096])],
                                             metadata: [("format", "pt")], file: path)
    let dataStart = 8 + json.count
    let fileSize = dataStart + infos[0].byteCount
    try #require(FileManager.default.createFile(atPath: path, contents: Data(littleEndianBytes(UInt64(json.count)) + json)))
    #expect(truncate(path, off_t(fileSize)) == 0)
    let data = dataStart..<fileSize
    let before = try residentPages(of: path, in: data)
    try #require(before.resident == 0, "this file system caches holes; the test cannot tell reads apart")

    let run = await peftkit("inspect", path)
    #expect(run.status == 0)
    #expect(tableRows(run.standardOutput) == [["big", "F32", "[1024, 4096]", "16.0 MiB"]])
    let headerOnly = try residentPages(of: path, in: data)
    // Read-ahead after the header may pull in a few pages; reading the tensor pulls in all 4096.
    #expect(headerOnly.resident <= headerOnly.total / 16, "\(headerOnly.resident) of \(headerOnly.total) pages read")

    // The control: --stats reads everything, and the same measurement sees it.
    let stats = await peftkit("inspect", path, "--stats")
    #expect(stats.status == 0)
    #expect(tableRows(stats.standardOutput).first?[4...] == ["0", "0", "0", "0", "0", "0"])
    let afterStats = try residentPages(of: path, in: data)
    #expect(afterStats.resident >= afterStats.total * 9 / 10)
}

// MARK: - Bad input

@Test func malformedFilesFailWithOneLineAndStatus2() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let garbage = folder + "/garbage.safetensors"
    try #require(FileManager.default.createFile(atPath: garbage, contents: Data("not a safetensors file at all".utf8)))
    let badJSON = folder + "/bad-json.safetensors"
    let header = Array(#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4],}}"#.utf8)
    try #require(FileManager.default.createFile(atPath: badJSON, contents: Data(littleEndianBytes(UInt64(header.count)) + header + [0, 0, 0, 0])))
    let truncated = folder + "/truncated.safetensors"
    try writeSafeTensors(mixedTensors, to: truncated)
    let handle = try #require(FileHandle(forUpdatingAtPath: truncated))
    try handle.truncate(atOffset: try handle.seekToEnd() - 3)
    try handle.close()
    let emptyFolder = folder + "/empty"
    try FileManager.default.createDirectory(atPath: emptyFolder, withIntermediateDirectories: false)

    for path in [garbage, badJSON, truncated, emptyFolder] {
        for extra in [[], ["--json"], ["--stats"]] {
            let run = await peftkit(["inspect", path] + extra)
            #expect(run.status == 2, "\(path) \(extra)")
            #expect(run.standardOutput.isEmpty)
            #expect(run.standardError.hasPrefix("peftkit: \(path): "), "\(run.standardError)")
            #expect(lines(run.standardError).count == 1, "\(run.standardError)")
        }
    }
}

@Test func aBrokenIndexIsInvalidInput() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tensors = (0..<3).map { TestTensor.f32("t\($0)", [4], [1, 2, 3, 4]) }
    try writeShardedCheckpoint(tensors, maxShardSize: 20, folder: folder)
    try #"{"weight_map": {"t0": "../escape.safetensors"}}"#
        .write(toFile: folder + "/model.safetensors.index.json", atomically: true, encoding: .utf8)
    let run = await peftkit("inspect", folder)
    #expect(run.status == 2)
    #expect(run.standardError.contains("model.safetensors.index.json"))
    #expect(lines(run.standardError).count == 1)
}

@Test func aMissingPathIsAnIOError() async {
    let path = NSTemporaryDirectory() + "peftkit-does-not-exist-\(UUID().uuidString)"
    let run = await peftkit("inspect", path)
    #expect(run.status == ExitStatus.io.rawValue)
    #expect(run.standardOutput.isEmpty)
    #expect(run.standardError == "peftkit: \(path): no such file or folder\n")
}

@Test func untrustedNamesAndMetadataAreEscapedInTextButExactInJSON() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let evil = "evil\u{1b}[2J\nforged row"
    let path = try writeSafeTensors([.f32(evil, [1], [1])], to: folder + "/evil.safetensors",
                                    metadata: [("format", "pt"), ("x\u{7}", "bell\u{202e}txt")])
    let text = await peftkit("inspect", path)
    #expect(text.status == 0)
    #expect(!text.standardOutput.unicodeScalars.contains { $0 == "\u{1b}" || $0 == "\u{7}" || $0 == "\u{202e}" })
    #expect(text.standardOutput.contains("evil\\u{1b}[2J\\u{a}forged row"))
    #expect(text.standardOutput.contains("x\\u{7}: bell\\u{202e}txt"))
    #expect(!lines(text.standardOutput).contains { $0.hasPrefix("forged row") })

    let json = try parseJSON(await peftkit("inspect", path, "--json").standardOutput)
    #expect(json["tensors"]?.arrayValue?.first?["name"]?.stringValue == evil)
    #expect(json["metadata"]?["x\u{7}"]?.stringValue == "bell\u{202e}txt")
}

/// A GGUF file made by llama.cpp's own converter (fixtures/gguf): recognised by its magic, listed with its keys.
@Test func inspectsAGGUFAdapterMadeByLlamaCpp() async throws {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path + "/fixtures/gguf/llama-plain/llama.cpp.gguf"
    let run = await peftkit("inspect", path, "--json")
    #expect(run.status == 0, "\(run.standardError)")
    let json = try #require(try JSONSerialization.jsonObject(with: Data(run.standardOutput.utf8)) as? [String: Any])
    #expect(json["schema"] as? String == "peftkit.inspect-gguf/1")
    #expect(json["general_type"] as? String == "adapter")
    #expect(json["architecture"] as? String == "llama")
    // 2 layers × 7 modules × (lora_a, lora_b), as convert_lora_to_gguf.py wrote them.
    #expect(json["tensor_count"] as? Int == 28)
    let kvs = try #require(json["key_values"] as? [[String: Any]])
    let alpha = try #require(kvs.first { $0["key"] as? String == "adapter.lora.alpha" })
    #expect(alpha["type"] as? String == "FLOAT32" && alpha["value"] as? Double == 16)
    let tensors = try #require(json["tensors"] as? [[String: Any]])
    let first = try #require(tensors.first)
    #expect(first["name"] as? String == "blk.0.ffn_down.weight.lora_a")
    // ffn_down: in = intermediate 64, r = 8; ggml order [in, r], numpy [r, in].
    #expect(first["dimensions"] as? [Int] == [64, 8] && first["shape"] as? [Int] == [8, 64])
    let text = await peftkit("inspect", path)
    #expect(text.status == 0)
    #expect(text.standardOutput.contains("adapter.lora.alpha"))
    #expect(text.standardOutput.contains("blk.1.attn_q.weight.lora_b"))
}

/// `inspect ADAPTER --base BASE` shows PEFT's own `get_nb_trainable_parameters()` numbers, recorded by
/// fixtures/count_parameters.py from PEFT 0.18.1 (dora-llama-bf16: 9952 trainable of 41344).
@Test func inspectWithABaseReportsPEFTsParameterCounts() async throws {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path + "/fixtures/cases/dora-llama-bf16"
    let run = await peftkit("inspect", root + "/adapter", "--base", root + "/base", "--json")
    #expect(run.status == 0, "\(run.standardError)")
    let json = try #require(try JSONSerialization.jsonObject(with: Data(run.standardOutput.utf8)) as? [String: Any])
    let base = try #require((json["adapter"] as? [String: Any])?["base"] as? [String: Any])
    #expect(base["peft_trainable_parameters"] as? Int == 9952)
    #expect(base["peft_all_parameters"] as? Int == 41344)
    let percent = try #require(base["peft_trainable_percent"] as? Double)
    #expect(abs(percent - 100 * 9952 / 41344.0) < 1e-9)
    let text = await peftkit("inspect", root + "/adapter", "--base", root + "/base")
    #expect(text.standardOutput.contains("trainable params: 9,952 || all params: 41,344"), "\(text.standardOutput)")
}
