import Foundation
import SafeTensors

/// What `inspect` says about an adapter: method, ranks and scalings, targets, parameter counts, and — given a base
/// model — the adapter's share of it and whether every target fits.
public struct AdapterReport: Sendable {
    public struct Carried: Sendable {
        public let baseName: String
        public let reason: String
        public let parameters: Int
        public let bytes: Int
    }

    /// How the adapter fits a base model.
    public struct BaseFit: Sendable {
        public let path: String
        public let parameters: Int
        /// Adapter parameters as a percentage of the base's.
        public let sharePercent: Double
        /// Every way the adapter does not fit (empty when it does).
        public let problems: [String]
        /// PEFT's `get_nb_trainable_parameters()` for this adapter loaded onto this base for training
        /// (`is_trainable=True`): trainable parameters (the adapter's tensors, modules_to_save copies, trained
        /// biases, and what a method adds unsaved) and all parameters (the base's, each counted once, plus what the
        /// adapter adds).
        public let peftTrainable: Int
        public let peftAll: Int
        /// 100 · peftTrainable / peftAll, PEFT's `trainable%`.
        public var peftTrainablePercent: Double { peftAll == 0 ? 0 : 100 * Double(peftTrainable) / Double(peftAll) }
    }

    /// The method's name (`lora`) and the `peft_type` it was read from.
    public let method: String
    public let peftType: String
    public let variant: String
    public let format: SourceFormat
    public let moduleCount: Int
    /// Distinct target names (the last component of each adapted module's path), sorted.
    public let targets: [String]
    /// Rank → number of modules, ascending.
    public let ranks: [(rank: Int, modules: Int)]
    /// (alpha, scaling) → number of modules, for methods with an alpha; empty for the others.
    public let scalings: [(alpha: Double, scaling: Double, modules: Int)]
    /// The method's reported config settings (`AdapterMethod.settings`), e.g. `use_rslora`, MiSS's `mini_r`.
    public let settings: [(key: String, value: JSONValue)]
    /// Parameters of the adapter proper.
    public let parameters: Int
    public let carried: [Carried]
    public let baseModel: String?
    public let fingerprint: String?
    public let base: BaseFit?

    public var carriedParameters: Int { carried.reduce(0) { $0 + $1.parameters } }
    public var carriedBytes: Int { carried.reduce(0) { $0 + $1.bytes } }

    /// Describes `adapter`; with `basePath`, also how it fits that base (the merge plan's checks, nothing written).
    /// - Throws: the readers' errors for a base that cannot be opened, and any plan error other than a misfit
    ///   (`.baseMismatch` problems are collected in `base.problems` instead).
    public init(_ adapter: Adapter, adapterPath: String, basePath: String? = nil) throws {
        method = adapter.method.name
        peftType = adapter.config.peftType
        variant = adapter.variant
        format = adapter.format
        moduleCount = adapter.modules.count
        targets = Set(adapter.modules.map { $0.path.split(separator: ".").last.map(String.init) ?? $0.path }).sorted()
        ranks = Dictionary(grouping: adapter.modules, by: \.rank).map { ($0.key, $0.value.count) }.sorted { $0.rank < $1.rank }
        let withAlpha = adapter.modules.filter { $0.alpha != nil }
        if !withAlpha.isEmpty {
            let groups = Dictionary(grouping: withAlpha) { ScalingKey(alpha: $0.alpha!, scaling: $0.scaling) }
            scalings = groups.map { ($0.key.alpha, $0.key.scaling, $0.value.count) }.sorted { $0.modules > $1.modules }
        } else {
            scalings = []
        }
        settings = adapter.method.settings
        parameters = adapter.parameterCount
        carried = adapter.carried.map {
            Carried(baseName: $0.baseName, reason: $0.reason.rawValue, parameters: $0.tensor.elementCount, bytes: $0.tensor.byteCount)
        }
        baseModel = adapter.base.nameOrPath
        fingerprint = adapter.base.fingerprint
        base = try basePath.map { try Self.fit(adapter, adapterPath: adapterPath, basePath: $0) }
    }

    private struct ScalingKey: Hashable {
        let alpha: Double
        let scaling: Double
    }

    /// The base's size and every reason the adapter would not merge into it (the merge's own checks, run without
    /// writing anything).
    private static func fit(_ adapter: Adapter, adapterPath: String, basePath: String) throws -> BaseFit {
        let adapterParameters = adapter.parameterCount
        let base = try Checkpoint(path: basePath)
        let baseParameters = base.tensors.reduce(0) { $0 + $1.info.elementCount }
        var problems: [String] = []
        do {
            // Planning runs every check and writes nothing; the output path is not looked at.
            _ = try MergePlan.make(MergeRequest(base: basePath, adapters: [adapterPath], output: ""))
        } catch let error as PEFTKitError where error.kind == .baseMismatch {
            problems = error.details.isEmpty ? [error.localizedDescription] : error.details
        }
        // PEFT's count: modules_to_save copies are new trainable parameters, trained biases are the base's own made
        // trainable, an embedding's saved base_layer is the base's (frozen) weight.
        let copies = adapter.carried.filter { $0.reason == .modulesToSave }.reduce(0) { $0 + $1.tensor.elementCount }
        let biases = adapter.carried.filter { $0.reason == .trainedBias }.reduce(0) { $0 + $1.tensor.elementCount }
        var unsavedTrainable = 0, unsavedFrozen = 0
        for module in adapter.modules {
            let dtype = base.location(of: module.weightName)?.info.dtype ?? .f32
            let extra = adapter.method.unsavedParameters(of: module, baseDType: dtype)
            unsavedTrainable += extra.trainable
            unsavedFrozen += extra.frozen
        }
        return BaseFit(path: basePath, parameters: baseParameters,
                       sharePercent: baseParameters == 0 ? 0 : 100 * Double(adapterParameters) / Double(baseParameters),
                       problems: problems,
                       peftTrainable: adapterParameters + copies + biases + unsavedTrainable,
                       peftAll: baseParameters + adapterParameters + copies + unsavedTrainable + unsavedFrozen)
    }
}
