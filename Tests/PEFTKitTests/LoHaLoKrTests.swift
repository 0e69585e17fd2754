import Foundation
import Testing
import SafeTensors
@testable import PEFTKit

/// A one-module adapter on a base holding one Float32 weight `m.weight`, written by hand so that every merged value
/// can be stated exactly. `tensors` are (role, shape, values) under `base_model.model.m.`.
private func tinyAdapter(in folder: String, peftType: String, config: String, base: (shape: [Int], values: [Float]),
                         tensors: [(role: String, shape: [Int], values: [Float])]) throws -> (base: String, adapter: String) {
    let basePath = folder + "/base.safetensors", adapter = folder + "/adapter"
    try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
    try writeSafetensors(basePath, [("m.weight", .f32, base.shape, float32Bytes(base.values))])
    try Data("{\"peft_type\": \"\(peftType)\", \"target_modules\": [\"m\"], \(config)}".utf8)
        .write(to: URL(fileURLWithPath: adapter + "/adapter_config.json"))
    try writeSafetensors(adapter + "/adapter_model.safetensors",
                         tensors.map { ("base_model.model.m." + $0.role, .f32, $0.shape, float32Bytes($0.values)) })
    return (basePath, adapter)
}

private func weight(_ path: String) throws -> [Float] { floats(try Checkpoint(path: path).view("m.weight")) }

private let ramp6: [Float] = [1, 2, 3, 4, 5, 6]
private let ramp16: [Float] = (0..<16).map(Float.init)

/// r = 2 on a 2×3 weight: W1a·W1b = [[1, 2, 0], [0, 1, 2]], W2a·W2b = [[1, 2, 2], [0, 2, 1]], their Hadamard product
/// [[1, 4, 0], [0, 2, 2]], scaled by alpha / r = 1 / 2. Asymmetric, so a transposed or swapped factor shows.
private let lohaTensors: [(role: String, shape: [Int], values: [Float])] = [
    ("hada_w1_a", [2, 2], [1, 0, 0, 2]), ("hada_w1_b", [2, 3], [1, 2, 0, 0, 0.5, 1]),
    ("hada_w2_a", [2, 2], [1, 1, 0, 1]), ("hada_w2_b", [2, 3], [1, 0, 1, 0, 2, 1]),
]

@Test func lohaAddsTheScaledHadamardProductOfTwoLowRankProducts() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tiny = try tinyAdapter(in: folder + "/a", peftType: "LOHA", config: "\"r\": 2, \"alpha\": 1",
                               base: ([2, 3], ramp6), tensors: lohaTensors)
    // One row per slice, so the second row's factors are found at their offset.
    _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/m", sliceElements: 3))
    #expect(try weight(folder + "/m") == [1.5, 4, 3, 4, 6, 7])
    // The merge weight multiplies s: 2 · 1/2.
    _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], weights: [2], output: folder + "/w"))
    #expect(try weight(folder + "/w") == [2, 6, 3, 4, 7, 8])
    // Unmerging subtracts the same change: exact here.
    _ = try MergeEngine.run(MergeRequest(base: folder + "/m", adapters: [tiny.adapter], output: folder + "/u", direction: .unmerge))
    #expect(try weight(folder + "/u") == ramp6)
}

@Test func lohaPatternsSetRankAndAlphaPerModule() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // r = 4 by default, but the pattern gives m r = 2 (which the tensors have) and alpha 2: s = 1.
    let tiny = try tinyAdapter(in: folder + "/a", peftType: "LOHA",
                               config: "\"r\": 4, \"alpha\": 1, \"rank_pattern\": {\"m\": 2}, \"alpha_pattern\": {\"^m\": 2}",
                               base: ([2, 3], ramp6), tensors: lohaTensors)
    let module = try #require(try AdapterLoader.load(tiny.adapter).modules.first)
    #expect(module.rank == 2 && module.alpha == 2 && module.scaling == 1)
    _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/m"))
    #expect(try weight(folder + "/m") == [2, 6, 3, 4, 7, 8])
}

