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
    require(header.dataStart == 8 + Int(length), "data starts at \(header.dataStart)")
    var end = 0
    let tiles = header.tensors.sorted {
        ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound)
    }
    for tensor in tiles {
        require(tensor.dataOffsets.lowerBound == end, "tensors do not tile the buffer")
        require(Header.byteCount(dtype: tensor.dtype, shape: tensor.shape) == tensor.byteCount,
                "'\(tensor.name)': size disagrees with its offsets")
        require(tensor.elementCount >= 0, "'\(tensor.name)': negative element count")
        end = tensor.dataOffsets.upperBound
    }
    require(zip(header.tensors, header.tensors.dropFirst()).allSatisfy {
        $0.dataOffsets.lowerBound <= $1.dataOffsets.lowerBound
    }, "tensors are not in data-buffer order")
    require(end == size - header.dataStart, "tensors do not cover the buffer")
    // Names are unique, as JSON keys are (duplicates are refused), and none is the metadata key.
    let names = header.tensors.map(\.name)
    require(Set(names).count == names.count, "two tensors with one name")
    require(!names.contains(Header.metadataKey), "a tensor named like the metadata")
    if let metadata = header.metadata {
        require(Set(metadata.map(\.key)).count == metadata.count, "two metadata entries with one key")
    }
    return 0
}

runLibFuzzer(fuzz)
