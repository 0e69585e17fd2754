import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// A one-module LoRA adapter on `m` with r = 1, alpha = 1 (s = 1), so s·B·A = B·A (out × in); DoRA when `magnitude` is
/// given. Written by hand so that W' can be worked out on paper.
private func tinyLoRA(_ path: String, a: [Float], b: [Float], magnitude: [Float]?, fanInFanOut: Bool = false) throws -> String {
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    try Data("""
        {"peft_type": "LORA", "r": 1, "lora_alpha": 1, "use_dora": \(magnitude != nil), "fan_in_fan_out": \(fanInFanOut),
         "target_modules": ["m"]}
        """.utf8).write(to: URL(fileURLWithPath: path + "/adapter_config.json"))
    try writeSafetensors(path + "/adapter_model.safetensors", [
        ("base_model.model.m.lora_A.weight", .f32, [1, 2], float32Bytes(a)),
        ("base_model.model.m.lora_B.weight", .f32, [2, 1], float32Bytes(b)),
    ] + (magnitude.map { [("base_model.model.m.lora_magnitude_vector", DType.f32, [2], float32Bytes($0))] } ?? []))
    return path
}

/// A = [1, 0], B = [0, 1]ᵀ, so s·B·A = [[0, 0], [1, 0]] (out × in); magnitudes [10, 1].
private func tinyDoRA(in folder: String, weight: [Float], fanInFanOut: Bool) throws -> (base: String, adapter: String) {
    let base = folder + "/base.safetensors"
    try writeSafetensors(base, [("m.weight", .f32, [2, 2], float32Bytes(weight))])
    return (base, try tinyLoRA(folder + "/adapter", a: [1, 0], b: [0, 1], magnitude: [10, 1], fanInFanOut: fanInFanOut))
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

/// PEFT's forward with two DoRA adapters active: W' = f₂ ⊙ (f₁ ⊙ (W + Δ₁) + Δ₂), each fᵢ = mᵢ / ‖W + Δᵢ‖ of the *base*
/// W. Norms of the running value instead (PEFT's merge before 0.21) would give row 0 a factor 2/√117, not 2/√34.
@Test func severalDoRAAdaptersComposeAsPEFTsForward() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let first = try tinyDoRA(in: folder, weight: [3, 4, 0, 5], fanInFanOut: false)
    // Δ₂ = [[0, 1], [0, 0]], m₂ = [2, 3]: W + Δ₂ = [[3, 5], [0, 5]], row norms √34 and 5.
    let second = try tinyLoRA(folder + "/second", a: [0, 1], b: [1, 0], magnitude: [2, 3])
    let f1: [Double] = [10 / 5, 1 / 26.0.squareRoot()], f2: [Double] = [2 / 34.0.squareRoot(), 3 / 5.0]
    let w1: [Double] = [f1[0] * 3, f1[0] * 4, f1[1] * 1, f1[1] * 5]
    let expected: [Double] = [f2[0] * w1[0], f2[0] * (w1[1] + 1), f2[1] * w1[2], f2[1] * w1[3]]
    for slice in [1, MergeRequest.defaultSliceElements] {
        let output = folder + "/both-\(slice)"
        _ = try MergeEngine.run(MergeRequest(base: first.base, adapters: [first.adapter, second], output: output,
                                             sliceElements: slice))
        let result = floats(try Checkpoint(path: output).view("m.weight"))
        for (got, want) in zip(result, expected) { #expect(abs(Double(got) - want) < 1e-6, "slice \(slice): \(result)") }
    }
    // A plain LoRA term before a DoRA one is added to the running value, not to the base the norms are of:
    // W' = f₂ ⊙ (W + Δ₁ + Δ₂) with f₂ from W + Δ₂.
    let plain = try tinyLoRA(folder + "/plain", a: [1, 0], b: [0, 1], magnitude: nil)
    _ = try MergeEngine.run(MergeRequest(base: first.base, adapters: [plain, second], output: folder + "/mixed"))
    let mixed = floats(try Checkpoint(path: folder + "/mixed").view("m.weight"))
    let want: [Double] = [f2[0] * 3, f2[0] * 5, f2[1] * 1, f2[1] * 5]
    for (got, w) in zip(mixed, want) { #expect(abs(Double(got) - w) < 1e-6, "\(mixed)") }
}

/// The merge records each DoRA term's norms beside the weights; unmerge undoes the terms from that record, last
/// first, and refuses what the record does not cover.
@Test func doraUnmergesFromTheRecordItsMergeWrote() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    for fanInFanOut in [false, true] {
        let run = folder + "/\(fanInFanOut)"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let first = try tinyDoRA(in: run, weight: [3, 4, 0, 5], fanInFanOut: fanInFanOut)
        let second = try tinyLoRA(run + "/second", a: [0, 1], b: [1, 0], magnitude: [2, 3], fanInFanOut: fanInFanOut)
        _ = try MergeEngine.run(MergeRequest(base: first.base, adapters: [first.adapter, second], output: run + "/merged"))
        #expect(FileManager.default.fileExists(atPath: run + "/merged/" + UnmergeRecord.fileName))

        // Last merged, first unmerged.
        let wrongOrder = peftkitError {
            _ = try MergeEngine.run(MergeRequest(base: run + "/merged", adapters: [first.adapter], output: run + "/wrong",
                                                 direction: .unmerge))
        }
        #expect(wrongOrder?.kind == .baseMismatch)
        #expect(wrongOrder?.message.contains("reverse order") == true)
        _ = try MergeEngine.run(MergeRequest(base: run + "/merged", adapters: [second], output: run + "/one", direction: .unmerge))
        _ = try MergeEngine.run(MergeRequest(base: run + "/one", adapters: [first.adapter], output: run + "/none",
                                             direction: .unmerge))
        let restored = floats(try Checkpoint(path: run + "/none").view("m.weight"))
        for (got, want) in zip(restored, [3, 4, 0, 5] as [Float]) { #expect(abs(got - want) < 1e-5, "\(restored)") }
        // Nothing left to record.
        #expect(!FileManager.default.fileExists(atPath: run + "/none/" + UnmergeRecord.fileName))
        #expect(!FileManager.default.fileExists(atPath: run + "/wrong"))
    }
}

@Test func doraUnmergeRefusesWithoutAFaithfulRecord() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tiny = try tinyDoRA(in: folder, weight: [3, 4, 0, 5], fanInFanOut: false)
    // A model merged elsewhere (here: not merged at all) has no record: the norms are lost.
    let unrecorded = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/u", direction: .unmerge))
    }
    #expect(unrecorded?.kind == .unsupported)
    #expect(unrecorded?.message.contains("no record") == true)

    // A plain LoRA merged on top pushes onto the record: the DoRA term is not on top until that one is undone.
    _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/dora"))
    let plain = try tinyLoRA(folder + "/plain", a: [1, 1], b: [1, 1], magnitude: nil)
    _ = try MergeEngine.run(MergeRequest(base: folder + "/dora", adapters: [plain], output: folder + "/both"))
    let covered = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/both", adapters: [tiny.adapter], output: folder + "/c",
                                             direction: .unmerge))
    }
    #expect(covered?.kind == .baseMismatch)
    _ = try MergeEngine.run(MergeRequest(base: folder + "/both", adapters: [plain], output: folder + "/undone", direction: .unmerge))
    _ = try MergeEngine.run(MergeRequest(base: folder + "/undone", adapters: [tiny.adapter], output: folder + "/base-again",
                                         direction: .unmerge))
    let restored = floats(try Checkpoint(path: folder + "/base-again").view("m.weight"))
    for (got, want) in zip(restored, [3, 4, 0, 5] as [Float]) { #expect(abs(got - want) < 1e-5, "\(restored)") }

    // The weight changed behind the record's back (rewritten by another tool): its hash no longer matches.
    let weights = folder + "/dora/base.safetensors"
    let merged = floats(try Checkpoint(path: weights).view("m.weight"))
    try writeSafetensors(weights, [("m.weight", .f32, [2, 2], float32Bytes(merged.map { $0 * 1.001 }))])
    let tampered = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/dora", adapters: [tiny.adapter], output: folder + "/t",
                                             direction: .unmerge))
    }
    #expect(tampered?.kind == .baseMismatch)
    #expect(tampered?.message.contains("has changed since peftkit last merged") == true)
    // A merge weight other than the one merged with.
    let reweighted = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/both", adapters: [plain], weights: [0.5], output: folder + "/w",
                                             direction: .unmerge))
    }
    #expect(reweighted?.kind == .baseMismatch)
    for name in ["u", "c", "t", "w"] { #expect(!FileManager.default.fileExists(atPath: folder + "/" + name)) }
}

/// DoRA composes with LoRA terms only: another method's change to the same weight is refused.
@Test func doraWithAnotherMethodOnOneWeightIsRefused() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tiny = try tinyDoRA(in: folder, weight: [3, 4, 0, 5], fanInFanOut: false)
    let ia3 = folder + "/ia3"
    try FileManager.default.createDirectory(atPath: ia3, withIntermediateDirectories: true)
    try Data(#"{"peft_type": "IA3", "target_modules": ["m"], "feedforward_modules": []}"#.utf8)
        .write(to: URL(fileURLWithPath: ia3 + "/adapter_config.json"))
    try writeSafetensors(ia3 + "/adapter_model.safetensors", [("base_model.model.m.ia3_l", .f32, [2, 1], float32Bytes([2, 3]))])
    let mixed = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [ia3, tiny.adapter], output: folder + "/t"))
    }
    #expect(mixed?.kind == .unsupported)
    #expect(mixed?.message.contains("not a LoRA product") == true)
    #expect(!FileManager.default.fileExists(atPath: folder + "/t"))
}
