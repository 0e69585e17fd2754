import SafeTensors

/// A fine-tuning method as PEFT implements it: which `peft_type` it reads, the config fields it uses, the tensors a
/// module has, how a module lies on the base model's tensors and what it does to them.
///
/// A value of a conforming type is the method *as configured* by one adapter's `adapter_config.json` (LoRA with its
/// alpha, patterns and flags; Bone with its block size and variant). Each method is one file; `MethodRegistry.all`
/// lists them, and everything else (config parsing, the adapter formats, the merge plan and engine, `inspect` and
/// `--help`) goes through this protocol without naming a method.
public protocol AdapterMethod: Sendable {
    /// peftkit's name of the method (`lora`): its id in the peftkit format and in JSON reports.
    static var name: String { get }
    /// The `peft_type` values of `adapter_config.json` this method reads.
    static var peftTypes: [String] { get }
    /// One line for `--help`, at most 68 characters.
    static var summary: String { get }
    /// Every tensor role a module of this method can have, in the order the formats store them.
    static var roles: [TensorRole] { get }
    /// Tensors stored once for the whole adapter and used by every module (VeRA's `vera_A`, `vera_B`); PEFT keys
    /// them `base_model.<role>`. Empty for most methods.
    static var sharedRoles: [TensorRole] { get }

    /// Reads this method's own fields of `adapter_config.json`.
    /// - Parameter problems: every malformed field is noted here (all are reported together).
    /// - Throws: `PEFTKitError` `.unsupported` for an option that changes the math and that peftkit cannot apply
    ///   exactly.
    init(config: JSONValue, source: String, problems: inout [String]) throws

    /// The variant (`default`, Bone's `bat`, MiSS's `mini` …).
    var variant: String { get }

    /// Checks one module's tensors against each other and the config, and resolves its parameters (rank after
    /// `rank_pattern`, scaling …); nil, with the problems noted, when they disagree.
    /// - Throws: `PEFTKitError` `.unsupported` for a module peftkit cannot apply exactly (a convolution's tensors).
    func makeModule(path: String, tensors: [TensorRole: StoredTensor], problems: inout [String]) throws -> AdaptedModule?

    /// `makeModule(path:tensors:problems:)` for a method with `sharedRoles`, given the adapter's shared tensors.
    func makeModule(path: String, tensors: [TensorRole: StoredTensor], shared: [TensorRole: StoredTensor],
                    problems: inout [String]) throws -> AdaptedModule?

    /// Checks the adapter's shared tensors once (presence, shapes), noting problems.
    func checkShared(_ shared: [TensorRole: StoredTensor], problems: inout [String]) throws

    /// The changes `module` makes to base tensors, each checked against the base: `baseShape` gives the shape of a
    /// base tensor by name (nil when the base has none). Misfits are noted in `problems`, not thrown.
    /// - Throws: `PEFTKitError` `.unsupported` for a base tensor peftkit cannot apply the module to (a convolution).
    func changes(of module: AdaptedModule, baseShape: (String) -> [Int]?, problems: inout [String]) throws -> [ModuleChange]

    /// What the peftkit format records for a module beyond its kind, rank and tensors (spec/adapter-format.md).
    func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)]

    /// The base tensors `module` changes, by name (for the base fingerprint): its weight, and e.g. LoRA's bias.
    func baseTensors(of module: AdaptedModule) -> [String]

    /// Config settings worth reporting in `inspect` (e.g. LoRA's `use_rslora`), by their config key.
    var settings: [(key: String, value: JSONValue)] { get }

    /// Why `module`'s merge cannot be undone from the merged weights, or nil when it can.
    func unmergeRefusal(of module: AdaptedModule) -> String?

    /// Parameters PEFT's model holds for `module` beyond its saved tensors, as `get_nb_trainable_parameters` counts
    /// them (AdaLoRA's ranknum), split into trainable and frozen; `baseDType` is the dtype of the module's base weight.
    func unsavedParameters(of module: AdaptedModule, baseDType: DType) -> (trainable: Int, frozen: Int)

    /// Whether a merge weight other than 1 means something for this method (it scales an additive change; a
    /// multiplicative one has nothing to scale). The plan refuses other weights where it does not.
    var acceptsMergeWeight: Bool { get }
}

