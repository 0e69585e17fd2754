import Foundation
import SafeTensors
import Testing
@testable import PEFTKitCLI

private let loraCase = repositoryRoot + "/fixtures/cases/lora-llama-f32"
private let qProj = "model.layers.1.self_attn.q_proj.weight"

/// PEFT's merge passes: one row per adapted tensor, the untouched ones summed up, the `N passed, M failed` line.
@Test func verifyMergedPassesPEFTsMerge() async throws {
    let run = await peftkit("verify", "--merged", loraCase + "/expected_merged.safetensors", "--base", loraCase + "/base",
                            loraCase + "/adapter")
    #expect(run.status == 0, "\(run.standardOutput)\(run.standardError)")
    let rows = lines(run.standardOutput).map { $0.components(separatedBy: "  ").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    #expect(rows.first == ["TENSOR", "DTYPE", "SHAPE", "MAX ABS ERR", "MEASURE", "IDENTICAL", "RESULT"])
    #expect(rows.contains { $0.first == qProj && $0.last == "PASS" })
    #expect(run.standardOutput.contains("… 7 tensors no adapter changes, all within tolerance"))
    #expect(run.standardOutput.hasSuffix("21 passed, 0 failed\n"))
}

/// A corrupted merge exits 1 and names the tensor, in text and JSON.
@Test func verifyMergedFailsNamingTheWorstTensor() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let path = folder + "/merged.safetensors"
    try FileManager.default.copyItem(atPath: loraCase + "/expected_merged.safetensors", toPath: path)
    let file = try SafeTensorsFile(path: path)
    let tensor = try #require(file.info(qProj))
    var bytes = [UInt8](FileManager.default.contents(atPath: path)!)
    bytes[file.dataStart + tensor.dataOffsets.lowerBound + 3] ^= 0x01  // the exponent of element 0
    try Data(bytes).write(to: URL(fileURLWithPath: path))

    let run = await peftkit("verify", "--merged", path, "--base", loraCase + "/base", loraCase + "/adapter")
    #expect(run.status == 1)
    #expect(run.standardOutput.contains("worst: \(qProj) (FAIL)\n"))
    #expect(run.standardOutput.hasSuffix("20 passed, 1 failed\n"))

    let json = await peftkit("verify", "--merged", path, "--base", loraCase + "/base", loraCase + "/adapter", "--json")
    #expect(json.status == 1)
    let document = try parseJSON(json.standardOutput)
    #expect(document["schema"]?.stringValue == "peftkit.verify-merged/1")
    #expect(document["worst"]?.stringValue == qProj)
    #expect(document["failed"] == .integer(1))
    let failed = document["tensors"]?.arrayValue?.filter { $0["status"]?.stringValue != "passed" }
    #expect(failed?.map { $0["name"]?.stringValue } == [qProj])
}

/// --weight reaches the recomputation: a merge with weight 1.1 fails unless verify is told the weight.
@Test func verifyMergedUsesTheWeights() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let merge = await peftkit("merge", loraCase + "/base", loraCase + "/adapter", "--weight", "1.1", "-o", folder + "/m", "-q")
    #expect(merge.status == 0)
    let wrong = await peftkit("verify", "--merged", folder + "/m", "--base", loraCase + "/base", loraCase + "/adapter")
    #expect(wrong.status == 1)
    #expect(wrong.standardOutput.hasSuffix("7 passed, 14 failed\n"))
    let right = await peftkit("verify", "--merged", folder + "/m", "--base", loraCase + "/base", loraCase + "/adapter",
                              "--weight", "1.1")
    #expect(right.status == 0)
}

/// A merge written in another dtype is a dtype mismatch, unless verify is told the dtype.
@Test func verifyMergedTakesTheMergesDType() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let merge = await peftkit("merge", loraCase + "/base", loraCase + "/adapter", "--dtype", "bf16", "-o", folder + "/m")
    #expect(merge.status == 0)
    let plain = await peftkit("verify", "--merged", folder + "/m", "--base", loraCase + "/base", loraCase + "/adapter")
    #expect(plain.status == 1)
    #expect(plain.standardOutput.contains("FAIL dtype BF16, expected F32"))
    let told = await peftkit("verify", "--merged", folder + "/m", "--base", loraCase + "/base", loraCase + "/adapter", "--dtype", "bf16")
    #expect(told.status == 0, "\(told.standardOutput)")
}

@Test func verifyUnmergedHoldsTheResultAgainstTheBase() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let unmerge = await peftkit("unmerge", loraCase + "/expected_merged.safetensors", loraCase + "/adapter", "-o", folder + "/u", "-q")
    #expect(unmerge.status == 0)
    let run = await peftkit("verify", "--unmerged", folder + "/u", "--base", loraCase + "/base", loraCase + "/adapter")
    #expect(run.status == 0, "\(run.standardOutput)")
    #expect(run.standardOutput.contains("× bound"))
    let merged = await peftkit("verify", "--unmerged", loraCase + "/expected_merged.safetensors", "--base", loraCase + "/base",
                               loraCase + "/adapter")
    #expect(merged.status == 1)
}

