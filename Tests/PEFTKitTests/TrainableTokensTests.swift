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
