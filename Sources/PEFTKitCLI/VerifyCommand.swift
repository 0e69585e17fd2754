import ArgumentParser
import PEFTKit

/// `peftkit verify [PATH ...] [--json]`: runs `FixtureVerifier` on each fixtures folder or case.
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check peftkit against reference outputs produced by HF PEFT.",
        discussion: """
            Each PATH is a fixtures folder (default: fixtures) or a single case inside one. A case holds a small \
            base model, an adapter and the outputs real HF PEFT produced from them. For each case peftkit merges \
            and compares with PEFT's merged weights, applies its merged layers to the stored inputs and compares \
            with PEFT's own unmerged adapter outputs, and unmerges PEFT's merged weights and compares the drift \
            with PEFT's own. Tolerances follow spec/tolerance.md. One line per check, then "N passed, M failed".

            Exit status 0 when every check passes, 1 when a check fails, 2 when a case cannot be read.

            Examples:
              peftkit verify
              peftkit verify fixtures/cases/lora-llama-f32 fixtures/cases/bat-llama-f32
              peftkit verify --json > verify-report.json
            """
    )

    @Argument(help: ArgumentHelp("Fixtures folders or single cases.", valueName: "path"))
    var paths: [String] = ["fixtures"]

    @OptionGroup var report: JSONOutputOption

    init() {}

    func run() async throws {
        var checks: [VerificationCheck] = []
        var broken: [VerifyReport.Broken] = []
        for caseFolder in try FixtureVerifier.findCases(paths) {
            do {
                checks += try FixtureVerifier.verify(caseFolder: caseFolder)
            } catch {
                broken.append(.init(caseFolder: caseFolder, message: error.localizedDescription))
            }
        }
        let console = Console.current
        console.output(report.json ? VerifyReport.json(checks, broken: broken) : VerifyReport.text(checks, broken: broken))
        if !broken.isEmpty { throw ExitStatus.invalidInput }
        if checks.contains(where: { !$0.passed }) { throw ExitStatus.checkFailed }
    }
}