@Test(arguments: [
    (["verify", "--merged", "m", "a"], "--base"),
    (["verify", "--merged", "m", "--base", "b"], "adapters"),
    (["verify", "--merged", "m", "--unmerged", "u", "--base", "b", "a"], "not both"),
    (["verify", "--base", "b"], "--merged"),
    (["verify", "--merged", "m", "--base", "b", "a", "--weight", "1", "--weight", "2"], "--weight"),
    (["diff", "a"], "<b>"),
    (["verify", "--unmerged", "u", "--base", "b", "a", "--dtype", "bf16"], "--dtype"),
])
func auditUsageErrors(arguments: [String], fragment: String) async {
    let run = await peftkit(arguments)
    #expect(run.status == 64)
    #expect(run.standardError.contains(fragment), "\(run.standardError)")
}

@Test func verifyMergedOfAMissingPathIsAnIOError() async {
    let run = await peftkit("verify", "--merged", "/nonexistent/m", "--base", loraCase + "/base", loraCase + "/adapter")
    #expect(run.status == 5)
}

/// The fixtures mode is unchanged without the new options.
@Test func verifyWithoutOptionsStillChecksTheFixtures() async {
    let run = await peftkit("verify", loraCase)
    #expect(run.status == 0)
    #expect(run.standardOutput.hasSuffix("3 passed, 0 failed\n"))
}

@Test func diffReportsChangesPerTensorAndGroup() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let svg = folder + "/plot.svg"
    let run = await peftkit("diff", loraCase + "/base", loraCase + "/expected_merged.safetensors", "--plot", svg)
    #expect(run.status == 0, "\(run.standardError)")
    #expect(run.standardOutput.hasSuffix("21 tensors, 14 changed, 0 header differences\n"))
    #expect(run.standardOutput.contains("… 7 tensors bit-identical"))
    #expect(!run.standardOutput.contains("Header differences"))

    let json = await peftkit("diff", loraCase + "/base", loraCase + "/expected_merged.safetensors", "--json")
    let document = try parseJSON(json.standardOutput)
    #expect(document["schema"]?.stringValue == "peftkit.diff/1")
    #expect(document["tensors_changed"] == .integer(14))
    let q = try #require(document["tensors"]?.arrayValue?.first { $0["name"]?.stringValue == qProj })
    #expect(q["layer"] == .integer(1) && q["kind"]?.stringValue == "q_proj" && q["changed"] == .bool(true))
    let group = try #require(document["groups"]?.arrayValue?.first { $0["layer"] == .integer(1) && $0["kind"]?.stringValue == "q_proj" })
    let relative = try #require(group["relative_change"]?.doubleValue)

    // The plot: one cell per group, whose hover text carries the same number as the JSON.
    let text = try String(contentsOfFile: svg, encoding: .utf8)
    #expect(text.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
    #expect(text.contains("<title>layer 1 q_proj: ‖Δ‖/‖A‖ = \(relative), "))
    #expect(text.components(separatedBy: "<title>").count - 1 == document["groups"]?.arrayValue?.count)
    #expect(text.contains("unchanged"))
}

@Test func diffReportsHeaderDifferencesWithoutData() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try writeSafeTensors([.f32("x.weight", [2], [1, 2]), .f32("gone", [1], [0])], to: folder + "/a.safetensors")
    try writeSafeTensors([.f32("x.weight", [1, 2], [1, 2]), .f32("new\u{1B}[31m", [1], [0])], to: folder + "/b.safetensors")
    let run = await peftkit("diff", folder + "/a.safetensors", folder + "/b.safetensors")
    #expect(run.status == 0)
    #expect(run.standardOutput.hasPrefix("Header differences:\n"))
    #expect(run.standardOutput.contains("  shape differs: x.weight A F32 [2], B F32 [1, 2]\n"))
    #expect(run.standardOutput.contains("  only in A: gone F32 [1]\n"))
    #expect(run.standardOutput.contains("only in B: new"))
    #expect(!run.standardOutput.contains("\u{1B}"))
    #expect(run.standardOutput.hasSuffix("3 tensors, 3 changed, 3 header differences\n"))
}

@Test func diffOfATruncatedFileIsInvalidInput() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let bytes = [UInt8](FileManager.default.contents(atPath: loraCase + "/expected_merged.safetensors")!)
    try Data(bytes.prefix(bytes.count - 100)).write(to: URL(fileURLWithPath: folder + "/cut.safetensors"))
    let run = await peftkit("diff", folder + "/cut.safetensors", loraCase + "/expected_merged.safetensors")
    #expect(run.status == 2)
    #expect(run.standardOutput.isEmpty)
}
