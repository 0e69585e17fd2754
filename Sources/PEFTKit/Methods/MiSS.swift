/// MiSS, Bone's successor in PEFT, applies the same two updates as Bone (column blocks and Bat). Its `mini` variant
/// trains one r×mini_r block and shares it across the outputs by tiling it along the output dimension:
///
///     block_full[c, o] = block[c, o mod mini_r]          block_full: r × out, then the column-block update
enum MiSS {
    /// The r×out block the `mini` variant stands for.
    static func expandMini(_ block: [Float], rank r: Int, miniRank: Int, outFeatures: Int) -> [Float] {
        var full = [Float](repeating: 0, count: r * outFeatures)
        for c in 0..<r {
            for o in 0..<outFeatures { full[c * outFeatures + o] = block[c * miniRank + o % miniRank] }
        }
        return full
    }
}