extension AdapterMethod {
    public var name: String { Self.name }
    public var roles: [TensorRole] { Self.roles }
    public static var sharedRoles: [TensorRole] { [] }
    public var sharedRoles: [TensorRole] { Self.sharedRoles }
    public func makeModule(path: String, tensors: [TensorRole: StoredTensor], shared: [TensorRole: StoredTensor],
                           problems: inout [String]) throws -> AdaptedModule? {
        try makeModule(path: path, tensors: tensors, problems: &problems)
    }
    public func checkShared(_ shared: [TensorRole: StoredTensor], problems: inout [String]) throws {}
    public func recordedParameters(of module: AdaptedModule) -> [(key: String, value: JSONValue)] { [] }
    public func baseTensors(of module: AdaptedModule) -> [String] { [module.weightName] }
    public var settings: [(key: String, value: JSONValue)] { [] }
    public var acceptsMergeWeight: Bool { true }
    public func unmergeRefusal(of module: AdaptedModule) -> String? { nil }
    public func unsavedParameters(of module: AdaptedModule, baseDType: DType) -> (trainable: Int, frozen: Int) { (0, 0) }
}

/// The methods peftkit knows, in the order `--help` lists them. Adding a method is its file and one line here.
public enum MethodRegistry {
    public static let all: [any AdapterMethod.Type] = [
        LoRA.self,
        Bone.self,
        MiSS.self,
        IA3.self,
        LoHa.self,
        LoKr.self,
        TrainableTokens.self,
        VeRA.self,
        AdaLoRA.self,
    ]

    /// The method that reads `peftType`, if any.
    public static func method(peftType: String) -> (any AdapterMethod.Type)? {
        all.first { $0.peftTypes.contains(peftType) }
    }

    /// Every `peft_type` peftkit reads, for messages.
    public static var peftTypes: [String] { all.flatMap { $0.peftTypes } }
}

/// What a tensor of an adapter module is for. The raw value is the suffix PEFT gives it after the module path
/// (`lora_A.weight`); the peftkit format records roles by it.
public struct TensorRole: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }
}

/// Merge or unmerge.
public enum MergeDirection: String, Sendable {
    case merge
    case unmerge
}

/// One adapter module's change to one base tensor, checked against the base when the merge is planned. Its
/// tensors are decoded only when the engine reaches that tensor.
public struct ModuleChange: Sendable {
    /// How a change combines with other changes to the same tensor.
    public enum Composition: Sendable, Equatable {
        /// Applies to whatever the tensor holds when its turn comes (a sum, a scaling, replaced rows).
        case sequential
        /// A term of PEFT's LoRA forward with several adapters active. `dora`: renormalised, y ← f ⊙ (y + s·Δ·x)
        /// with f = m / ‖W + s·Δ‖ of the tensor's *starting* value W; such a term combines only with other LoRA terms,
        /// the only combination PEFT's forward defines.
        case loraTerm(dora: Bool)
        /// Rewrites the tensor from the base's own value (PiSSA, OLoRA): nothing else may change the tensor. The
        /// string names the change for the refusal.
        case alone(String)
    }

    /// The base tensor changed, e.g. `model.layers.0.self_attn.q_proj.weight`.
    public let tensor: String
    public let composition: Composition
    /// How many Float32 reductions, each summed in its own library's order, every changed element depends on: 1 for a
    /// product's sums, 2 for DoRA (the product and the norm). An F32 result may differ from PEFT's by that many ulps
    /// at the tensor's scale (spec/tolerance.md §1).
    public let float32Reductions: Int
    /// The change first rewrites the base tensor itself, as PEFT does when it loads the adapter (PiSSA, OLoRA): a
    /// tensor the base shares with another (a tied output head) would change in both places, which the plan refuses.
    public let rewritesBase: Bool
    /// Decodes the module's tensors into the operation on that tensor.
    let prepare: @Sendable (Context) throws -> any WeightOperation

    /// What an operation is prepared for.
    public struct Context: Sendable {
        /// The module's scaling times the merge weight.
        public let scale: Float
        /// Apply the change, or undo it.
        public let direction: MergeDirection
        /// The dtype the tensor's starting value is stored in (for a change that must round an intermediate to it,
        /// as PEFT does).
        public let baseDType: DType
        /// Whether other changes come before this one on the tensor.
        public let followsOtherChanges: Bool
        /// Unmerge: what the merge recorded for this change (DoRA's norms), from the merged folder's record.
        let recorded: UnmergeRecord.Entry?
    }

    public init(tensor: String, composition: Composition = .sequential, float32Reductions: Int = 1,
                prepare: @escaping @Sendable (_ scale: Float, _ direction: MergeDirection) throws -> any WeightOperation) {
        self.init(tensor: tensor, composition: composition, float32Reductions: float32Reductions, rewritesBase: false,
                  preparing: { try prepare($0.scale, $0.direction) })
    }