/// kron(w1, w2) for w1 = [[1, 2], [3, 4]] and w2 = [[2, −2], [1, −1]]: row i·2 + k, column j·2 + l is
/// w1[i, j] · w2[k, l]; scaled by 1/2 and added to 0 … 15.
private let kronMerged: [Float] = [
    0 + 1, 1 - 1, 2 + 2, 3 - 2,
    4 + 0.5, 5 - 0.5, 6 + 1, 7 - 1,
    8 + 3, 9 - 3, 10 + 4, 11 - 4,
    12 + 1.5, 13 - 1.5, 14 + 2, 15 - 2,
]

@Test func lokrAddsTheScaledKroneckerProductRowByRow() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // w1 whole, w2 = lokr_w2_a · lokr_w2_b = [[1], [0.5]] · [[2, −2]]; s = alpha / r = 0.5 / 1.
    let tiny = try tinyAdapter(in: folder + "/a", peftType: "LOKR", config: "\"r\": 1, \"alpha\": 0.5",
                               base: ([4, 4], ramp16),
                               tensors: [("lokr_w1", [2, 2], [1, 2, 3, 4]),
                                         ("lokr_w2_a", [2, 1], [1, 0.5]), ("lokr_w2_b", [1, 2], [2, -2])])
    _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/m", sliceElements: 4))
    #expect(try weight(folder + "/m") == kronMerged)
    _ = try MergeEngine.run(MergeRequest(base: folder + "/m", adapters: [tiny.adapter], output: folder + "/u", direction: .unmerge))
    #expect(try weight(folder + "/u") == ramp16)

    // Both factors low-rank: w1 = [[1], [3]] · [[1, 2]] − not [[1, 2], [3, 4]], so the rank-1 w1 is [[1, 2], [3, 6]].
    let both = try tinyAdapter(in: folder + "/b", peftType: "LOKR", config: "\"r\": 1, \"alpha\": 0.5",
                               base: ([4, 4], [Float](repeating: 0, count: 16)),
                               tensors: [("lokr_w1_a", [2, 1], [1, 3]), ("lokr_w1_b", [1, 2], [1, 2]),
                                         ("lokr_w2_a", [2, 1], [1, 0.5]), ("lokr_w2_b", [1, 2], [2, -2])])
    _ = try MergeEngine.run(MergeRequest(base: both.base, adapters: [both.adapter], output: folder + "/bm"))
    #expect(try weight(folder + "/bm") == [1, -1, 2, -2, 0.5, -0.5, 1, -1, 3, -3, 6, -6, 1.5, -1.5, 3, -3])
}

@Test func lokrScalesByAlphaOverTheConfiguredRankEvenWithWholeFactors() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // No tensor has rank 4, but PEFT still scales by alpha / r = 2 / 4.
    let tiny = try tinyAdapter(in: folder + "/a", peftType: "LOKR", config: "\"r\": 4, \"alpha\": 2",
                               base: ([4, 4], ramp16),
                               tensors: [("lokr_w1", [2, 2], [1, 2, 3, 4]), ("lokr_w2", [2, 2], [2, -2, 1, -1])])
    _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/m"))
    #expect(try weight(folder + "/m") == kronMerged)
}

