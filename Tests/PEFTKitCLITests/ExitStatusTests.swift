import ArgumentParser
import Foundation
import PEFTKit
import SafeTensors
import Testing
@testable import PEFTKitCLI

@Test func peftKitErrorKindsMapToTheDocumentedStatuses() {
    let expected: [(PEFTKitError.Kind, Int32)] = [
        (.invalidConfig, 2), (.inconsistentAdapter, 2), (.legacyCheckpoint, 2), (.corrupted, 2),
        (.baseMismatch, 3), (.unsupported, 4), (.io, 5), (.numerics, 6),
    ]
    for (kind, status) in expected {
        #expect(ExitStatus(for: PEFTKitError(kind, "x")).rawValue == status, "\(kind)")
    }
}

@Test func safeTensorsErrorsAreInvalidInputExceptFileSystemFailures() throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    #expect(ExitStatus(for: SafeTensorsError.invalidJSON(file: "f", detail: "d")) == .invalidInput)
    #expect(ExitStatus(for: SafeTensorsError.dataHole(file: "f", tensor: "t", gapStart: 0, gapEnd: 8)) == .invalidInput)
    #expect(ExitStatus(for: SafeTensorsError.invalidIndex(file: "f", detail: "d")) == .invalidInput)
    #expect(ExitStatus(for: SafeTensorsError.noCheckpoint(path: folder, detail: "no .safetensors file")) == .invalidInput)
    #expect(ExitStatus(for: SafeTensorsError.noCheckpoint(path: folder + "/missing", detail: "no such file")) == .io)
    #expect(ExitStatus(for: SafeTensorsError.io(file: "f", operation: "open", reason: "denied")) == .io)
    #expect(ExitStatus(for: SafeTensorsError.fileChanged(file: "f", detail: "shrank")) == .io)
}

@Test func otherErrorsMapInOnePlace() {
    struct Unclassified: Error {}
    #expect(ExitStatus(for: ExitStatus.checkFailed) == .checkFailed)
    #expect(ExitStatus(for: CommandNotAvailable(commandName: "merge")) == .unsupported)
    #expect(ExitStatus(for: ValidationError("bad")) == .usage)
    #expect(ExitStatus(for: CleanExit.helpRequest()) == .success)
    #expect(ExitStatus(for: CocoaError(.fileReadNoPermission)) == .io)
    #expect(ExitStatus(for: Unclassified()) == .internalError)
}

@Test func errorLinesAreOneLinePlusIndentedDetailsAndTerminalSafe() {
    let error = PEFTKitError(.inconsistentAdapter, file: "a/adapter_model.safetensors", tensor: "q\u{1b}[2J",
                             "2 problems", details: ["lora_A missing", "rank\nmismatch"])
    #expect(PeftkitCommand.errorLines(for: error) == [
        "peftkit: a/adapter_model.safetensors: 'q\\u{1b}[2J': 2 problems",
        "  - lora_A missing",
        "  - rank\\u{a}mismatch",
    ])
    #expect(PeftkitCommand.errorLines(for: SafeTensorsError.trailingBytes(file: "m.safetensors", count: 3))
        == ["peftkit: m.safetensors: 3 trailing bytes after the last tensor"])
}

/// The library's message names no flag; the CLI adds the one that gets past the refusal, before any details.
@Test func errorLinesNameTheFlagForARemedy() {
    let exists = PEFTKitError(.io, file: "out", "already exists", remedy: .replaceExisting)
    #expect(PeftkitCommand.errorLines(for: exists) == ["peftkit: out: already exists (use --force to replace it)"])
    let nonFinite = PEFTKitError(.numerics, file: "out/model.safetensors", tensor: "w", "merged value is nan",
                                 details: ["row 0"], remedy: .allowNonFinite)
    #expect(PeftkitCommand.errorLines(for: nonFinite) == [
        "peftkit: out/model.safetensors: 'w': merged value is nan (--allow-non-finite to write it anyway)",
        "  - row 0",
    ])
}
