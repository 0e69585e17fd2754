import ArgumentParser
import PEFTKit
import SafeTensors

/// `--json`: the machine-readable report on standard output instead of the human one.
struct JSONOutputOption: ParsableArguments {
    @Flag(help: "Write the report as JSON on standard output (schemas in spec/).")
    var json = false
}

/// `--output PATH` and `--force`, for every command that writes.
struct OutputOptions: ParsableArguments {
    @Option(name: [.short, .long], help: ArgumentHelp(
        "Where to write the result. It must not exist yet, unless --force is given.", valueName: "path"))
    var output: String

    @Flag(help: "Replace the output if it exists already (written beside it first, swapped in only when complete).")
    var force = false

    func validate() throws {
        guard !output.isEmpty else { throw ValidationError("--output needs a path.") }
    }
}

/// `--quiet`, for the long-running commands that report progress on standard error.
struct ProgressOptions: ParsableArguments {
    @Flag(name: [.short, .long], help: "Do not report progress on standard error (errors are still reported).")
    var quiet = false
}

/// Element type of written tensors.
enum OutputDType: String, ExpressibleByArgument, CaseIterable, Sendable {
    /// Each tensor keeps the dtype of the base tensor it replaces.
    case keep
    case bf16
    case f16
    case f32

    /// The dtype to write, or nil to keep each tensor's own.
    var dtype: DType? {
        switch self {
        case .keep: nil
        case .bf16: .bf16
        case .f16: .f16
        case .f32: .f32
        }
    }
}

/// The format `convert --to` writes: one of `FormatRegistry.writable`.
struct AdapterFormatChoice: ExpressibleByArgument, Sendable {
    let name: String
    let format: any AdapterFormat.Type

    init?(argument: String) {
        guard let entry = FormatRegistry.writable.first(where: { $0.name == argument }) else { return nil }
        name = entry.name
        format = entry.format
    }

    static var allValueStrings: [String] { FormatRegistry.writable.map { $0.name } }
    var defaultValueDescription: String { name }
}

/// What `--help` says of the registries: one line per method and per writable format.
enum RegistryHelp {
    static var methods: String {
        MethodRegistry.all.map { method in
            // A name longer than its column gets a line of its own, the summary under it, so nothing wraps.
            let name = method.peftTypes.joined(separator: ", ")
            let column = name.count < 9 ? name.padding(toLength: 9, withPad: " ", startingAt: 0) : name + "\n" + String(repeating: " ", count: 11)
            return "  " + column + method.summary
        }.joined(separator: "\n")
    }

    static var writableFormats: String {
        FormatRegistry.writable.map { "  " + $0.name.padding(toLength: 8, withPad: " ", startingAt: 0) + " " + $0.format.summary }
            .joined(separator: "\n")
    }

    static var readableFormats: String {
        FormatRegistry.all.map { "  " + $0.id.padding(toLength: 17, withPad: " ", startingAt: 0) + " " + $0.summary }
            .joined(separator: "\n")
    }
}
