import PEFTKitCLI
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct Entry {
    static func main() async {
        KernelRelaunch.relaunchIfFaster()
        ProcessSignals.install()
        ProcessSignals.exit(await PeftkitCommand.run(arguments: Array(CommandLine.arguments.dropFirst())))
    }
}
