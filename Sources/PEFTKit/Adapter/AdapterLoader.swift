import Foundation
import SafeTensors

/// Opens an adapter from any of the formats peftkit reads.
public enum AdapterLoader {
    public static let configFileName = "adapter_config.json"
    public static let safetensorsFileName = "adapter_model.safetensors"
    public static let legacyFileName = "adapter_model.bin"

    /// Opens `path`: a peftkit adapter file (a safetensors file whose metadata has `peftkit.format`), a PEFT adapter
    /// folder (`adapter_config.json` + `adapter_model.safetensors` or the legacy `adapter_model.bin`), or a file
    /// inside one.
    public static func load(_ path: String) throws -> Adapter {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
            throw PEFTKitError(.io, file: path, "no such file or folder")
        }
        if isFolder.boolValue { return try loadPEFTFolder(path) }
        let folder = enclosingFolder(path)
        let hasConfigBeside = FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent(configFileName))
        // A file describes itself: a peftkit file is read as one even inside a PEFT folder.
        if path.hasSuffix(".safetensors") || !hasConfigBeside {
            do {
                let file = try SafeTensorsFile(path: path)
                if PeftkitFormat.isPeftkitFile(file) { return try PeftkitFormat.read(file) }
            } catch let error as SafeTensorsError where !hasConfigBeside && path.hasSuffix(".safetensors") {
                throw error
            } catch is SafeTensorsError {
                // Not a safetensors file: judged below by what surrounds it.
            }
        }
        if hasConfigBeside { return try loadPEFTFolder(folder) }
        throw PEFTKitError(.invalidConfig, file: path, "neither a peftkit adapter file (no '\(PeftkitFormat.formatKey)' in "
                           + "its safetensors metadata) nor inside a PEFT adapter folder (no \(configFileName) beside it)")
    }

    /// Whether `path` looks like an adapter rather than a model (used to tell the two apart in `inspect`): a PEFT
    /// folder, the `adapter_model.safetensors` of one, or a peftkit file (only its header is read).
    public static func looksLikeAdapter(_ path: String) -> Bool {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else { return false }
        if isFolder.boolValue {
            return FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(configFileName))
        }
        if (path as NSString).lastPathComponent == safetensorsFileName { return true }
        guard let file = try? SafeTensorsFile(path: path) else { return false }
        return PeftkitFormat.isPeftkitFile(file)
    }

    private static func enclosingFolder(_ path: String) -> String {
        let folder = (path as NSString).deletingLastPathComponent
        return folder.isEmpty ? "." : folder
    }

    static func loadPEFTFolder(_ folder: String) throws -> Adapter {
        let configPath = (folder as NSString).appendingPathComponent(configFileName)
        let config = try PEFTConfig.parse(try readJSON(configPath), source: configPath)
        let safetensorsPath = (folder as NSString).appendingPathComponent(safetensorsFileName)
        let legacyPath = (folder as NSString).appendingPathComponent(legacyFileName)
        if FileManager.default.fileExists(atPath: safetensorsPath) {
            let file = try SafeTensorsFile(path: safetensorsPath)
            let tensors = try file.tensors.map { StoredTensor(view: try file.view($0)) }
            return try AdapterBuilder.build(config: config, tensors: tensors, source: safetensorsPath, format: .peftSafetensors)
        }
        if FileManager.default.fileExists(atPath: legacyPath) {
            let tensors = try LegacyCheckpoint.read(contentsOf: URL(fileURLWithPath: legacyPath)).map {
                StoredTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: $0.bytes)
            }
            return try AdapterBuilder.build(config: config, tensors: tensors, source: legacyPath, format: .peftBin)
        }
        throw PEFTKitError(.io, file: folder, "no \(safetensorsFileName) or \(legacyFileName) in the adapter folder")
    }

    /// Reads and strictly parses a JSON file (configs are small; anything over 16 MiB is refused unread).
    static func readJSON(_ path: String) throws -> JSONValue {
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
