import FuzzSupport
import PEFTKit
import SafeTensors

/// `adapter_config.json`: `StrictJSON.parse` then `PEFTConfig.parse`; an accepted config then resolves the
/// per-module parameters of a typical module path (what the loader does for every module).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard let json = try? StrictJSON.parse(bytes, source: "fuzz"),
          let config = try? PEFTConfig.parse(json, source: "fuzz") else { return 0 }
    for path in ["model.layers.0.self_attn.q_proj", "lm_head", ""] {
        precondition(config.rank(for: path) > 0)
        _ = config.scaling(for: path)
        _ = config.isModuleToSave(path)
    }
    _ = config.json.compactText()
    return 0
}

runLibFuzzer(fuzz)