@Test(arguments: [
    ("LOHA", [("hada_w1_a", [2, 2]), ("hada_w2_a", [2, 2]), ("hada_w2_b", [2, 3])], "module 'm': missing tensor 'hada_w1_b'"),
    ("LOHA", [("hada_w1_a", [2, 3]), ("hada_w1_b", [2, 3]), ("hada_w2_a", [2, 2]), ("hada_w2_b", [2, 3])],
     "module 'm': hada_w1_a has 3 columns but the module's r is 2"),
    ("LOHA", [("hada_w1_a", [2, 2]), ("hada_w1_b", [2, 3]), ("hada_w2_a", [3, 2]), ("hada_w2_b", [2, 3])],
     "module 'm': hada_w1_a has 2 rows but hada_w2_a has 3"),
    ("LOHA", [("hada_w1_a", [2, 2]), ("hada_w1_b", [2, 3]), ("hada_w2_a", [2, 2]), ("hada_w2_b", [2, 3]),
              ("hada_t1", [2, 2, 3, 3]), ("hada_t2", [2, 2, 3, 3])], "not supported yet: LoHa on convolutions"),
    ("LOKR", [("lokr_w1", [2, 2]), ("lokr_w2_a", [2, 2])], "module 'm': missing tensor 'lokr_w2_b'"),
    ("LOKR", [("lokr_w2", [2, 2])], "module 'm': missing tensor 'lokr_w1' (or 'lokr_w1_a' and 'lokr_w1_b')"),
    ("LOKR", [("lokr_w1", [2, 2]), ("lokr_w1_a", [2, 2]), ("lokr_w1_b", [2, 2]), ("lokr_w2", [2, 2])],
     "has lokr_w1 and also lokr_w1_a"),
    ("LOKR", [("lokr_w1", [2, 2]), ("lokr_w2_a", [2, 3]), ("lokr_w2_b", [2, 2])],
     "module 'm': lokr_w2_a has 3 columns but the module's r is 2"),
    ("LOKR", [("lokr_w1", [2, 2]), ("lokr_w2", [2, 2, 3, 3])], "not supported yet: LoKr on convolutions"),
    ("LOKR", [("lokr_w1", [2, 2]), ("lokr_w2_a", [2, 2]), ("lokr_w2_b", [2, 2]), ("lokr_t2", [2, 2, 3, 3])],
     "not supported yet: LoKr on convolutions"),
] as [(String, [(String, [Int])], String)])
func inconsistentOrConvolutionModulesAreRefused(peftType: String, tensors: [(String, [Int])], fragment: String) throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let tiny = try tinyAdapter(in: folder, peftType: peftType, config: "\"r\": 2, \"alpha\": 2", base: ([4, 4], ramp16),
                               tensors: tensors.map { ($0.0, $0.1, [Float](repeating: 1, count: $0.1.reduce(1, *))) })
    let error = peftkitError { _ = try AdapterLoader.load(tiny.adapter) }
    if fragment.hasPrefix("not supported") {
        // What peftkit cannot apply exactly is refused as unsupported (exit 4), naming the module and the file.
        #expect(error?.kind == .unsupported)
        #expect(error?.tensor == "m" && error?.file?.hasSuffix("adapter_model.safetensors") == true)
        #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "")")
    } else {
        #expect(error?.kind == .inconsistentAdapter)
        #expect(error?.details.count == 1)
        #expect(error?.details.first?.contains(fragment) == true, "\(error?.details ?? [])")
    }
}

@Test func modulesThatDoNotFitTheBaseAreRefused() throws {
    let folder = makeScratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    func refusal(_ peftType: String, base: [Int], _ tensors: [(role: String, shape: [Int], values: [Float])]) throws -> PEFTKitError? {
        let tiny = try tinyAdapter(in: folder + "/\(peftType)\(base)", peftType: peftType, config: "\"r\": 2, \"alpha\": 2",
                                   base: (base, [Float](repeating: 0, count: base.reduce(1, *))), tensors: tensors)
        return peftkitError {
            _ = try MergeEngine.run(MergeRequest(base: tiny.base, adapters: [tiny.adapter], output: folder + "/out"))
        }
    }
    // LoHa maps 3 → 2 features; PEFT never transposes it, so a 3×2 weight does not fit either.
    let transposed = try refusal("LOHA", base: [3, 2], lohaTensors)
    #expect(transposed?.kind == .baseMismatch)
    #expect(transposed?.details.first?.contains("LoHa maps 3 → 2 features but the base weight has shape [3, 2]") == true)
    let convolution = try refusal("LOHA", base: [2, 3, 1, 1], lohaTensors)
    #expect(convolution?.kind == .unsupported)
    #expect(convolution?.message.contains("not supported yet: LoHa on convolutions (base weight has shape [2, 3, 1, 1])") == true)
    let kron = try refusal("LOKR", base: [4, 3], [("lokr_w1", [2, 2], [1, 2, 3, 4]), ("lokr_w2", [2, 2], [1, 1, 1, 1])])
    #expect(kron?.kind == .baseMismatch)
    #expect(kron?.details.first?.contains("kron of w1 [2, 2] and w2 [2, 2] has shape [4, 4] but the base weight has shape [4, 3]") == true)
    #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
}
