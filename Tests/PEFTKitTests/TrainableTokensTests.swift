import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// A 4-token embedding of width 2 whose rows 2 and 0 (in that order) are replaced by the adapter's two rows.
private func tinyTokens(in folder: String, indices: String) throws -> (base: String, adapter: String) {
    let base = folder + "/base.safetensors", adapter = folder + "/adapter"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    try writeSafetensors(base, [("model.embed_tokens.weight", .f32, [4, 2], float32Bytes([0, 1, 2, 3, 4, 5, 6, 7]))])
    try Data(#"{"peft_type": "TRAINABLE_TOKENS", "target_modules": ["embed_tokens"], "token_indices": \#(indices)}"#.utf8)
        .write(to: URL(fileURLWithPath: adapter + "/adapter_config.json"))
    try writeSafetensors(adapter + "/adapter_model.safetensors", [
        ("base_model.model.model.embed_tokens.trainable_tokens_delta", .f32, [2, 2], float32Bytes([-1, -2, -3, -4])),
    ])
    return (base, adapter)
}

@Test func trainableTokensReplaceTheirRowsInOrder() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tiny = try tinyTokens(in: folder, indices: "[2, 0]")
    for slice in [1, MergeRequest.defaultSliceElements] {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/m\(slice)",
                                             sliceElements: slice))
        let merged = floats(try Checkpoint(path: folder + "/m\(slice)").view("model.embed_tokens.weight"))
        #expect(merged == [-3, -4, 2, 3, -1, -2, 6, 7], "slice \(slice)")
    }
}

@Test func trainableTokensRefuseWhatTheyCannotDo() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tiny = try tinyTokens(in: folder + "/ok", indices: "[2, 0]")
    let unmerge = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/u", direction: .unmerge))
    }
    #expect(unmerge?.kind == .unsupported)
    #expect(unmerge?.message.contains("does not keep") == true)
    let weighted = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], weights: [0.5], output: folder + "/w"))
    }
    #expect(weighted?.kind == .unsupported)
    let outside = try tinyTokens(in: folder + "/far", indices: "[2, 4]")
    let far = peftkitError { _ = try MergeEngine.run(MergeRequest(base: outside.base, adapters: [outside.adapter], output: folder + "/f")) }
    #expect(far?.kind == .baseMismatch)
    #expect(far?.details.first?.contains("token index 4 is past the embedding's 4 rows") == true)
    let twice = try tinyTokens(in: folder + "/twice", indices: "[2, 2]")
    let duplicate = peftkitError { _ = try AdapterLoader.load(twice.adapter) }
    #expect(duplicate?.details.first?.contains("names a token twice") == true)
}

/// LoRA's `trainable_token_indices`: the embedding's token adapter rows replace rows 2 and 0 (in that order), next
/// to an ordinary LoRA module; a tied base whose head the adapter also changes is refused.
@Test func loraTrainableTokensReplaceTheNamedRows() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try FileManager.default.createDirectory(atPath: folder + "/base", withIntermediateDirectories: true)
    let embedding = (0..<12).map { Float($0) }
    try writeSafetensors(folder + "/base/model.safetensors", [
        ("model.embed_tokens.weight", .f32, [4, 3], float32Bytes(embedding)),
        ("lm_head.weight", .f32, [4, 3], float32Bytes([Float](repeating: 0, count: 12)))])
    for (name, indices) in [("list", "[2, 0]"), ("dict", "{\"embed_tokens\": [2, 0]}")] {
        try writeAdapter(to: folder + "/\(name)", config: "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 1, "
                         + "\"trainable_token_indices\": \(indices)}", tensors: [
            ("model.embed_tokens.token_adapter.trainable_tokens_delta", [2, 3], [-1, -2, -3, -4, -5, -6]),
            ("lm_head.lora_A.weight", [1, 3], [1, 0, 0]), ("lm_head.lora_B.weight", [4, 1], [0, 0, 0, 2])])
        _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/\(name)"], output: folder + "/out-\(name)"))
        #expect(try readTensor(folder + "/out-\(name)", "model.embed_tokens.weight").values
                == [-4, -5, -6, 3, 4, 5, -1, -2, -3, 9, 10, 11], "\(name)")
        #expect(try readTensor(folder + "/out-\(name)", "lm_head.weight").values == [0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0])
    }
    // A merge weight has nothing to scale in replaced rows; unmerge cannot restore them.
    let weighted = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/list"], weights: [0.5], output: folder + "/w"))
    }
    #expect(weighted?.kind == .unsupported)
    let unmerge = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/out-list", adapters: [folder + "/list"], output: folder + "/u",
                                             direction: .unmerge))
    }
    #expect(unmerge?.kind == .unsupported)
    // A dict naming another module leaves the delta unexplained.
    try writeAdapter(to: folder + "/other", config: "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 1, "
                     + "\"trainable_token_indices\": {\"wte\": [2, 0]}}", tensors: [
        ("model.embed_tokens.token_adapter.trainable_tokens_delta", [2, 3], [-1, -2, -3, -4, -5, -6])])
    #expect(peftkitError { _ = try AdapterLoader.load(folder + "/other") }?.kind == .inconsistentAdapter)

    // Tied: the head is not stored; changing it would untie it from an embedding whose rows PEFT replaces in both.
    try FileManager.default.createDirectory(atPath: folder + "/tied", withIntermediateDirectories: true)
    try writeSafetensors(folder + "/tied/model.safetensors", [("model.embed_tokens.weight", .f32, [4, 3], float32Bytes(embedding))])
    try Data("{\"tie_word_embeddings\": true}".utf8).write(to: URL(fileURLWithPath: folder + "/tied/config.json"))
    let tied = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/tied", adapters: [folder + "/list"], output: folder + "/t"))
    }
    #expect(tied?.kind == .unsupported)
    #expect(tied?.message.contains("the untied head would miss those rows") == true)
}
