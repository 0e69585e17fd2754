import Foundation
import SafeTensors
import Testing
@testable import PEFTKit

// Reference values here are computed by the tests themselves, in Double, from the inputs they wrote; the only
// library routine a reference uses is LinearAlgebra.ThinSVD (its own tests: DecompositionTests) for the
// Eckart–Young optimum.

/// C = B·A in Double, row-major out×in.
private func product(_ b: [Float], _ a: [Float], out: Int, in columns: Int, rank r: Int, scale: Double = 1) -> [Double] {
    var c = [Double](repeating: 0, count: out * columns)
    for o in 0..<out {
        for k in 0..<r {
            let bk = Double(b[o * r + k]) * scale
            if bk == 0 { continue }
            for i in 0..<columns { c[o * columns + i] += bk * Double(a[k * columns + i]) }
        }
    }
    return c
}

private func frobenius(_ x: [Double]) -> Double { x.reduce(0) { $0 + $1 * $1 }.squareRoot() }
private func minus(_ x: [Double], _ y: [Double]) -> [Double] { zip(x, y).map { $0 - $1 } }

/// Gaussian-ish test values: the sum of four uniforms, centred (variance 4/3 · scale²).
private func gaussianish(_ random: inout TestRandom, _ count: Int, scale: Float) -> [Float] {
    (0..<count).map { _ in (random.value(1) + random.value(1) + random.value(1) + random.value(1)) * scale }
}

/// The test's LoRA adapter: modules (path, out, in, rank) with random factors, config text given.
private func writeLoRA(_ folder: String, config: String, modules: [(String, Int, Int, Int)], seed: UInt64) throws
    -> [String: (b: [Float], a: [Float])] {
    var random = TestRandom(seed: seed)
    var tensors: [(String, [Int], [Float])] = []
    var values: [String: (b: [Float], a: [Float])] = [:]
    for (path, out, columns, r) in modules {
        let a = gaussianish(&random, r * columns, scale: 0.1), b = gaussianish(&random, out * r, scale: 0.1)
        tensors.append((path + ".lora_A.weight", [r, columns], a))
        tensors.append((path + ".lora_B.weight", [out, r], b))
        values[path] = (b, a)
    }
    try writeAdapter(to: folder, config: config, tensors: tensors)
    return values
}

/// s·B·A of a loaded module, in Double.
private func change(of module: AdaptedModule) throws -> [Double] {
    let a = module.tensors[LoRA.a]!, b = module.tensors[LoRA.b]!
    return product(try b.floats(), try a.floats(), out: b.shape[0], in: a.shape[1], rank: module.rank, scale: module.scaling)
}

// MARK: Random numbers

@Test func surgeryRandomIsDeterministicAndNormal() {
    var one = SurgeryRandom(seed: 42), two = SurgeryRandom(seed: 42), other = SurgeryRandom(seed: 43)
    let a = (0..<1000).map { _ in one.normal() }, b = (0..<1000).map { _ in two.normal() }
    #expect(a == b)
    #expect(a != (0..<1000).map { _ in other.normal() })
    var random = SurgeryRandom(seed: 7)
    let n = 200_000
    let values = (0..<n).map { _ in Double(random.normal()) }
    let mean = values.reduce(0, +) / Double(n)
    let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n)
    #expect(abs(mean) < 5 / Double(n).squareRoot())
    #expect(abs(variance - 1) < 0.02)
    let uniforms = (0..<n).map { _ in random.uniform() }
    #expect(uniforms.allSatisfy { $0 >= 0 && $0 < 1 })
    #expect(abs(uniforms.reduce(0) { $0 + Double($1) } / Double(n) - 0.5) < 0.005)
}

// MARK: Resize

private let rsLoRAConfig = """
    {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": true, "target_modules": ["wide", "tall"],
     "rank_pattern": {"tall": 6}, "alpha_pattern": {"tall": 3}}
    """

