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
    for comparison in comparisons {
        #expect(comparison.maxScaledULP <= 1, "\(name): \(comparison.name) is \(comparison.maxScaledULP) scaled ulp from PEFT")
    }
    let elements = comparisons.reduce(0) { $0 + $1.elements }
    let identical = comparisons.reduce(0) { $0 + $1.elements - $1.differing }
    let worst = comparisons.map(\.maxScaledULP).max() ?? 0
    print("\(name): \(identical) of \(elements) elements bit-identical to PEFT, max \(worst) ulp at operand scale")
}
