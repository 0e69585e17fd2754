import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// Every refusal happens before anything is written: no output folder, no temporary folder left behind.
private func expectRefusal(_ kind: PEFTKitError.Kind, _ fragment: String, in folder: String,
                           _ request: MergeRequest) {
    do {
        _ = try MergeEngine.run(request)
        Issue.record("merge was not refused (expected \(fragment))")
    } catch let error as PEFTKitError {
        #expect(error.kind == kind, "\(error.localizedDescription)")
        #expect(error.localizedDescription.contains(fragment), "\(error.localizedDescription)")
    } catch {
        Issue.record("unexpected error \(error)")
    }
    let left = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
    #expect(!left.contains { $0 == "out" || $0.hasPrefix(".peftkit-tmp-") }, "left behind: \(left)")
}

private func scratchWithBase(rows: Int = 6, columns: Int = 4) throws -> String {
    let folder = makeScratchFolder()
    try SyntheticModel(rows: rows, columns: columns, dtype: .bf16).write(to: folder + "/base")
    return folder
}

private let lora = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4}"

@Test func missingTargetModuleIsRefused() throws {
    let folder = try scratchWithBase()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try writeAdapter(to: folder + "/adapter", config: lora, tensors: [
        ("missing.lora_A.weight", [2, 4], [Float](repeating: 0.1, count: 8)),
        ("missing.lora_B.weight", [6, 2], [Float](repeating: 0.1, count: 12))])
    expectRefusal(.baseMismatch, "base has no tensor 'missing.weight'", in: folder,
                  MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/out"))
}

@Test func shapeMismatchIsRefusedNamingTheModule() throws {
    let folder = try scratchWithBase()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try writeAdapter(to: folder + "/adapter", config: lora, tensors: [
        ("layer.lora_A.weight", [2, 5], [Float](repeating: 0.1, count: 10)),
        ("layer.lora_B.weight", [6, 2], [Float](repeating: 0.1, count: 12))])
    expectRefusal(.baseMismatch, "module 'layer': LoRA maps 5 → 6 features but the base weight has shape [6, 4]", in: folder,
                  MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/out"))
}

@Test func nonFiniteAdapterValueIsRefusedUnlessAllowed() throws {
    let folder = try scratchWithBase()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var b = [Float](repeating: 0.1, count: 12)
    b[5] = .nan
    try writeAdapter(to: folder + "/adapter", config: lora, tensors: [
        ("layer.lora_A.weight", [2, 4], [Float](repeating: 0.1, count: 8)), ("layer.lora_B.weight", [6, 2], b)])
    expectRefusal(.numerics, "element 5 is nan", in: folder,
                  MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/out"))
    let summary = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"],
                                                   output: folder + "/out", allowNonFinite: true))
    #expect(summary.transformed == 1)
    #expect(try readTensor(folder + "/out").values.contains { $0.isNaN })
}

@Test func mergedValueBeyondTheOutputDTypeIsRefused() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try SyntheticModel(rows: 6, columns: 4, dtype: .f16).write(to: folder + "/base")
    try writeAdapter(to: folder + "/adapter", config: "{\"peft_type\": \"BONE\", \"r\": 2}", tensors: [
        ("layer.bone_block", [2, 6], [Float](repeating: 70_000, count: 12))])
    expectRefusal(.numerics, "beyond the largest F16", in: folder,
                  MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/out"))
}

@Test func existingOutputIsKeptWithoutForceAndReplacedWithIt() throws {
    let folder = try scratchWithBase()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try writeAdapter(to: folder + "/adapter", config: lora, tensors: [
        ("layer.lora_A.weight", [2, 4], [Float](repeating: 0.1, count: 8)),
        ("layer.lora_B.weight", [6, 2], [Float](repeating: 0.1, count: 12))])
    try FileManager.default.createDirectory(atPath: folder + "/out", withIntermediateDirectories: false)
    try Data("keep me".utf8).write(to: URL(fileURLWithPath: folder + "/out/precious.txt"))
    do {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/out"))
        Issue.record("existing output was overwritten")
    } catch let error as PEFTKitError {
        #expect(error.kind == .io && error.remedy == .replaceExisting)
        #expect(error.localizedDescription.hasSuffix("already exists (replacing it must be asked for)"))
    }
    #expect(FileManager.default.fileExists(atPath: folder + "/out/precious.txt"))
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/out",
                                         force: true))
    #expect(!FileManager.default.fileExists(atPath: folder + "/out/precious.txt"))
    #expect(try FileManager.default.contentsOfDirectory(atPath: folder + "/out").sorted() == ["config.json", "model.safetensors"])
    #expect(try FileManager.default.contentsOfDirectory(atPath: folder).allSatisfy { !$0.hasPrefix(".peftkit-tmp-") })
}