@Test func resizeToOwnRankIsLossless() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = try writeLoRA(folder + "/in", config: rsLoRAConfig, modules: [("wide", 48, 72, 8), ("tall", 96, 40, 6)], seed: 1)
    let adapter = try AdapterLoader.load(folder + "/in")
    let (resized, reports) = try Resize.resize(adapter, to: .fixed(64), output: folder + "/out")
    try PEFTFolderFormat.write(resized, to: folder + "/out", options: AdapterWriteOptions())
    let reread = try AdapterLoader.load(folder + "/out")
    for module in adapter.modules {
        let after = try #require(reread.module(module.path))
        #expect(after.rank == module.rank)
        #expect(after.scaling == 1)
        let before = try change(of: module)
        let error = frobenius(minus(try change(of: after), before)) / frobenius(before)
        #expect(error <= 1e-6, "\(module.path): relative error \(error)")
    }
    #expect(reports.allSatisfy { abs($0.energyKept - 1) < 1e-6 })
    let lora = try #require(reread.method as? LoRA)
    #expect(!lora.useRSLoRA)
}

@Test func resizeLowerIsTheEckartYoungOptimum() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = try writeLoRA(folder + "/in", config: rsLoRAConfig, modules: [("wide", 48, 72, 8), ("tall", 96, 40, 6)], seed: 2)
    let adapter = try AdapterLoader.load(folder + "/in")
    let (resized, reports) = try Resize.resize(adapter, to: .fixed(3), output: folder + "/out")
    for module in adapter.modules {
        let after = try #require(resized.module(module.path))
        #expect(after.rank == 3)
        let before = try change(of: module)
        let svd = try LinearAlgebra.ThinSVD(rowMajor: before.map { Float($0) }, rows: module.tensors[LoRA.b]!.shape[0],
                                           columns: module.tensors[LoRA.a]!.shape[1])
        let total = svd.singularValues.reduce(0.0) { $0 + Double($1) * Double($1) }
        let optimum = (svd.singularValues.dropFirst(3).reduce(0.0) { $0 + Double($1) * Double($1) } / total).squareRoot()
        let error = frobenius(minus(try change(of: after), before)) / frobenius(before)
        #expect(abs(error - optimum) <= 1e-4 * optimum + 1e-6, "\(module.path): \(error) vs optimum \(optimum)")
        let report = try #require(reports.first { $0.path == module.path })
        #expect(abs(report.relativeError - error) < 1e-4)
    }
}

@Test func resizeByEnergyTakesTheSmallestRankThatKeepsIt() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = try writeLoRA(folder + "/in", config: rsLoRAConfig, modules: [("wide", 48, 72, 8), ("tall", 96, 40, 6)], seed: 3)
    let adapter = try AdapterLoader.load(folder + "/in")
    let (resized, _) = try Resize.resize(adapter, to: .energy(0.8), output: folder + "/out")
    for module in adapter.modules {
        let before = try change(of: module)
        let svd = try LinearAlgebra.ThinSVD(rowMajor: before.map { Float($0) }, rows: module.tensors[LoRA.b]!.shape[0],
                                           columns: module.tensors[LoRA.a]!.shape[1])
        let energies = svd.singularValues.map { Double($0) * Double($0) }
        let total = energies.reduce(0, +)
        var k = 0, kept = 0.0
        while kept < 0.8 * total { kept += energies[k]; k += 1 }
        #expect(try #require(resized.module(module.path)).rank == k)
    }
}

@Test func resizeRefusesOtherMethods() throws {
    let error = peftkitError { _ = try Resize.resize(try AdapterLoader.load(fixtureCases + "/bone-llama-f32/adapter"), to: .fixed(2), output: "x") }
    #expect(error?.kind == .unsupported)
}

// MARK: Extract

/// Writes base and tuned single-file f32 checkpoints: `layer.weight` pairs with the given differences, plus extra
/// tensors (name, shape, base values, tuned values).
private func writePair(_ folder: String, _ tensors: [(String, [Int], [Float], [Float])]) throws {
    try FileManager.default.createDirectory(atPath: folder + "/base", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: folder + "/tuned", withIntermediateDirectories: true)
    try writeSafetensors(folder + "/base/model.safetensors", tensors.map { ($0.0, .f32, $0.1, float32Bytes($0.2)) })
    try writeSafetensors(folder + "/tuned/model.safetensors", tensors.map { ($0.0, .f32, $0.1, float32Bytes($0.3)) })
}

