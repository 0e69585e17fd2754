import Foundation
import SafeTensors

/// What a merge or unmerge is asked to do.
public struct MergeRequest: Sendable {
    public typealias Direction = MergeDirection

    public var base: String
    public var adapters: [String]
    /// One per adapter (default 1): scales that adapter's change.
    public var weights: [Double]
    public var output: String
    public var direction: Direction
    /// Output dtype for floating tensors; nil keeps each tensor's own.
    public var outputDType: DType?
    /// Re-shard to this many bytes per file (transformers' rule); nil keeps the base's files.
    public var maxShardSize: Int?
    public var force: Bool
    public var allowNonFinite: Bool
    /// Float32 elements a slice of rows may hold: the engine's working set per worker (tests make it small so that
    /// one tensor spans several slices).
    public var sliceElements: Int

    public init(base: String, adapters: [String], weights: [Double]? = nil, output: String,
                direction: Direction = .merge, outputDType: DType? = nil, maxShardSize: Int? = nil,
                force: Bool = false, allowNonFinite: Bool = false, sliceElements: Int = MergeRequest.defaultSliceElements) {
        self.base = base
        self.adapters = adapters
        self.weights = weights ?? Array(repeating: 1, count: adapters.count)
        self.output = output
        self.direction = direction
        self.outputDType = outputDType
        self.maxShardSize = maxShardSize
        self.force = force
        self.allowNonFinite = allowNonFinite
        self.sliceElements = sliceElements
    }

    /// 1 MiB of Float32: small enough that decode → apply → check → encode stay in the CPU cache, large enough for
    /// efficient BLAS calls.
    public static let defaultSliceElements = 1 << 18
}

/// Where a running merge is, for progress display.
public struct MergeProgress: Sendable {
    public let tensorsDone: Int
    public let tensorsTotal: Int
    public let bytesDone: Int
    public let bytesTotal: Int
    public let currentTensor: String
}

/// What a merge or unmerge did.
public struct MergeSummary: Sendable {
    public struct AdapterUse: Sendable {
        public let source: String
        /// The method's name (`lora`) and `peft_type`.
        public let method: String
        public let peftType: String
        public let variant: String
        public let weight: Double
        public let modules: Int
    }

    public let direction: MergeRequest.Direction
    public let output: String
    public let files: [String]
    public let adapters: [AdapterUse]
    /// Tensors changed by adapter modules.
    public let transformed: Int
    /// Their names, in output order.
    public let transformedTensors: [String]
    /// Tensors replaced whole by tensors the adapter carries.
    public let replaced: Int
    /// Tensors copied byte for byte.
    public let copied: Int
    /// Tensors copied with a dtype conversion.
    public let converted: Int
    public let bytesWritten: Int
    public let seconds: Double
    public let notes: [String]
    /// Unmerge: an upper bound on |result − true base| over all unmerged elements (the merged file's rounding).
    public let driftBound: Double?
    /// Unmerge: the largest bound on how far two Float32 evaluations of one tensor's change (the merge's and this
    /// unmerge's, each summing in its own library's order) can differ; part of `driftBound`.
    public let summationBound: Double?
    /// Bat unmerge: the largest condition number of the systems I + B_j that were solved.
    public let worstCondition: Double?
}
