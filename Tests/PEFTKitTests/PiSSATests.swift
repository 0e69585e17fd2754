import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// PiSSA and OLoRA on weights whose factorisations are known by hand, so that the residual PEFT's loading recomputes
/// is known exactly: a wrong rank, scale or orientation of the factorisation gives other numbers.
private func merge(base: [Float], shape: [Int], config: String, a: (shape: [Int], values: [Float]),
                   b: (shape: [Int], values: [Float]), in folder: String) throws -> [Float] {
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    try writeSafetensors(folder + "/base.safetensors", [("m.weight", .f32, shape, float32Bytes(base))])
    try writeAdapter(to: folder + "/adapter", config: config, tensors: [
        ("m.lora_A.weight", a.shape, a.values), ("m.lora_B.weight", b.shape, b.values)])
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base.safetensors", adapters: [folder + "/adapter"],
                                         output: folder + "/out"))
    return floats(try Checkpoint(path: folder + "/out").view("m.weight"))
}

private func expectClose(_ actual: [Float], _ expected: [Float], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(actual.count == expected.count, sourceLocation: sourceLocation)
    let worst = zip(actual, expected).map { abs($0 - $1) }.max() ?? .infinity
    #expect(worst < 1e-5, "got \(actual), expected \(expected)", sourceLocation: sourceLocation)
}

/// W (4 × 3) holds 5 at (2, 0), 3 at (0, 2) and 1 at (3, 1): its singular values are 5, 3, 1 with unit vectors for
/// U and V, so the rank-2 truncation is W without the 1, and the residual W − U₂S₂V₂ᵀ holds the 1 alone.
@Test func pissaMergesOntoTheResidualOfTheTopSingularTriplets() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var w = [Float](repeating: 0, count: 12)
    w[2 * 3 + 0] = 5; w[0 * 3 + 2] = 3; w[3 * 3 + 1] = 1
    // A picks inputs 0 and 1, B sends them to outputs 0 and 3; s = 4 / 2 = 2.
    let a = (shape: [2, 3], values: [Float]([1, 0, 0, 0, 1, 0]))
    let b = (shape: [4, 2], values: [Float]([1, 0, 0, 0, 0, 0, 0, 1]))
    let config = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"init_lora_weights\": \"pissa\"}"
    var expected = [Float](repeating: 0, count: 12)
    expected[0 * 3 + 0] = 2       // 0 + 2·1
    expected[3 * 3 + 1] = 1 + 2   // the residual's 1 + 2·1
    expectClose(try merge(base: w, shape: [4, 3], config: config, a: a, b: b, in: folder + "/linear"), expected)

    // fan_in_fan_out (Conv1D): W is stored transposed, PEFT factorises Wᵀ; the result is the same matrix, transposed.
    let transpose = { (m: [Float], rows: Int, columns: Int) in
        (0..<(rows * columns)).map { m[($0 % rows) * columns + $0 / rows] }
    }
    let conv = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"init_lora_weights\": \"pissa\", \"fan_in_fan_out\": true}"
    expectClose(try merge(base: transpose(w, 4, 3), shape: [3, 4], config: conv, a: a, b: b, in: folder + "/conv"),
                transpose(expected, 4, 3))

    // rank_pattern gives this module r = 1 (alpha 4 → s = 4): only the 5 leaves with the truncation.
    let ranked = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"init_lora_weights\": \"pissa\", \"rank_pattern\": {\"m\": 1}}"
    var oneRank = [Float](repeating: 0, count: 12)
    oneRank[0 * 3 + 2] = 3; oneRank[3 * 3 + 1] = 1
    oneRank[0 * 3 + 0] = 4        // s = 4, A = row 0, B = column 0
    expectClose(try merge(base: w, shape: [4, 3], config: ranked, a: (shape: [1, 3], values: [1, 0, 0]),
                          b: (shape: [4, 1], values: [1, 0, 0, 0]), in: folder + "/ranked"), oneRank)
}

/// W upper triangular: its first column spans e₀, so Q₁R₁ is W's first row. OLoRA subtracts s·Q₁R₁ (s = 2 here, not
/// divided out as PiSSA does) and factorises W as stored even for a Conv1D weight.
@Test func oloraMergesOntoTheResidualOfTheLeadingQRColumns() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let w: [Float] = [2, 1, 1,
                      0, 3, 1,
                      0, 0, 4]
    let a = (shape: [1, 3], values: [Float]([0, 0, 1])), b = (shape: [3, 1], values: [Float]([0, 1, 0]))
    let linear = "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 2, \"init_lora_weights\": \"olora\"}"
    // W − 2·[2 1 1; 0 0 0; 0 0 0] + 2·B·A, B·A = 1 at (1, 2).
    expectClose(try merge(base: w, shape: [3, 3], config: linear, a: a, b: b, in: folder + "/linear"),
                [-2, -1, -1, 0, 3, 3, 0, 0, 4])
    // Conv1D: the same residual (QR of W as stored), the trained product transposed: 1 at (2, 1).
    let conv = "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 2, \"init_lora_weights\": \"olora\", \"fan_in_fan_out\": true}"
    expectClose(try merge(base: w, shape: [3, 3], config: conv, a: a, b: b, in: folder + "/conv"),
                [-2, -1, -1, 0, 3, 1, 0, 2, 4])
}

@Test func pissaRefusesUnmergeAndARankAboveTheWeight() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try writeSafetensors(folder + "/base.safetensors", [("m.weight", .f32, [2, 3], float32Bytes([1, 2, 3, 4, 5, 6]))])
    try writeAdapter(to: folder + "/adapter", config: "{\"peft_type\": \"LORA\", \"r\": 1, \"lora_alpha\": 1, \"init_lora_weights\": \"pissa\"}",
                     tensors: [("m.lora_A.weight", [1, 3], [1, 0, 0]), ("m.lora_B.weight", [2, 1], [1, 0])])
    let unmerge = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/base.safetensors", adapters: [folder + "/adapter"],
                                             output: folder + "/o1", direction: .unmerge))
    }
    #expect(unmerge?.kind == .unsupported)
    #expect(unmerge?.message.contains("PiSSA merge replaced the rank-1 top of W") == true)

    try writeAdapter(to: folder + "/big", config: "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 1, \"init_lora_weights\": \"pissa\"}",
                     tensors: [("m.lora_A.weight", [3, 3], [Float](repeating: 0, count: 9)),
                               ("m.lora_B.weight", [2, 3], [Float](repeating: 0, count: 6))])
    let big = peftkitError {
        _ = try MergeEngine.run(MergeRequest(base: folder + "/base.safetensors", adapters: [folder + "/big"], output: folder + "/o2"))
    }
    #expect(big?.kind == .unsupported)
    #expect(big?.message.contains("r = 3 above the weight's smaller side 2") == true)
}