/// A fine-tune-like difference: a rank-r product with strengths scale / (1 + k / decay) plus full-rank noise whose
/// norm is `noise` times the product's.
private func lowRankPlusNoise(rows: Int, columns: Int, seed: UInt64, rank r: Int, scale: Double, decay: Double,
                              noise: Double) -> [Float] {
    var random = TestRandom(seed: seed)
    let u = gaussianish(&random, rows * r, scale: 1), v = gaussianish(&random, r * columns, scale: 1)
    var delta = [Double](repeating: 0, count: rows * columns)
    for k in 0..<r {
        let strength = scale / (1 + Double(k) / decay)
        for o in 0..<rows {
            let uk = Double(u[o * r + k]) * strength
            for i in 0..<columns { delta[o * columns + i] += uk * Double(v[k * columns + i]) }
        }
    }
    let floor = gaussianish(&random, rows * columns, scale: 1).map(Double.init)
    let noiseScale = noise * frobenius(delta) / frobenius(floor)
    return zip(delta, floor).map { Float($0 + noiseScale * $1) }
}

/// A rank-32 product with decaying strengths plus full-rank noise of 10% of it.
private func syntheticDelta(rows: Int, columns: Int, seed: UInt64) -> [Float] {
    lowRankPlusNoise(rows: rows, columns: columns, seed: seed, rank: 32, scale: 0.01, decay: 4, noise: 0.1)
}

// MARK: Block Krylov SVD and the rounding of the factors

/// A fine-tune-like difference whose rank-k cut falls inside the noise floor: a rank-8 product over noise that holds
/// half the energy, so the directions after the eighth are the noise's nearly equal ones — where subspace iteration
/// stays well above the optimum.
private func flatFloorDelta(rows: Int, columns: Int, seed: UInt64) -> [Float] {
    lowRankPlusNoise(rows: rows, columns: columns, seed: seed, rank: 8, scale: 1, decay: 2, noise: 1)
}

/// ‖ΔW − U S Vᵀ‖²_F in Double.
private func residualEnergy(_ delta: [Float], _ svd: TruncatedSVD) -> Double {
    let k = svd.rank, n = svd.columns
    var total = 0.0
    for i in 0..<svd.rows {
        for c in 0..<n {
            var value = Double(delta[i * n + c])
            for j in 0..<k { value -= Double(svd.u[i * k + j]) * Double(svd.singularValues[j]) * Double(svd.vt[j * n + c]) }
            total += value * value
        }
    }
    return total
}

@Test func blockKrylovIsWithinAMillionthOfTheOptimumOnAFlatFloor() throws {
    // Tall and wide (M = A and M = Aᵀ), rank 24: blocks of 12, 17 blocks (204 columns < 300), so not the exact path.
    for (rows, columns) in [(420, 300), (300, 420)] {
        let delta = flatFloorDelta(rows: rows, columns: columns, seed: 40)
        let exact = try LinearAlgebra.ThinSVD(rowMajor: delta, rows: rows, columns: columns)
        let optimum = exact.singularValues.dropFirst(24).reduce(0.0) { $0 + Double($1) * Double($1) }
        var random = SurgeryRandom(seed: 1, stream: 0)
        let svd = try RandomizedSVD.decompose(delta.withUnsafeBufferPointer { $0 }, rows: rows, columns: columns, rank: 24,
                                              random: &random)
        #expect(svd.isComplete == false && svd.rank == 24)
        let ratio = (residualEnergy(delta, svd) / optimum).squareRoot()
        #expect(ratio <= 1 + 1e-6, "\(rows)×\(columns): error \(ratio) × the optimum")
        // The same sketch without the Krylov blocks (one block: a plain range finder) is far from it: the test can tell.
        var again = SurgeryRandom(seed: 1, stream: 0)
        let one = try RandomizedSVD.decompose(delta.withUnsafeBufferPointer { $0 }, rows: rows, columns: columns, rank: 24,
                                              parameters: .init(blockSize: 24, iterations: 0), random: &again)
        #expect((residualEnergy(delta, one) / optimum).squareRoot() > 1 + 1e-3)
        // U has orthonormal columns and the values are the top ones, descending.
        for a in 0..<24 {
            for b in a..<24 {
                let dot = (0..<rows).reduce(0.0) { $0 + Double(svd.u[$1 * 24 + a]) * Double(svd.u[$1 * 24 + b]) }
                #expect(abs(dot - (a == b ? 1 : 0)) < 1e-4)
            }
            #expect(abs(svd.singularValues[a] - exact.singularValues[a]) <= 1e-4 * exact.singularValues[a])
        }
    }
}

