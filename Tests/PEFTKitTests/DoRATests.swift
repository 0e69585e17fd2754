import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// A DoRA module `m` with r = 1, alpha = 1 (s = 1), A = [1, 0], B = [0, 1]ᵀ, so s·B·A = [[0, 0], [1, 0]] (out × in),
/// magnitudes [10, 1]; written by hand so that W' can be worked out on paper.
private func tinyDoRA(in folder: String, weight: [Float], fanInFanOut: Bool) throws -> (base: String, adapter: String) {
    let base = folder + "/base.safetensors", adapter = folder + "/adapter"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    try writeSafetensors(base, [("m.weight", .f32, [2, 2], float32Bytes(weight))])
    try Data("""
        {"peft_type": "LORA", "r": 1, "lora_alpha": 1, "use_dora": true, "fan_in_fan_out": \(fanInFanOut),
         "target_modules": ["m"]}
        """.utf8).write(to: URL(fileURLWithPath: adapter + "/adapter_config.json"))
    try writeSafetensors(adapter + "/adapter_model.safetensors", [
        ("base_model.model.m.lora_A.weight", .f32, [1, 2], float32Bytes([1, 0])),
        ("base_model.model.m.lora_B.weight", .f32, [2, 1], float32Bytes([0, 1])),
        ("base_model.model.m.lora_magnitude_vector", .f32, [2], float32Bytes([10, 1])),
    ])
    return (base, adapter)
}

private func merged(_ folder: String, _ tiny: (base: String, adapter: String), slice: Int) throws -> [Float] {
    let output = folder + "/out-\(slice)"
    _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: output, sliceElements: slice))
    return floats(try Checkpoint(path: output).view("m.weight"))
}

@Test func doraRenormalisesEachOutputRowOfALinearWeight() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // W = [[3, 4], [0, 5]] (out × in); W + s·B·A = [[3, 4], [1, 5]], row norms 5 and √26.
    let tiny = try tinyDoRA(in: folder, weight: [3, 4, 0, 5], fanInFanOut: false)
    let expected: [Double] = [10 * 3 / 5, 10 * 4 / 5, 1 / 26.0.squareRoot(), 5 / 26.0.squareRoot()]
    for slice in [1, MergeRequest.defaultSliceElements] {
        let result = try merged(folder, tiny, slice: slice)
        for (got, want) in zip(result, expected) { #expect(abs(Double(got) - want) < 1e-6, "slice \(slice): \(result)") }
    }
}

/// Conv1D stores W as in × out: each output is a column, whose norm needs every row — the engine's first pass, also
/// across one-row slices.
@Test func doraRenormalisesEachOutputColumnOfAConv1DWeight() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // W = [[3, 0], [4, 5]] (in × out); W + (s·B·A)ᵀ = [[3, 1], [4, 5]], column norms 5 and √26.
    let tiny = try tinyDoRA(in: folder, weight: [3, 0, 4, 5], fanInFanOut: true)
    let expected: [Double] = [10 * 3 / 5, 1 / 26.0.squareRoot(), 10 * 4 / 5, 5 / 26.0.squareRoot()]
    for slice in [1, MergeRequest.defaultSliceElements] {
        let result = try merged(folder, tiny, slice: slice)
        for (got, want) in zip(result, expected) { #expect(abs(Double(got) - want) < 1e-6, "slice \(slice): \(result)") }
    }
}

@Test func doraRefusesWhatItCannotDoExactly() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tiny = try tinyDoRA(in: folder, weight: [3, 4, 0, 5], fanInFanOut: false)
    // The merged weights do not keep ‖W + s·B·A‖: no unmerge.
    let unmerge = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/u", direction: .unmerge))
    }
    #expect(unmerge?.kind == .unsupported)
    #expect(unmerge?.message.contains("no longer tell") == true)
    // Its norms are of W + its own change: another adapter on the same weight would change them.
    let twice = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter, tiny.adapter], output: folder + "/t"))
    }
    #expect(twice?.kind == .unsupported)
    #expect(twice?.message.contains("DoRA combined with other adapter changes") == true)
    #expect(!FileManager.default.fileExists(atPath: folder + "/u") && !FileManager.default.fileExists(atPath: folder + "/t"))
}
