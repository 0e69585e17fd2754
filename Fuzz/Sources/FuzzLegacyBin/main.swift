import Foundation
import FuzzSupport
import PEFTKit

/// A legacy `adapter_model.bin` (torch.save ZIP) through `LegacyCheckpoint.read(contentsOf:)`: ZIP reader, pickle
/// machine and gather, exactly as the loader runs them.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = InputFile.write(data, size, name: "adapter_model.bin")
    guard let tensors = try? LegacyCheckpoint.read(contentsOf: URL(fileURLWithPath: path)) else { return 0 }
    for tensor in tensors {
        let count = tensor.shape.reduce(1) { $0.multipliedReportingOverflow(by: $1).partialValue }
        require(tensor.bytes.count == count * (tensor.dtype.bitWidth / 8), "gathered bytes do not fit the shape")
    }
    return 0
}

runLibFuzzer(fuzz)
