import ArgumentParser
import Foundation
import PEFTKit
import SafeTensors

extension CombineMethod: ExpressibleByArgument {}
extension MajoritySign: ExpressibleByArgument {}

/// `peftkit combine A1 A2 … --weight w … --method M -o OUT`.
struct CombineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "combine",
        abstract: "Combine LoRA adapters into one, as PEFT's add_weighted_adapter does.",
        discussion: """
            The same methods and semantics as HF PEFT's LoraModel.add_weighted_adapter (0.21), module by module \
            in Float32 (sᵢ: adapter i's scaling for the module, wᵢ: its --weight):
              cat              A = [wᵢ·sᵢ·Aᵢ] stacked, B = [Bᵢ] side by side: exactly Σ wᵢ·sᵢ·Bᵢ·Aᵢ, r = Σ rᵢ
              linear           A = Σ sign·√|wᵢsᵢ|·Aᵢ, B = Σ √|wᵢsᵢ|·Bᵢ (a rough approximation; one rank)
              ties             as linear, after keeping the --density largest values of each tensor and only \
            those agreeing with the majority sign (averaged)
              magnitude_prune  as linear, after keeping the --density largest values
              dare_linear      as linear, after keeping each value with probability --density, divided by it
              dare_ties        DARE's random pruning, then the ties sign step
              svd              ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ, then its best rank-r factors (full SVD: B = U·S, A = Vᵀ)
              ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd   the method on the ΔWᵢ, then the SVD
            PEFT's svd_clamp is not offered: it clamps at a quantile of the signed singular-vector values, which \
            depends on the signs LAPACK happens to choose.
            The result has r = lora_alpha = the new rank (scaling 1) and use_rslora false: PEFT copies \
            use_rslora from the first adapter, which makes its combined adapter √r too large. With one adapter \
            PEFT (and peftkit) use linear. DARE's masks come from peftkit's seeded generator (--seed), not torch's.

            Refused with exit status 4, naming what: adapters other than LoRA, DoRA, lora_bias, adapters carrying \
            whole tensors (modules_to_save), linear/ties/dare/magnitude_prune over different ranks (PEFT refuses \
            them), modules of different shapes, an svd rank above a module's min(out, in).

            Examples:
              peftkit combine ./style ./task --weight 0.7 --weight 1 --method cat -o ./both
              peftkit combine ./a ./b --weight 1 --weight 1 --method ties --density 0.5 -o ./ties
              peftkit combine ./a ./b --weight 1 --weight -0.5 --method svd --svd-rank 16 -o ./svd16
            """
    )

    @Argument(help: ArgumentHelp("The LoRA adapters: PEFT folders or peftkit files.", valueName: "adapter"))
    var adapters: [String]

    @Option(name: .customLong("weight"), parsing: .unconditionalSingleValue, help: ArgumentHelp(
        "Weight of an adapter; once per adapter, in order (default: 1 each).", valueName: "w"))
    var weights: [Double] = []

    @Option(help: ArgumentHelp("How to combine: \(CombineMethod.allCases.map(\.rawValue).joined(separator: ", ")).",
                               valueName: "method"))
    var method: CombineMethod

    @Option(help: ArgumentHelp("Fraction of values kept (0 < D ≤ 1), for ties, dare and magnitude_prune methods.",
                               valueName: "D"))
    var density: Double?

    @Option(help: ArgumentHelp("The ties methods' majority sign: total (sign of the sum) or frequency (of the count).",
                               valueName: "how"))
    var majoritySign: MajoritySign = .total

    @Option(help: ArgumentHelp("Seed of the DARE masks.", valueName: "n"))
    var seed: UInt64 = 0

    @Option(name: [.customLong("svd-rank"), .customLong("rank")], help: ArgumentHelp(
        "Rank of the svd methods' result (default: the largest of the adapters' ranks).", valueName: "r"))
    var svdRank: Int?

    @OptionGroup var output: OutputOptions
    @OptionGroup var format: AdapterOutputFormatOption

    init() {}

    func validate() throws {
        guard !adapters.isEmpty else { throw ValidationError("Give the adapters to combine.") }
        if !weights.isEmpty && weights.count != adapters.count {
            throw ValidationError("Got \(weights.count) --weight values for \(adapters.count) adapters: give one per adapter, or none.")
        }
        if let bad = weights.first(where: { !$0.isFinite }) { throw ValidationError("--weight \(bad) is not a finite number.") }
        if method.needsDensity {
            guard let density else { throw ValidationError("--method \(method.rawValue) needs --density D.") }
            guard density > 0 && density <= 1 else { throw ValidationError("--density must be in (0, 1], not \(density).") }
        } else if density != nil {
            throw ValidationError("--density is used by the ties, dare and magnitude_prune methods, not \(method.rawValue).")
        }
        if svdRank != nil && !method.isSVD {
            throw ValidationError("--svd-rank is for the svd methods, not \(method.rawValue).")
        }
        if let svdRank, svdRank < 1 { throw ValidationError("--svd-rank must be at least 1.") }
        try PathArguments.validateDistinct(output: output.output, inputs: adapters)
    }

    func run() async throws {
        let loaded = try adapters.map { try AdapterLoader.load($0) }
        let request = CombineRequest(adapters: adapters, weights: weights.isEmpty ? adapters.map { _ in 1 } : weights,
                                     method: method, density: density, majoritySign: majoritySign, seed: seed,
                                     svdRank: svdRank, output: output.output)
        let (combined, report) = try Combine.combine(loaded, request)
        try format.to.format.write(combined, to: output.output, options: AdapterWriteOptions(force: output.force))
        var text = ""
        for note in report.notes { text += "note: \(note)\n" }
        text += "combined \(adapters.count) adapter\(adapters.count == 1 ? "" : "s") with \(report.method.rawValue): "
            + "\(report.modules) modules at rank \(report.rank)"
        if let fraction = report.keptFraction { text += String(format: ", DARE kept %.4f of the values", fraction) }
        text += " → \(TerminalText.escaped(output.output)) (\(format.to.format.id))\n"
        Console.current.output(text)
    }
}
