import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// A two-module LoRA adapter on a 2-layer-shaped toy: q_proj r = 1 (rank_pattern) and k_proj r = 2, alpha 2, so
/// their scalings are 2 and 1 — different ranks and scales, as mlx-lm's one rank and one scale cannot hold directly.
private func patternedAdapter(in folder: String) throws -> String {
    let adapter = folder + "/peft"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    try Data("""
        {"lora_alpha": 2, "peft_type": "LORA", "r": 2, "rank_pattern": {"q_proj": 1},
         "target_modules": ["q_proj", "k_proj"]}
        """.utf8).write(to: URL(fileURLWithPath: adapter + "/adapter_config.json"))
    let prefix = "base_model.model.model.layers.0.self_attn."
    try writeSafetensors(adapter + "/adapter_model.safetensors", [
        (prefix + "q_proj.lora_A.weight", .f32, [1, 3], float32Bytes([1, 2, 3])),
        (prefix + "q_proj.lora_B.weight", .f32, [2, 1], float32Bytes([0.5, -1])),
        (prefix + "k_proj.lora_A.weight", .f32, [2, 3], float32Bytes([1, 0, -1, 2, 2, 2])),
        (prefix + "k_proj.lora_B.weight", .f32, [2, 2], float32Bytes([1, 2, 3, 4])),
    ])
    return adapter
}

private func values(_ path: String, _ name: String) throws -> (shape: [Int], values: [Float]) {
    let file = try SafeTensorsFile(path: path)
    let view = try file.view(try #require(file.info(name)))
    return (view.info.shape, floats(view))
}

@Test func mlxLayoutTransposesPadsAndFoldsExactly() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let adapter = try AdapterLoader.load(try patternedAdapter(in: folder))
    try MLXFormat.write(adapter, to: folder + "/mlx", options: AdapterWriteOptions())

    let config = try AdapterLoader.readJSON(folder + "/mlx/adapter_config.json")
    #expect(config["fine_tune_type"] == .string("lora"))
    #expect(config["lora_parameters"]?["rank"] == .integer(2))
    // Tie between the two scalings: the larger (2) is the adapter's, k_proj's 1 is folded into its lora_b as × 0.5.
    #expect(config["lora_parameters"]?["scale"]?.doubleValue == 2)
    let weights = folder + "/mlx/adapters.safetensors"
    let q = "model.layers.0.self_attn.q_proj", k = "model.layers.0.self_attn.k_proj"
    // lora_a = Aᵀ (in × r), padded with a zero column to r = 2; lora_b = Bᵀ (r × out), padded with a zero row.
    #expect(try values(weights, q + ".lora_a") == ([3, 2], [1, 0, 2, 0, 3, 0]))
    #expect(try values(weights, q + ".lora_b") == ([2, 2], [0.5, -1, 0, 0]))
    #expect(try values(weights, k + ".lora_a") == ([3, 2], [1, 2, 0, 2, -1, 2]))
    #expect(try values(weights, k + ".lora_b") == ([2, 2], [0.5, 1.5, 1, 2]))

    // Read back, the adapter computes the same s · B · A for every module: merging either gives the same bytes.
    let back = try AdapterLoader.load(folder + "/mlx")
    #expect(back.format.id == MLXFormat.id)
    // The zero padding is dropped on reading: q_proj has rank 1 again (rank_pattern, alpha_pattern keep its scaling).
    let modules = Dictionary(uniqueKeysWithValues: back.modules.map { ($0.path, $0) })
    #expect(modules[q]?.rank == 1 && modules[q]?.scaling == 2)
    #expect(modules[k]?.rank == 2 && modules[k]?.scaling == 2)
    #expect(modules[q]?.tensors[LoRA.a]?.shape == [1, 3])
    try writeSafetensors(folder + "/base.safetensors", [
        (q + ".weight", .f32, [2, 3], float32Bytes([1, 1, 1, 1, 1, 1])),
        (k + ".weight", .f32, [2, 3], float32Bytes([0, 0, 0, 0, 0, 0])),
    ])
    for (name, source) in [("from-peft", folder + "/peft"), ("from-mlx", folder + "/mlx")] {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/base.safetensors", adapters: [source], output: folder + "/" + name))
    }
    for name in [q + ".weight", k + ".weight"] {
        #expect(try values(folder + "/from-mlx/base.safetensors", name) == values(folder + "/from-peft/base.safetensors", name))
    }
    // q: W + 2 · B·A = 1 + 2 · [0.5, −1]ᵀ [1, 2, 3].
    #expect(try values(folder + "/from-mlx/base.safetensors", q + ".weight").values == [2, 3, 4, -1, -3, -5])
}

@Test func mlxRoundTripOfAPEFTFixtureKeepsEveryTensorByte() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let original = fixtureCases + "/lora-llama-f32/adapter"
    try MLXFormat.write(try AdapterLoader.load(original), to: folder + "/mlx", options: AdapterWriteOptions())
    try PEFTFolderFormat.write(try AdapterLoader.load(folder + "/mlx"), to: folder + "/peft", options: AdapterWriteOptions())
    try expectSameTensors(folder + "/peft/adapter_model.safetensors", original + "/adapter_model.safetensors")
}

