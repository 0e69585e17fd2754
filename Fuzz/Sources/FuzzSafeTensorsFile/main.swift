import FuzzSupport
import SafeTensors

/// The safetensors reader through its real entry point: the input is written to a file, opened with
/// `SafeTensorsFile(path:)`, and every byte of every tensor's view is read.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = InputFile.write(data, size, name: "input.safetensors")
    guard let file = try? SafeTensorsFile(path: path) else { return 0 }
    var sum = 0
    for tensor in file.tensors {
        guard let view = try? file.view(tensor.name) else { continue }
        require(view.bytes.count == tensor.byteCount, "'\(tensor.name)': view of \(view.bytes.count) bytes")
        for byte in view.bytes { sum &+= Int(byte) }
        file.prefetch(tensor)
        file.release(tensor)
    }
    _ = file.metadata?.count
    return sum == -1 ? 1 : 0
}

runLibFuzzer(fuzz)
