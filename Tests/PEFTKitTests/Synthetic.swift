import Foundation
import SafeTensors
@testable import PEFTKit

/// Small deterministic pseudo-random numbers (xorshift), so tests need no fixtures for their own inputs.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
    /// Uniform in [-scale, scale).
    mutating func value(_ scale: Float) -> Float { (Float(next() % 2_000_001) / 1_000_000 - 1) * scale }
    mutating func values(_ count: Int, scale: Float) -> [Float] { (0..<count).map { _ in value(scale) } }
}

/// Encodes Float32 values as `dtype` bytes with the test's own rounding (Swift's Float16 for F16, Double arithmetic
/// for BF16), independent of the code under test.
func referenceBytes(_ values: [Double], as dtype: DType) -> [UInt8] {
    var bytes: [UInt8] = []
    for value in values {
        switch dtype {
        case .f32: withUnsafeBytes(of: Float(value).bitPattern.littleEndian) { bytes += $0 }
        case .f16: withUnsafeBytes(of: Float16(Float(value)).bitPattern.littleEndian) { bytes += $0 }
        case .bf16:
            // Nearest bf16 to the Float32 value, ties to even, by comparing the two candidates in Double.
            let f = Float(value)
            let down = f.bitPattern & 0xFFFF_0000
            let up = down &+ 0x1_0000
            let dDown = abs(Double(f) - Double(Float(bitPattern: down)))
            let dUp = abs(Double(Float(bitPattern: up)) - Double(f))
            let pick = dDown < dUp || (dDown == dUp && (down >> 16) & 1 == 0) ? down : up
            withUnsafeBytes(of: UInt16(pick >> 16).littleEndian) { bytes += $0 }
        default: fatalError("unsupported in tests")
        }
    }
    return bytes
}

func decodeValues(_ bytes: [UInt8], as dtype: DType) -> [Float] {
    let count = bytes.count / (dtype.bitWidth / 8)
    return [Float](unsafeUninitializedCapacity: count) { buffer, n in
        bytes.withUnsafeBytes { Codec.decode($0, as: dtype, into: buffer) }
        n = count
    }
}

/// A one-layer model: `layer.weight` (out × in) and optionally `layer.bias`, plus an untouched `other.weight`.
struct SyntheticModel {
    var weight: [Float]
    var bias: [Float]?
    let rows: Int
    let columns: Int
    let dtype: DType

    init(rows: Int, columns: Int, dtype: DType, withBias: Bool = false, seed: UInt64 = 1) {
        var random = TestRandom(seed: seed)
        self.rows = rows
        self.columns = columns
        self.dtype = dtype
        // Round the base to its dtype once so that the test's Float32 view equals what the file holds.
        weight = decodeValues(referenceBytes(random.values(rows * columns, scale: 0.5).map(Double.init), as: dtype), as: dtype)
        bias = withBias ? decodeValues(referenceBytes(random.values(rows, scale: 0.5).map(Double.init), as: dtype), as: dtype) : nil
    }

    /// Writes `model.safetensors` + `config.json` into a new folder.
    func write(to folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var tensors: [(String, DType, [Int], [UInt8])] = [
            ("layer.weight", dtype, [rows, columns], referenceBytes(weight.map(Double.init), as: dtype)),
            ("other.weight", dtype, [2, 3], referenceBytes([1, 2, 3, 4, 5, 6], as: dtype)),
        ]
        if let bias { tensors.append(("layer.bias", dtype, [rows], referenceBytes(bias.map(Double.init), as: dtype))) }
        let writer = try SafeTensorsWriter(path: folder + "/model.safetensors",
                                           tensors: tensors.map { TensorSpec(name: $0.0, dtype: $0.1, shape: $0.2) })
        for tensor in tensors { try tensor.3.withUnsafeBytes { try writer.write(tensor.0, bytes: $0) } }
        try writer.finish(sync: false)
        try Data("{\n  \"model_type\": \"synthetic\"\n}\n".utf8).write(to: URL(fileURLWithPath: folder + "/config.json"))
    }
}

/// Writes a PEFT adapter folder: the config (as JSON text) and F32 tensors named as PEFT names them.
func writeAdapter(to folder: String, config: String, tensors: [(String, [Int], [Float])]) throws {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    try Data(config.utf8).write(to: URL(fileURLWithPath: folder + "/adapter_config.json"))
    let writer = try SafeTensorsWriter(path: folder + "/adapter_model.safetensors",
                                       tensors: tensors.map { TensorSpec(name: "base_model.model." + $0.0, dtype: .f32, shape: $0.1) })
    for (name, _, values) in tensors {
        try values.withUnsafeBytes { try writer.write("base_model.model." + name, bytes: $0) }
    }
    try writer.finish(sync: false)
}

/// Reads back the merged `layer.weight` (or another tensor) as Float32 with its dtype.
func readTensor(_ folder: String, _ name: String = "layer.weight") throws -> (values: [Float], dtype: DType, bytes: [UInt8]) {
    let checkpoint = try Checkpoint(path: folder)
    let view = try checkpoint.view(name)
    return (floats(view), view.info.dtype, [UInt8](view.bytes))
}