@Test func inconsistentAdaptersListEveryProblem() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try writeAdapter(to: folder + "/adapter", config: lora, tensors: [
        ("a.lora_A.weight", [3, 4], [Float](repeating: 0.1, count: 12)),   // rank 3, config says 2
        ("a.lora_B.weight", [6, 2], [Float](repeating: 0.1, count: 12)),
        ("b.lora_A.weight", [2, 4], [Float](repeating: 0.1, count: 8)),    // lora_B missing
        ("c.something", [1], [0])])                                        // not a LoRA tensor
    do {
        _ = try AdapterLoader.load(folder + "/adapter")
        Issue.record("accepted")
    } catch let error as PEFTKitError {
        #expect(error.kind == .inconsistentAdapter)
        #expect(error.details.count == 3, "\(error.details)")
        #expect(error.details.contains("module 'a': lora_A has 3 rows but the module's r is 2"))
        #expect(error.details.contains("module 'b': missing tensor 'lora_B.weight'"))
        #expect(error.details.contains { $0.contains("c.something") })
    }
}

@Test(arguments: [
    ("{\"peft_type\": \"LORA\", \"r\": 8.5, \"lora_alpha\": 16}", "field 'r' is 8.5; expected a positive integer"),
    ("{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 16}", "field 'r' is 0; expected a positive integer"),
    ("{\"peft_type\": \"LORA\", \"r\": \"8\", \"lora_alpha\": 16}", "field 'r' is the string \"8\""),
    ("{\"peft_type\": \"LORA\", \"lora_alpha\": 16}", "missing required field 'r'"),
    ("{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"use_qalora\": true}", "not supported yet: QA-LoRA"),
    ("{\"peft_type\": \"OFT\", \"r\": 8}", "not supported yet: peft_type 'OFT' (peftkit handles LORA, BONE, MISS, IA3, LOHA, LOKR, TRAINABLE_TOKENS, VERA and ADALORA)"),
    ("{\"peft_type\": \"LOHA\", \"r\": 8}", "missing required field 'alpha'"),
    ("{\"peft_type\": \"LOKR\", \"r\": 8, \"alpha\": 8, \"rank_pattern\": {\"q\": 0}}", "rank_pattern['q'] is 0"),
    ("{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \"target_parameters\": [\"experts\"]}", "target_parameters"),
    ("{\"peft_type\": \"BONE\", \"r\": 8, \"init_weights\": \"mini\"}", "field 'init_weights' is the string \"mini\""),
    ("{\"peft_type\": \"MISS\", \"r\": 8, \"init_weights\": \"mini\"}", "missing required field 'mini_r'"),
])
func badConfigsAreRefusedNamingTheField(config: String, fragment: String) throws {
    do {
        _ = try PEFTConfig.parse(try StrictJSON.parse(Array(config.utf8), source: "c"), source: "c")
        Issue.record("accepted \(config)")
    } catch let error as PEFTKitError {
        #expect(error.localizedDescription.contains(fragment), "\(error.localizedDescription)")
    }
}

@Test func outputDTypeConvertsEveryFloatTensorAndTheConfig() throws {
    let folder = try scratchWithBase()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try Data("{\n  \"model_type\": \"synthetic\",\n  \"torch_dtype\": \"bfloat16\"\n}\n".utf8)
        .write(to: URL(fileURLWithPath: folder + "/base/config.json"))
    try writeAdapter(to: folder + "/adapter", config: lora, tensors: [
        ("layer.lora_A.weight", [2, 4], [Float](repeating: 0.1, count: 8)),
        ("layer.lora_B.weight", [6, 2], [Float](repeating: 0.1, count: 12))])
    let summary = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"],
                                                   output: folder + "/out", outputDType: .f32))
    #expect(summary.transformed == 1 && summary.converted == 1)
    let merged = try Checkpoint(path: folder + "/out")
    #expect(merged.tensors.allSatisfy { $0.info.dtype == .f32 })
    // The untouched tensor's values survive the conversion exactly (bf16 → f32 is exact).
    #expect(try readTensor(folder + "/out", "other.weight").values == [1, 2, 3, 4, 5, 6])
    let config = try AdapterLoader.readJSON(folder + "/out/config.json")
    #expect(config["torch_dtype"]?.stringValue == "float32")
}

