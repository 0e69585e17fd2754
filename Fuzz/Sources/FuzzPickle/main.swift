import FuzzSupport
@testable import PEFTKit

/// The pickle machine and the gather step of legacy checkpoints, without the ZIP around them (whose CRC-32 checks
/// would stop almost every mutation of the pickle): the input is `data.pkl`; every storage it names is supplied
/// with exactly the size its persistent id declares, as a well-formed archive would hold it, and every tensor is
/// gathered from it. Needs PEFTKit built with testability (SwiftPM's debug default).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard let stateDict = try? PickleMachine.stateDict(from: input, file: "fuzz") else { return 0 }
    var storages: [String: (description: PickledStorage, bytes: [UInt8])] = [:]
    for (name, tensor) in stateDict {
        let storage = tensor.storage
        if storages[storage.key] == nil {
            let elementSize = storage.elementType.map { $0.bitWidth / 8 } ?? 1
            let (byteCount, overflow) = storage.count.multipliedReportingOverflow(by: elementSize)
            // A real archive holds the storage's bytes: keep to sizes a fuzz input could plausibly stand for.
            guard !overflow, byteCount <= 1 << 20 else { return 0 }
            storages[storage.key] = (storage, (0..<byteCount).map { UInt8(truncatingIfNeeded: $0) })
        }
        guard let stored = storages[storage.key], stored.description == storage else { return 0 }
        guard let bytes = try? LegacyCheckpoint.gather(tensor, from: stored.bytes, name: name, file: "fuzz") else {
            continue
        }
        let count = tensor.shape.reduce(1, *)
        require(bytes.count == count * (tensor.dtype.bitWidth / 8), "gathered bytes do not fit the shape")
    }
    return 0
}

runLibFuzzer(fuzz)
