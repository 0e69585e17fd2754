import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

private func manifestAdapters(_ name: String) throws -> [String] {
    let manifest = try AdapterLoader.readJSON("\(fixtureCases)/\(name)/manifest.json")
    return manifest["adapters"]?.arrayValue?.compactMap(\.stringValue) ?? []
}

/// Rewrites the single-file checkpoint `source` to `output` with its tensors edited (to make corrupted merges).
private func rewrite(_ source: String, to output: String,
                     _ edit: (inout [(name: String, dtype: DType, shape: [Int], bytes: [UInt8])]) -> Void) throws {
    let file = try SafeTensorsFile(path: source)
    var tensors = try file.tensors.map { info in (name: info.name, dtype: info.dtype, shape: info.shape, bytes: [UInt8](try file.view(info).bytes)) }
    edit(&tensors)
    try writeSafetensors(output, tensors)
}

private let loraCase = "\(fixtureCases)/lora-llama-f32"
private let qProj = "model.layers.1.self_attn.q_proj.weight"

/// PEFT's own merge_and_unload output passes for every case and every adapter format, also when streamed in slices
/// of a few rows (the F32 floor must then come from the whole tensor, not the slice).
@Test(arguments: fixtureCaseNames())
func peftMergedFixturePassesVerifyMerged(_ name: String) throws {
    for adapter in try manifestAdapters(name) {
        for slice in [MergeRequest.defaultSliceElements, 64] {
            let audit = try CheckpointAuditor.verifyMerged("\(fixtureCases)/\(name)/expected_merged.safetensors",
                                                           base: "\(fixtureCases)/\(name)/base",
                                                           adapters: ["\(fixtureCases)/\(name)/\(adapter)"], sliceElements: slice)
            #expect(audit.failedCount == 0, "\(name)/\(adapter) slice \(slice): worst \(audit.worst?.name ?? "-") \(audit.worst?.measure ?? 0)")
            #expect(audit.tensors.contains { $0.adapted })
            #expect(audit.tensors.allSatisfy { $0.status == .passed })
        }
    }
}

/// peftkit's own merge is what verify recomputes: bit-identical, measure 0.
@Test func peftkitMergePassesBitIdentical() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    for name in ["bat-llama-f32", "ia3-fanin-gpt2-f16", "lora-embed-mts-llama-bf16"] {
        let out = "\(folder)/\(name)"
        _ = try MergeEngine.run(MergeRequest(base: "\(fixtureCases)/\(name)/base", adapters: ["\(fixtureCases)/\(name)/adapter"], output: out))
        let audit = try CheckpointAuditor.verifyMerged(out, base: "\(fixtureCases)/\(name)/base", adapters: ["\(fixtureCases)/\(name)/adapter"])
        #expect(audit.passed)
        #expect(audit.tensors.allSatisfy { $0.measure == 0 && $0.identicalFraction == 1 }, "\(name)")
    }
}

@Test func oneChangedElementFailsNamingItsTensor() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try rewrite("\(loraCase)/expected_merged.safetensors", to: "\(folder)/m.safetensors") { tensors in
        let i = tensors.firstIndex { $0.name == qProj }!
        tensors[i].bytes[4 * 7 + 2] ^= 0x40  // a mantissa bit of element 7
    }
    let audit = try CheckpointAuditor.verifyMerged("\(folder)/m.safetensors", base: "\(loraCase)/base", adapters: ["\(loraCase)/adapter"])
    #expect(!audit.passed)
    #expect(audit.worst?.name == qProj)
    #expect(audit.tensors.filter { !$0.passed }.map(\.name) == [qProj])
    // PEFT's F32 sums differ from OpenBLAS's in last bits: one element more differs at most.
    let original = try CheckpointAuditor.verifyMerged("\(loraCase)/expected_merged.safetensors", base: "\(loraCase)/base",
                                                      adapters: ["\(loraCase)/adapter"]).tensors.first { $0.name == qProj }
    let failed = try #require(audit.tensors.first { $0.name == qProj })
    #expect([0, 1.0 / 1024].contains((original?.identicalFraction ?? 0) - failed.identicalFraction))
    #expect(failed.measure > 1e5)
}

