import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// PEFT removed Bone in 0.19; MiSS's default and Bat variants compute what Bone's did. The rewritten adapter must be
/// MiSS by name and merge to exactly the bytes the Bone adapter merges to.
@Test(arguments: ["bone-llama-f32", "bat-llama-f32", "bone-ragged-llama-bf16"])
func boneRewrittenAsMiSSMergesToTheSameBytes(_ name: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(fixtureCases)/\(name)"
    let bone = try AdapterLoader.load(caseFolder + "/adapter")
    try PEFTFolderFormat.write(try MiSS.fromBone(bone), to: folder + "/miss", options: AdapterWriteOptions())

    let miss = try AdapterLoader.load(folder + "/miss")
    #expect(miss.method is MiSS)
    #expect(miss.variant == bone.variant)
    #expect(miss.config.json["peft_type"] == .string("MISS"))
    #expect(miss.config.json["mini_r"] == .integer(1))
    let keys = try SafeTensorsFile(path: folder + "/miss/adapter_model.safetensors").tensors.map(\.name)
    #expect(keys.count == bone.modules.count && keys.allSatisfy { $0.hasSuffix(".miss_block") })

    for (output, adapter) in [("from-bone", caseFolder + "/adapter"), ("from-miss", folder + "/miss")] {
        _ = try MergeEngine.run(MergeRequest(base: caseFolder + "/base", adapters: [adapter], output: folder + "/" + output))
    }
    for comparison in try compareCheckpoints(actual: folder + "/from-miss", expected: folder + "/from-bone") {
        #expect(comparison.differing == 0, "\(name): \(comparison.name)")
    }
}

@Test func onlyBoneIsRewrittenAsMiSS() throws {
    let lora = try AdapterLoader.load(fixtureCases + "/lora-llama-f32/adapter")
    let error = peftkitError { _ = try MiSS.fromBone(lora) }
    #expect(error?.kind == .unsupported)
    #expect(error?.message.contains("this one is LORA") == true)
}
