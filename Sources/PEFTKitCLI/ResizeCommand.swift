import ArgumentParser
import Foundation
import PEFTKit
import SafeTensors

/// `--rank R | --energy F`, shared by extract and resize.
struct RankOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The rank of every module (a module whose matrix or adapter is smaller keeps its own).",
                               valueName: "r"))
    var rank: Int?

    @Option(help: ArgumentHelp(
        "Instead of --rank: per module, the smallest rank whose singular values keep this fraction (0 < F ≤ 1) of "
        + "‖ΔW‖²_F; the ranks go to rank_pattern/alpha_pattern.", valueName: "F"))
    var energy: Double?

    func validate() throws {
        switch (rank, energy) {
        case (nil, nil): throw ValidationError("Give --rank R or --energy F.")
        case (.some, .some): throw ValidationError("Give either --rank or --energy, not both.")
        case (let r?, nil) where r < 1: throw ValidationError("--rank must be at least 1, not \(r).")
        case (nil, let f?) where !(f > 0 && f <= 1): throw ValidationError("--energy must be in (0, 1], not \(f).")
        default: break
        }
    }

    var choice: RankChoice { rank.map { .fixed($0) } ?? .energy(energy!) }
}

/// `--to peft|peftkit`, for the commands that write an adapter.
struct AdapterOutputFormatOption: ParsableArguments {
    @Option(help: ArgumentHelp("The adapter format to write: \(AdapterFormatChoice.allValueStrings.joined(separator: " or ")).",
                               valueName: "format"))
    var to: AdapterFormatChoice = AdapterFormatChoice(argument: "peft")!
}

/// `peftkit resize ADAPTER -o OUT (--rank R | --energy F)`.
struct ResizeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resize",
        abstract: "Re-factor a LoRA adapter at a lower rank, optimally, module by module.",
        discussion: """
            Each module's change s·B·A is re-factored as the best approximation of that rank (Eckart–Young) \
            without forming the out × in product: thin QR of B and of Aᵀ, then the SVD of the small r × r matrix \
            s·R_B·R_Aᵀ. The report gives, per module, the old and new rank and the fraction of ‖s·B·A‖²_F kept \
            (exact: the small matrix has the same singular values).

            The output has scaling 1 everywhere (lora_alpha = r, each module's rank and alpha in rank_pattern and \
            alpha_pattern where it differs from r; use_rslora false), so PEFT and peftkit merge read it without \
            any rank-dependent factor. A module never grows: with --rank above its rank it is re-factored at its \
            own rank (lossless up to Float32 rounding). Carried tensors (modules_to_save …) are copied.

            Refused with exit status 4: adapters other than LoRA, and DoRA.

            Examples:
              peftkit resize ./my-lora-r64 --rank 16 -o ./my-lora-r16
              peftkit resize ./my-lora --energy 0.9 -o ./my-lora-90 --to peftkit
            """
    )

    @Argument(help: ArgumentHelp("The LoRA adapter: a PEFT folder or a peftkit file.", valueName: "adapter"))
    var adapter: String

    @OptionGroup var ranks: RankOptions
    @OptionGroup var output: OutputOptions
    @OptionGroup var format: AdapterOutputFormatOption
    @OptionGroup var report: JSONOutputOption

    init() {}

    func validate() throws {
        try PathArguments.validateDistinct(output: output.output, inputs: [adapter])
    }

    func run() async throws {
        let start = Date()
        let loaded = try AdapterLoader.load(adapter)
        let (resized, modules) = try Resize.resize(loaded, to: ranks.choice, output: output.output)
        try format.to.format.write(resized, to: output.output, options: AdapterWriteOptions(force: output.force))
        let seconds = Date().timeIntervalSince(start)
        if report.json {
            let rows: [JSONValue] = modules.map { m in
                .object([("module", .string(m.path)), ("old_rank", .integer(Int64(m.oldRank))),
                         ("new_rank", .integer(Int64(m.newRank))), ("energy_kept", .reportNumber(m.energyKept)),
                         ("relative_error", .reportNumber(m.relativeError))])
            }
            let json: JSONValue = .object([("command", .string("resize")), ("adapter", .string(adapter)),
                                           ("output", .string(output.output)), ("seconds", .reportNumber(seconds)),
                                           ("modules", .array(rows))])
            Console.current.output(json.prettyText(indent: 2) + "\n")
            return
        }
        var table = TextTable([.init(title: "module", alignment: .left), .init(title: "rank", alignment: .right),
                               .init(title: "new", alignment: .right), .init(title: "energy kept", alignment: .right),
                               .init(title: "rel. error", alignment: .right)])
        for m in modules {
            table.append([TerminalText.escaped(m.path), "\(m.oldRank)", "\(m.newRank)",
                          SurgeryFormatting.fraction(m.energyKept), SurgeryFormatting.error(m.relativeError)])
        }
        let worst = modules.map(\.relativeError).max() ?? 0
        Console.current.output(table.rendered()
            + "resized \(TerminalText.escaped(adapter)) → \(TerminalText.escaped(output.output)) (\(format.to.format.id)): "
            + "\(modules.count) modules, largest relative error \(SurgeryFormatting.error(worst)), "
            + String(format: "%.2f s", seconds) + "\n")
    }
}

enum SurgeryFormatting {
    static func fraction(_ value: Double) -> String { String(format: "%.6f", value) }
    static func error(_ value: Double) -> String { String(format: "%.3e", value) }
}

extension JSONValue {
    static func reportNumber(_ value: Double) -> JSONValue {
        value.isFinite ? .number(value, literal: "\(value)") : .null
    }
}
