import FuzzSupport
import Glibc
import GGUF
import PEFTKit

/// The GGUF reader, in memory and through a file (the chunked pread cursor): both must agree. An accepted file
/// must keep the reader's promises (contiguous aligned offsets inside the file), give every tensor's bytes, write
/// back through GGUFWriter and read back the same; when the repository's llama fixture base is there, the input is
/// also read as a LoRA adapter for it (GGUFFormat: names, pairs, shapes, permutation, Q8_0).
let llamaBase: String? = {
    // Fuzz/Sources/FuzzGGUF/main.swift → the repository root.
    var root = "\(#filePath)"
    for _ in 0..<4 { root = String(root[..<(root.lastIndex(of: "/") ?? root.startIndex)]) }
    let base = root + "/fixtures/gguf/bases/llama"
    return access(base + "/config.json", R_OK) == 0 ? base : nil
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let path = InputFile.write(data, size, name: "input.gguf")
    let inMemory = Result { try GGUFFile(bytes: bytes, name: "fuzz") }
    let onDisk = Result { try GGUFFile(path: path) }
    switch (inMemory, onDisk) {
    case (.failure(let a as GGUFError), .failure(let b as GGUFError)):
        require(a.rule == b.rule, "memory and file readers disagree: \(a.rule) vs \(b.rule)")
        return 0
    case (.success(let file), .success(let disk)):
        require(file.keyValues == disk.keyValues && file.tensors == disk.tensors, "memory and file readers disagree")
        check(file, size: size)
    default:
        require(false, "memory and file readers disagree on whether the input is valid")
    }
    if let llamaBase { _ = try? GGUFFormat.read(path, base: llamaBase) }
    return 0
}

func check(_ file: GGUFFile, size: Int) {
    var expected = 0
    var tensors: [GGUFWriter.Tensor] = []
    for tensor in file.tensors {
        require(tensor.offset == expected, "'\(tensor.name)': offsets are not contiguous")
        require(tensor.offset % file.alignment == 0, "'\(tensor.name)': misaligned")
        require(file.dataStart + tensor.offset + tensor.byteCount <= size, "'\(tensor.name)': data past the end")
        expected = (tensor.offset + tensor.byteCount + file.alignment - 1) / file.alignment * file.alignment
        guard let data = try? file.bytes(of: tensor) else {
            require(false, "'\(tensor.name)': bytes of an accepted file cannot be read")
            return
        }
        require(data.count == tensor.byteCount, "'\(tensor.name)': wrong byte count")
        if tensor.type == .q8_0 { _ = Q8_0.dequantize(data, count: tensor.elementCount) }
        tensors.append(GGUFWriter.Tensor(name: tensor.name, type: tensor.type, dimensions: tensor.dimensions, bytes: data))
    }
    guard let written = try? GGUFWriter.serialize(keyValues: file.keyValues, tensors: tensors, file: "fuzz") else {
        require(false, "an accepted file does not write back")
        return
    }
    guard let again = try? GGUFFile(bytes: written) else {
        require(false, "what the writer wrote does not read back")
        return
    }
    // NaN float values compare unequal; compare their bits through the writer's bytes instead.
    require(again.tensors == file.tensors, "tensors changed through the writer")
    require((try? GGUFWriter.serialize(keyValues: again.keyValues, tensors: tensors, file: "fuzz")) == written,
            "key-value pairs changed through the writer")
}

runLibFuzzer(fuzz)
