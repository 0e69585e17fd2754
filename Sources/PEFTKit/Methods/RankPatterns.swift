import Foundation
import SafeTensors

/// A rank `r` and an alpha with PEFT's per-module overrides `rank_pattern` and `alpha_pattern`, as LoRA
/// (`lora_alpha`) and the LyCORIS methods (`alpha`) write them. A key matches a module path by PEFT's
/// `get_pattern_key`; the first matching key, in the order written, wins.
public struct RankPatterns: Sendable {
    /// `r`: the rank of modules no `rank_pattern` key matches.
    public let rank: Int
    /// The alpha of modules no `alpha_pattern` key matches.
    public let alpha: Double
    public let rankPattern: [(key: String, value: Int)]
    public let alphaPattern: [(key: String, value: Double)]

    /// Reads `r`, `alphaKey` and the two patterns, noting every malformed field.
    init(config json: JSONValue, alphaKey: String, problems: inout [String]) {
        rank = PEFTConfig.positiveInteger(json, "r", required: true, &problems) ?? 1
        alpha = PEFTConfig.number(json, alphaKey, required: true, &problems) ?? 1
        var rankPattern: [(key: String, value: Int)] = []
        var alphaPattern: [(key: String, value: Double)] = []
        for (key, value) in PEFTConfig.patternEntries(json, "rank_pattern", &problems) {
            guard let r = value.integerValue, r > 0, let rank = Int(exactly: r) else {
                problems.append("rank_pattern['\(key)'] is \(PEFTConfig.describe(value)); expected a positive integer")
                continue
            }
            rankPattern.append((key, rank))
        }
        for (key, value) in PEFTConfig.patternEntries(json, "alpha_pattern", &problems) {
            guard let a = value.doubleValue, a.isFinite else {
                problems.append("alpha_pattern['\(key)'] is \(PEFTConfig.describe(value)); expected a number")
                continue
            }
            alphaPattern.append((key, a))
        }
        for key in rankPattern.map(\.key) + alphaPattern.map(\.key) where (try? NSRegularExpression(pattern: key)) == nil {
            problems.append("pattern key '\(key)' is not a valid regular expression")
        }
        self.rankPattern = rankPattern
        self.alphaPattern = alphaPattern
    }

    /// The module's rank after `rank_pattern`.
    public func rank(for modulePath: String) -> Int {
        guard let key = PEFTConfig.patternKey(rankPattern.map(\.key), matching: modulePath) else { return rank }
        return rankPattern.first { $0.key == key }!.value
    }

    /// The module's alpha after `alpha_pattern`.
    public func alpha(for modulePath: String) -> Double {
        guard let key = PEFTConfig.patternKey(alphaPattern.map(\.key), matching: modulePath) else { return alpha }
        return alphaPattern.first { $0.key == key }!.value
    }
}