@Test func blockKrylovFindsALowRankDifferenceExactly() throws {
    // Rank 5 with blocks of 12: the first block already holds the whole range, every later one is made of rounding
    // noise and must still come out orthogonal to it (else a direction would be counted twice).
    let rows = 360, columns = 250, r = 5
    var random = TestRandom(seed: 41)
    let u = gaussianish(&random, rows * r, scale: 1), v = gaussianish(&random, r * columns, scale: 1)
    let delta = product(u, v, out: rows, in: columns, rank: r).map { Float($0) }
    var generator = SurgeryRandom(seed: 3, stream: 0)
    let svd = try RandomizedSVD.decompose(delta.withUnsafeBufferPointer { $0 }, rows: rows, columns: columns, rank: 24,
                                          random: &generator)
    #expect(svd.isComplete == false, "the Krylov path, not the exact fallback")
    let total = delta.reduce(0.0) { $0 + Double($1) * Double($1) }
    #expect(residualEnergy(delta, svd) <= 1e-10 * total)
    let kept = svd.singularValues.reduce(0.0) { $0 + Double($1) * Double($1) }
    #expect(abs(kept - total) <= 1e-5 * total, "Ritz values hold \(kept / total) of the energy")
    #expect(svd.singularValues.dropFirst(r).allSatisfy { $0 <= 1e-4 * svd.singularValues[0] })
}

@Test func choleskyQRHandsDependentColumnsToHouseholder() throws {
    // Columns 2 and 3 equal and column 4 zero after the first: Cholesky fails, Householder must still give Q.
    let rows = 50, columns = 4
    var random = TestRandom(seed: 42)
    var x = gaussianish(&random, rows * columns, scale: 1)
    for i in 0..<rows { x[i * columns + 2] = x[i * columns + 1]; x[i * columns + 3] = 0 }
    try x.withUnsafeMutableBufferPointer {
        try LinearAlgebra.orthonormalizeColumnsQuickly($0.baseAddress!, rows: rows, columns: columns, leading: columns)
    }
    for a in 0..<columns {
        for b in a..<columns {
            let dot = (0..<rows).reduce(0.0) { $0 + Double(x[$1 * columns + a]) * Double(x[$1 * columns + b]) }
            #expect(abs(dot - (a == b ? 1 : 0)) < 1e-5, "columns \(a), \(b): \(dot)")
        }
    }
    // A well-conditioned block goes the Cholesky way and spans the same space: Q Qᵀ y = y for y in it.
    var y = gaussianish(&random, rows * columns, scale: 3)
    let original = y
    try y.withUnsafeMutableBufferPointer {
        try LinearAlgebra.orthonormalizeColumnsQuickly($0.baseAddress!, rows: rows, columns: columns, leading: columns)
    }
    for c in 0..<columns {
        let column = (0..<rows).map { Double(original[$0 * columns + c]) }
        let coefficients = (0..<columns).map { j in (0..<rows).reduce(0.0) { $0 + Double(y[$1 * columns + j]) * column[$1] } }
        let projected = (0..<rows).map { i in (0..<columns).reduce(0.0) { $0 + Double(y[i * columns + $1]) * coefficients[$1] } }
        #expect(frobenius(minus(projected, column)) <= 1e-5 * frobenius(column))
    }
}

