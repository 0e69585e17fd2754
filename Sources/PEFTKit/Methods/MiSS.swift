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

    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule? {
        try blocks.makeModule(path: path, tensors: tensors, problems: &problems)
    }

    public func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange] {
        try blocks.changes(of: module, baseShape: baseShape, problems: &problems)
    }

    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] {
        blocks.miniRank.map { [("mini_rank", .integer(Int64($0)))] } ?? []
    }

    public var settings: [(key: String, value: JSONValue)] {
        blocks.miniRank.map { [("mini_r", .integer(Int64($0)))] } ?? []
    }

    /// `adapter`, a Bone adapter, as the MiSS adapter PEFT ≥ 0.19 loads (Bone was removed from PEFT in 0.19): MiSS's
    /// default and `bat` variants are Bone's, with `miss_block` for `bone_block` and MiSS's own config fields (PEFT's
    /// defaults `mini_r` 1 and `miss_dropout` 0, keys sorted as PEFT writes them). The tensors are the same.
    /// - Throws: `.unsupported` for an adapter that is not Bone.
    public static func fromBone(_ adapter: Adapter) throws -> Adapter {
        guard adapter.method is Bone, case .object(let members) = adapter.config.json else {
            throw PEFTKitError(.unsupported, file: adapter.source,
                               "only a Bone adapter can be rewritten as MiSS; this one is \(adapter.config.peftType)")
        }
        var config = members.filter { $0.key != "peft_type" && $0.key != "bone_dropout" }
        config.append(("peft_type", .string(peftTypes[0])))
        if !config.contains(where: { $0.key == "mini_r" }) { config.append(("mini_r", .integer(1))) }
        if !config.contains(where: { $0.key == "miss_dropout" }) {
            config.append(("miss_dropout", members.first { $0.key == "bone_dropout" }?.value ?? .finite(0)))
        }
        config.sort { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
        let parsed = try PEFTConfig.parse(.object(config), source: adapter.source)
        var problems: [String] = []
        let modules = try adapter.modules.compactMap { module in
            try parsed.method.makeModule(path: module.path, tensors: [block: module.tensors[Bone.block]!], problems: &problems)
        }
        guard problems.isEmpty, modules.count == adapter.modules.count else {
            throw PEFTKitError(.inconsistentAdapter, file: adapter.source, "the Bone adapter does not make a MiSS one",
                               details: problems)
        }
        return Adapter(source: adapter.source, format: adapter.format, config: parsed, modules: modules,
                       carried: adapter.carried, base: adapter.base)
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
