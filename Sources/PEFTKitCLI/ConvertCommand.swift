import ArgumentParser
import GGUF
import PEFTKit
import SafeTensors

/// `peftkit convert ADAPTER --to FORMAT --output PATH [--base BASE]`: reads any format `FormatRegistry` knows and
/// writes the one asked for.
struct ConvertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert an adapter between the adapter formats peftkit knows.",
        discussion: """
            Reads an adapter in any of these formats (recognised from its files, not from its name):
            \(RegistryHelp.readableFormats)

            and writes it as --to asks (a PEFT folder is what HF PEFT loads; the peftkit file is \
            spec/adapter-format.md):
            \(RegistryHelp.writableFormats)

            Tensor values are copied bit for bit; only the container changes. With --base (for a format that \
            records it), the fingerprint of the base tensors the adapter targets is recorded in the file, so that \
            merging it into a different base later is refused (exit status 3).

            Examples:
              peftkit convert ./my-lora --to peftkit -o my-lora.safetensors --base ./base
              peftkit convert ./old-lora-with-bin --to peft --output ./my-lora
              peftkit convert my-lora.safetensors --to peft --output ./my-lora
              peftkit convert ./my-lora --to mlx -o ./my-lora-mlx      (mlx-lm: load_adapters)

            mlx-lm has one rank and one scale per adapter: smaller ranks are zero-padded and scales that differ by \
            a power of two folded into lora_b (exact); other scales are refused. A LoRA on embed_tokens or lm_head \
            needs --base with --to mlx (mlx-lm applies an embed_tokens LoRA to a tied output head too, and a tied \
            base has no lm_head): refused on a base with tied embeddings (exit status 4).
              peftkit convert ./old-bone --to peft --as miss -o ./as-miss   (for PEFT 0.19+)

            llama.cpp (GGUF) adapters need --base, the Hugging Face base folder, both ways: its config.json \
            gives the architecture (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3) and the head counts of \
            the Q/K row permutation llama.cpp applies, its tensors the shapes to check. rsLoRA, rank_pattern and \
            alpha_pattern come out exact in llama.cpp (it scales every pair by alpha / r: the true per-module \
            scale is folded into lora_b where they differ; spec/gguf.md). DoRA, lora_bias, modules_to_save and a \
            LoRA on lm_head or embed_tokens of a base with tied embeddings are refused (exit status 4). A GGUF \
            input is recognised by its magic, not its name:
              peftkit convert ./my-lora --to gguf --base ./base -o my-lora.gguf [--outtype f16]
              peftkit convert my-lora.gguf --to peft --base ./base -o ./my-lora
              peftkit inspect my-lora.gguf
            """
    )

    @Argument(help: ArgumentHelp("The adapter: a PEFT folder, a peftkit file or an mlx-lm adapter folder.",
                                 valueName: "adapter"))
    var adapter: String

    @Option(help: ArgumentHelp("The format to write: \(AdapterFormatChoice.allValueStrings.joined(separator: " or ")).",
                               valueName: "format"))
    var to: AdapterFormatChoice

    @OptionGroup var output: OutputOptions

    @Option(help: ArgumentHelp("The base model the adapter was trained on: fingerprinted with --to peftkit; needed "
                               + "to write or read a GGUF adapter (architecture, head counts, shapes), and to write "
                               + "an mlx-lm adapter with an embed_tokens or lm_head LoRA (tied embeddings?).",
                               valueName: "base"))
    var base: String?

    @Option(help: ArgumentHelp("With --to gguf, the tensor type: f32 (default), f16, bf16 or q8_0 (Q8_0 where a row "
                               + "is whole blocks of 32, else F16, as llama.cpp's converter does).", valueName: "type"))
    var outtype: String?

    @Option(name: .customLong("as"), help: ArgumentHelp(
        "Rewrite the adapter as another method that computes the same: 'miss' turns a Bone adapter into the MiSS "
        + "adapter PEFT 0.19 and later load (PEFT removed Bone).", valueName: "method"))
    var asMethod: String?

    init() {}

    func validate() throws {
        if let asMethod, asMethod != MiSS.name {
            throw ValidationError("--as takes 'miss' (a Bone adapter rewritten as MiSS), not '\(asMethod)'.")
        }
        let readsGGUF = GGUFFile.hasMagic(adapter)
        if let outtype, to.format != GGUFFormat.self || !GGUFFormat.outputTypes.contains(outtype) {
            throw ValidationError(to.format == GGUFFormat.self
                ? "--outtype takes \(GGUFFormat.outputTypes.joined(separator: ", ")), not '\(outtype)'."
                : "--outtype applies to --to gguf only.")
        }
        if base == nil && (to.format.needsBase || readsGGUF) {
            throw ValidationError("a GGUF adapter names llama.cpp's tensors, not the model's modules: "
                + "\(readsGGUF ? "reading" : "writing") one needs --base, the Hugging Face base folder.")
        }
        if base != nil && !to.format.recordsBaseFingerprint && !to.format.usesBase && !readsGGUF {
            throw ValidationError("--base is used only with --to "
                + "\(FormatRegistry.writable.filter { $0.format.recordsBaseFingerprint || $0.format.usesBase }.map(\.name).joined(separator: " or ")) "
                + "(a \(to.name) adapter has no place for a fingerprint).")
        }
        try PathArguments.validateDistinct(output: output.output, inputs: [adapter] + (base.map { [$0] } ?? []))
    }

    func run() async throws {
        let read = try AdapterLoader.load(adapter, base: base)
        let loaded = asMethod == nil ? read : try MiSS.fromBone(read)
        var fingerprint = to.format.recordsBaseFingerprint ? loaded.base.fingerprint : nil
        if let base, to.format.recordsBaseFingerprint {
            // Only fingerprint a base the adapter actually fits.
            let report = try AdapterReport(loaded, adapterPath: adapter, basePath: base)
            if let problems = report.base?.problems, !problems.isEmpty {
                throw PEFTKitError(.baseMismatch, file: base, "the adapter does not fit this base model", details: problems)
            }
            fingerprint = try BaseFingerprint.compute(adapter: loaded, base: try Checkpoint(path: base))
        }
        try to.format.write(loaded, to: output.output,
                            options: AdapterWriteOptions(force: output.force, baseFingerprint: fingerprint, base: base,
                                                         outputType: outtype))
        let fingerprintNote = if to.format.recordsBaseFingerprint {
            fingerprint.map { ", base fingerprint \($0)" } ?? ", no base fingerprint (give --base to record one)"
        } else if loaded.base.fingerprint != nil {
            " (a \(to.name) adapter has no place for the base fingerprint; it is dropped)"
        } else {
            ""
        }
        Console.current.output("converted \(TerminalText.escaped(adapter)) (\(loaded.config.peftType) \(loaded.variant), "
            + "\(loaded.modules.count) modules, \(loaded.allTensors.count) tensors) → \(TerminalText.escaped(output.output)) "
            + "as \(to.format.id)\(fingerprintNote)\n")
    }
}