@Test func refitRoundingIsNoWorseThanRoundingBothAndKeepsTheLayout() throws {
    // Both orientations of ΔW and both stored layouts (Linear, and (B·A)ᵀ for Conv1D / embeddings).
    for (rows, columns) in [(160, 96), (96, 160)] {
        for transposed in [false, true] {
            let delta = flatFloorDelta(rows: rows, columns: columns, seed: 43)
            let exact = try LinearAlgebra.ThinSVD(rowMajor: delta, rows: rows, columns: columns)
            let svd = TruncatedSVD(u: exact.u, singularValues: exact.singularValues, vt: exact.vt, rows: rows,
                                   columns: columns, isComplete: true)
            let factors = LowRankFactors.split(svd, rank: 16, transposed: transposed)
            func error(_ f: LowRankFactors) -> Double {
                var residual = delta
                residual.withUnsafeMutableBufferPointer { f.subtract(from: $0, transposed: transposed) }
                return residual.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            }
            func bf16(_ v: [Float]) -> [Float] { LoRABuilder.decode(LoRABuilder.encode(v, .bf16), .bf16) }
            let both = LowRankFactors(b: bf16(factors.b), a: bf16(factors.a), outFeatures: factors.outFeatures,
                                      inFeatures: factors.inFeatures)
            let refit = delta.withUnsafeBufferPointer {
                Extract.rounded(factors, delta: $0, rows: rows, columns: columns, transposed: transposed, dtype: .bf16)
            }
            #expect(refit.outFeatures == factors.outFeatures && refit.inFeatures == factors.inFeatures)
            #expect(refit.b.count == factors.b.count && refit.a.count == factors.a.count)
            #expect(bf16(refit.b) == refit.b && bf16(refit.a) == refit.a, "every value is a bf16 value")
            let plain = error(both), better = error(refit), unrounded = error(factors)
            #expect(better <= plain, "\(rows)×\(columns) transposed \(transposed): \(better) vs \(plain)")
            #expect(better < 1.001 * unrounded)
            // Float32 output is left as computed.
            let kept = delta.withUnsafeBufferPointer {
                Extract.rounded(factors, delta: $0, rows: rows, columns: columns, transposed: transposed, dtype: .f32)
            }
            #expect(kept.b == factors.b && kept.a == factors.a)
        }
    }
}

@Test func extractIsWithinATenThousandthOfTheOptimum() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var random = TestRandom(seed: 9)
    let shapes = [("model.layers.0.mlp.up_proj", 384, 256), ("model.layers.0.mlp.down_proj", 256, 384)]
    var pairs: [(String, [Int], [Float], [Float])] = []
    for (index, (path, rows, columns)) in shapes.enumerated() {
        let base = gaussianish(&random, rows * columns, scale: 0.02)
        let delta = syntheticDelta(rows: rows, columns: columns, seed: UInt64(20 + index))
        pairs.append((path + ".weight", [rows, columns], base, zip(base, delta).map { $0 + $1 }))
    }
    try writePair(folder, pairs)
    for rank in [16, 32, 48] {
        for exact in [false, true] {
            let output = folder + "/out-\(rank)-\(exact)"
            let report = try Extract.run(ExtractRequest(base: folder + "/base", tuned: folder + "/tuned", output: output,
                                                        ranks: .fixed(rank), exact: exact, seed: 5))
            let adapter = try AdapterLoader.load(output)
            for (path, baseValues, tunedValues) in pairs.map({ (String($0.0.dropLast(7)), $0.2, $0.3) }) {
                let rows = shapes.first { $0.0 == path }!.1, columns = shapes.first { $0.0 == path }!.2
                // The difference as stored (the f32 sums rounded), and its optimum at this rank.
                let delta = zip(tunedValues, baseValues).map { Double($0) - Double($1) }
                let svd = try LinearAlgebra.ThinSVD(rowMajor: delta.map { Float($0) }, rows: rows, columns: columns)
                let total = svd.singularValues.reduce(0.0) { $0 + Double($1) * Double($1) }
                let optimum = (svd.singularValues.dropFirst(rank).reduce(0.0) { $0 + Double($1) * Double($1) } / total).squareRoot()
                let module = try #require(adapter.module(path))
                #expect(module.rank == rank)
                let error = frobenius(minus(try change(of: module), delta)) / frobenius(delta)
                let limit = 1.0001
                #expect(error <= limit * optimum, "\(path) rank \(rank) exact \(exact): \(error) vs optimum \(optimum)")
                let reported = try #require(report.modules.first { $0.path == path })
                #expect(abs(reported.relativeError - error) <= 1e-4 * error, "reported \(reported.relativeError), measured \(error)")
                if exact { #expect(abs(try #require(reported.optimalError) - optimum) <= 1e-4 * optimum) }
            }
        }
    }
}

