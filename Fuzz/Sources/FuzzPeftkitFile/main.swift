import FuzzSupport
import PEFTKit

/// A peftkit adapter file through `AdapterLoader.load`: safetensors reader, format and version checks, CRC-32s,
/// the embedded PEFT config, the adapter builder and the metadata cross-check. The file sits alone in its folder
/// (no adapter_config.json beside it), so it is read only as a peftkit file.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = InputFile.write(data, size, name: "adapter.safetensors")
    guard let adapter = try? AdapterLoader.load(path) else { return 0 }
    for module in adapter.modules {
        require(module.rank > 0, "module '\(module.path)' has rank \(module.rank)")
        for tensor in module.tensors.values { _ = try? tensor.withBytes { $0.count } }
    }
    return 0
}

runLibFuzzer(fuzz)