@Test func mlxRefusesWhatItCannotExpress() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // rsLoRA with patterns: scalings 16/√8, 16/√4 = 8 and 7/√8 differ by factors that are not powers of two.
    let rslora = try AdapterLoader.load(fixtureCases + "/lora-rslora-patterns-llama-bf16/adapter")
    let scales = peftkitError { try MLXFormat.write(rslora, to: folder + "/a", options: AdapterWriteOptions()) }
    #expect(scales?.kind == .unsupported)
    #expect(scales?.message.contains("one scale per adapter") == true)
    #expect(scales?.details.contains { $0.contains("q_proj (scaling 8.0)") } == true)
    for (name, fragment) in [("lora-bias-opt-f32", "lora_bias"), ("lora-embed-mts-llama-bf16", "carried"),
                             ("bone-llama-f32", "this is BONE"), ("lora-fanin-gpt2-f16", "fan_in_fan_out")] {
        let adapter = try AdapterLoader.load(fixtureCases + "/\(name)/adapter")
        let error = peftkitError { try MLXFormat.write(adapter, to: folder + "/" + name, options: AdapterWriteOptions()) }
        #expect(error?.kind == .unsupported, "\(name)")
        #expect(error?.message.contains(fragment) == true, "\(name): \(error?.message ?? "no error")")
        #expect(!FileManager.default.fileExists(atPath: folder + "/" + name))
    }
    // mlx-lm's full fine-tuning is no adapter peftkit reads.
    try FileManager.default.createDirectory(atPath: folder + "/full", withIntermediateDirectories: true)
    try Data(#"{"fine_tune_type": "full", "lora_parameters": {"rank": 2, "scale": 1}}"#.utf8)
        .write(to: URL(fileURLWithPath: folder + "/full/adapter_config.json"))
    try writeSafetensors(folder + "/full/adapters.safetensors", [("model.x.lora_a", .f32, [1, 2], float32Bytes([1, 2]))])
    #expect(peftkitError { _ = try AdapterLoader.load(folder + "/full") }?.message.contains("fine_tune_type 'full'") == true)
    // A DoRA magnitude on an embedding: mlx-lm's DoRAEmbedding is not PEFT's.
    try FileManager.default.createDirectory(atPath: folder + "/dora-embed", withIntermediateDirectories: true)
    try Data(#"{"fine_tune_type": "dora", "lora_parameters": {"rank": 1, "scale": 1}}"#.utf8)
        .write(to: URL(fileURLWithPath: folder + "/dora-embed/adapter_config.json"))
    try writeSafetensors(folder + "/dora-embed/adapters.safetensors", [
        ("model.embed_tokens.lora_a", .f32, [2, 1], float32Bytes([1, 2])),
        ("model.embed_tokens.lora_b", .f32, [1, 2], float32Bytes([1, 2])),
        ("model.embed_tokens.m", .f32, [2], float32Bytes([1, 2])),
    ])
    #expect(peftkitError { _ = try AdapterLoader.load(folder + "/dora-embed") }?.message.contains("DoRA embedding") == true)
}

/// DoRA: fine_tune_type "dora", PEFT's lora_magnitude_vector as mlx-lm's `<module>.m`; back to PEFT byte for byte.
@Test func mlxDoRARoundTripKeepsEveryTensorByte() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let original = fixtureCases + "/dora-llama-bf16/adapter"
    try MLXFormat.write(try AdapterLoader.load(original), to: folder + "/mlx", options: AdapterWriteOptions())
    let config = try AdapterLoader.readJSON(folder + "/mlx/adapter_config.json")
    #expect(config["fine_tune_type"] == .string("dora"))
    let file = try SafeTensorsFile(path: folder + "/mlx/adapters.safetensors")
    let magnitudes = file.tensors.filter { $0.name.hasSuffix(".m") }
    #expect(!magnitudes.isEmpty && magnitudes.count * 3 == file.tensors.count)
    let back = try AdapterLoader.load(folder + "/mlx")
    #expect((back.method as? LoRA)?.useDoRA == true)
    try PEFTFolderFormat.write(back, to: folder + "/peft", options: AdapterWriteOptions())
    try expectSameTensors(folder + "/peft/adapter_model.safetensors", original + "/adapter_model.safetensors")
}

