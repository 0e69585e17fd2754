#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import SafeTensors

/// Writes an adapter as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`) that HF PEFT loads with
/// `PeftModel.from_pretrained`.
///
/// The config is the one the adapter was read with, written the way PEFT writes it (indent 2, no trailing newline);
/// the tensors keep their names, dtypes and bytes. The folder is assembled under a temporary name beside the target
/// and renamed into place, so a reader never sees half an adapter and a failure leaves nothing behind.
public enum PEFTFolderWriter {
    /// Writes `adapter` into the folder `path`.
    /// - Parameter force: replace whatever is at `path`; without it an existing path is refused.
    public static func write(_ adapter: Adapter, to path: String, force: Bool = false) throws {
        let folder = try OutputFolder(finalPath: path, force: force)
        try OutputPath.writeFile(folder.path(of: AdapterLoader.configFileName), contents: Array(configText(adapter.config).utf8),
                                 reportedAs: path)
        try writeTensors(adapter, to: folder.path(of: AdapterLoader.safetensorsFileName))
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
        let tensors = adapter.allTensors
        let writer = try SafeTensorsWriter(path: path,
                                           tensors: tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) },
                                           metadata: [("format", "pt")])
        do {
            for tensor in tensors {
                try tensor.withBytes { try writer.write(tensor.name, bytes: $0) }
            }
            try writer.finish()
        } catch {
            writer.abort()
            throw error
        }
    }
}
