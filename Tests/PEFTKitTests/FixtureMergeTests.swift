import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// End to end against HF PEFT itself: every fixture case's base + adapter, merged by peftkit, must equal PEFT's
/// `merge_and_unload()` weights to within one ulp of the output dtype at the operands' magnitude (spec/tolerance.md).
@Test(arguments: fixtureCaseNames())
func mergeMatchesPEFT(_ name: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(fixtureCases)/\(name)"
    let summary = try MergeEngine.run(MergeRequest(base: caseFolder + "/base", adapters: [caseFolder + "/adapter"],
                                                   output: folder + "/merged"))
    #expect(summary.transformed + summary.replaced > 0)
    let comparisons = try compareCheckpoints(actual: folder + "/merged", expected: caseFolder + "/expected_merged.safetensors",
                                             base: caseFolder + "/base")
    #expect(!comparisons.isEmpty)
    let tolerance = try mergedMaxULP(name)
    for comparison in comparisons {
        #expect(comparison.maxScaledULP <= tolerance, "\(name): \(comparison.name) is \(comparison.maxScaledULP) scaled ulp from PEFT")
    }
    let elements = comparisons.reduce(0) { $0 + $1.elements }
    let identical = comparisons.reduce(0) { $0 + $1.elements - $1.differing }
    let worst = comparisons.map(\.maxScaledULP).max() ?? 0
    print("\(name): \(identical) of \(elements) elements bit-identical to PEFT, max \(worst) ulp at operand scale")
}

/// Unmerging PEFT's merged checkpoint must come back to the base at least as closely as PEFT's own
/// merge-then-unmerge does (fixtures' expected_unmerged), and within the bound peftkit reports.
@Test(arguments: fixtureCasesThatUnmerge())
func unmergeOfPEFTMergedIsAtLeastAsCloseAsPEFT(_ name: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(fixtureCases)/\(name)"
    let summary = try MergeEngine.run(MergeRequest(base: caseFolder + "/expected_merged.safetensors",
                                                   adapters: [caseFolder + "/adapter"], output: folder + "/unmerged",
                                                   direction: .unmerge))
    let peftUnmerged = try Checkpoint(path: caseFolder + "/expected_unmerged.safetensors")
    let names = Set(peftUnmerged.tensors.map(\.info.name))
    let ours = try compareCheckpoints(actual: folder + "/unmerged", expected: caseFolder + "/base", names: names)
    let peft = try compareCheckpoints(actual: caseFolder + "/expected_unmerged.safetensors", expected: caseFolder + "/base",
                                      names: names)
    let ourWorst = ours.map(\.maxAbsoluteError).max() ?? 0, peftWorst = peft.map(\.maxAbsoluteError).max() ?? 0
    let ourDiffering = ours.reduce(0) { $0 + $1.differing }, peftDiffering = peft.reduce(0) { $0 + $1.differing }
    // F32/F64: plus what the BLAS summation order can add, at least one ulp at the tensor's largest magnitude
    // (spec/tolerance.md §3).
    let allowance = try names.map { name in
        let view = try Checkpoint(path: caseFolder + "/base").view(name)
        let values = [Float](unsafeUninitializedCapacity: view.info.elementCount) { buffer, count in
            Codec.decode(view.bytes, as: view.info.dtype, into: buffer)
            count = view.info.elementCount
        }
        return Comparison.summationOrderAllowance(values, dtype: view.info.dtype, summationBound: summary.summationBound!)
    }.max() ?? 0
    #expect(ourWorst <= peftWorst + allowance, "\(name): peftkit drifts \(ourWorst), PEFT \(peftWorst) + \(allowance)")
    #expect(ourWorst <= summary.driftBound!, "\(name): drift \(ourWorst) above the reported bound \(summary.driftBound!)")
    print("\(name): unmerge drift max \(ourWorst) over \(ourDiffering) elements; PEFT's own \(peftWorst) over \(peftDiffering)")
}

/// An embedding LoRA's carried base_layer is the weight before the merge: unmerging restores it bit for bit.
@Test func unmergeRestoresACarriedEmbeddingBaseLayerExactly() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(fixtureCases)/lora-embed-mts-llama-bf16"
    let summary = try MergeEngine.run(MergeRequest(base: caseFolder + "/expected_merged.safetensors",
                                                   adapters: [caseFolder + "/adapter"], output: folder + "/unmerged",
                                                   direction: .unmerge))
    let embedding = try compareCheckpoints(actual: folder + "/unmerged", expected: caseFolder + "/base",
                                           names: ["model.embed_tokens.weight"])
    #expect(embedding.first?.differing == 0)
    #expect(!summary.notes.contains { $0.contains("model.embed_tokens.weight") })
    #expect(summary.notes.contains { $0.contains("lm_head.weight") && $0.contains("cannot be recovered") })
}

/// F32 unmerge drift may exceed PEFT's by what summation order can add: one ulp at the tensor's largest magnitude or
/// the γ bound of the change's two sums, whichever is larger; nothing for 16-bit tensors (spec/tolerance.md §3).
@Test func unmergeDriftAllowanceIsTheLargerOfAnUlpAndTheSumBound() throws {
    let values: [Float] = [0.5, -2, 1]  // largest magnitude 2: one Float32 ulp there is 2⁻²²
    #expect(Comparison.summationOrderAllowance(values, dtype: .f32, summationBound: 0) == 0x1p-22)
    #expect(Comparison.summationOrderAllowance(values, dtype: .f32, summationBound: 1e-5) == 1e-5)
    #expect(Comparison.summationOrderAllowance(values, dtype: .bf16, summationBound: 1e-5) == 0)
    // A LoRA unmerge reports its sums' bound: 2 · (r + 1) · 2⁻²⁴ · |s| · max row sum |B| · max |A| > 0.
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let caseFolder = "\(fixtureCases)/lora-llama-f32"
    let summary = try MergeEngine.run(MergeRequest(base: caseFolder + "/expected_merged.safetensors",
                                                   adapters: [caseFolder + "/adapter"], output: folder + "/unmerged",
                                                   direction: .unmerge))
    let bound = try #require(summary.summationBound)
    #expect(bound > 0 && bound <= summary.driftBound!)
}
