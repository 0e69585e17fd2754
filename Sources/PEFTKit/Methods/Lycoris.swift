import Foundation
import SafeTensors

/// The config fields LoHa and LoKr share (PEFT's `LycorisConfig` and `LycorisLayer`): `r`, `alpha` and their
/// patterns. Both scale their change by alpha / r, with r and alpha after `rank_pattern` / `alpha_pattern`; PEFT has
/// no rsLoRA-like option for them. `rank_dropout`, `module_dropout` and `rank_dropout_scale` act only in training.
struct LycorisSettings: Sendable {
    let ranks: RankPatterns

    init(config json: JSONValue, problems: inout [String]) {
        ranks = RankPatterns(config: json, alphaKey: "alpha", problems: &problems)
    }

    func rank(for modulePath: String) -> Int { ranks.rank(for: modulePath) }
    func alpha(for modulePath: String) -> Double { ranks.alpha(for: modulePath) }

    /// alpha / r in Double, as Python computes `self.scaling`.
    func scaling(for modulePath: String) -> Double { alpha(for: modulePath) / Double(rank(for: modulePath)) }

    func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        [("alpha", .finite(module.alpha ?? ranks.alpha)), ("scaling", .finite(module.scaling))]
    }
}

extension LinearAlgebra {
    /// `C = A · B` for row-major A (m×k) and B (k×n), into a fresh array: a factor product PEFT forms as `a @ b`.
    static func product(_ a: [Float], _ b: [Float], m: Int, k: Int, n: Int) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { c in
                    multiplyAccumulate(m: m, n: n, k: k, alpha: 1, a: a.baseAddress!, lda: k, transposeA: false,
                                       b: b.baseAddress!, ldb: n, transposeB: false, into: c.baseAddress!, ldc: n, beta: 0)
                }
            }
        }
        return c
    }

    /// The largest row sum of magnitudes of a row-major matrix with `columns` columns: with the largest magnitude
    /// of B it bounds every |Σₖ A[i, k] · B[k, j]|.
    static func largestRowSum(_ matrix: [Float], columns: Int) -> Double {
        guard columns > 0 else { return 0 }
        return stride(from: 0, to: matrix.count, by: columns).map { start in
            matrix[start..<(start + columns)].reduce(0.0) { $0 + Double($1.magnitude) }
        }.max() ?? 0
    }

    static func largestMagnitude(_ values: [Float]) -> Double {
        values.reduce(0.0) { max($0, Double($1.magnitude)) }
    }
}
