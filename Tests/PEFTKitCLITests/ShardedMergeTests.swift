import Foundation
import SafeTensors
import Testing

/// A merge of a sharded bf16 base, where the two workers write different shards at once and then help each other:
/// every targeted weight equals W + s·B·A (computed here in Double) to within one bf16 ulp at the element's operand
/// magnitude (spec/tolerance.md §1), every other tensor is copied byte for byte, and the output keeps the base's
/// shards and index.
@Test func shardedMergeMatchesTheDirectComputation() async throws {
    let folder = makeTemporaryFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let base = folder + "/base", adapter = folder + "/adapter", merged = folder + "/merged"
    try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)

    let rank = 4, alpha = 8.0, columns = 512
    let rowsPerLayer = [600, 96, 1100, 320, 64, 700, 450]  // uneven: some shards take longer than others
    var seed: UInt64 = 7
    /// Deterministic floats in [-scale, scale), from the crash tests' generator.
    func random(_ count: Int, scale: Float) -> [Float] {
        seed += 1
        return CrashFixture.floatBytes(count: count, seed: seed, scale: 2 * scale).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
    var tensors: [TestTensor] = [], lora: [TestTensor] = []
    var expected: [String: (base: [Double], exact: [Double])] = [:]
    for (layer, rows) in rowsPerLayer.enumerated() {
        let name = "model.layers.\(layer).mlp.down_proj.weight"
        let weight = TestTensor.bf16(name, [rows, columns], random(rows * columns, scale: 1))
        let norm = TestTensor.bf16("model.layers.\(layer).post_attention_layernorm.weight", [columns],
                                   random(columns, scale: 1))
        tensors += [weight, norm]
        let a = random(rank * columns, scale: 0.2), b = random(rows * rank, scale: 0.2)
        let key = "base_model.model.model.layers.\(layer).mlp.down_proj"
        lora += [TestTensor.f32(key + ".lora_A.weight", [rank, columns], a), TestTensor.f32(key + ".lora_B.weight", [rows, rank], b)]
        let w = weight.bytes.withUnsafeBytes { raw in (0..<rows * columns).map { Double(Codec.float(fromBF16: raw.load(fromByteOffset: 2 * $0, as: UInt16.self))) } }
        expected[name] = (w, (0..<rows * columns).map { i in
            let o = i / columns, c = i % columns
            return w[i] + alpha / Double(rank) * (0..<rank).reduce(0.0) { $0 + Double(b[o * rank + $1]) * Double(a[$1 * columns + c]) }
        })
    }
    let shardOf = try writeShardedCheckpoint(tensors, maxShardSize: 1_200_000, folder: base)
    #expect(Set(shardOf.values).count >= 4)
    try writeSafeTensors(lora, to: adapter + "/adapter_model.safetensors")
    try #"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["down_proj"]}"#
        .write(toFile: adapter + "/adapter_config.json", atomically: true, encoding: .utf8)

    let result = await peftkit("merge", base, adapter, "--output", merged, "--quiet")
    try #require(result.status == 0, "\(result.standardError)")
    #expect(try FileManager.default.contentsOfDirectory(atPath: merged).sorted()
            == FileManager.default.contentsOfDirectory(atPath: base).sorted())
    #expect(try ShardIndex.read(path: merged + "/model.safetensors.index.json").weightMap.map { "\($0.tensor)@\($0.shard)" }
            == ShardIndex.read(path: base + "/model.safetensors.index.json").weightMap.map { "\($0.tensor)@\($0.shard)" })

    for tensor in tensors {
        let view = try SafeTensorsFile(path: merged + "/" + shardOf[tensor.name]!).view(tensor.name)
        guard let (w, exact) = expected[tensor.name] else {
            #expect([UInt8](view.bytes) == tensor.bytes, "\(tensor.name) was not copied byte for byte")
            continue
        }
        let got = (0..<exact.count).map { Double(Codec.float(fromBF16: view.bytes.load(fromByteOffset: 2 * $0, as: UInt16.self))) }
        // An ulp at the magnitude of the sum's operands and results: near a cancellation the result's own ulp is far
        // finer than the Float32 arithmetic on W and ΔW can resolve.
        let worst = exact.indices.map { i in
            let magnitude = max(abs(got[i]), abs(exact[i]), abs(w[i]), abs(exact[i] - w[i]))
            return abs(got[i] - exact[i]) / Double(Float(magnitude).ulpOfBF16)
        }.max() ?? 0
        #expect(worst <= 1, "\(tensor.name): off by \(worst) bf16 ulps")
    }
}

private extension Float {
    /// The spacing of bf16 values at this magnitude (8 significant bits).
    var ulpOfBF16: Float { self < .leastNormalMagnitude ? 0x1p-133 : Float(sign: .plus, exponent: exponent - 7, significand: 1) }
}
