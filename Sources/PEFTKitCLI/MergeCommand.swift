import ArgumentParser
import PEFTKit
import Foundation
import SafeTensors

/// `peftkit merge BASE ADAPTER [ADAPTER ...] --output DIR …`: parses and checks the arguments, then hands a
/// `MergeRequest` to the engine.
struct MergeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Merge one or more adapters into a base model and write the merged model.",
        discussion: """
            Streams the base model tensor by tensor: each adapted weight is decoded to Float32, its adapter \
            deltas are added (\(MethodRegistry.all.map { $0.peftTypes[0] }.joined(separator: ", ")), each as HF PEFT applies it), and the result is rounded once to the \
            output dtype. Tensors no adapter touches are copied unchanged. Memory stays near the size of the \
            largest tensor, whatever the size of the model.

            With several adapters, each delta is scaled by its --weight (1 when not given) and all are applied to \
            the same base weight, in the order given; DoRA adapters as PEFT's forward with all of them active \
            (each renormalised with the norm of the base weight plus its own change).

            A DoRA merge also writes peftkit-unmerge.record into DIR: the norms `peftkit unmerge` needs, which \
            the merged weights do not keep. Loaders ignore it.

            DIR gets the base's layout (the same shards and index) and every other file of the base folder \
            (config.json, tokenizer files …), so transformers loads it as it loads the base. --max-shard-size \
            re-shards like save_pretrained instead. The output is built beside DIR and moved into place only when \
            complete; DIR must not exist unless --force.

            Examples:
              peftkit merge ./TinyLlama-1.1B ./my-lora --output ./merged
              peftkit merge ./base ./style ./task --weight 0.7 --weight 1 -o ./merged
              peftkit merge ./base ./my-bone -o ./merged --dtype f32 --max-shard-size 2GB
            """
    )

    @Argument(help: ArgumentHelp("The base model: a folder (one file or shards) or a .safetensors file.",
                                 valueName: "base"))
    var base: String

    @Argument(help: ArgumentHelp("The adapters to merge: PEFT folders or peftkit files.", valueName: "adapter"))
    var adapters: [String]

    @OptionGroup var output: OutputOptions

    // Unconditional, so that a negative weight (`--weight -1`) is read as a value, not as an option.
    @Option(name: .customLong("weight"), parsing: .unconditionalSingleValue, help: ArgumentHelp(
        "Scale of an adapter's delta; give it once per adapter, in the same order (default: 1 for every adapter).",
        valueName: "w"))
    var weights: [Double] = []

    @Option(help: ArgumentHelp("Element type of the merged tensors; keep leaves each in its base tensor's dtype.",
                               valueName: "dtype"))
    var dtype: OutputDType = .keep

    @Option(help: ArgumentHelp(
        "Re-shard the output: largest shard as transformers spells it, 5GB, 500MB (powers of 1000), 2GiB (powers of 1024), or bytes (default: the base's own shards).",
        valueName: "size"))
    var maxShardSize: String?

    @Flag(help: "Write the result even if a merged weight holds NaN or Inf (by default the merge stops with status 6).")
    var allowNonFinite = false

    @OptionGroup var report: JSONOutputOption
    @OptionGroup var progress: ProgressOptions

    init() {}

    func validate() throws {
        guard !adapters.isEmpty else { throw ValidationError("Give at least one ADAPTER to merge into BASE.") }
        if !weights.isEmpty && weights.count != adapters.count {
            throw ValidationError(
                "Got \(weights.count) --weight value\(weights.count == 1 ? "" : "s") for \(adapters.count) adapter\(adapters.count == 1 ? "" : "s"): give one per adapter, or none.")
        }
        if let bad = weights.first(where: { !$0.isFinite }) {
            throw ValidationError("--weight \(bad) is not a finite number.")
        }
        if let maxShardSize { try PathArguments.validateShardSize(maxShardSize) }
        try PathArguments.validateDistinct(output: output.output, inputs: [base] + adapters)
    }

    func run() async throws {
        let request = MergeRequest(
            base: base, adapters: adapters, weights: weights.isEmpty ? nil : weights, output: output.output,
            outputDType: dtype.dtype, maxShardSize: try maxShardSize.map(ShardPlanner.parseSize),
            force: output.force, allowNonFinite: allowNonFinite)
        try MergeRunner.run(request, json: report.json, quiet: progress.quiet)
    }
}

/// Runs the engine with progress and prints the summary; shared by merge and unmerge.
enum MergeRunner {
    static func run(_ request: MergeRequest, json: Bool, quiet: Bool, checkAgainst: String? = nil) throws {
        let console = Console.current
        let bar = ProgressBar.make(quiet: quiet || json, console: console)
        var report: (@Sendable (MergeProgress) -> Void)?
        if let bar { report = { progress in bar.update(progress) } }
        defer { bar?.finish() }
        let summary = try MergeEngine.run(request, progress: report)
        let check = try checkAgainst.map { try Comparison.compareCheckpoints(summary.output, against: $0, tensors: summary.transformedTensors) }
        console.output(json ? MergeReport.json(summary, check: check) : MergeReport.text(summary, base: request.base, check: check))
    }
}

/// Checks shared by the commands that read inputs and write an output.
enum PathArguments {
    /// Refuses to write over an input: `--output` naming BASE or an adapter would destroy it.
    static func validateDistinct(output: String, inputs: [String]) throws {
        let target = URL(fileURLWithPath: output).standardizedFileURL.resolvingSymlinksInPath().path
        for input in inputs where URL(fileURLWithPath: input).standardizedFileURL.resolvingSymlinksInPath().path == target {
            throw ValidationError("--output \(TerminalText.escaped(output)) is also an input; write the result somewhere else.")
        }
    }

    static func validateShardSize(_ text: String) throws {
        do {
            _ = try ShardPlanner.parseSize(text)
        } catch let error as SafeTensorsError {
            throw ValidationError("--max-shard-size: " + (error.errorDescription ?? "invalid size"))
        }
    }
}
