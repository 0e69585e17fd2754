import FuzzSupport
import SafeTensors

/// The safetensors header parser, in memory: the input is a whole file (8-byte length, JSON, data buffer) and is
/// checked the way `SafeTensorsFile` checks it before handing the JSON to `Header.parse` (which runs `StrictJSON`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 8 else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let length = bytes.loadUnaligned(as: UInt64.self).littleEndian
    guard length <= UInt64(Header.maxLength), 8 + Int(length) <= size else { return 0 }
    let json = UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + Int(length))])
    guard let header = try? Header.parse(json: json, bufferSize: size - 8 - Int(length), file: "fuzz") else { return 0 }
    // What a validated header promises its users.
    precondition(header.dataStart == 8 + Int(length))
    var end = 0
    let tiles = header.tensors.sorted {
        ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound)
    }
    for tensor in tiles {
        precondition(tensor.dataOffsets.lowerBound == end, "tensors do not tile the buffer")
        precondition(Header.byteCount(dtype: tensor.dtype, shape: tensor.shape) == tensor.byteCount)
        precondition(tensor.elementCount >= 0)
        end = tensor.dataOffsets.upperBound
    }
    precondition(zip(header.tensors, header.tensors.dropFirst()).allSatisfy {
        $0.dataOffsets.lowerBound <= $1.dataOffsets.lowerBound
    }, "tensors are not in data-buffer order")
    precondition(end == size - header.dataStart, "tensors do not cover the buffer")
    return 0
}

runLibFuzzer(fuzz)