@Test func extractByEnergyKeepsTheFraction() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var random = TestRandom(seed: 10)
    let base = gaussianish(&random, 320 * 288, scale: 0.02)
    let delta = syntheticDelta(rows: 320, columns: 288, seed: 30)
    try writePair(folder, [("q_proj.weight", [320, 288], base, zip(base, delta).map { $0 + $1 })])
    let report = try Extract.run(ExtractRequest(base: folder + "/base", tuned: folder + "/tuned", output: folder + "/out",
                                                ranks: .energy(0.9)))
    let module = try #require(report.modules.first)
    #expect(module.energyKept >= 0.9 - 1e-6)
    // The smallest rank: one fewer cannot keep 90% (Eckart–Young: the optimum at k − 1 is above √0.1).
    let stored = zip(base, zip(base, delta).map { $0 + $1 }).map { Double($0.1) - Double($0.0) }
    let svd = try LinearAlgebra.ThinSVD(rowMajor: stored.map { Float($0) }, rows: 320, columns: 288)
    let energies = svd.singularValues.map { Double($0) * Double($0) }
    let best = energies.prefix(module.rank - 1).reduce(0, +) / energies.reduce(0, +)
    #expect(best < 0.9)
    // rank_pattern carries it when it differs from r; either way PEFT's r for the module is the rank.
    #expect(try #require(AdapterLoader.load(folder + "/out").module("q_proj")).rank == module.rank)
}

@Test func extractLeavesOutZeroesCarriesNormsAndRefuses() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var random = TestRandom(seed: 11)
    let w = gaussianish(&random, 64 * 48, scale: 0.02), d = syntheticDelta(rows: 64, columns: 48, seed: 40)
    let same = gaussianish(&random, 48 * 48, scale: 0.02)
    let norm = [Float](repeating: 1, count: 48)
    try writePair(folder + "/ok", [("a.q_proj.weight", [64, 48], w, zip(w, d).map { $0 + $1 }),
                                   ("a.k_proj.weight", [48, 48], same, same),
                                   ("a.norm.weight", [48], norm, norm.map { $0 * 1.5 })])
    let report = try Extract.run(ExtractRequest(base: folder + "/ok/base", tuned: folder + "/ok/tuned",
                                                output: folder + "/ok/out", ranks: .fixed(8)))
    #expect(report.modules.map(\.path) == ["a.q_proj"])
    #expect(report.carried == ["a.norm.weight"])
    let adapter = try AdapterLoader.load(folder + "/ok/out")
    #expect(adapter.carried.map(\.baseName) == ["a.norm.weight"])
    #expect(try adapter.carried[0].tensor.floats() == norm.map { $0 * 1.5 })
    #expect(adapter.config.modulesToSave == ["a.norm"])

    func refusal(_ name: String, _ tensors: [(String, [Int], [Float], [Float])]) -> PEFTKitError? {
        let path = folder + "/" + name
        try? writePair(path, tensors)
        return peftkitError {
            _ = try Extract.run(ExtractRequest(base: path + "/base", tuned: path + "/tuned", output: path + "/out", ranks: .fixed(4)))
        }
    }
    let identical = refusal("identical", [("a.q_proj.weight", [64, 48], w, w)])
    #expect(identical?.kind == .baseMismatch)
    let bias = refusal("bias", [("a.q_proj.weight", [64, 48], w, w), ("a.q_proj.bias", [64], [Float](repeating: 0, count: 64), [Float](repeating: 1, count: 64))])
    #expect(bias?.kind == .unsupported)
    #expect(bias?.tensor == "a.q_proj.bias")
    var infinite = w
    infinite[5] = .infinity
    let nonFinite = refusal("inf", [("a.q_proj.weight", [64, 48], w, infinite)])
    #expect(nonFinite?.kind == .numerics)
    #expect(nonFinite?.tensor == "a.q_proj.weight")
    let conv = refusal("conv", [("a.conv.weight", [4, 3, 2, 2], [Float](repeating: 0, count: 48), [Float](repeating: 1, count: 48))])
    #expect(conv?.kind == .unsupported)

    // Different shapes between the two checkpoints: named.
    let mismatch = folder + "/mismatch"
    try FileManager.default.createDirectory(atPath: mismatch + "/base", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: mismatch + "/tuned", withIntermediateDirectories: true)
    try writeSafetensors(mismatch + "/base/model.safetensors", [("a.q_proj.weight", .f32, [64, 48], float32Bytes(w))])
    try writeSafetensors(mismatch + "/tuned/model.safetensors", [("a.q_proj.weight", .f32, [48, 64], float32Bytes(w))])
    let shapes = peftkitError {
        _ = try Extract.run(ExtractRequest(base: mismatch + "/base", tuned: mismatch + "/tuned", output: mismatch + "/out", ranks: .fixed(4)))
    }
    #expect(shapes?.kind == .baseMismatch)
    #expect(shapes?.details.first?.contains("a.q_proj.weight") == true)
}

