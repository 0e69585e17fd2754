import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

// Each method through the whole engine against a naive reference written here, in Double, from the formulas of
// DESIGN §4 — not from the code under test.

private func loraConfig(r: Int, alpha: Double, extra: String = "") -> String {
    "{\"peft_type\": \"LORA\", \"r\": \(r), \"lora_alpha\": \(alpha), \"target_modules\": [\"layer\"]\(extra)}"
}

/// Merges and returns the merged layer weight next to the naive expectation, both as the output dtype's values.
private func mergeAndCompare(model: SyntheticModel, adapterConfig: String, adapterTensors: [(String, [Int], [Float])],
                             expected: [Double], weight: Double = 1) throws -> TensorComparison {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try model.write(to: folder + "/base")
    try writeAdapter(to: folder + "/adapter", config: adapterConfig, tensors: adapterTensors)
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], weights: [weight],
                                         output: folder + "/out"))
    let merged = try readTensor(folder + "/out")
    let want = referenceBytes(expected, as: model.dtype)
    let base = referenceBytes(model.weight.map(Double.init), as: model.dtype)
    return merged.bytes.withUnsafeBytes { got in
        want.withUnsafeBytes { want in
            base.withUnsafeBytes { base in
                Comparison.compare(name: "layer.weight", dtype: model.dtype, count: model.rows * model.columns,
                                   actual: got, expected: want, scale: base,
                                   floorAtTensorMaximum: Comparison.floorsAtTensorMaximum(model.dtype))
            }
        }
    }
}