    /// A change that needs more of its context: the base dtype, its place among the tensor's changes, a record.
    public init(tensor: String, composition: Composition = .sequential, float32Reductions: Int = 1, rewritesBase: Bool,
                preparing prepare: @escaping @Sendable (Context) throws -> any WeightOperation) {
        self.tensor = tensor
        self.composition = composition
        self.float32Reductions = float32Reductions
        self.rewritesBase = rewritesBase
        self.prepare = prepare
    }

    var isDoRA: Bool { composition == .loraTerm(dora: true) }
}

/// A module's change decoded and ready to apply to a tensor, slice by slice of rows (a vector is one row).
///
/// Most methods are row-local: `apply` sees each slice once. One that needs the whole tensor first (a norm over
/// columns, a factorisation of W) sets `needsFirstPass`: before applying anything, the engine shows it every slice
/// through `observe`, as the slice stands after the operations before it, and only then applies them all. Such an
/// operation keeps what it observed, so it is a class.
public protocol WeightOperation {
    /// Slices start and end on multiples of this many rows (Bat works on bands of r rows).
    var rowAlignment: Int { get }
    var needsFirstPass: Bool { get }
    func observe(_ slice: WeightRows)
    /// Called once the first pass has shown every slice, before anything is applied: where an operation that
    /// factorises the whole tensor does so, and may fail.
    func finishFirstPass() throws
    func apply(to slice: WeightRows)
    /// Unmerge by solving a system: its condition number, which bounds how much the solve can amplify the merged
    /// file's rounding; nil for a plain subtraction.
    var conditionNumber: Double? { get }
    /// How much undoing the change can amplify the merged file's rounding (the condition number of a solve, 1 / |l|
    /// for a division, 1 for a subtraction).
    var roundingAmplification: Double { get }
    /// A bound on how far the Float32 change can be from the exact one, counted twice (the merge that made the input
    /// and this unmerge each sum it, in whatever order).
    var summationError: Double { get }
    /// For a change that factorises W (PiSSA, OLoRA): how many ulps at the tensor's largest magnitude two correct
    /// Float32 implementations of it may differ by, from the factorisation's conditioning (known after the first
    /// pass); nil for every other change, whose allowance is its reductions.
    var factorisationULP: Double? { get }
    /// Whether `observe` sees the tensor's starting value rather than the value after the operations before it
    /// (DoRA's norms are of the base weight, whatever other adapters add, as in PEFT's forward).
    var observesStartValue: Bool { get }
    /// Merge: what an unmerge will need that the merged weights do not keep (DoRA's norms, with the magnitude that
    /// says whose they are), once every slice has been applied; nil for a change the merged weights determine.
    var recordForUnmerge: (norms: [Float], magnitude: [Float])? { get }
}

extension WeightOperation {
    public var rowAlignment: Int { 1 }
    public var needsFirstPass: Bool { false }
    public func observe(_ slice: WeightRows) {}
    public func finishFirstPass() throws {}
    public var conditionNumber: Double? { nil }
    public var roundingAmplification: Double { conditionNumber ?? 1 }
    public var summationError: Double { 0 }
    public var factorisationULP: Double? { nil }
    public var observesStartValue: Bool { false }
    public var recordForUnmerge: (norms: [Float], magnitude: [Float])? { nil }
}

/// A horizontal slice of a decoded weight matrix: rows `rows` of a matrix with `columns` columns, stored row-major
/// from `values` (which points at the first row of the slice). Methods work slice by slice so that a tensor of any
/// size streams through a bounded buffer.
public struct WeightRows {
    public let values: UnsafeMutablePointer<Float>
    public let rows: Range<Int>
    public let columns: Int

    public init(values: UnsafeMutablePointer<Float>, rows: Range<Int>, columns: Int) {
        self.values = values
        self.rows = rows
        self.columns = columns
    }

    public func row(_ index: Int) -> UnsafeMutablePointer<Float> {
        values + (index - rows.lowerBound) * columns
    }
}

/// Shared checks of `changes(of:baseShape:problems:)`.
extension AdaptedModule {
    /// The shape of the module's weight in the base when it is a matrix; nil with the problem noted otherwise.
    public func baseMatrixShape(_ baseShape: (String) -> [Int]?, problems: inout [String]) -> (rows: Int, columns: Int)? {
        guard let shape = baseShape(weightName) else {
            problems.append("module '\(path)': base has no tensor '\(weightName)'")
            return nil
        }
        guard shape.count == 2 else {
            problems.append("module '\(path)': base weight has shape \(shape); only matrices can be adapted")
            return nil
        }
        return (shape[0], shape[1])
    }
}
