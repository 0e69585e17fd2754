import PEFTKitCLI

@main
struct Entry {
    static func main() async {
        await PeftkitCommand.main()
    }
}
