import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// A VeRA adapter written by hand: shared projections A (2 × 4) and B (3 × 2) larger than the module, which uses
/// their leading part, so a wrong slice, a swapped λ or a wrong orientation gives other numbers.
private func veraAdapter(at folder: String, config: String, withB: Bool = true) throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    try Data(config.utf8).write(to: URL(fileURLWithPath: folder + "/adapter_config.json"))
    var tensors: [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])] = [
        ("base_model.vera_A", .f32, [2, 4], float32Bytes([1, 2, 3, 4, 5, 6, 7, 8])),
        ("base_model.model.m.vera_lambda_b", .f32, [2], float32Bytes([1, 10])),
        ("base_model.model.m.vera_lambda_d", .f32, [2], float32Bytes([2, 3])),
    ]
    if withB { tensors.append(("base_model.vera_B", .f32, [3, 2], float32Bytes([1, 0, 0, 1, 9, 9]))) }
    try writeSafetensors(folder + "/adapter_model.safetensors", tensors)
}

private let veraConfig = "{\"peft_type\": \"VERA\", \"r\": 2, \"target_modules\": [\"m\"], \"save_projection\": true"

@Test func veraMergesTheScaledLeadingPartOfTheSharedProjections() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // (λ_b ⊙ B[:2, :]) · (λ_d ⊙ A[:, :3]) = [[1, 0], [0, 10]] · [[2, 4, 6], [15, 18, 21]].
    let delta: [Float] = [2, 4, 6, 150, 180, 210]
    try writeSafetensors(folder + "/base.safetensors", [("m.weight", .f32, [2, 3], float32Bytes([Float](repeating: 1, count: 6)))])
    try veraAdapter(at: folder + "/adapter", config: veraConfig + "}")
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base.safetensors", adapters: [folder + "/adapter"], output: folder + "/out"))
    #expect(floats(try Checkpoint(path: folder + "/out").view("m.weight")) == delta.map { 1 + $0 })

    // A merge weight scales the change; unmerging subtracts it again (exact here).
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base.safetensors", adapters: [folder + "/adapter"], weights: [0.5],
                                         output: folder + "/half"))
    #expect(floats(try Checkpoint(path: folder + "/half").view("m.weight")) == delta.map { 1 + $0 / 2 })
    _ = try MergeEngine.run(MergeRequest(base: folder + "/out", adapters: [folder + "/adapter"], output: folder + "/back",
                                         direction: .unmerge))
    #expect(floats(try Checkpoint(path: folder + "/back").view("m.weight")) == [Float](repeating: 1, count: 6))

    // fan_in_fan_out: W stored 3 × 2 (in × out), the change transposed.
    try writeSafetensors(folder + "/conv.safetensors", [("m.weight", .f32, [3, 2], float32Bytes([Float](repeating: 0, count: 6)))])
    try veraAdapter(at: folder + "/conv-adapter", config: veraConfig + ", \"fan_in_fan_out\": true}")
    _ = try MergeEngine.run(MergeRequest(base: folder + "/conv.safetensors", adapters: [folder + "/conv-adapter"],
                                         output: folder + "/conv-out"))
    #expect(floats(try Checkpoint(path: folder + "/conv-out").view("m.weight")) == [2, 150, 4, 180, 6, 210])
}

@Test func veraWithoutSavedProjectionsIsRefused() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try veraAdapter(at: folder + "/unsaved", config: "{\"peft_type\": \"VERA\", \"r\": 2, \"save_projection\": false}")
    let unsaved = peftkitError { _ = try AdapterLoader.load(folder + "/unsaved") }
    #expect(unsaved?.kind == .unsupported)
    #expect(unsaved?.message.contains("save_projection=True") == true)

    try veraAdapter(at: folder + "/noB", config: veraConfig + "}", withB: false)
    let missing = peftkitError { _ = try AdapterLoader.load(folder + "/noB") }
    #expect(missing?.kind == .inconsistentAdapter)
    #expect(missing?.details.contains { $0.contains("missing shared tensor 'base_model.vera_B'") } == true)
}
