import Foundation

/// A PEFT adapter folder from before safetensors: `adapter_config.json` + a pickled `adapter_model.bin`, read with an
/// allow-listed pickle machine that never runs code (`LegacyCheckpoint`). Read only.
public enum PEFTLegacyBinFormat: AdapterFormat {
    public static let id = "peft-bin"
    public static let writeName: String? = nil
    public static let summary = "PEFT folder with legacy adapter_model.bin (no pickle run)"

    public static let fileName = "adapter_model.bin"

    static let sourceFormat = SourceFormat(id: id, description: "PEFT folder (legacy adapter_model.bin)")

    /// A PEFT folder whose weights are only in `adapter_model.bin`.
    public static func claims(_ path: String) throws -> Bool {
        guard let folder = PEFTFolderFormat.folder(of: path) else { return false }
        return FileManager.default.fileExists(atPath: PEFTFolderFormat.file(fileName, in: folder))
            && !FileManager.default.fileExists(atPath: PEFTFolderFormat.file(PEFTFolderFormat.safetensorsFileName, in: folder))
    }

    public static func read(_ path: String) throws -> Adapter {
        let folder = PEFTFolderFormat.folder(of: path) ?? path
        let config = try PEFTFolderFormat.readConfig(folder)
        let legacyPath = PEFTFolderFormat.file(fileName, in: folder)
        let tensors = try LegacyCheckpoint.read(contentsOf: URL(fileURLWithPath: legacyPath)).map {
            StoredTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: $0.bytes)
        }
        return try PEFTKeys.adapter(config: config, tensors: tensors, source: legacyPath, format: sourceFormat)
    }
}
