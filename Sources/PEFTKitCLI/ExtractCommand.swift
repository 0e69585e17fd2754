import ArgumentParser
import Foundation
import PEFTKit
import SafeTensors

extension ExtractRequest.Embeddings: ExpressibleByArgument {}

/// `peftkit extract BASE TUNED -o ADAPTER (--rank R | --energy F) …`.
struct ExtractCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extract",
        abstract: "Extract a LoRA adapter from a fine-tune: the best low-rank B·A of TUNED − BASE, per module.",
        discussion: """
            Streams both checkpoints (single files or sharded folders, read in 1 MiB chunks, never loaded \
            whole): tensors are compared byte for byte in name order and each changed 2-D weight's difference ΔW \
            is decoded to Float32 — at most two modules in memory at a time — and factored as B = U_k·√S_k, \
            A = √S_k·V_kᵀ from a randomized block Krylov SVD (a Gaussian block of b = k/2 columns from the seeded \
            generator, 12 more blocks of ΔWᵀ·ΔW products, all kept and orthonormalised, ΔW projected on them and \
            decomposed exactly: within about 2·10⁻⁵ of the optimal error on a fine-tune's spectrum); a matrix whose \
            smaller side is at most 13·b gets the exact SVD, which is then about as cheap. The factors are Float32 \
            (--dtype keep: each module's base dtype, half the size, about 10⁻⁴ more error in bf16). \
            --exact computes the full SVD everywhere (the Eckart–Young optimum, much slower on large matrices). \
            Two modules are factored at a time, and their factors wait in an unnamed scratch file beside the \
            output until the adapter is written; the same --seed gives the same adapter.

            Which tensors become what:
              2-D *.weight             a LoRA module (Linear; Conv1D if config.json: gpt2)
              embeddings (a name with  per --embeddings: a LoRA (lora), the tuned matrix in
                'embed', wte, wpe)     modules_to_save (full), or left out (skip)
              changed 1-D tensors      carried whole (modules_to_save): norms
              unchanged tensors        left out
            Refused with exit status 4: a changed bias of a 2-D module (PEFT could only carry it by saving the \
            whole module, replacing its LoRA), changed tensors of other ranks or non-float dtypes. Different \
            names, shapes or dtypes between BASE and TUNED: exit status 3, each one listed. A non-finite difference: \
            exit status 6.

            The adapter has scaling 1 everywhere: lora_alpha = r, per-module ranks (--energy, or matrices smaller \
            than --rank) in rank_pattern and alpha_pattern. The report gives per module the rank, the relative \
            error ‖ΔW − B·A‖_F / ‖ΔW‖_F of the factors as written (Float32: from ‖ΔW‖² − Σσᵢ², B·A being a \
            projection of ΔW; 16-bit factors, or errors below 1e-2: measured with one more product) and, where \
            every singular value is known (--exact or small matrices), the optimal error at that rank.

            Examples:
              peftkit extract ./Llama-base ./Llama-finetuned --rank 64 -o ./extracted-r64
              peftkit extract ./base ./tuned --energy 0.9 --modules q_proj --modules v_proj -o ./lora-90
              peftkit extract ./base ./tuned --rank 16 --embeddings full --exact -o ./lora --json
            """
    )

    @Argument(help: ArgumentHelp("The base model: a folder (one file or shards) or a .safetensors file.", valueName: "base"))
    var base: String

    @Argument(help: ArgumentHelp("The fine-tuned model, with the same tensor names, shapes and dtypes.", valueName: "tuned"))
    var tuned: String

    @OptionGroup var ranks: RankOptions

    @Option(name: .customLong("modules"), help: ArgumentHelp(
        "Only modules whose path matches, as PEFT matches target_modules (q_proj, or a regular expression); repeatable.",
        valueName: "pattern"))
    var modules: [String] = []

    @Option(help: ArgumentHelp("Changed embedding matrices: a LoRA (lora), the whole tuned matrix in modules_to_save (full), or left out (skip).",
                               valueName: "how"))
    var embeddings: ExtractRequest.Embeddings = .lora

    @Flag(help: "Full SVD per module instead of the randomized one: the optimum, slowly.")
    var exact = false

    @Option(help: ArgumentHelp("Seed of the randomized SVD's sketch (the same seed gives the same adapter).", valueName: "n"))
    var seed: UInt64 = 0

    @Option(help: ArgumentHelp("Randomized SVD: columns per Krylov block (default: half the rank, at least 8).", valueName: "b"))
    var blockSize: Int?

    @Option(help: ArgumentHelp("Randomized SVD: Krylov blocks after the first; more is closer to the optimum and slower.",
                               valueName: "q"))
    var iterations: Int = RandomizedSVD.Parameters.default.iterations

    @Option(help: ArgumentHelp("Element type of the factors: f32 (the default, as PEFT keeps adapter weights), or keep for "
                               + "each module's base dtype (half the size; bf16 adds about 10⁻⁴ relative error).",
                               valueName: "dtype"))
    var dtype: OutputDType = .f32

    @OptionGroup var output: OutputOptions
    @OptionGroup var format: AdapterOutputFormatOption
    @OptionGroup var report: JSONOutputOption
    @OptionGroup var progress: ProgressOptions

    init() {}

    func validate() throws {
        guard iterations >= 0, (blockSize ?? 1) >= 1 else {
            throw ValidationError("--iterations must not be negative and --block-size must be at least 1.")
        }
        for pattern in modules where (try? NSRegularExpression(pattern: pattern)) == nil {
            throw ValidationError("--modules '\(pattern)' is not a valid regular expression.")
        }
        try PathArguments.validateDistinct(output: output.output, inputs: [base, tuned])
    }

    func run() async throws {
        let request = ExtractRequest(
            base: base, tuned: tuned, output: output.output, ranks: ranks.choice, modules: modules,
            embeddings: embeddings, exact: exact, seed: seed,
            parameters: RandomizedSVD.Parameters(blockSize: blockSize, iterations: iterations),
            dtype: dtype.dtype, format: format.to.format, force: output.force)
        let console = Console.current
        let bar = ProgressBar.make(quiet: progress.quiet || report.json, console: console)
        var callback: (@Sendable (MergeProgress) -> Void)?
        if let bar { callback = { bar.update($0) } }
        let result: ExtractReport
        do {
            defer { bar?.finish() }
            result = try Extract.run(request, progress: callback)
        }
        console.output(report.json ? Self.json(result) : Self.text(result))
    }

    static func json(_ r: ExtractReport) -> String {
        let modules: [JSONValue] = r.modules.map { m in
            .object([("module", .string(m.path)), ("kind", .string(m.kind.rawValue)),
                     ("shape", .array(m.shape.map { .integer(Int64($0)) })), ("rank", .integer(Int64(m.rank))),
                     ("norm", .reportNumber(m.norm)), ("relative_error", .reportNumber(m.relativeError)),
                     ("optimal_error", m.optimalError.map { .reportNumber($0) } ?? .null)])
        }
        let svd: JSONValue = r.randomized.map { p in
            .object([("block_size", p.blockSize.map { .integer(Int64($0)) } ?? .string("auto")), ("iterations", .integer(Int64(p.iterations))),
                     ("seed", .integer(Int64(bitPattern: r.seed)))])
        } ?? .string("exact")
        return JSONValue.object([
            ("command", .string("extract")), ("base", .string(r.base)), ("tuned", .string(r.tuned)),
            ("output", .string(r.output)), ("svd", svd), ("seconds", .reportNumber(r.seconds)),
            ("modules", .array(modules)), ("carried", .array(r.carried.map { .string($0) })),
            ("skipped", .array(r.skipped.map { .object([("tensor", .string($0.tensor)), ("reason", .string($0.reason))]) })),
            ("unchanged", .integer(Int64(r.unchanged))),
        ]).prettyText(indent: 2) + "\n"
    }

    static func text(_ r: ExtractReport) -> String {
        var table = TextTable([.init(title: "module", alignment: .left), .init(title: "shape", alignment: .right),
                               .init(title: "rank", alignment: .right), .init(title: "rel. error", alignment: .right),
                               .init(title: "optimum", alignment: .right)])
        for m in r.modules {
            table.append([TerminalText.escaped(m.path), NumberFormatting.shape(m.shape), "\(m.rank)",
                          SurgeryFormatting.error(m.relativeError), m.optimalError.map(SurgeryFormatting.error) ?? "-"])
        }
        var text = table.rendered()
        for name in r.carried { text += "carried whole: \(TerminalText.escaped(name))\n" }
        for item in r.skipped { text += "left out: \(TerminalText.escaped(item.tensor)) (\(item.reason))\n" }
        let worst = r.modules.map(\.relativeError).max() ?? 0
        let how = r.randomized.map { "block Krylov SVD, b=\($0.blockSize.map(String.init) ?? "rank/2"), q=\($0.iterations), seed \(r.seed)" } ?? "exact SVD"
        text += "extracted \(r.modules.count) modules (\(how)), \(r.carried.count) carried, \(r.unchanged) unchanged tensors "
            + "→ \(TerminalText.escaped(r.output)); largest relative error \(SurgeryFormatting.error(worst)), "
            + String(format: "%.2f s", r.seconds) + "\n"
        return text
    }
}
