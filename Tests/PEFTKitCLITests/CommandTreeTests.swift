import Testing
@testable import PEFTKitCLI

@Test func rootCommandHasAName() {
    #expect(PeftkitCommand.configuration.commandName == "peftkit")
}
