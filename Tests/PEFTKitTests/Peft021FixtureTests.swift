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
    #expect(checks.count == 3)
    for check in checks {
        #expect(check.passed, "\(name): \(check.check) measured \(check.measure) \(check.unit), tolerance \(check.tolerance)")
    }
}

@Test func peft021CasesArePresent() {
    #expect(peft021CaseNames().count >= 6)
}
