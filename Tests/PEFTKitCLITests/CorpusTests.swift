import Foundation
import GGUF
import SafeTensors
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// How long one corpus run may take: generous, so a loaded CI machine passes; it guards against a hang (a refusal
/// that loops or waits), it does not measure speed. Past it the child is killed.
private let hangLimit: Double = 30

/// One folder of Tests/Corpus (see its README): inputs, the command to run on them and what must happen.
struct CorpusCase: Sendable, CustomTestStringConvertible {
    let name: String
    let folder: String
    let category: String
    let command: [String]
    let exit: Int32
    let stderrContains: String?
    let marker: String?
    /// The SafeTensorsError rule the input breaks (safetensors and index cases).
    let rule: String?
    /// The GGUFError rule the GGUF file of the case breaks.
    var ggufRule: String? = nil

    var testDescription: String { name }

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Corpus").path

    /// The cases (or controls) found on disk, in name order. Read with Foundation's JSON parser, not peftkit's.
    static func load(_ kind: String) -> [CorpusCase] {
        let parent = root + "/" + kind
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []).sorted()
        return names.compactMap { name in
            let folder = parent + "/" + name
            guard let data = FileManager.default.contents(atPath: folder + "/case.json"),
                  let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let command = json["command"] as? [String], let exit = json["exit"] as? Int,
                  let category = json["category"] as? String else { return nil }
            return CorpusCase(name: name, folder: folder, category: category, command: command, exit: Int32(exit),
                              stderrContains: json["stderr_contains"] as? String, marker: json["marker"] as? String,
                              rule: json["rule"] as? String, ggufRule: json["gguf_rule"] as? String)
        }
    }

    static let cases = load("cases")
    static let controls = load("controls")

    /// The command line with `{case}` and `{output}` filled in.
    func arguments(output: String) -> [String] {
        command.map { $0.replacingOccurrences(of: "{case}", with: folder).replacingOccurrences(of: "{output}", with: output) }
    }
}

@Suite("Adversarial corpus: the real executable on hostile inputs")
struct CorpusTests {
    /// What the Reliability issue asks the corpus to cover, checked on the case files themselves.
    @Test func corpusCoversTheIssue() throws {
        let cases = CorpusCase.cases
        #expect(cases.count >= 60, "found \(cases.count) cases in \(CorpusCase.root)")
        let categories = Dictionary(grouping: cases, by: \.category).mapValues(\.count)
        for category in ["safetensors", "index", "adapter-config", "legacy-bin", "peftkit-format", "base-mismatch"] {
            #expect((categories[category] ?? 0) >= 3, "category \(category): \(categories[category] ?? 0) cases")
        }
        // Every validation rule of the strict reader has at least one case.
        let validationRules: Set<String> = [
            "fileTooSmall", "headerTooLarge", "headerPastEnd", "headerNotUTF8", "invalidJSON", "duplicateKey",
            "headerNotObject", "invalidMetadata", "invalidEntry", "unknownDType", "invalidShape", "sizeOverflow",
            "partialByte", "invalidOffsets", "byteLengthMismatch", "dataHole", "dataOverlap", "dataPastEnd",
            "trailingBytes", "invalidIndex", "shardNameNotPlain", "tensorNotInNamedShard", "tensorMissingFromIndex",
            "duplicateTensor", "noCheckpoint",
        ]
        let covered = Set(cases.compactMap(\.rule))
        #expect(validationRules.subtracting(covered).isEmpty, "rules without a case: \(validationRules.subtracting(covered).sorted())")
        for testCase in cases {
            #expect((1...125).contains(testCase.exit), "\(testCase.name): expected status \(testCase.exit)")
            #expect(testCase.stderrContains?.isEmpty == false, "\(testCase.name): no message fragment")
        }
        let markers = cases.compactMap(\.marker)
        #expect(markers.count >= 5, "pickle payloads with a marker: \(markers.count)")
        #expect(markers.allSatisfy { $0.hasPrefix("/tmp/peftkit-pwned-") })
        #expect(CorpusCase.controls.count >= 3)
    }

    /// The safetensors and index inputs, opened in-process: refused with the named rule the case records (so each
    /// exercises the rule it claims to, not a neighbour that happens to print a similar message).
    @Test(arguments: CorpusCase.cases.filter { $0.rule != nil })
    func refusedWithItsRule(_ testCase: CorpusCase) throws {
        let input = testCase.arguments(output: "/nonexistent")[1]
        do {
            _ = try Checkpoint(path: input)
            Issue.record("\(testCase.name): \(input) was accepted")
        } catch let error as SafeTensorsError {
            #expect(error.rule == testCase.rule, "\(testCase.name): \(error.localizedDescription)")
        }
    }

