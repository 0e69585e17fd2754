import ArgumentParser
import GGUF
import Foundation
import PEFTKit
import SafeTensors

/// The root of the command tree.
public struct PeftkitCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "peftkit",
        abstract: "Inspect, convert, merge, unmerge, verify, diff, extract, resize and combine fine-tuning adapters and models, streaming tensor by tensor.",
        discussion: """
            Works on Hugging Face safetensors checkpoints (single files or sharded folders) and on adapters as HF \
            PEFT saves them, and converts LoRA adapters to and from llama.cpp's GGUF and mlx-lm. Methods (peft_type):
            \(RegistryHelp.methods)

            Exit status:
            \(ExitStatus.summary.map { "  \(String($0.status.rawValue).padding(toLength: 3, withPad: " ", startingAt: 0)) \($0.meaning)" }.joined(separator: "\n"))
            """,
        version: "0.1.0",
        subcommands: [
            InspectCommand.self,
            MergeCommand.self,
            UnmergeCommand.self,
            ConvertCommand.self,
            VerifyCommand.self,
            DiffCommand.self,
            ExtractCommand.self,
            ResizeCommand.self,
            CombineCommand.self,
        ]
    )

    public init() {}
}

// MARK: - Runner

extension PeftkitCommand {
    /// Parses `arguments` (without the program name), runs the chosen command, reports any failure on
    /// `Console.current`'s standard error, and returns the exit status. `main` and the tests both go through here,
    /// so what a test sees is exactly what a user gets.
    public static func run(arguments: [String]) async -> Int32 {
        let console = Console.current
        var command: any ParsableCommand
        do {
            command = try await asyncParseAsRoot(arguments)
        } catch {
            return reportParserOutcome(error, to: console)
        }
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            return ExitStatus.success.rawValue
        } catch {
            let status = ExitStatus(for: error)
            // SIGINT/SIGTERM removed the files this command was writing: its failure is the interruption's, which
            // reports itself.
            if TemporaryOutputs.shared.isInterrupted { return status.rawValue }
            switch error {
            case is ExitStatus:
                // The command has reported already (a failed check); the status says the rest.
                break
            case is PEFTKitError, is SafeTensorsError, is GGUFError, is CommandNotAvailable, is CocoaError, is POSIXError:
                console.error(errorLines(for: error).joined(separator: "\n") + "\n")
            default:
                if status == .internalError {
                    console.error(errorLines(for: error).joined(separator: "\n") + "\n")
                } else {
                    // `help` parses into a command whose run() requests help; validation and clean exits thrown
                    // while running are the parser's to word too.
                    return reportParserOutcome(error, to: console)
                }
            }
            return status.rawValue
        }
    }

    /// Help, version and usage errors, worded by the argument parser: help on standard output, errors (with the
    /// usage) on standard error.
    private static func reportParserOutcome(_ error: any Error, to console: Console) -> Int32 {
        let status = ExitStatus(for: error)
        var text = fullMessage(for: error)
        if !text.isEmpty && !text.hasSuffix("\n") { text += "\n" }
        if status == .success { console.output(text) } else { console.error(text) }
        return status.rawValue
    }

    /// `peftkit: <message>` on one line, then one indented line per detail. Messages can quote file contents, so
    /// every line is made terminal-safe: a newline or escape sequence inside a message cannot forge output.
    static func errorLines(for error: any Error) -> [String] {
        switch error {
        case let error as CommandNotAvailable:
            return [error.line]
        case let error as PEFTKitError:
            var parts: [String] = []
            if let file = error.file { parts.append(file) }
            if let tensor = error.tensor { parts.append("'\(tensor)'") }
            parts.append(error.message + cliHint(for: error.remedy))
            return ["peftkit: " + TerminalText.escaped(parts.joined(separator: ": "))]
                + error.details.map { "  - " + TerminalText.escaped($0) }
        case let error as SafeTensorsError:
            return ["peftkit: " + TerminalText.escaped(error.errorDescription ?? error.rule)]
        case let error as GGUFError:
            return ["peftkit: " + TerminalText.escaped(error.errorDescription ?? error.rule.rawValue)]
        case is CocoaError, is POSIXError:
            return ["peftkit: " + TerminalText.escaped(error.localizedDescription)]
        default:
            let description = (error as? any LocalizedError)?.errorDescription ?? String(describing: error)
            return ["peftkit: internal error: " + TerminalText.escaped(description)]
        }
    }

    /// The library leaves the remedy out of its message; on the command line it is a flag, named here.
    static func cliHint(for remedy: PEFTKitError.Remedy?) -> String {
        switch remedy {
        case .replaceExisting: " (use --force to replace it)"
        case .allowNonFinite: " (--allow-non-finite to write it anyway)"
        case nil: ""
        }
    }
}