/// Offline against the real client: fixtures/mlx/results.json records, per architecture, the adapter parameters
/// (names, shapes) mlx-lm 0.32.2 had after `load_adapters` of peftkit's folder for the plain LoRA of
/// fixtures/check_mlx_archs.py; fixtures/gguf/ARCH-plain/adapter is that LoraConfig (other random values). peftkit's
/// folder for it must hold exactly those tensors, and the embed / head checks must read the fixture bases right.
@Test func mlxFoldersHoldWhatMLXLMLoadedForEveryArchitecture() throws {
    let results = try AdapterLoader.readJSON(repositoryRoot + "/fixtures/mlx/results.json")
    let architectures = try #require(results["architectures"]?.objectValue)
    #expect(architectures.count == 7)
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    for (arch, record) in architectures {
        let expected = try #require(record["plain_mlx_lm_parameters"]?.objectValue, "\(arch)")
        let adapter = try AdapterLoader.load(repositoryRoot + "/fixtures/gguf/\(arch)-plain/adapter")
        try MLXFormat.write(adapter, to: folder + "/" + arch, options: AdapterWriteOptions())
        let file = try SafeTensorsFile(path: folder + "/\(arch)/adapters.safetensors")
        let written = Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0.shape) })
        let loaded = Dictionary(uniqueKeysWithValues: expected.map { ($0.key, $0.value.arrayValue?.compactMap(\.integerValue).map(Int.init) ?? []) })
        #expect(written == loaded, "\(arch)")
    }
}

@Test func mlxEmbeddingAndHeadLoRAsNeedABaseWithItsOwnHead() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // A tied base (qwen2 fixture: tie_word_embeddings true, no lm_head.weight) and an untied one (llama).
    let tied = repositoryRoot + "/fixtures/gguf/bases/qwen2", untied = repositoryRoot + "/fixtures/gguf/bases/llama"
    let embedHead = try AdapterLoader.load(repositoryRoot + "/fixtures/gguf/llama-embed-head/adapter")
    #expect(embedHead.modules.contains { $0.kind == .embedding })
    let noBase = peftkitError { try MLXFormat.checkHead(embedHead, base: nil) }
    #expect(noBase?.kind == .unsupported && noBase?.message.contains("give --base") == true)
    try MLXFormat.checkHead(embedHead, base: untied)
    let onTied = peftkitError { try MLXFormat.checkHead(embedHead, base: tied) }
    #expect(onTied?.kind == .unsupported && onTied?.message.contains("tied embeddings") == true)
    // A LoRA on Linear layers only needs no base.
    try MLXFormat.checkHead(try AdapterLoader.load(repositoryRoot + "/fixtures/gguf/llama-plain/adapter"), base: nil)
}

/// PEFT saves `base_layer` copies of a targeted embedding and head. mlx-lm needs none: with --base showing them to be
/// the base's own values they are left out; without a base, or when a copy differs (new tokens), it is refused.
@Test func mlxLeavesOutSavedLayerCopiesOnlyWhenTheyAreTheBases() throws {
    let base = repositoryRoot + "/fixtures/gguf/bases/llama"
    let checkpoint = try Checkpoint(path: base)
    let original = try AdapterLoader.load(repositoryRoot + "/fixtures/gguf/llama-embed-head/adapter")
    #expect(original.carried.isEmpty)
    func withCopies(changingOneValue: Bool) throws -> Adapter {
        let copies = try ["model.embed_tokens.weight", "lm_head.weight"].map { name -> CarriedTensor in
            let info = try #require(checkpoint.location(of: name)).info
            var bytes = Array(try checkpoint.location(of: name)!.file.view(info).bytes)
            if changingOneValue && name == "model.embed_tokens.weight" { bytes[bytes.count - 2] ^= 0x40 }
            let stem = name.replacingOccurrences(of: ".weight", with: "")
            return CarriedTensor(baseName: name, reason: .baseLayer,
                                 tensor: StoredTensor(name: "base_model.model.\(stem).base_layer.weight", dtype: info.dtype,
                                                      shape: info.shape, bytes: bytes))
        }
        return Adapter(source: original.source, format: original.format, config: original.config, modules: original.modules,
                       carried: copies, shared: original.shared, base: original.base)
    }
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try MLXFormat.write(try withCopies(changingOneValue: false), to: folder + "/same", options: AdapterWriteOptions(base: base))
    let written = try SafeTensorsFile(path: folder + "/same/adapters.safetensors")
    #expect(written.tensors.count == 2 * original.modules.count)
    #expect(!written.tensors.contains { $0.name.contains("base_layer") })
    let noBase = peftkitError { try MLXFormat.write(try withCopies(changingOneValue: false), to: folder + "/nobase",
                                                    options: AdapterWriteOptions()) }
    #expect(noBase?.kind == .unsupported && noBase?.message.contains("--base") == true, "\(String(describing: noBase))")
    let differs = peftkitError { try MLXFormat.write(try withCopies(changingOneValue: true), to: folder + "/differs",
                                                     options: AdapterWriteOptions(base: base)) }
    #expect(differs?.kind == .unsupported && differs?.message.contains("model.embed_tokens.weight") == true
            && differs?.message.contains("differs") == true, "\(String(describing: differs))")
    #expect(differs?.message.contains("lm_head.weight") == false)
    #expect(!FileManager.default.fileExists(atPath: folder + "/differs"))
}