    /// The malformed GGUF files, opened in-process with the strict reader: refused with the rule the case records;
    /// together they cover every rule the reader checks.
    @Test func ggufCasesBreakTheirRules() throws {
        let cases = CorpusCase.cases.filter { $0.ggufRule != nil }
        let readerRules: Set<GGUFError.Rule> = [
            .fileTooSmall, .notGGUF, .unsupportedVersion, .bigEndian, .countTooLarge, .stringTooLong, .duplicateKey,
            .invalidBool, .invalidAlignment, .duplicateTensor, .nameTooLong, .unknownTensorType, .partialBlock,
            .sizeOverflow, .misalignedOffset, .dataOverlap, .dataHole, .dataPastEnd, .trailingBytes, .truncated,
        ]
        var covered = Set<GGUFError.Rule>()
        for testCase in cases {
            do {
                _ = try GGUFFile(path: testCase.folder + "/adapter.gguf")
                Issue.record("\(testCase.name): accepted")
            } catch let error as GGUFError {
                #expect(error.rule.rawValue == testCase.ggufRule, "\(testCase.name): \(error.localizedDescription)")
                covered.insert(error.rule)
            }
        }
        // fileTooSmall and notGGUF are the unit tests' (GGUFTests); a too-small file is not recognised as GGUF here.
        #expect(readerRules.subtracting(covered).subtracting([.fileTooSmall, .notGGUF]).isEmpty,
                "rules without a case: \(readerRules.subtracting(covered))")
    }

    @Test(arguments: CorpusCase.cases)
    func refused(_ testCase: CorpusCase) async throws {
        let executable = try PeftkitExecutable.require()
        let work = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let output = work + "/out"
        if let marker = testCase.marker {
            // Left by something else: remove it so that only this run can be blamed.
            try? FileManager.default.removeItem(atPath: marker)
        }
        let inputsBefore = listTree(testCase.folder)

        let result = try await Subprocess.run(executable, testCase.arguments(output: output), timeout: hangLimit)

        let name = testCase.name
        #expect(result.ending == .exited(testCase.exit), "\(name): \(result.ending), standard error: \(result.standardError)")
        if case .exited(let status) = result.ending { #expect((1...125).contains(status)) }
        #expect(result.seconds < hangLimit, "\(name): took \(result.seconds) s")
        // One clear message: a `peftkit: ` line, then only indented detail lines; nothing on standard output.
        let lines = result.standardError.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(result.standardError.hasSuffix("\n"), "\(name): standard error: \(result.standardError)")
        #expect(lines.first?.hasPrefix("peftkit: ") == true, "\(name): standard error: \(result.standardError)")
        #expect(lines.dropFirst().dropLast().allSatisfy { $0.hasPrefix("  ") },
                "\(name): more than one message: \(result.standardError)")
        if let fragment = testCase.stderrContains {
            #expect(result.standardError.contains(fragment), "\(name): '\(fragment)' not in: \(result.standardError)")
        }
        #expect(!result.standardError.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\n") || $0.value == 0x7F },
                "\(name): raw control characters in the message")
        #expect(result.standardOutput.isEmpty, "\(name): standard output: \(result.standardOutput)")
        // Nothing written: not at the output path, no temporary beside it, nothing beside the inputs.
        #expect(listTree(work).isEmpty, "\(name): left in the output folder: \(listTree(work))")
        #expect(listTree(testCase.folder) == inputsBefore, "\(name): the input folder changed")
        if let marker = testCase.marker {
            #expect(!FileManager.default.fileExists(atPath: marker), "\(name): the pickle payload ran and created \(marker)")
        }
    }

    /// The valid inputs the cases are built from: accepted, and what they write is a valid result.
    @Test(arguments: CorpusCase.controls)
    func controlSucceeds(_ control: CorpusCase) async throws {
        let executable = try PeftkitExecutable.require()
        let work = makeTemporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let output = work + "/out"
        let result = try await Subprocess.run(executable, control.arguments(output: output), timeout: hangLimit)
        #expect(result.ending == .exited(0), "\(control.name): \(result.ending), standard error: \(result.standardError)")
        #expect(result.seconds < hangLimit, "\(control.name): took \(result.seconds) s")
        guard control.command.contains("{output}") else { return }
        #expect(FileManager.default.fileExists(atPath: output))
        #expect(temporaryOutputs(in: work).isEmpty)
        if control.command.first == "merge" {
            let merged = try Checkpoint(path: output)
            #expect(merged.tensors.count == 2)
            #expect(FileManager.default.fileExists(atPath: output + "/config.json"))
        }
    }
}