@Test func extractRefusesAMissingOutputFolderAndLeavesNoScratchFile() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var random = TestRandom(seed: 12)
    let base = gaussianish(&random, 64 * 48, scale: 0.02)
    try writePair(folder, [("q_proj.weight", [64, 48], base, base.map { $0 * 1.5 })])
    let output = folder + "/no-such-folder/out"
    let error = try #require(throws: PEFTKitError.self) {
        try Extract.run(ExtractRequest(base: folder + "/base", tuned: folder + "/tuned", output: output, ranks: .fixed(4)))
    }
    #expect(error.kind == .io)
    #expect("\(error.localizedDescription)".contains("no-such-folder"))
    // A run that succeeds leaves nothing beside its output: the spill file was unlinked as soon as it was made.
    _ = try Extract.run(ExtractRequest(base: folder + "/base", tuned: folder + "/tuned", output: folder + "/out", ranks: .fixed(4)))
    #expect(try FileManager.default.contentsOfDirectory(atPath: folder).sorted() == ["base", "out", "tuned"])
}

@Test func extractIsDeterministicGivenTheSeed() throws {
    let folder = scratchFolder()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var random = TestRandom(seed: 12)
    let w = gaussianish(&random, 200 * 160, scale: 0.02), d = syntheticDelta(rows: 200, columns: 160, seed: 50)
    try writePair(folder, [("m.weight", [200, 160], w, zip(w, d).map { $0 + $1 })])
    for (name, seed) in [("one", 3), ("two", 3), ("three", 4)] {
        _ = try Extract.run(ExtractRequest(base: folder + "/base", tuned: folder + "/tuned", output: folder + "/" + name,
                                           ranks: .fixed(16), seed: UInt64(seed)))
    }
    let one = fileBytes(folder + "/one/adapter_model.safetensors")
    #expect(one == fileBytes(folder + "/two/adapter_model.safetensors"))
    #expect(one != fileBytes(folder + "/three/adapter_model.safetensors"))
}

// MARK: Combine

private let surgeryFixtures = repositoryRoot + "/fixtures/surgery"

