import Foundation
import SafeTensors

/// A container for adapters: how to recognise it, read it into the format-neutral `Adapter`, and (where it can)
/// write one. Each format is one file; `FormatRegistry.all` lists them.
public protocol AdapterFormat: Sendable {
    /// Stable id, used in JSON reports and the peftkit format's `peftkit.source_format`: `peft-safetensors` …
    static var id: String { get }
    /// The value of `convert --to` that writes this format; nil when peftkit reads it only.
    static var writeName: String? { get }
    /// One line for `--help`, at most 58 characters.
    static var summary: String { get }
    /// Whether the format can record the fingerprint of the base an adapter fits (`BaseFingerprint`).
    static var recordsBaseFingerprint: Bool { get }
    /// Whether reading and writing need the base model (`--base`): a format that names the base's tensors in its own
    /// scheme (GGUF) needs the base's config and shapes to name modules.
    static var needsBase: Bool { get }
    /// Whether writing uses the base model when it is given (`--base`), to check what only the base can tell (mlx-lm:
    /// whether its embeddings are tied); true where `needsBase` is.
    static var usesBase: Bool { get }

    /// Whether `path` is in this format, judged from the file system and as few bytes as possible.
    /// - Throws: the reader's error when `path` can only be this format but is broken.
    static func claims(_ path: String) throws -> Bool
    /// - Throws: `PEFTKitError` or `SafeTensorsError` naming the file, the tensor and the problem.
    static func read(_ path: String) throws -> Adapter
    /// Reads with the base model at hand (`base`, a model folder), for formats that need it; the others ignore it.
    static func read(_ path: String, base: String?) throws -> Adapter
    /// Writes `adapter` at `path`, atomically: nothing appears under `path` until it is complete.
    /// - Throws: `PEFTKitError` `.unsupported` when the format cannot express the adapter exactly; `.io` when the
    ///   path exists (unless `options.force`) or cannot be written.
    static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws
}

extension AdapterFormat {
    public static var recordsBaseFingerprint: Bool { false }
    public static var needsBase: Bool { false }
    public static var usesBase: Bool { needsBase }
    public static func read(_ path: String, base: String?) throws -> Adapter { try read(path) }

    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws {
        throw PEFTKitError(.unsupported, file: path, "peftkit reads \(id) adapters but does not write them")
    }
}

/// The folder an adapter at `path` lives in: `path` itself when it is a folder, else the folder holding the file;
/// nil when nothing is at `path`. Folder formats are recognised from a file inside them too.
func adapterFolder(of path: String) -> String? {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else { return nil }
    if isFolder.boolValue { return path }
    let parent = (path as NSString).deletingLastPathComponent
    return parent.isEmpty ? "." : parent
}

extension CarriedTensor {
    /// Whether this is PEFT's saved copy of a targeted layer's weight (`base_layer`) holding exactly the values of
    /// `baseName` in `checkpoint` (by default its own name): then a format without whole tensors may leave it out.
    /// False for any other carried tensor, or when the base lacks the tensor or differs in shape or any value.
    func isUnchangedCopy(in checkpoint: Checkpoint, of baseName: String? = nil) throws -> Bool {
        guard reason == .baseLayer, let location = checkpoint.location(of: baseName ?? self.baseName),
              location.info.shape == tensor.shape, location.info.dtype.isArithmetic else { return false }
        let view = try location.file.view(location.info)
        let baseValues = Codec.decode(view.bytes, as: location.info.dtype, count: location.info.elementCount)
        try location.file.checkUnchanged()
        return try tensor.floats() == baseValues
    }
}

/// How `AdapterFormat.write` writes.
public struct AdapterWriteOptions: Sendable {
    /// Replace whatever is at the path; without it an existing path is refused.
    public var force: Bool
    /// The base fingerprint to record, where the format has a place for it (nil leaves it absent).
    public var baseFingerprint: String?
    /// The base model folder, for formats that need it (`AdapterFormat.needsBase`).
    public var base: String?
    /// The tensor type to store, for formats that offer a choice (GGUF: f32, f16, bf16, q8_0); nil for the default.
    public var outputType: String?

    public init(force: Bool = false, baseFingerprint: String? = nil, base: String? = nil, outputType: String? = nil) {
        self.force = force
        self.baseFingerprint = baseFingerprint
        self.base = base
        self.outputType = outputType
    }
}

/// The adapter formats peftkit knows, in the order they are tried on a path: a file that describes itself comes
/// before the folder around it. Adding a format is its file and one line here.
public enum FormatRegistry {
    public static let all: [any AdapterFormat.Type] = [
        GGUFFormat.self,
        PeftkitFormat.self,
        MLXFormat.self,
        PEFTFolderFormat.self,
        PEFTLegacyBinFormat.self,
    ]

    /// The formats `convert --to` can write, by their `writeName`.
    public static var writable: [(name: String, format: any AdapterFormat.Type)] {
        all.compactMap { format in format.writeName.map { ($0, format) } }
    }

    public static func format(id: String) -> (any AdapterFormat.Type)? { all.first { $0.id == id } }
}
