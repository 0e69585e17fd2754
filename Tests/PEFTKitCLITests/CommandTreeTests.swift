import Testing
@testable import PEFTKitCLI
import PEFTKit

@Test func rootCommandHasTheNineSubcommands() {
    #expect(PeftkitCommand.configuration.commandName == "peftkit")
    let names = PeftkitCommand.configuration.subcommands.map { $0.configuration.commandName }
    #expect(names == ["inspect", "merge", "unmerge", "convert", "verify", "diff", "extract", "resize", "combine"])
}

@Test(arguments: ["inspect", "merge", "unmerge", "convert", "verify", "diff", "extract", "resize", "combine"])
func everySubcommandHasHelpThatTeaches(name: String) async {
    for arguments in [[name, "--help"], ["help", name]] {
        let run = await peftkit(arguments)
        #expect(run.status == 0, "\(arguments)")
        #expect(run.standardError.isEmpty)
        #expect(run.standardOutput.contains("USAGE: peftkit \(name)"))
        #expect(run.standardOutput.contains("Examples:\n  peftkit \(name)"))
    }
}

@Test func rootHelpDocumentsEveryExitStatus() async {
    let run = await peftkit("--help")
    #expect(run.status == 0)
    for status in ExitStatus.allCases {
        let line = ExitStatus.summary.first { $0.status == status }
        #expect(line != nil, "\(status) is not documented")
        if let line {
            #expect(run.standardOutput.contains("\n  \(status.rawValue)"), "\(status)")
            #expect(run.standardOutput.contains(line.meaning), "\(status)")
        }
    }
}

/// Every option of merge and unmerge parses: the run then fails only because the inputs do not exist (status 5).
@Test(arguments: [
    ["merge", "base", "lora", "--output", "out"],
    ["merge", "base", "a", "b", "--weight", "-1", "--weight", "0.5", "-o", "out", "--dtype", "bf16",
     "--max-shard-size", "2GiB", "--force", "--allow-non-finite", "--json", "--quiet"],
    ["unmerge", "merged", "lora", "--output", "out", "--check-against", "base", "--json", "-q"],
])
func mergeAndUnmergeParseEveryOption(arguments: [String]) async {
    let run = await peftkit(arguments)
    #expect(run.status == ExitStatus.io.rawValue)
    #expect(run.standardError.hasPrefix("peftkit: \(arguments[1]): no such file or folder"))
}

@Test(arguments: [
    (["merge", "base", "a", "b", "--weight", "1", "-o", "out"], "--weight"),
    (["merge", "base", "a", "--weight", "nan", "-o", "out"], "--weight"),
    (["merge", "base", "a", "-o", "out", "--dtype", "f8"], "--dtype"),
    (["merge", "base", "a", "-o", "out", "--max-shard-size", "lots"], "--max-shard-size"),
    (["merge", "base", "-o", "out"], "<adapter>"),
    (["merge", "base", "a"], "--output"),
    (["merge", "base", "a", "-o", "base"], "also an input"),
    (["unmerge", "merged", "lora", "-o", "./lora"], "also an input"),
    (["convert", "lora", "--to", "onnx", "-o", "x"], "--to"),
    (["convert", "lora", "--to", "peft", "-o", "x", "--base", "b"], "--base"),
    (["inspect"], "<path>"),
    (["inspect", "x", "--frobnicate"], "--frobnicate"),
    (["frobnicate"], "frobnicate"),
])
func usageErrorsExitWith64AndShowTheUsage(arguments: [String], mention: String) async {
    let run = await peftkit(arguments)
    #expect(run.status == 64, "\(arguments)")
    #expect(run.standardOutput.isEmpty)
    #expect(run.standardError.hasPrefix("Error: "), "\(run.standardError)")
    #expect(run.standardError.contains(mention), "\(run.standardError)")
    #expect(run.standardError.contains("Usage: peftkit"))
}

@Test func versionAndBareCommandExitCleanly() async {
    let version = await peftkit("--version")
    #expect(version.status == 0)
    #expect(version.standardOutput == "0.1.0\n")
    let bare = await peftkit([])
    #expect(bare.status == 0)
    #expect(bare.standardOutput.contains("SUBCOMMANDS:"))
}

/// `--help` is made from the registries: every method and every format appears, and `convert --to` takes exactly
/// the formats that can be written.
@Test func helpListsEveryRegisteredMethodAndFormat() async {
    let root = await peftkit("--help")
    for method in MethodRegistry.all {
        for peftType in method.peftTypes { #expect(root.standardOutput.contains("  \(peftType)"), "\(peftType)") }
    }
    let convert = await peftkit("convert", "--help")
    for format in FormatRegistry.all {
        #expect(convert.standardOutput.contains("  \(format.id.padding(toLength: 17, withPad: " ", startingAt: 0)) \(format.summary)\n"), "\(format.id)")
    }
    #expect(AdapterFormatChoice.allValueStrings == FormatRegistry.writable.map { $0.name })
    #expect(AdapterFormatChoice.allValueStrings == ["gguf", "peftkit", "mlx", "peft"])
    let unknown = await peftkit("convert", "a", "--to", "peft-bin", "-o", "out")
    #expect(unknown.status == 64)
    #expect(unknown.standardError.contains("peftkit"))
}

/// The registries' one-line summaries fit the help's 80 columns next to their names, so that none is wrapped.
@Test func registrySummariesFitOneHelpLine() {
    for method in MethodRegistry.all { #expect(method.summary.count <= 68, "\(method.name)") }
    for format in FormatRegistry.all { #expect(format.summary.count <= 58, "\(format.id)") }
}
