import FuzzSupport
import PEFTKit

/// An mlx-lm adapter folder through `AdapterLoader.load`: the folder test, the config's `lora_parameters`, tensor names
/// and shapes, the transposes into PEFT's layout and the LoRA module checks. One input holds both files: the config,
/// the separator line `--`, then `adapters.safetensors` (no separator: all config, an empty weights file).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let separator: [UInt8] = [0x0A, 0x2D, 0x2D, 0x0A]  // "\n--\n"
    var split = size
    if size >= separator.count {
        for i in 0...(size - separator.count) where bytes[i] == 0x0A && Array(bytes[i..<(i + 4)]) == separator {
            split = i
            break
        }
    }
    let weightsStart = min(size, split + separator.count)
    let config = InputFile.write(data, split, name: "adapter_config.json")
    _ = InputFile.write(data + weightsStart, size - weightsStart, name: "adapters.safetensors")
    let folder = String(config.dropLast("/adapter_config.json".count))
    guard let adapter = try? AdapterLoader.load(folder) else { return 0 }
    require(adapter.format.id == "mlx-lm", "an mlx-lm folder read as \(adapter.format.id)")
    for module in adapter.modules {
        require(module.rank > 0, "module '\(module.path)' has rank \(module.rank)")
        for tensor in module.tensors.values {
            require(tensor.shape.count == 2, "module '\(module.path)': tensor of shape \(tensor.shape)")
            _ = try? tensor.withBytes { $0.count }
        }
    }
    return 0
}

runLibFuzzer(fuzz)
