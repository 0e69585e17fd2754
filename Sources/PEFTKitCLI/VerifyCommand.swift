import ArgumentParser

/// `peftkit verify [PATH ...] [--json]`: the argument surface is final; the checks arrive with the fixtures issue.
struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check peftkit against reference outputs produced by HF PEFT.",
        discussion: """
            Each PATH is a fixtures folder (default: fixtures) or a single case inside one. A case holds a small \
            base model, an adapter and the outputs real HF PEFT produced from them (merged weights, unmerged \
            weights). peftkit redoes each operation and compares its result with the reference under the \
            tolerance policy of spec/tolerance.md, then prints one line per case.

            Exit status 0 when every case agrees, 1 when any case differs, 2 when a case is malformed.

            Examples:
              peftkit verify
              peftkit verify fixtures/lora-basic fixtures/bone-bat
              peftkit verify --json > verify-report.json
            """
    )

    @Argument(help: ArgumentHelp("Fixtures folders or single cases.", valueName: "path"))
    var paths: [String] = ["fixtures"]

    @OptionGroup var report: JSONOutputOption

    init() {}

    func run() async throws {
        throw CommandNotAvailable(commandName: "verify")
    }
}