@Test(arguments: [DType.f32, .bf16, .f16])
func loraMatchesNaiveProduct(dtype: DType) throws {
    let (out, inFeatures, r) = (12, 10, 3)
    let model = SyntheticModel(rows: out, columns: inFeatures, dtype: dtype)
    var random = TestRandom(seed: 7)
    let a = random.values(r * inFeatures, scale: 0.3), b = random.values(out * r, scale: 0.3)
    let s = 6.0 / 3.0
    var expected = [Double](repeating: 0, count: out * inFeatures)
    for o in 0..<out {
        for i in 0..<inFeatures {
            var sum = 0.0
            for k in 0..<r { sum += Double(b[o * r + k]) * Double(a[k * inFeatures + i]) }
            expected[o * inFeatures + i] = Double(model.weight[o * inFeatures + i]) + s * sum
        }
    }
    let comparison = try mergeAndCompare(model: model, adapterConfig: loraConfig(r: r, alpha: 6),
                                         adapterTensors: [("layer.lora_A.weight", [r, inFeatures], a),
                                                          ("layer.lora_B.weight", [out, r], b)], expected: expected)
    #expect(comparison.maxScaledULP <= 1, "\(dtype): \(comparison)")
    // Rounded once from Float32 math, 16-bit results equal the exactly rounded ones almost everywhere.
    if dtype != .f32 { #expect(comparison.identicalFraction > 0.9) }
}

@Test func rsLoRAAndPatternsResolvePerModule() throws {
    let config = try PEFTConfig.parse(try StrictJSON.parse(Array("""
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true,
         "rank_pattern": {"layers.1.mlp.down_proj": 2, "q_proj": 4}, "alpha_pattern": {"v_proj": 7}}
        """.utf8), source: "t"), source: "t")
    let lora = try #require(config.method as? LoRA)
    #expect(lora.rank(for: "model.layers.0.self_attn.q_proj") == 4)
    #expect(lora.rank(for: "model.layers.1.mlp.down_proj") == 2)
    #expect(lora.rank(for: "model.layers.11.mlp.down_proj") == 8)  // "layers.1." must not match "layers.11."
    #expect(lora.rank(for: "model.layers.0.self_attn.xq_proj") == 8)  // the key must start a path component
    #expect(lora.alpha(for: "model.layers.0.self_attn.v_proj") == 7)
    #expect(abs(lora.scaling(for: "model.layers.0.self_attn.v_proj") - 7 / 8.0.squareRoot()) < 1e-15)
    #expect(abs(lora.scaling(for: "model.layers.0.self_attn.q_proj") - 16 / 2.0) < 1e-15)
}

@Test func conv1DLayoutAddsTheTransposedProduct() throws {
    // GPT-2 Conv1D stores W as in × out; a non-square one is recognised from its shape alone.
    let (inFeatures, out, r) = (6, 9, 2)
    let model = SyntheticModel(rows: inFeatures, columns: out, dtype: .f32)
    var random = TestRandom(seed: 3)
    let a = random.values(r * inFeatures, scale: 0.3), b = random.values(out * r, scale: 0.3)
    var expected = model.weight.map(Double.init)
    for i in 0..<inFeatures {
        for o in 0..<out {
            var sum = 0.0
            for k in 0..<r { sum += Double(b[o * r + k]) * Double(a[k * inFeatures + i]) }
            expected[i * out + o] += 2 * sum
        }
    }
    let comparison = try mergeAndCompare(model: model, adapterConfig: loraConfig(r: r, alpha: 4, extra: ", \"fan_in_fan_out\": true"),
                                         adapterTensors: [("layer.lora_A.weight", [r, inFeatures], a),
                                                          ("layer.lora_B.weight", [out, r], b)], expected: expected)
    #expect(comparison.maxScaledULP <= 1)
}

@Test(arguments: [(DType.f32, 4), (.bf16, 5), (.f16, 3)])
func boneColumnBlocksIncludingARaggedLastGroup(dtype: DType, r: Int) throws {
    let (out, inFeatures) = (6, 11)  // 11 % r != 0 for r = 4, 5, 3: the last group of columns is partial
    let model = SyntheticModel(rows: out, columns: inFeatures, dtype: dtype)
    var random = TestRandom(seed: 11)
    let block = random.values(r * out, scale: 0.2)
    var expected = model.weight.map(Double.init)
    for o in 0..<out {
        for c in 0..<inFeatures { expected[o * inFeatures + c] += Double(block[(c % r) * out + o]) }
    }
    let comparison = try mergeAndCompare(model: model, adapterConfig: "{\"peft_type\": \"BONE\", \"r\": \(r)}",
                                         adapterTensors: [("layer.bone_block", [r, out], block)], expected: expected)
    #expect(comparison.maxScaledULP <= 1, "\(dtype) r=\(r): \(comparison)")
}

/// T'(j,i) = T(j,i)·(I + B_j) + B_j, computed tile by tile in Double.
private func naiveBat(_ weight: [Float], rows: Int, columns: Int, blocks: [Float], r: Int, scale: Double) -> [Double] {
    var result = weight.map(Double.init)
    for j in 0..<(rows / r) {
        for i in 0..<(columns / r) {
            for a in 0..<r {
                for c in 0..<r {
                    var value = Double(weight[(j * r + a) * columns + i * r + c])  // T·I
                    for b in 0..<r {
                        value += Double(weight[(j * r + a) * columns + i * r + b]) * scale * Double(blocks[j * r * r + b * r + c])
                    }
                    result[(j * r + a) * columns + i * r + c] = value + scale * Double(blocks[j * r * r + a * r + c])
                }
            }
        }
    }
    return result
}

@Test(arguments: [DType.f32, .bf16])
func batTransformsEveryTileOfABand(dtype: DType) throws {
    let (out, inFeatures, r) = (8, 12, 4)
    let model = SyntheticModel(rows: out, columns: inFeatures, dtype: dtype)
    var random = TestRandom(seed: 5)
    let blocks = random.values(out / r * r * r, scale: 0.2)
    let expected = naiveBat(model.weight, rows: out, columns: inFeatures, blocks: blocks, r: r, scale: 0.5)
    let comparison = try mergeAndCompare(model: model,
                                         adapterConfig: "{\"peft_type\": \"BONE\", \"r\": \(r), \"init_weights\": \"bat\"}",
                                         adapterTensors: [("layer.bone_block", [out / r, r, r], blocks)],
                                         expected: expected, weight: 0.5)
    #expect(comparison.maxScaledULP <= 1, "\(dtype): \(comparison)")
}

@Test func missMiniTilesItsBlockAlongTheOutputs() throws {
    let (out, inFeatures, r, mini) = (6, 7, 3, 2)
    let model = SyntheticModel(rows: out, columns: inFeatures, dtype: .f32)
    var random = TestRandom(seed: 9)
    let block = random.values(r * mini, scale: 0.2)
    var expected = model.weight.map(Double.init)
    for o in 0..<out {
        for c in 0..<inFeatures { expected[o * inFeatures + c] += Double(block[(c % r) * mini + o % mini]) }
    }
    let comparison = try mergeAndCompare(
        model: model, adapterConfig: "{\"peft_type\": \"MISS\", \"r\": \(r), \"init_weights\": \"mini\", \"mini_r\": \(mini)}",
        adapterTensors: [("layer.miss_block", [r, mini], block)], expected: expected)
    #expect(comparison.maxScaledULP <= 1)
}

@Test(arguments: ["lora", "bone", "bat"])
func mergeThenUnmergeReturnsTheBaseInF32(method: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let (out, inFeatures, r) = (8, 12, 4)
    let model = SyntheticModel(rows: out, columns: inFeatures, dtype: .f32, withBias: true)
    try model.write(to: folder + "/base")
    var random = TestRandom(seed: 21)
    switch method {
    case "lora":
        try writeAdapter(to: folder + "/adapter", config: loraConfig(r: r, alpha: 8, extra: ", \"lora_bias\": true"),
                         tensors: [("layer.lora_A.weight", [r, inFeatures], random.values(r * inFeatures, scale: 0.3)),
                                   ("layer.lora_B.weight", [out, r], random.values(out * r, scale: 0.3)),
                                   ("layer.lora_B.bias", [out], random.values(out, scale: 0.3))])
    case "bone":
        try writeAdapter(to: folder + "/adapter", config: "{\"peft_type\": \"BONE\", \"r\": \(r)}",
                         tensors: [("layer.bone_block", [r, out], random.values(r * out, scale: 0.3))])
    default:
        try writeAdapter(to: folder + "/adapter", config: "{\"peft_type\": \"BONE\", \"r\": \(r), \"init_weights\": \"bat\"}",
                         tensors: [("layer.bone_block", [out / r, r, r], random.values(out * r, scale: 0.3))])
    }
    let merged = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/adapter"], output: folder + "/merged"))
    #expect(merged.transformed == (method == "lora" ? 2 : 1))
    #expect(try readTensor(folder + "/merged").values != model.weight)
    let unmerged = try MergeEngine.run(MergeRequest(base: folder + "/merged", adapters: [folder + "/adapter"],
                                                    output: folder + "/unmerged", direction: .unmerge))
    let restored = try readTensor(folder + "/unmerged").values
    let worst = zip(restored, model.weight).map { abs($0 - $1) }.max()!
    #expect(worst <= Float(unmerged.driftBound!), "drift \(worst) above the reported bound \(unmerged.driftBound!)")
    #expect(worst < 1e-5)
    if method == "bat" { #expect(unmerged.worstCondition! >= 1) }
    if method == "lora" {
        let bias = try readTensor(folder + "/unmerged", "layer.bias").values
        #expect(zip(bias, model.bias!).allSatisfy { abs($0 - $1) < 1e-6 })
    }
    #expect(try readTensor(folder + "/unmerged", "other.weight").values == [1, 2, 3, 4, 5, 6])
}

@Test func adaptersApplyInOrderWithTheirWeights() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let (out, inFeatures, r) = (4, 4, 2)
    let model = SyntheticModel(rows: out, columns: inFeatures, dtype: .f32)
    try model.write(to: folder + "/base")
    var random = TestRandom(seed: 4)
    let blocks = random.values(out * r, scale: 0.3)
    let block = random.values(r * out, scale: 0.3)
    try writeAdapter(to: folder + "/bat", config: "{\"peft_type\": \"BONE\", \"r\": \(r), \"init_weights\": \"bat\"}",
                     tensors: [("layer.bone_block", [out / r, r, r], blocks)])
    try writeAdapter(to: folder + "/bone", config: "{\"peft_type\": \"BONE\", \"r\": \(r)}",
                     tensors: [("layer.bone_block", [r, out], block)])
    // Bat is not additive, so the order matters: bat(0.5) then bone(-2) differs from bone(-2) then bat(0.5).
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/bat", folder + "/bone"],
                                         weights: [0.5, -2], output: folder + "/ab"))
    _ = try MergeEngine.run(MergeRequest(base: folder + "/base", adapters: [folder + "/bone", folder + "/bat"],
                                         weights: [-2, 0.5], output: folder + "/ba"))
    var expected = naiveBat(model.weight, rows: out, columns: inFeatures, blocks: blocks, r: r, scale: 0.5)
    for o in 0..<out { for c in 0..<inFeatures { expected[o * inFeatures + c] -= 2 * Double(block[(c % r) * out + o]) } }
    let ab = try readTensor(folder + "/ab").values
    #expect(zip(ab, expected).allSatisfy { abs(Double($0) - $1) < 1e-5 })
    #expect(try readTensor(folder + "/ba").values != ab)
}
