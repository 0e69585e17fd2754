import Foundation
import SafeTensors

/// Opens an adapter in whichever format `FormatRegistry` recognises.
public enum AdapterLoader {
    /// Opens `path`: a peftkit adapter file, a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`
    /// or the legacy `adapter_model.bin`), or a file inside one — judged from the files, not from names alone.
    /// - Throws: `PEFTKitError` (`.io` when nothing is at `path` or no format recognises it; the reader's own errors
    ///   otherwise) or `SafeTensorsError` for a malformed safetensors file.
    /// - Parameter base: the base model, for formats that need it to name modules (GGUF).
    public static func load(_ path: String, base: String? = nil) throws -> Adapter {
        guard FileManager.default.fileExists(atPath: path) else {
            throw PEFTKitError(.io, file: path, "no such file or folder")
        }
        guard let format = try recognise(path) else {
            throw PEFTKitError(.invalidConfig, file: path, "neither a peftkit adapter file (no '\(PeftkitFormat.formatKey)' in "
                               + "its safetensors metadata) nor inside a PEFT adapter folder (no "
                               + "\(PEFTFolderFormat.configFileName) beside it)")
        }
        return try format.read(path, base: base)
    }

    /// The first format of the registry that claims `path`.
    /// - Throws: a format's error when `path` can only be that format but is broken.
    public static func recognise(_ path: String) throws -> (any AdapterFormat.Type)? {
        for format in FormatRegistry.all where try format.claims(path) { return format }
        return nil
    }

    /// Whether `path` looks like an adapter rather than a model (used to tell the two apart in `inspect`): a PEFT
    /// folder, the `adapter_model.safetensors` of one, or a peftkit file (only its header is read).
    public static func looksLikeAdapter(_ path: String) -> Bool {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else { return false }
        if isFolder.boolValue {
            return FileManager.default.fileExists(atPath: PEFTFolderFormat.file(PEFTFolderFormat.configFileName, in: path))
        }
        if (path as NSString).lastPathComponent == PEFTFolderFormat.safetensorsFileName { return true }
        return (try? PeftkitFormat.claims(path)) == true
    }
}

extension AdapterLoader {
    /// Reads and strictly parses a JSON file (configs are small; anything over 16 MiB is refused unread).
    /// - Throws: `PEFTKitError` `.invalidConfig` for an oversized file, `.io` when it cannot be read;
    ///   `SafeTensorsError` for JSON that is not strict.
    public static func readJSON(_ path: String) throws -> JSONValue {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        if let size = attributes?[.size] as? Int, size > 16 << 20 {
            throw PEFTKitError(.invalidConfig, file: path, "\(size) bytes is far larger than any adapter config")
        }
        // Foundation leaks a 4 KiB buffer on every read of an empty file: an empty file needs no reading.
        if attributes?[.type] as? FileAttributeType == .typeRegular && attributes?[.size] as? Int == 0 {
            return try StrictJSON.parse([], source: path)
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw PEFTKitError(.io, file: path, "cannot read the file")
        }
        return try data.withUnsafeBytes { try StrictJSON.parse($0, source: path) }
    }
}
