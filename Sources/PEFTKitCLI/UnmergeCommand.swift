import ArgumentParser
import PEFTKit

/// `peftkit unmerge MERGED ADAPTER --output DIR …`: the merge engine run in the unmerge direction.
struct UnmergeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unmerge",
        abstract: "Remove an adapter from a merged model, recovering the base model.",
        discussion: """
            Streams MERGED tensor by tensor and subtracts the adapter's delta from every adapted weight (for Bat, \
            solves for the original tile instead of inverting). Tensors the adapter does not touch are copied \
            unchanged; the output keeps MERGED's dtypes and sharding.

            DoRA is undone from the norms peftkit's merge recorded in MERGED/peftkit-unmerge.record (the merged \
            weights alone do not determine them): a model merged by another tool is refused. Adapters merged \
            together or in turn are unmerged one at a time, the last merged first.

            Unmerging is not exact in general: the merged weights were rounded to their dtype once already. The drift is \
            reported, never hidden. With --check-against BASE, every recovered weight is compared with the \
            original, and the report gives the largest absolute and relative differences per tensor.

            Examples:
              peftkit unmerge ./merged ./my-lora --output ./recovered
              peftkit unmerge ./merged ./my-lora -o ./recovered --check-against ./base
            """
    )

    @Argument(help: ArgumentHelp("The merged model: a folder or a .safetensors file.", valueName: "merged"))
    var merged: String

    @Argument(help: ArgumentHelp("The adapter that was merged into it: a PEFT folder or a peftkit file.",
                                 valueName: "adapter"))
    var adapter: String

    @OptionGroup var output: OutputOptions

    @Option(help: ArgumentHelp("The original base model, to measure how far the recovered weights drift from it.",
                               valueName: "base"))
    var checkAgainst: String?

    @OptionGroup var report: JSONOutputOption
    @OptionGroup var progress: ProgressOptions

    init() {}

    func validate() throws {
        try PathArguments.validateDistinct(output: output.output, inputs: [merged, adapter] + (checkAgainst.map { [$0] } ?? []))
    }

    func run() async throws {
        let request = MergeRequest(base: merged, adapters: [adapter], output: output.output, direction: .unmerge,
                                   force: output.force)
        try MergeRunner.run(request, json: report.json, quiet: progress.quiet, checkAgainst: checkAgainst)
    }
}
