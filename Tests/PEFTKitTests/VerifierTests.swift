import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

@Test(arguments: fixtureCaseNames())
func everyFixtureCaseVerifies(_ name: String) throws {
    let checks = try FixtureVerifier.verify(caseFolder: "\(fixtureCases)/\(name)")
    #expect(checks.count >= 3)
    for check in checks {
        #expect(check.passed, "\(name): \(check.check) \(check.measure) \(check.unit) > \(check.tolerance) at \(check.worst ?? "-")")
        print("\(name) | \(check.check) | max abs \(check.maxAbsoluteError) | \(check.measure) \(check.unit)")
    }
}