@Test func combineCatIsTheWeightedSumOfTheChanges() throws {
    let x = try AdapterLoader.load(surgeryFixtures + "/adapters/x"), y = try AdapterLoader.load(surgeryFixtures + "/adapters/y")
    let weights = [0.7, -1.3]
    let (combined, report) = try Combine.combine([x, y], CombineRequest(adapters: ["x", "y"], weights: weights, method: .cat,
                                                                         output: "out"))
    #expect(report.rank == 16)
    for module in combined.modules where module.kind == .linear {
        let expected = zip(try change(of: x.module(module.path)!), try change(of: y.module(module.path)!))
            .map { weights[0] * $0 + weights[1] * $1 }
        let error = frobenius(minus(try change(of: module), expected)) / frobenius(expected)
        #expect(error < 1e-6, "\(module.path): \(error)")
        #expect(module.scaling == 1)  // r = alpha, use_rslora false although y uses rsLoRA
    }
}

@Test func combineRefusesWhatPEFTCannotDo() throws {
    let x = try AdapterLoader.load(surgeryFixtures + "/adapters/x"), z = try AdapterLoader.load(surgeryFixtures + "/adapters/z")
    let ranks = peftkitError { _ = try Combine.combine([x, z], CombineRequest(adapters: ["x", "z"], weights: [1, 1], method: .linear, output: "o")) }
    #expect(ranks?.kind == .unsupported)
    let bone = try AdapterLoader.load(fixtureCases + "/bone-llama-f32/adapter")
    let method = peftkitError { _ = try Combine.combine([bone, x], CombineRequest(adapters: ["b", "x"], weights: [1, 1], method: .cat, output: "o")) }
    #expect(method?.kind == .unsupported)
    let dora = try AdapterLoader.load(fixtureCases + "/dora-llama-bf16/adapter")
    let doraError = peftkitError { _ = try Combine.combine([dora, dora], CombineRequest(adapters: ["d", "d"], weights: [1, 1], method: .cat, output: "o")) }
    #expect(doraError?.kind == .unsupported)
}

@Test func dareMasksFollowTheSeedAndKeepTheDensity() throws {
    let x = try AdapterLoader.load(surgeryFixtures + "/adapters/x"), y = try AdapterLoader.load(surgeryFixtures + "/adapters/y")
    func run(_ seed: UInt64) throws -> (Adapter, CombineReport) {
        try Combine.combine([x, y], CombineRequest(adapters: ["x", "y"], weights: [1, 1], method: .dareLinear, density: 0.3,
                                                   seed: seed, output: "o"))
    }
    let (one, report) = try run(1), (two, _) = try run(1), (three, _) = try run(2)
    func firstA(_ adapter: Adapter) throws -> [Float] { try adapter.modules.first { $0.kind == .linear }!.tensors[LoRA.a]!.floats() }
    let first = try firstA(one)
    #expect(first == (try firstA(two)))
    #expect(first != (try firstA(three)))
    let fraction = try #require(report.keptFraction)
    #expect(abs(fraction - 0.3) < 5 * (0.3 * 0.7 / Double(report.drawn)).squareRoot())
    // Every value is a rescaled sum of a subset of the inputs (here the A side, weights √(w·s) with sign).
    let module = one.modules.first { $0.kind == .linear }!
    let xa = x.module(module.path)!.tensors[LoRA.a]!, ya = y.module(module.path)!.tensors[LoRA.a]!
    let wx = Float(x.module(module.path)!.scaling.squareRoot()), wy = Float(y.module(module.path)!.scaling.squareRoot())
    let (xv, yv) = (try xa.floats(), try ya.floats())
    for (j, value) in first.enumerated() {
        let candidates: [Float] = [0, wx * xv[j] / 0.3, wy * yv[j] / 0.3, (wx * xv[j] + wy * yv[j]) / 0.3]
        #expect(candidates.contains { abs($0 - value) <= 1e-5 * max(1, abs(value)) }, "value \(j): \(value)")
    }
}

@Test func combineFixturesMatchPEFT() throws {
    let cases = try FixtureVerifier.findCases([surgeryFixtures])
    #expect(cases.count == 12)
    for folder in cases {
        for check in try FixtureVerifier.verify(caseFolder: folder) {
            #expect(check.passed, "\(check.caseName) \(check.check): \(check.measure) > \(check.tolerance) \(check.unit)")
        }
    }
}