@Test func aTransposedTensorFails() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try rewrite("\(loraCase)/expected_merged.safetensors", to: "\(folder)/m.safetensors") { tensors in
        let i = tensors.firstIndex { $0.name == qProj }!
        let n = tensors[i].shape[0]
        let old = tensors[i].bytes
        for r in 0..<n { for c in 0..<n { for b in 0..<4 { tensors[i].bytes[(c * n + r) * 4 + b] = old[(r * n + c) * 4 + b] } } }
    }
    let audit = try CheckpointAuditor.verifyMerged("\(folder)/m.safetensors", base: "\(loraCase)/base", adapters: ["\(loraCase)/adapter"])
    #expect(audit.tensors.filter { !$0.passed }.map(\.name) == [qProj])
    #expect((audit.worst?.measure ?? 0) > 1000)
}

/// A merge made with the wrong weight fails on every adapted tensor; told the weight, verify passes it.
@Test func aWrongScaleFailsAndTheRightWeightPasses() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = try MergeEngine.run(MergeRequest(base: "\(loraCase)/base", adapters: ["\(loraCase)/adapter"], weights: [1.1], output: "\(folder)/m"))
    let wrong = try CheckpointAuditor.verifyMerged("\(folder)/m", base: "\(loraCase)/base", adapters: ["\(loraCase)/adapter"])
    let adapted = wrong.tensors.filter(\.adapted)
    #expect(!adapted.isEmpty && adapted.allSatisfy { !$0.passed })
    #expect(wrong.tensors.filter { !$0.adapted }.allSatisfy { $0.passed })
    let right = try CheckpointAuditor.verifyMerged("\(folder)/m", base: "\(loraCase)/base", adapters: ["\(loraCase)/adapter"], weights: [1.1])
    #expect(right.passed)
}

@Test func missingExtraAndRetypedTensorsAreReported() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try rewrite("\(loraCase)/expected_merged.safetensors", to: "\(folder)/m.safetensors") { tensors in
        tensors.removeAll { $0.name == qProj }
        tensors.append((name: "extra.weight", dtype: .f32, shape: [1], bytes: float32Bytes([1])))
        let i = tensors.firstIndex { $0.name == "model.norm.weight" }!
        let values = decodeValues(tensors[i].bytes, as: .f32)
        tensors[i] = (name: tensors[i].name, dtype: .bf16, shape: tensors[i].shape, bytes: referenceBytes(values.map(Double.init), as: .bf16))
    }
    let audit = try CheckpointAuditor.verifyMerged("\(folder)/m.safetensors", base: "\(loraCase)/base", adapters: ["\(loraCase)/adapter"])
    let failed = Dictionary(uniqueKeysWithValues: audit.tensors.filter { !$0.passed }.map { ($0.name, $0.status) })
    #expect(failed == [qProj: .missing, "extra.weight": .extra, "model.norm.weight": .dtypeMismatch])
    #expect(audit.failedCount == 3)
}

