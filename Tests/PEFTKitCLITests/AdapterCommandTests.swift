import Foundation
import Testing
import SafeTensors
@testable import PEFTKitCLI

private let cases = repositoryRoot + "/fixtures/cases"

/// (in, out) features of every adaptable module of the fixtures' tiny models (fixtures/generate.py's configs:
/// Llama hidden 32, intermediate 88, 4 heads, 2 KV heads; GPT-2 n_embd 32; OPT hidden 32, ffn 64; vocab 128).
private func features(_ module: String) -> (in: Int, out: Int)? {
    let name = module.split(separator: ".").last.map(String.init) ?? module
    switch name {
    case "q_proj", "o_proj", "out_proj": return (32, 32)
    case "k_proj", "v_proj": return module.contains("self_attn") && !module.contains("decoder") ? (32, 16) : (32, 32)
    case "gate_proj", "up_proj": return (32, 88)
    case "down_proj": return (88, 32)
    case "c_attn": return (32, 96)
    case "c_proj": return module.contains("mlp") ? (128, 32) : (32, 32)
    case "c_fc": return (32, 128)
    case "fc1": return (32, 64)
    case "fc2": return (64, 32)
    case "embed_tokens": return (128, 32)
    default: return nil
    }
}

/// The adapter parameter count from the config (read with Foundation's JSON parser, not peftkit's) and the module
/// dimensions above, by each method's formula.
private func expectedParameters(_ caseName: String, modules: [String]) throws -> Int {
    let data = try Data(contentsOf: URL(fileURLWithPath: "\(cases)/\(caseName)/adapter/adapter_config.json"))
    let config = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    let r = try #require(config["r"] as? Int)
    let rankPattern = config["rank_pattern"] as? [String: Int] ?? [:]
    var total = 0
    for module in modules {
        let (inFeatures, outFeatures) = try #require(features(module), "unknown module \(module)")
        // rank_pattern keys as the fixtures use them: a suffix of the module path.
        let rank = rankPattern.first { module.hasSuffix("." + $0.key) }?.value ?? r
        switch config["peft_type"] as? String {
        case "LORA":
            total += rank * (inFeatures + outFeatures) + ((config["lora_bias"] as? Bool ?? false) ? outFeatures : 0)
        case "BONE", "MISS":
            switch config["init_weights"] as? String {
            case "mini": total += r * (config["mini_r"] as! Int)
            default: total += r * outFeatures  // default (r × out) and bat (out/r × r × r) alike
            }
        default: Issue.record("unexpected peft_type")
        }
    }
    return total
}

@Test(arguments: ["lora-llama-f32", "lora-rslora-patterns-llama-bf16", "lora-fanin-gpt2-f16", "lora-bias-opt-f32",
                  "lora-embed-mts-llama-bf16", "bone-llama-f32", "bone-ragged-llama-bf16", "bat-llama-f32",
                  "miss-llama-f16", "miss-bat-llama-bf16", "miss-mini-llama-f32"])
func inspectCountsAdapterParametersCorrectly(_ caseName: String) async throws {
    let result = await peftkit("inspect", "\(cases)/\(caseName)/adapter", "--json", "--base", "\(cases)/\(caseName)/base")
    #expect(result.status == 0, "\(result.standardError)")
    let json = try #require(try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any])
    let manifest = try #require(try JSONSerialization.jsonObject(
        with: Data(contentsOf: URL(fileURLWithPath: "\(cases)/\(caseName)/manifest.json"))) as? [String: Any])
    let modules = try #require(manifest["modules"] as? [String: Any]).keys.sorted()
    #expect(json["method"] as? String == manifest["method"] as? String)
    #expect(json["parameters"] as? Int == (try expectedParameters(caseName, modules: modules)))
    let adapter = try #require(json["adapter"] as? [String: Any])
    #expect(adapter["modules"] as? Int == modules.count)
    let base = try #require(adapter["base"] as? [String: Any])
    #expect(base["fits"] as? Bool == true)
    let baseParameters = try #require(base["parameters"] as? Int)
    let share = try #require(base["share_percent"] as? Double)
    #expect(abs(share - 100 * Double(json["parameters"] as! Int) / Double(baseParameters)) < 1e-9)
}

