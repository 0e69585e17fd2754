import Foundation
import Testing
@testable import PEFTKit

/// fixtures/cases-peft021: the methods and variants PEFT 0.21.2 saves (fixtures/generate_methods021.py), each checked
/// as `peftkit verify` does: merged weights against PEFT's merge, merged layers against PEFT's unmerged forward, and
/// unmerge against PEFT's own drift (or refused where the checkpoint does not determine the base).
let peft021Cases = repositoryRoot + "/fixtures/cases-peft021"

func peft021CaseNames() -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: peft021Cases)) ?? [])
        .filter { FileManager.default.fileExists(atPath: "\(peft021Cases)/\($0)/manifest.json") }.sorted()
}

@Test(arguments: peft021CaseNames())
func peft021CasePassesTheThreeVerifyChecks(_ name: String) throws {
    let checks = try FixtureVerifier.verify(caseFolder: "\(peft021Cases)/\(name)")
    let manifest = try AdapterLoader.readJSON("\(peft021Cases)/\(name)/manifest.json")
    // A fourth where peftkit's unmerge of its own merge (from its record) is checked too.
    #expect(checks.count == (manifest["unmerge_with_record"]?.boolValue == true ? 4 : 3))
    for check in checks {
        #expect(check.passed, "\(name): \(check.check) measured \(check.measure) \(check.unit), tolerance \(check.tolerance)")
    }
}

@Test func peft021CasesArePresent() {
    #expect(peft021CaseNames().count >= 6)
}

/// `inspect --base`'s count is PEFT's: each case's manifest records `get_nb_trainable_parameters()` of the adapter
/// loaded with `is_trainable=True` by PEFT 0.21.2.
@Test(arguments: peft021CaseNames())
func peft021ParameterCountsArePEFTs(_ name: String) throws {
    let folder = "\(peft021Cases)/\(name)"
    let manifest = try AdapterLoader.readJSON(folder + "/manifest.json")
    let expected = try #require(manifest["peft_parameters"])
    let report = try AdapterReport(try AdapterLoader.load(folder + "/adapter"), adapterPath: folder + "/adapter",
                                   basePath: folder + "/base")
    let base = try #require(report.base)
    #expect(Int64(base.peftTrainable) == expected["trainable"]?.integerValue, "\(name) trainable")
    #expect(Int64(base.peftAll) == expected["all"]?.integerValue, "\(name) all")
}

/// The same for fixtures/cases, against PEFT 0.18.1's counts (fixtures/parameter-counts.json, written by
/// fixtures/count_parameters.py): modules_to_save copies, an embedding's saved base_layer, trained biases included.
@Test(arguments: fixtureCaseNames())
func parameterCountsArePEFTs(_ name: String) throws {
    let record = try AdapterLoader.readJSON(repositoryRoot + "/fixtures/parameter-counts.json")
    let expected = try #require(record["cases"]?[name])
    let folder = "\(fixtureCases)/\(name)"
    let report = try AdapterReport(try AdapterLoader.load(folder + "/adapter"), adapterPath: folder + "/adapter",
                                   basePath: folder + "/base")
    let base = try #require(report.base)
    #expect(Int64(base.peftTrainable) == expected["trainable"]?.integerValue, "\(name) trainable \(base.peftTrainable)")
    #expect(Int64(base.peftAll) == expected["all"]?.integerValue, "\(name) all \(base.peftAll)")
}

/// `verify --merged` accepts PEFT's own merge of every cases-peft021 adapter (for F32 PiSSA/OLoRA within the
/// allowance the factorisation's conditioning gives) and still flags a merge off by a 0.1 % scale.
@Test(arguments: peft021CaseNames())
func peft021PEFTMergePassesVerifyMergedAndAScaleErrorDoesNot(_ name: String) throws {
    let folder = "\(peft021Cases)/\(name)"
    let manifest = try AdapterLoader.readJSON(folder + "/manifest.json")
    let adapters = manifest["merge_together"]?.boolValue == true
        ? (manifest["adapters"]?.arrayValue ?? []).compactMap(\.stringValue).map { folder + "/" + $0 } : [folder + "/adapter"]
    for slice in [MergeRequest.defaultSliceElements, 64] {
        let audit = try CheckpointAuditor.verifyMerged(folder + "/expected_merged.safetensors", base: folder + "/base",
                                                       adapters: adapters, sliceElements: slice)
        #expect(audit.failedCount == 0, "\(name) slice \(slice): worst \(audit.worst?.name ?? "-") \(audit.worst?.measure ?? 0)")
    }
    guard manifest["method"]?.stringValue == "lora", ["pissa", "olora"].contains(manifest["variant"]?.stringValue) else { return }
    // PiSSA/OLoRA: the same adapter merged with weight 1.001 is another model, whatever the allowance.
    let off = try CheckpointAuditor.verifyMerged(folder + "/expected_merged.safetensors", base: folder + "/base",
                                                 adapters: [folder + "/adapter"], weights: [1.001])
    #expect(off.failedCount > 0, "\(name): a 0.1 % scale error passed")
}

/// PEFT folder → peftkit file → PEFT folder keeps every tensor (VeRA's shared projections, AdaLoRA's empty rank-0
/// module, token rows) and the config, so the merge of each is the same bytes.
@Test(arguments: peft021CaseNames())
func peft021AdaptersRoundTripThroughThePeftkitFormat(_ name: String) throws {
    let folder = "\(peft021Cases)/\(name)", scratch = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let original = try AdapterLoader.load(folder + "/adapter")
    try PeftkitFormat.write(original, to: scratch + "/a.safetensors", options: AdapterWriteOptions())
    try PEFTFolderFormat.write(try AdapterLoader.load(scratch + "/a.safetensors"), to: scratch + "/back",
                               options: AdapterWriteOptions())
    let back = try AdapterLoader.load(scratch + "/back")
    func named(_ adapter: Adapter) throws -> [String: [UInt8]] {
        Dictionary(uniqueKeysWithValues: try PEFTKeys.namedTensors(adapter).map { ($0.name, try $0.tensor.withBytes { [UInt8]($0) }) })
    }
    #expect(try named(back) == named(original))
    #expect(back.config.json == original.config.json)
    for (label, adapter) in [("direct", folder + "/adapter"), ("round trip", scratch + "/back")] {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [adapter], output: scratch + "/" + label))
    }
    let direct = try Data(contentsOf: URL(fileURLWithPath: scratch + "/direct/model.safetensors"))
    #expect(try Data(contentsOf: URL(fileURLWithPath: scratch + "/round trip/model.safetensors")) == direct)
}
