#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PEFTKitCLI

@main
struct Entry {
    static func main() async {
        exit(await PeftkitCommand.run(arguments: Array(CommandLine.arguments.dropFirst())))
    }
}