@Test func inspectListsEveryProblemOfAnInconsistentAdapterAndExitsOne() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try FileManager.default.copyItem(atPath: "\(cases)/lora-llama-f32/adapter", toPath: folder + "/adapter")
    // Claim a rank the tensors do not have.
    let configPath = folder + "/adapter/adapter_config.json"
    let config = try String(contentsOfFile: configPath, encoding: .utf8).replacingOccurrences(of: "\"r\": 8", with: "\"r\": 4")
    try config.write(toFile: configPath, atomically: true, encoding: .utf8)
    let result = await peftkit("inspect", folder + "/adapter")
    #expect(result.status == 1)
    #expect(summaryLine(result.standardOutput, "problems") == "28 between the adapter's config and its tensors:")
    #expect(result.standardOutput.contains("- module 'model.layers.0.mlp.down_proj': lora_A has 8 rows but the module's r is 4"))
    #expect(result.standardOutput.contains("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"))
    // Standard error says why the status is 1, in one line.
    #expect(result.standardError == "peftkit: \(folder)/adapter: unusable adapter, 28 problems (listed in the report)\n")
}

@Test func inspectAgainstTheWrongBaseExitsThreeSayingWhy() async throws {
    let adapter = "\(cases)/lora-fanin-gpt2-f16/adapter", base = "\(cases)/lora-llama-f32/base"
    let result = await peftkit("inspect", adapter, "--base", base)
    #expect(result.status == 3)
    #expect(result.standardOutput.contains("transformer.h.0.attn.c_attn"))
    #expect(result.standardError.hasPrefix("peftkit: \(adapter): does not fit the base \(base), "))
    #expect(result.standardError.hasSuffix(" (listed in the report)\n"))
}

/// The value of a summary row, whatever the label padding.
private func summaryLine(_ report: String, _ label: String) -> String? {
    report.split(separator: "\n").first { $0.hasPrefix(label + " ") }
        .map { String($0.dropFirst(label.count)).trimmingCharacters(in: .whitespaces) }
}

@Test func convertRoundTripsBitForBitAndFingerprintsTheBase() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let bat = "\(cases)/bat-llama-f32"
    let toPeftkit = await peftkit("convert", bat + "/adapter", "--to", "peftkit", "-o", folder + "/bat.safetensors",
                                  "--base", bat + "/base")
    #expect(toPeftkit.status == 0, "\(toPeftkit.standardError)")
    #expect(toPeftkit.standardOutput.contains("base fingerprint v1:"))
    let back = await peftkit("convert", folder + "/bat.safetensors", "--to", "peft", "-o", folder + "/bat")
    #expect(back.status == 0)
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        #expect(FileManager.default.contents(atPath: "\(folder)/bat/\(file)") == FileManager.default.contents(atPath: "\(bat)/adapter/\(file)"))
    }
    // The Bone fixture's base has exactly the same shapes but other weights: the fingerprint refuses it.
    let wrongBase = await peftkit("merge", "\(cases)/bone-llama-f32/base", folder + "/bat.safetensors", "-o", folder + "/m")
    #expect(wrongBase.status == 3)
    #expect(wrongBase.standardError.contains("probably not the base model the adapter was trained on"))
    #expect(!FileManager.default.fileExists(atPath: folder + "/m"))
    let rightBase = await peftkit("merge", bat + "/base", folder + "/bat.safetensors", "-o", folder + "/m", "--quiet")
    #expect(rightBase.status == 0)
    let again = await peftkit("convert", bat + "/adapter", "--to", "peftkit", "-o", folder + "/bat.safetensors")
    #expect(again.status == 5)
}

@Test func legacyBinAdapterInspectsAndConverts() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(cases)/lora-rslora-patterns-llama-bf16"
    let inspect = await peftkit("inspect", caseFolder + "/adapter_bin", "--json")
    #expect(inspect.status == 0, "\(inspect.standardError)")
    #expect(inspect.standardOutput.contains("\"format\": \"peft-bin\""))
    #expect(inspect.standardOutput.contains("\"format_version\": null"))
    #expect(inspect.standardOutput.contains("\"use_rslora\": true"))
    let convert = await peftkit("convert", caseFolder + "/adapter_bin", "--to", "peft", "-o", folder + "/out")
    #expect(convert.status == 0, "\(convert.standardError)")
    #expect(FileManager.default.contents(atPath: folder + "/out/adapter_model.safetensors")
        == FileManager.default.contents(atPath: caseFolder + "/adapter/adapter_model.safetensors"))
}
