import Foundation
@testable import SafeTensors

/// A fresh folder under the system temporary directory, removed by the caller with `removeItem`.
func makeTemporaryFolder() -> String {
    let path = NSTemporaryDirectory() + "safetensors-tests-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Writes a crafted file: the 8-byte length (of `header`, unless overridden), the header bytes, then `data`.
@discardableResult
func writeCraftedFile(at path: String, header: [UInt8], data: [UInt8] = [], declaredLength: UInt64? = nil) -> String {
    var bytes = [UInt8]()
    withUnsafeBytes(of: (declaredLength ?? UInt64(header.count)).littleEndian) { bytes.append(contentsOf: $0) }
    bytes += header + data
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    return path
}

func writeCraftedFile(at path: String, header: String, data: [UInt8] = []) -> String {
    writeCraftedFile(at: path, header: Array(header.utf8), data: data)
}

/// The repository root, found from this source file's location (tests run from a clean clone).
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// Writes `tensors` (name, dtype, shape, bytes) with the writer and returns the path.
@discardableResult
func writeTensors(_ tensors: [(String, DType, [Int], [UInt8])], to path: String,
                  metadata: [(key: String, value: String)]? = [("format", "pt")]) throws -> String {
    let writer = try SafeTensorsWriter(path: path, tensors: tensors.map { TensorSpec(name: $0.0, dtype: $0.1, shape: $0.2) },
                                       metadata: metadata)
    for (name, _, _, bytes) in tensors {
        try bytes.withUnsafeBytes { try writer.write(name, bytes: $0) }
    }
    try writer.finish(sync: false)
    return path
}

func readBytes(_ path: String) -> [UInt8] {
    [UInt8](FileManager.default.contents(atPath: path) ?? Data())
}
