import Foundation
import Testing
@testable import PEFTKitCLI
import PEFTKit

private let surgery = repositoryRoot + "/fixtures/surgery"

@Test func extractResizeCombineRunAndReport() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let extract = await peftkit("extract", surgery + "/llama/base", surgery + "/llama/tuned", "--rank", "8",
                                "-o", folder + "/extracted", "--json")
    #expect(extract.status == 0, "\(extract.standardError)")
    let json = try JSONSerialization.jsonObject(with: Data(extract.standardOutput.utf8)) as? [String: Any]
    let modules = json?["modules"] as? [[String: Any]] ?? []
    #expect(modules.count == 15)  // seven projections × 2 layers + the embedding
    #expect((json?["carried"] as? [String]) == ["model.norm.weight"])
    #expect(modules.allSatisfy { ($0["relative_error"] as? Double ?? 1) < 1e-5 })

    let resize = await peftkit("resize", folder + "/extracted", "--rank", "4", "-o", folder + "/resized")
    #expect(resize.status == 0, "\(resize.standardError)")
    #expect(resize.standardOutput.contains("energy kept"))
    let inspected = try AdapterLoader.load(folder + "/resized")
    #expect(inspected.modules.allSatisfy { $0.rank == 4 && $0.scaling == 1 })

    let combine = await peftkit("combine", surgery + "/adapters/x", surgery + "/adapters/y", "--weight", "1",
                                "--weight", "-0.5", "--method", "ties", "--density", "0.5", "-o", folder + "/ties")
    #expect(combine.status == 0, "\(combine.standardError)")
    #expect(combine.standardOutput.contains("with ties: 15 modules at rank 8"))
    #expect(combine.standardOutput.contains("use_rslora is written false"))
}

@Test func surgeryRefusalsHaveTheirExitStatus() async {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let bone = repositoryRoot + "/fixtures/cases/bone-llama-f32/adapter"
    let resize = await peftkit("resize", bone, "--rank", "2", "-o", folder + "/r")
    #expect(resize.status == ExitStatus.unsupported.rawValue)
    #expect(resize.standardError.contains("LoRA"))
    let ranks = await peftkit("combine", surgery + "/adapters/x", surgery + "/adapters/z", "--method", "linear", "-o", folder + "/c")
    #expect(ranks.status == ExitStatus.unsupported.rawValue)
    let mismatch = await peftkit("extract", surgery + "/llama/base", surgery + "/gpt2/tuned", "--rank", "4", "-o", folder + "/e")
    #expect(mismatch.status == ExitStatus.baseMismatch.rawValue)
    let same = await peftkit("extract", surgery + "/llama/base", surgery + "/llama/base", "--rank", "4", "-o", folder + "/s")
    #expect(same.status == ExitStatus.baseMismatch.rawValue)
    let noRank = await peftkit("extract", surgery + "/llama/base", surgery + "/llama/tuned", "-o", folder + "/n")
    #expect(noRank.status == ExitStatus.usage.rawValue)
    let noDensity = await peftkit("combine", surgery + "/adapters/x", surgery + "/adapters/y", "--method", "ties", "-o", folder + "/d")
    #expect(noDensity.status == ExitStatus.usage.rawValue)
    #expect(!FileManager.default.fileExists(atPath: folder + "/r") && !FileManager.default.fileExists(atPath: folder + "/e"))
}

/// PiSSA/OLoRA adapters are deltas against a residual PEFT rebuilds from the adapter's own rank, and token adapters
/// replace rows: resize and combine cannot rewrite either exactly, so both are refused (exit 4), never rewritten.
@Test(arguments: ["pissa-llama-bf16", "olora-llama-f32", "lora-tokens-llama-bf16"])
func resizeAndCombineRefuseAdaptersTheyCannotRewrite(_ name: String) async {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let adapter = repositoryRoot + "/fixtures/cases-peft021/\(name)/adapter"
    let resize = await peftkit("resize", adapter, "--rank", "2", "-o", folder + "/r")
    #expect(resize.status == 4, "\(resize.standardError)")
    let reason = name.hasPrefix("lora-tokens") ? "trainable_token_indices" : "init_lora_weights"
    #expect(resize.standardError.contains(reason), "\(resize.standardError)")
    let combine = await peftkit("combine", adapter, adapter, "--weight", "1", "--weight", "1", "--method", "cat",
                                "-o", folder + "/c")
    #expect(combine.status == 4, "\(combine.standardError)")
    #expect(combine.standardError.contains(reason))
    #expect(!FileManager.default.fileExists(atPath: folder + "/r") && !FileManager.default.fileExists(atPath: folder + "/c"))
}
