import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// A one-module IA³ adapter on a base with one 3×2 Linear weight `m.weight` (and a bias), written by hand so that
/// every value can be checked by eye. `vector` is ia3_l: (1, 2) scales the inputs, (3, 1) the outputs.
private func tinyIA3(in folder: String, vector: [Float], shape: [Int], fanInFanOut: Bool = false) throws -> (base: String, adapter: String) {
    let base = folder + "/base.safetensors", adapter = folder + "/adapter"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    try writeSafetensors(base, [("m.weight", .f32, [3, 2], float32Bytes([1, 2, 3, 4, 5, 6])),
                                ("m.bias", .f32, [3], float32Bytes([1, -1, 2]))])
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    try Data("""
        {"peft_type": "IA3", "target_modules": ["m"], "feedforward_modules": \(shape[0] == 1 ? "[\"m\"]" : "[]"),
         "fan_in_fan_out": \(fanInFanOut)}
        """.utf8).write(to: URL(fileURLWithPath: adapter + "/adapter_config.json"))
    try writeSafetensors(adapter + "/adapter_model.safetensors", [("base_model.model.m.ia3_l", .f32, shape, float32Bytes(vector))])
    return (base, adapter)
}

private func mergedValues(_ path: String, _ name: String) throws -> [Float] {
    let checkpoint = try Checkpoint(path: path)
    return floats(try checkpoint.view(name))
}

@Test func ia3ScalesInputColumnsOrOutputRowsAndTheBias() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let feedforward = try tinyIA3(in: folder + "/ff", vector: [2, 0.5], shape: [1, 2])
    _ = try MergeEngine.run(MergeRequest(base: feedforward.base, adapters: [feedforward.adapter], output: folder + "/ff-out"))
    #expect(try mergedValues(folder + "/ff-out", "m.weight") == [2, 1, 6, 2, 10, 3])
    #expect(try mergedValues(folder + "/ff-out", "m.bias") == [1, -1, 2])  // inputs scaled: the bias stays

    let outputs = try tinyIA3(in: folder + "/out", vector: [2, 0.5, -1], shape: [3, 1])
    _ = try MergeEngine.run(MergeRequest(base: outputs.base, adapters: [outputs.adapter], output: folder + "/out-out"))
    #expect(try mergedValues(folder + "/out-out", "m.weight") == [2, 4, 1.5, 2, -5, -6])
    #expect(try mergedValues(folder + "/out-out", "m.bias") == [2, -0.5, -2])

    // Unmerging divides again: these values are exact in binary.
    _ = try MergeEngine.run(MergeRequest(base: folder + "/out-out", adapters: [outputs.adapter], output: folder + "/back",
                                         direction: .unmerge))
    #expect(try mergedValues(folder + "/back", "m.weight") == [1, 2, 3, 4, 5, 6])
    #expect(try mergedValues(folder + "/back", "m.bias") == [1, -1, 2])
}

@Test func ia3RefusesWhatItCannotDoExactly() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // A merge weight has nothing to scale in a product.
    let tiny = try tinyIA3(in: folder + "/w", vector: [2, 0.5], shape: [1, 2])
    let weighted = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], weights: [0.5], output: folder + "/o1"))
    }
    #expect(weighted?.kind == .unsupported)
    #expect(weighted?.message.contains("merge weight of 0.5") == true)
    #expect(!FileManager.default.fileExists(atPath: folder + "/o1"))

    // A zero erased the column: no unmerge can bring it back.
    let zero = try tinyIA3(in: folder + "/z", vector: [0, 0.5], shape: [1, 2])
    let unmerge = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: zero.base, adapters: [zero.adapter], output: folder + "/o2", direction: .unmerge))
    }
    #expect(unmerge?.kind == .numerics)
    #expect(unmerge?.message.contains("ia3_l[0] is 0") == true)
    #expect(unmerge?.file?.hasSuffix("adapter_model.safetensors") == true)
    #expect(!FileManager.default.fileExists(atPath: folder + "/o2"))

    // A vector that fits neither side of the weight, and a convolution's.
    let misfit = try tinyIA3(in: folder + "/m", vector: [1, 1, 1, 1], shape: [1, 4])
    let fit = peftkitError { _ = try MergeEngine.run(MergeRequest(base: misfit.base, adapters: [misfit.adapter], output: folder + "/o3")) }
    #expect(fit?.kind == .baseMismatch)
    #expect(fit?.details.first?.contains("ia3_l has 4 entries but the base weight has shape [3, 2]") == true)
    let conv = try tinyIA3(in: folder + "/c", vector: [1, 1], shape: [1, 2, 1, 1])
    let convError = peftkitError { _ = try AdapterLoader.load(conv.adapter) }
    #expect(convError?.kind == .unsupported)
    #expect(convError?.message.contains("not supported yet: IA³ on convolutions") == true)
}