/// A Qwen2-like tied model whose LoRA targets lm_head: the correct merge unties it; a merge that folds the head's
/// change into the shared embedding and keeps them tied (PEFT's tied-embedding bug) is flagged.
@Test func aTiedHeadMergedIntoTheEmbeddingIsFlagged() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try FileManager.default.createDirectory(atPath: folder + "/base", withIntermediateDirectories: true)
    let embedding = (0..<12).map { Float($0) / 8 }
    try writeSafetensors(folder + "/base/model.safetensors", [("model.embed_tokens.weight", .f32, [4, 3], float32Bytes(embedding))])
    try Data("{\"tie_word_embeddings\": true}".utf8).write(to: URL(fileURLWithPath: folder + "/base/config.json"))
    let a: [Float] = [0.5, -1, 0.25, 1, 0.5, -0.5], b: [Float] = [1, 0, 0, 1, 1, 1, -1, 2]
    try writeAdapter(to: folder + "/adapter", config: "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2, \"target_modules\": [\"lm_head\"]}",
                     tensors: [("lm_head.lora_A.weight", [2, 3], a), ("lm_head.lora_B.weight", [4, 2], b)])
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/good"))
    let good = try CheckpointAuditor.verifyMerged(folder + "/good", base: folder + "/base", adapters: [folder + "/adapter"])
    #expect(good.passed)
    #expect(good.findings.isEmpty)

    // The bug's output: E + ΔW saved as the embedding, the head left tied to it.
    let merged = try readTensor(folder + "/good", "lm_head.weight").values
    try FileManager.default.createDirectory(atPath: folder + "/bad", withIntermediateDirectories: true)
    try writeSafetensors(folder + "/bad/model.safetensors", [("model.embed_tokens.weight", .f32, [4, 3], float32Bytes(merged))])
    try Data("{\"tie_word_embeddings\": true}".utf8).write(to: URL(fileURLWithPath: folder + "/bad/config.json"))
    let bad = try CheckpointAuditor.verifyMerged(folder + "/bad", base: folder + "/base", adapters: [folder + "/adapter"])
    #expect(!bad.passed)
    #expect(bad.findings.count == 1)
    #expect(bad.findings.first?.contains("tied-embedding merge bug") == true)
    #expect(bad.tensors.first { $0.name == "lm_head.weight" }?.status == .missing)
    #expect(bad.tensors.first { $0.name == "model.embed_tokens.weight" }?.status == .failed)
}

/// peftkit's unmerge of PEFT's merged weights is within the drift bound; the merged model itself is not the base.
@Test(arguments: ["bat-llama-f32", "lora-llama-f32", "ia3-fanin-gpt2-f16", "miss-bat-llama-bf16", "lora-embed-mts-llama-bf16"])
func unmergedModelIsWithinTheDriftBound(_ name: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let base = "\(fixtureCases)/\(name)/base", adapter = "\(fixtureCases)/\(name)/adapter"
    _ = try MergeEngine.run(MergeRequest(base: "\(fixtureCases)/\(name)/expected_merged.safetensors", adapters: [adapter],
                                         output: folder + "/u", direction: .unmerge))
    let audit = try CheckpointAuditor.verifyUnmerged(folder + "/u", base: base, adapters: [adapter])
    #expect(audit.passed, "worst \(audit.worst?.name ?? "-") \(audit.worst?.measure ?? 0)")
    #expect(audit.tensors.contains { $0.bound != nil })
    let notUnmerged = try CheckpointAuditor.verifyUnmerged("\(fixtureCases)/\(name)/expected_merged.safetensors", base: base, adapters: [adapter])
    #expect(!notUnmerged.passed)
}

@Test func diffFindsExactlyTheAdaptedTensors() throws {
    let diff = try CheckpointDiffer.diff("\(loraCase)/base", "\(loraCase)/expected_merged.safetensors")
    let adapted = try CheckpointAuditor.verifyMerged("\(loraCase)/expected_merged.safetensors", base: "\(loraCase)/base",
                                                     adapters: ["\(loraCase)/adapter"]).tensors.filter(\.adapted).map(\.name)
    #expect(Set(diff.tensors.filter(\.changed).map(\.name)) == Set(adapted))
    #expect(diff.headerDifferences.isEmpty)
    let q = try #require(diff.groups.first { $0.layer == 1 && $0.kind == "q_proj" })
    #expect(q.tensors == [qProj] && q.changed == 1 && q.relativeChange > 0)
    #expect(diff.groups.first { $0.layer == nil && $0.kind == "norm" }?.changed == 0)
}

