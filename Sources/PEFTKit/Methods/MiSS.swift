import SafeTensors

/// MiSS (`peft_type: MISS`), Bone's successor in PEFT, applies the same two updates as Bone (column blocks and Bat).
/// Its `mini` variant trains one r×mini_r block and shares it across the outputs by tiling it along the output
/// dimension:
///
///     block_full[c, o] = block[c, o mod mini_r]          block_full: r × out, then the column-block update
public struct MiSS: AdapterMethod {
    public static let name = "miss"
    public static let peftTypes = ["MISS"]
    public static let summary = "MiSS: Bone's successor; column blocks, Bat, mini (shared block)"
    static let block = TensorRole("miss_block")
    public static let roles = [block]

    let blocks: BlockSettings
    public var variant: String { blocks.variant.rawValue }
    /// `mini_r` of the `mini` variant.
    public var miniRank: Int? { blocks.miniRank }

    public init(config json: JSONValue, source: String, problems: inout [String]) throws {
        blocks = BlockSettings(config: json, role: Self.block, allowsMini: true, problems: &problems)
    }

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) -> AdaptedModule? {
        blocks.makeModule(path: path, tensors: tensors, problems: &problems)
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) -> [ModuleChange] {
        blocks.changes(of: module, baseShape: baseShape, problems: &problems)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        blocks.miniRank.map { [("mini_rank", .integer(Int64($0)))] } ?? []
    }

    public var settings: [(key: String, value: JSONValue)] {
        blocks.miniRank.map { [("mini_r", .integer(Int64($0)))] } ?? []
    }

    /// The r×out block the `mini` variant stands for.
    static func expandMini(_ block: [Float], rank r: Int, miniRank: Int, outFeatures: Int) -> [Float] {
        var full = [Float](repeating: 0, count: r * outFeatures)
        for c in 0..<r {
            for o in 0..<outFeatures { full[c * outFeatures + o] = block[c * miniRank + o % miniRank] }
        }
        return full
    }
}
