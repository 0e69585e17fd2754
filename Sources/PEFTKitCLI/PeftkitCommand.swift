import ArgumentParser

/// The root of the command tree.
public struct PeftkitCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "peftkit",
        abstract: "Inspect, convert, merge, unmerge and verify fine-tuning adapters, streaming tensor by tensor.",
        version: "0.1.0",
        subcommands: []
    )

    public init() {}
}