@Test func diffNumbersByHand() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try writeSafetensors(folder + "/a.safetensors", [
        ("model.layers.2.mlp.up_proj.weight", .f32, [2], float32Bytes([3, 4])),
        ("gone.weight", .f32, [1], float32Bytes([1])),
        ("retyped.weight", .f32, [1], float32Bytes([1])),
    ])
    try writeSafetensors(folder + "/b.safetensors", [
        ("model.layers.2.mlp.up_proj.weight", .f32, [2], float32Bytes([3, 5])),
        ("retyped.weight", .bf16, [1], referenceBytes([1], as: .bf16)),
        ("new.weight", .f32, [1], float32Bytes([1])),
    ])
    let diff = try CheckpointDiffer.diff(folder + "/a.safetensors", folder + "/b.safetensors")
    let up = try #require(diff.tensors.first { $0.layer == 2 })
    #expect(up.kind == "up_proj" && up.status == .changed)
    #expect(up.maxAbsoluteDelta == 1)
    #expect(up.relativeChange == 0.2)  // ‖(0, 1)‖ / ‖(3, 4)‖
    #expect(up.maxULP == 1 << 21)  // 4 → 5 in F32: 2²³ values per octave, a quarter of the octave [4, 8)
    #expect(up.differingElements == 1)
    let statuses = Dictionary(uniqueKeysWithValues: diff.headerDifferences.map { ($0.name, $0.status) })
    #expect(statuses == ["gone.weight": .onlyInA, "retyped.weight": .dtypeDiffers, "new.weight": .onlyInB])
}

@Test(arguments: [
    ("model.layers.12.self_attn.q_proj.weight", 12, "q_proj"),
    ("transformer.h.3.mlp.c_fc.bias", 3, "c_fc"),
    ("model.embed_tokens.weight", nil, "embed_tokens"),
    ("lm_head.weight", nil, "lm_head"),
] as [(String, Int?, String)])
func layerAndKindAreParsed(name: String, layer: Int?, kind: String) {
    let parsed = CheckpointDiffer.parse(name)
    #expect(parsed.layer == layer)
    #expect(parsed.kind == kind)
}

/// The same bug as PEFT 0.18.1 really writes it (fixtures/audit, made by fixtures/generate.py): verify --merged flags
/// PEFT's merge and passes peftkit's, which unties the head.
@Test func peftsRealTiedHeadMergeIsFlagged() throws {
    let folder = repositoryRoot + "/fixtures/audit/tied-head-qwen2-f32"
    let record = try AdapterLoader.readJSON(folder + "/audit.json")
    #expect(record["peft_merge"]?["head_tied_after_merge"] == .bool(true))
    let peft = try CheckpointAuditor.verifyMerged(folder + "/peft_merged", base: folder + "/base", adapters: [folder + "/adapter"])
    #expect(peft.findings.count == 1)
    #expect(peft.findings.first?.contains("tied-embedding merge bug") == true)
    #expect(Set(peft.tensors.filter { !$0.passed }.map(\.name)) == ["lm_head.weight", "model.embed_tokens.weight"])

    let scratch = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: scratch + "/m"))
    let ours = try CheckpointAuditor.verifyMerged(scratch + "/m", base: folder + "/base", adapters: [folder + "/adapter"])
    #expect(ours.passed)
}

/// The newest PEFT (0.21.2 with transformers 5.24, fixtures/generate_peft021.py): its ordinary LoRA merge passes;
/// its merge of a LoRA on a tied head still keeps the head tied and changes the embedding, and is flagged.
@Test func newestPEFTsMergesAreJudgedRight() throws {
    let root = repositoryRoot + "/fixtures/audit-peft021"
    for name in ["lora-llama-f32", "tied-head-qwen2-f32"] {
        let record = try AdapterLoader.readJSON("\(root)/\(name)/audit.json")
        #expect(record["versions"]?["peft"] == .string("0.21.2"))
    }
    let plain = "\(root)/lora-llama-f32"
    let ordinary = try CheckpointAuditor.verifyMerged(plain + "/peft_merged", base: plain + "/base", adapters: [plain + "/adapter"])
    #expect(ordinary.passed)
    #expect(ordinary.tensors.filter(\.adapted).count == 14)

    let tied = "\(root)/tied-head-qwen2-f32"
    let bug = try CheckpointAuditor.verifyMerged(tied + "/peft_merged", base: tied + "/base", adapters: [tied + "/adapter"])
    #expect(!bug.passed)
    #expect(bug.findings.contains { $0.contains("tied-embedding merge bug") })
    #expect(Set(bug.tensors.filter { !$0.passed }.map(\.name)) == ["lm_head.weight", "model.embed_tokens.weight"])
}
