import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

private func adaLoRA(at folder: String, pattern: String?, fanInFanOut: Bool = false,
                     tensors: [(String, [Int], [Float])]) throws {
    let config = "{\"peft_type\": \"ADALORA\", \"init_r\": 2, \"target_r\": 1, \"r\": 8, \"lora_alpha\": 4, \"total_step\": 10"
        + (fanInFanOut ? ", \"fan_in_fan_out\": true" : "") + (pattern.map { ", \"rank_pattern\": \($0)" } ?? "") + "}"
    try writeAdapter(to: folder, config: config, tensors: tensors)
}

private func mergedWeight(base: [Float], shape: [Int], adapter: String, in folder: String) throws -> [Float] {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    try writeSafetensors(folder + "/base.safetensors", [("m.weight", .f32, shape, float32Bytes(base))])
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base.safetensors", adapters: [adapter], output: folder + "/out"))
    return floats(try Checkpoint(path: folder + "/out").view("m.weight"))
}

/// B · (A ⊙ E) · alpha / (ranknum + 1e-5) with ranknum = init_r = 2, pruned or not; the expected values are formed
/// here in Double from the hand-written factors.
@Test func adaLoRAScalesByAlphaOverTheInitialRankEvenWhenPruned() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let factor = 4 / (2 + 1e-5)
    let full: [Double] = [2, 4, 6, 2, 2.5, 3]  // [[1, 0], [0, 1]] · ([[1, 2, 3], [4, 5, 6]] ⊙ [2, 0.5])
    try adaLoRA(at: folder + "/full", pattern: nil, tensors: [
        ("m.lora_A", [2, 3], [1, 2, 3, 4, 5, 6]), ("m.lora_E", [2, 1], [2, 0.5]), ("m.lora_B", [2, 2], [1, 0, 0, 1])])
    let merged = try mergedWeight(base: [Float](repeating: 0, count: 6), shape: [2, 3], adapter: folder + "/full", in: folder + "/a")
    for (value, expected) in zip(merged, full) { #expect(abs(Double(value) - expected * factor) < 1e-5) }

    // rank_pattern kept the second triplet only: the saved tensors hold it alone, ranknum stays 2.
    let pattern = "{\"m.lora_E\": [false, true]}"
    try adaLoRA(at: folder + "/pruned", pattern: pattern, tensors: [
        ("m.lora_A", [1, 3], [4, 5, 6]), ("m.lora_E", [1, 1], [0.5]), ("m.lora_B", [2, 1], [0, 1])])
    let pruned = try mergedWeight(base: [Float](repeating: 0, count: 6), shape: [2, 3], adapter: folder + "/pruned", in: folder + "/b")
    for (value, expected) in zip(pruned, [0, 0, 0, 2, 2.5, 3] as [Double]) { #expect(abs(Double(value) - expected * factor) < 1e-5) }

    // fan_in_fan_out: W stored 3 × 2, the change transposed.
    try adaLoRA(at: folder + "/conv", pattern: nil, fanInFanOut: true, tensors: [
        ("m.lora_A", [2, 3], [1, 2, 3, 4, 5, 6]), ("m.lora_E", [2, 1], [2, 0.5]), ("m.lora_B", [2, 2], [1, 0, 0, 1])])
    let conv = try mergedWeight(base: [Float](repeating: 0, count: 6), shape: [3, 2], adapter: folder + "/conv", in: folder + "/c")
    for (value, expected) in zip(conv, [2, 2, 4, 2.5, 6, 3] as [Double]) { #expect(abs(Double(value) - expected * factor) < 1e-5) }
}

@Test func adaLoRATensorsThatDisagreeWithTheRankPatternAreRefused() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // The pattern keeps one triplet, the tensors hold two.
    try adaLoRA(at: folder + "/bad", pattern: "{\"m.lora_E\": [false, true]}", tensors: [
        ("m.lora_A", [2, 3], [1, 2, 3, 4, 5, 6]), ("m.lora_E", [2, 1], [2, 0.5]), ("m.lora_B", [2, 2], [1, 0, 0, 1])])
    let error = peftkitError { _ = try AdapterLoader.load(folder + "/bad") }
    #expect(error?.kind == .inconsistentAdapter)
    #expect(error?.details.contains { $0.contains("rank_pattern keeps 1 of its 2 triplets") } == true)
    // A mask of the wrong length.
    try adaLoRA(at: folder + "/short", pattern: "{\"m.lora_E\": [true]}", tensors: [
        ("m.lora_A", [1, 3], [1, 2, 3]), ("m.lora_E", [1, 1], [2]), ("m.lora_B", [2, 1], [1, 0])])
    #expect(peftkitError { _ = try AdapterLoader.load(folder + "/short") }?.kind == .invalidConfig)
}
