import Foundation
import SafeTensors

/// A PEFT adapter folder as `save_pretrained` writes it: `adapter_config.json` + `adapter_model.safetensors`. Read from
/// the folder or from any file inside it; written so that HF PEFT loads it with `PeftModel.from_pretrained`.
public enum PEFTFolderFormat: AdapterFormat {
    public static let id = "peft-safetensors"
    public static let writeName: String? = "peft"
    public static let summary = "PEFT folder with adapter_model.safetensors"

    public static let configFileName = "adapter_config.json"
    public static let safetensorsFileName = "adapter_model.safetensors"

    static let sourceFormat = SourceFormat(id: id, description: "PEFT folder (safetensors)")

    /// The PEFT folder `path` is or lies in: a folder, or a file with an `adapter_config.json` beside it.
    static func folder(of path: String) -> String? {
        guard let folder = adapterFolder(of: path) else { return nil }
        return folder == path || FileManager.default.fileExists(atPath: file(configFileName, in: folder)) ? folder : nil
    }

    static func file(_ name: String, in folder: String) -> String { (folder as NSString).appendingPathComponent(name) }

    /// A PEFT folder, unless it holds only the legacy `adapter_model.bin` (then `PEFTLegacyBinFormat` reads it). A
    /// folder with neither weights file is claimed too, so that reading it says what is missing.
    public static func claims(_ path: String) throws -> Bool {
        guard let folder = folder(of: path) else { return false }
        let hasSafetensors = FileManager.default.fileExists(atPath: file(safetensorsFileName, in: folder))
        let hasLegacy = FileManager.default.fileExists(atPath: file(PEFTLegacyBinFormat.fileName, in: folder))
        return hasSafetensors || !hasLegacy
    }

    public static func read(_ path: String) throws -> Adapter {
        let folder = folder(of: path) ?? path
        let config = try readConfig(folder)
        let safetensorsPath = file(safetensorsFileName, in: folder)
        guard FileManager.default.fileExists(atPath: safetensorsPath) else {
            throw PEFTKitError(.io, file: folder,
                               "no \(safetensorsFileName) or \(PEFTLegacyBinFormat.fileName) in the adapter folder")
        }
        let weights = try SafeTensorsFile(path: safetensorsPath)
        let tensors = try weights.tensors.map { StoredTensor(view: try weights.view($0)) }
        return try PEFTKeys.adapter(config: config, tensors: tensors, source: safetensorsPath, format: sourceFormat)
    }

    /// Parses the folder's `adapter_config.json`.
    static func readConfig(_ folder: String) throws -> PEFTConfig {
        let configPath = file(configFileName, in: folder)
        return try PEFTConfig.parse(try AdapterLoader.readJSON(configPath), source: configPath)
    }

    /// Writes `adapter` into the folder `path`: the config it was read with, written the way PEFT writes it, and its
    /// tensors under their PEFT names, with their dtypes and bytes. The folder is assembled under a temporary name
    /// beside the target and renamed into place, so a reader never sees half an adapter.
    public static func write(_ adapter: Adapter, to path: String, options: AdapterWriteOptions) throws {
        let folder = try OutputFolder(finalPath: path, force: options.force)
        try OutputPath.writeFile(folder.path(of: configFileName), contents: Array(configText(adapter.config).utf8),
                                 reportedAs: path)
        try writeTensors(adapter, to: folder.path(of: safetensorsFileName))
        try folder.publish()  // on any error above, the folder's deinit removes the temporary
    }

    /// The config as PEFT's `save_pretrained` writes it: `json.dumps(config, indent=2, sort_keys=True)`. The parsed
    /// config keeps its key order and number literals, so a config PEFT wrote comes back byte for byte (a config with
    /// non-ASCII text differs only in that it is written as UTF-8 where Python escapes it as \u; both read the same).
    public static func configText(_ config: PEFTConfig) -> String {
        config.json.prettyText(indent: 2)
    }

    /// `adapter_model.safetensors` with the metadata PEFT writes (`format: pt`) and the adapter's own tensors.
    private static func writeTensors(_ adapter: Adapter, to path: String) throws {
        let tensors = PEFTKeys.namedTensors(adapter)
        let writer = try SafeTensorsWriter(path: path,
                                           tensors: tensors.map { TensorSpec(name: $0.name, dtype: $0.tensor.dtype, shape: $0.tensor.shape) },
                                           metadata: [("format", "pt")])
        do {
            for (name, tensor) in tensors {
                try tensor.withBytes { try writer.write(name, bytes: $0) }
            }
            try writer.finish()
        } catch {
            writer.abort()
            throw error
        }
    }
}
