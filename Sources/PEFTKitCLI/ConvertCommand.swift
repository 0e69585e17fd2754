import ArgumentParser
import PEFTKit
import SafeTensors

/// `peftkit convert ADAPTER --to peft|peftkit --output PATH …`: the argument surface is final; the converters arrive
/// with the adapter-format issue.
struct ConvertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert an adapter between the PEFT folder format and a single peftkit file.",
        discussion: """
            Reads a PEFT adapter folder (adapter_config.json with adapter_model.safetensors, or the legacy \
            adapter_model.bin, read without running any pickle code) or a peftkit file, and writes it as --to asks:

              peft     a PEFT folder, as HF PEFT loads it
              peftkit  one .safetensors file with config and tensors (spec/adapter-format.md)

            Tensor values are copied bit for bit; only the container changes. With --base (for --to peftkit), the \
            fingerprint of the base tensors the adapter targets is recorded in the file, so that merging it into a \
            different base later is refused (exit status 3).

            Examples:
              peftkit convert ./my-lora --to peftkit -o my-lora.safetensors --base ./base
              peftkit convert ./old-lora-with-bin --to peft --output ./my-lora
              peftkit convert my-lora.safetensors --to peft --output ./my-lora
            """
    )

    @Argument(help: ArgumentHelp("The adapter: a PEFT folder or a peftkit file.", valueName: "adapter"))
    var adapter: String

    @Option(help: ArgumentHelp("The format to write: peft or peftkit.", valueName: "format"))
    var to: AdapterFormatChoice

    @OptionGroup var output: OutputOptions

    @Option(help: ArgumentHelp("The base model the adapter was trained on, to fingerprint (with --to peftkit).",
                               valueName: "base"))
    var base: String?

    init() {}

    func validate() throws {
        if base != nil && to != .peftkit {
            throw ValidationError("--base is used only with --to peftkit (a PEFT folder has no place for a fingerprint).")
        }
        try PathArguments.validateDistinct(output: output.output, inputs: [adapter] + (base.map { [$0] } ?? []))
    }

    func run() async throws {
        let loaded = try AdapterLoader.load(adapter)
        var fingerprintNote = ""
        switch to {
        case .peft:
            try PEFTFolderWriter.write(loaded, to: output.output, force: output.force)
            if loaded.base.fingerprint != nil { fingerprintNote = " (a PEFT folder has no place for the base fingerprint; it is dropped)" }
        case .peftkit:
            var fingerprint = loaded.base.fingerprint
            if let base {
                // Only fingerprint a base the adapter actually fits.
                let report = try AdapterReport(loaded, adapterPath: adapter, basePath: base)
                if let problems = report.base?.problems, !problems.isEmpty {
                    throw PEFTKitError(.baseMismatch, file: base, "the adapter does not fit this base model", details: problems)
                }
                fingerprint = try BaseFingerprint.compute(adapter: loaded, base: try Checkpoint(path: base))
            }
            try PeftkitFormat.write(loaded, to: output.output, fingerprint: fingerprint, force: output.force)
            fingerprintNote = fingerprint.map { ", base fingerprint \($0)" } ?? ", no base fingerprint (give --base to record one)"
        }
        Console.current.output("converted \(TerminalText.escaped(adapter)) (\(loaded.method.peftType) \(loaded.variant.rawValue), "
            + "\(loaded.modules.count) modules, \(loaded.allTensors.count) tensors) → \(TerminalText.escaped(output.output)) "
            + "as \(to == .peft ? "a PEFT folder" : "a peftkit file")\(fingerprintNote)\n")
    }
}
