import ArgumentParser
import Foundation
import GGUF
import PEFTKit

/// `peftkit inspect PATH [--json] [--stats] [--all]`.
struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Describe a safetensors file, a model folder or an adapter: tensors, dtypes, shapes, sizes.",
        discussion: """
            By default only the headers are read: inspecting a checkpoint of many gigabytes takes milliseconds and \
            touches no tensor data. --stats reads every tensor and adds its minimum, maximum, mean, standard \
            deviation (over the finite values) and the number of NaN and infinite values.

            The report starts with a summary (files, tensor and parameter counts, bytes, dtypes, metadata), then \
            lists the tensors in storage order. Above 40 tensors the list shows the first 20 and the last 10; \
            --all shows every one. --json always lists every tensor (schema: spec/inspect-output.md).

            Tensor names and metadata come from the file and are untrusted: control characters are shown \
            escaped, as \\u{1b}.

            A GGUF file (llama.cpp model or adapter, recognised by its magic) is listed with its key-value pairs \
            (arrays shortened to their first 8 values unless --all) and its tensors: ggml type, dimensions in ggml \
            order (numpy's shape reversed), elements, bytes, offset (--json schema: spec/gguf.md).

            Examples:
              peftkit inspect model.safetensors
              peftkit inspect my-lora.gguf --json
              peftkit inspect ./TinyLlama-1.1B --all
              peftkit inspect ./TinyLlama-1.1B --stats
              peftkit inspect ./my-lora --json | jq '.parameters'
            """
    )

    @Argument(help: ArgumentHelp(
        "A .safetensors file, a model folder (one file, or shards with their index), or an adapter folder or file.",
        valueName: "path"))
    var path: String

    @OptionGroup var format: JSONOutputOption

    @Flag(help: "Also read every tensor and report min, max, mean, std, NaN and Inf counts (reads all the data).")
    var stats = false

    @Flag(help: "List every tensor and file instead of shortening long lists.")
    var all = false

    @Option(help: ArgumentHelp(
        "For an adapter: a base model to measure it against (its share of the base's parameters, and whether every target module exists there with a compatible shape).",
        valueName: "base"))
    var base: String?

    init() {}

    func run() async throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw PEFTKitError(.io, file: path, "no such file or folder")
        }
        if GGUFFile.hasMagic(path) {
            // A llama.cpp model or adapter: its header, checked by the strict reader.
            if base != nil { throw ValidationError("--base applies to PEFT and peftkit adapters, not to a GGUF file.") }
            Console.current.output(try GGUFInspection.render(try GGUFFile(path: path), json: format.json, showAll: all,
                                                             statistics: stats))
            return
        }
        var inspection: CheckpointInspection
        switch InspectSubject.classify(path) {
        case .checkpoint(let kind):
            if base != nil { throw ValidationError("--base applies to adapters; \(TerminalText.escaped(path)) is not one.") }
            inspection = try CheckpointInspection(path: path, kind: kind, statistics: stats)
        case .adapter:
            do {
                let adapter = try AdapterLoader.load(path)
                inspection = try CheckpointInspection(adapter: adapter, path: path, statistics: stats)
                inspection.adapter = try AdapterReport(adapter, adapterPath: path, basePath: base)
            } catch let error as PEFTKitError where error.kind == .inconsistentAdapter {
                // List the tensors as stored, then every problem, and fail the check.
                guard var stored = try? CheckpointInspection(path: path, kind: .adapter, statistics: stats) else { throw error }
                stored.adapterProblems = error.details.isEmpty ? [error.message] : error.details
                inspection = stored
            }
        }
        Console.current.output(format.json
            ? InspectJSONReport.render(inspection)
            : InspectTextReport.render(inspection, showAll: all))
        // The report lists the problems; one line on standard error says why the status is not 0, also when
        // standard output goes to a file or a JSON consumer.
        let subject = TerminalText.escaped(path)
        if !inspection.adapterProblems.isEmpty {
            Console.current.error("peftkit: \(subject): unusable adapter, "
                                  + "\(count(inspection.adapterProblems.count, "problem")) (listed in the report)\n")
            throw ExitStatus.checkFailed
        }
        if let fit = inspection.adapter?.base, !fit.problems.isEmpty {
            Console.current.error("peftkit: \(subject): does not fit the base \(TerminalText.escaped(base ?? "")), "
                                  + "\(count(fit.problems.count, "problem")) (listed in the report)\n")
            throw ExitStatus.baseMismatch
        }
    }

    private func count(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }
}