@Test func replacingATiedHeadUntiesItInTheSavedConfig() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // A base that ties its output head to the embedding and so stores only the embedding.
    try FileManager.default.createDirectory(atPath: folder + "/base", withIntermediateDirectories: true)
    let embedding = (0..<12).map { Float($0) }
    let writer = try SafeTensorsWriter(path: folder + "/base/model.safetensors",
                                       tensors: [TensorSpec(name: "model.embed_tokens.weight", dtype: .f32, shape: [4, 3])])
    try embedding.withUnsafeBytes { try writer.write("model.embed_tokens.weight", bytes: $0) }
    try writer.finish(sync: false)
    try Data("{\"tie_word_embeddings\": true}".utf8).write(to: URL(fileURLWithPath: folder + "/base/config.json"))
    let head = (0..<12).map { Float(100 + $0) }
    try writeAdapter(to: folder + "/adapter",
                     config: "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"modules_to_save\": [\"lm_head\"]}",
                     tensors: [("lm_head.weight", [4, 3], head)])
    let summary = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/out"))
    #expect(summary.replaced == 1)
    #expect(summary.notes.contains { $0.contains("tie_word_embeddings: false") })
    #expect(try readTensor(folder + "/out", "lm_head.weight").values == head)
    #expect(try readTensor(folder + "/out", "model.embed_tokens.weight").values == embedding)
    #expect(try AdapterLoader.readJSON(folder + "/out/config.json")["tie_word_embeddings"] == .bool(false))
}

/// Every LoraConfig field that changes the merge either works or is refused by name (exit 4): inits that rewrote the
/// base, LoRA variants peftkit lacks, and fields it does not know.
@Test(arguments: [
    ("\"init_lora_weights\": \"pissa_niter_4\"", "init_lora_weights \"pissa_niter_4\" rewrote the base weights"),
    ("\"init_lora_weights\": \"pissa_niter_16\"", "path_initial_model_for_weight_conversion"),
    ("\"init_lora_weights\": \"corda\"", "init_lora_weights \"corda\" rewrote"),
    ("\"init_lora_weights\": \"loftq\"", "init_lora_weights \"loftq\" rewrote"),
    ("\"init_lora_weights\": \"lora_ga\"", "path_initial_model_for_weight_conversion"),
    ("\"init_lora_weights\": \"PISSA\"", "init_lora_weights \"PISSA\" (peftkit knows"),
    ("\"init_lora_weights\": \"mica\"", "init_lora_weights \"mica\" (peftkit knows true, false, \"eva\", \"gaussian\", \"orthogonal\", \"pissa\", \"olora\")"),
    ("\"init_lora_weights\": \"pissa\", \"use_dora\": true", "DoRA with init_lora_weights \"pissa\""),
    ("\"kasa_config\": {\"beta\": 1}", "KaSA"),
    ("\"ensure_weight_tying\": true", "ensure_weight_tying"),
    ("\"megatron_config\": {\"tp\": 2}", "megatron_config"),
    ("\"use_bdlora\": {\"nblocks\": 2}", "use_bdlora"),
    ("\"some_future_option\": 3", "LoRA config field 'some_future_option' is set"),
])
func loraOptionsThatChangeTheMergeAreRefused(field: String, fragment: String) throws {
    let config = "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \(field)}"
    do {
        _ = try PEFTConfig.parse(try StrictJSON.parse(Array(config.utf8), source: "c"), source: "c")
        Issue.record("accepted \(config)")
    } catch let error as PEFTKitError {
        #expect(error.kind == .unsupported, "\(config)")
        #expect(error.localizedDescription.contains(fragment), "\(error.localizedDescription)")
    }
}

/// What only chose the starting A and B, or is bookkeeping, or is off, is accepted.
@Test(arguments: ["\"init_lora_weights\": \"gaussian\"", "\"init_lora_weights\": \"pissa\"", "\"init_lora_weights\": \"OLoRA\"", "\"init_lora_weights\": \"eva\", \"eva_config\": {\"rho\": 2}",
                  "\"init_lora_weights\": \"orthogonal\"", "\"init_lora_weights\": false", "\"ensure_weight_tying\": false",
                  "\"megatron_core\": \"megatron.core\", \"loftq_config\": {}", "\"some_future_option\": null"])
func loraOptionsThatDoNotChangeTheMergeAreAccepted(field: String) throws {
    let config = "{\"peft_type\": \"LORA\", \"r\": 8, \"lora_alpha\": 16, \(field)}"
    #expect(throws: Never.self) { _ = try PEFTConfig.parse(try StrictJSON.parse(Array(config.utf8), source: "c"), source: "c") }
}

/// A method's own trained-bias variant (VeRA's "vera_only") is refused as unsupported (exit 4), not as a broken config.
@Test func otherMethodsBiasVariantsAreUnsupported() throws {
    let config = "{\"peft_type\": \"VERA\", \"r\": 8, \"save_projection\": true, \"bias\": \"vera_only\"}"
    do {
        _ = try PEFTConfig.parse(try StrictJSON.parse(Array(config.utf8), source: "c"), source: "c")
        Issue.record("accepted \(config)")
    } catch let error as PEFTKitError {
        #expect(error.kind == .unsupported)
        #expect(error.localizedDescription.contains("bias 'vera_only'"), "\(error.localizedDescription)")
    }
}
