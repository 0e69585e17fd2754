import ArgumentParser
import PEFTKit

/// `peftkit verify [PATH ...] [--json]` checks the bundled fixtures; with `--merged` or `--unmerged` it audits a user's
/// own checkpoint against the merge of the ADAPTERs into `--base`.
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

            With --merged MERGED --base BASE, the paths are adapters instead: peftkit recomputes, tensor by tensor \
            and streaming, what merging them (each with its --weight) into BASE must give and holds MERGED against \
            it (ulps at operand magnitude, tolerance 1 ulp), whoever made MERGED. Missing, extra and differently \
            shaped or typed tensors fail, and so does an output head the adapter changed that MERGED keeps tied to \
            the embedding. With --unmerged UNMERGED, the model an adapter was removed from is held against BASE \
            within the drift bound `peftkit unmerge` reports. Exit status 0 when every tensor passes, 1 otherwise.

            Examples:
              peftkit verify
              peftkit verify fixtures/cases/lora-llama-f32 fixtures/cases/bat-llama-f32
              peftkit verify --json > verify-report.json
              peftkit verify --merged ./merged --base ./base ./my-lora
              peftkit verify --merged ./merged --base ./base ./style ./task --weight 0.7 --weight 1 --json
              peftkit verify --merged ./merged-bf16 --base ./base ./my-lora --dtype bf16
              peftkit verify --unmerged ./recovered --base ./base ./my-lora
            """
    )

    @Argument(help: ArgumentHelp("Fixtures folders or single cases (default: fixtures); with --merged or --unmerged, the adapters.",
                                 valueName: "path"))
    var paths: [String] = []

    @Option(help: ArgumentHelp("A merged model to audit against the merge of the adapters into --base.", valueName: "merged"))
    var merged: String?

    @Option(help: ArgumentHelp("A model the adapters were unmerged from, to audit against --base.", valueName: "unmerged"))
    var unmerged: String?

    @Option(help: ArgumentHelp("The base model the adapters belong to (with --merged or --unmerged).", valueName: "base"))
    var base: String?

    // Unconditional, so that a negative weight (`--weight -1`) is read as a value, not as an option.
    @Option(name: .customLong("weight"), parsing: .unconditionalSingleValue, help: ArgumentHelp(
        "With --merged: scale of an adapter's delta, once per adapter in order (default: 1 each).", valueName: "w"))
    var weights: [Double] = []

    @Option(help: ArgumentHelp("With --merged: the dtype the merge wrote its floating tensors in, as merge --dtype; keep expects each base tensor's own.",
                               valueName: "dtype"))
    var dtype: OutputDType = .keep

    @OptionGroup var report: JSONOutputOption

    init() {}

    func validate() throws {
        if merged != nil && unmerged != nil { throw ValidationError("Give --merged or --unmerged, not both.") }
        guard merged != nil || unmerged != nil else {
            if base != nil || !weights.isEmpty || dtype != .keep {
                throw ValidationError("--base, --weight and --dtype go with --merged or --unmerged.")
            }
            return
        }
        guard base != nil else { throw ValidationError("--merged and --unmerged need --base.") }
        guard !paths.isEmpty else { throw ValidationError("Missing expected argument '<path> ...': the adapters.") }
        guard weights.isEmpty || weights.count == paths.count else {
            throw ValidationError("Give --weight once per adapter (\(paths.count)), or not at all.")
        }
        if weights.contains(where: { !$0.isFinite }) { throw ValidationError("--weight must be a finite number.") }
        if unmerged != nil && (!weights.isEmpty || dtype != .keep) { throw ValidationError("--weight and --dtype go with --merged.") }
    }

    func run() async throws {
        if let base, let checkpoint = merged ?? unmerged {
            let audit = merged != nil
                ? try CheckpointAuditor.verifyMerged(checkpoint, base: base, adapters: paths,
                                                     weights: weights.isEmpty ? nil : weights, outputDType: dtype.dtype)
                : try CheckpointAuditor.verifyUnmerged(checkpoint, base: base, adapters: paths)
            Console.current.output(report.json ? AuditReport.json(audit) : AuditReport.text(audit))
            if !audit.passed { throw ExitStatus.checkFailed }
            return
        }
        let paths = paths.isEmpty ? ["fixtures"] : paths
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
