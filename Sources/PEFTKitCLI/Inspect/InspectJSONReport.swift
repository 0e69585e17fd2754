import PEFTKit
import SafeTensors

/// The `inspect --json` report, schema `peftkit.inspect/2` (spec/inspect-output.md).
///
/// Every tensor is listed, whatever the count. Keys are written in a fixed order, so two runs on the same input
/// produce the same bytes.
enum InspectJSONReport {
    static let schema = "peftkit.inspect/2"

    static func render(_ inspection: CheckpointInspection) -> String {
        document(inspection).prettyText(indent: 2) + "\n"
    }

    static func document(_ inspection: CheckpointInspection) -> JSONValue {
        var members: [(key: String, value: JSONValue)] = [
            ("schema", .string(schema)),
            ("path", .string(inspection.path)),
            ("kind", .string(inspection.kind.rawValue)),
            ("sharded", .bool(inspection.isSharded)),
            ("files", .array(inspection.files.map(file))),
            ("index", inspection.index.map(index) ?? .null),
            ("tensor_count", integer(inspection.tensors.count)),
            // For an adapter: the adapter's own parameters (carried whole tensors are under adapter.carried).
            ("parameters", integer(inspection.adapter?.parameters ?? inspection.parameterCount)),
            ("bytes", integer(inspection.byteCount)),
            ("dtypes", .object(inspection.dtypeHistogram
                .sorted { $0.dtype.rawValue < $1.dtype.rawValue }
                .map { ($0.dtype.rawValue, integer($0.count)) })),
            ("metadata", stringObject(inspection.sharedMetadata)),
            ("statistics", .bool(inspection.includesStatistics)),
            ("tensors", .array(inspection.tensors.map { tensor($0, statistics: inspection.includesStatistics) })),
        ]
        if let adapter = inspection.adapter {
            members.insert(("method", .string(adapter.method)), at: 3)
            members.append(("adapter", adapterObject(adapter)))
        }
        if !inspection.adapterProblems.isEmpty {
            members.append(("problems", .array(inspection.adapterProblems.map { .string($0) })))
        }
        return .object(members)
    }

    static func adapterObject(_ adapter: AdapterReport) -> JSONValue {
        var members: [(key: String, value: JSONValue)] = [
            ("method", .string(adapter.method)),
            ("peft_type", .string(adapter.peftType)),
            ("variant", .string(adapter.variant)),
            ("format", .string(adapter.format.id)),
            ("format_version", adapter.format.version.map { .string($0) } ?? .null),
            ("modules", integer(adapter.moduleCount)),
            ("targets", .array(adapter.targets.map { .string($0) })),
            ("ranks", .array(adapter.ranks.map { .object([("rank", integer($0.rank)), ("modules", integer($0.modules))]) })),
            ("scalings", .array(adapter.scalings.map {
                .object([("alpha", real($0.alpha)), ("scaling", real($0.scaling)), ("modules", integer($0.modules))])
            })),
            ("settings", .object(adapter.settings)),
            ("parameters", integer(adapter.parameters)),
            ("carried", .array(adapter.carried.map {
                .object([("tensor", .string($0.baseName)), ("reason", .string($0.reason)),
                         ("parameters", integer($0.parameters)), ("bytes", integer($0.bytes))])
            })),
            ("base_model", adapter.baseModel.map { .string($0) } ?? .null),
            ("fingerprint", adapter.fingerprint.map { .string($0) } ?? .null),
        ]
        if let base = adapter.base {
            members.append(("base", .object([
                ("path", .string(base.path)), ("parameters", integer(base.parameters)),
                ("share_percent", real(base.sharePercent)), ("fits", .bool(base.problems.isEmpty)),
                ("problems", .array(base.problems.map { .string($0) })),
                ("peft_trainable_parameters", integer(base.peftTrainable)),
                ("peft_all_parameters", integer(base.peftAll)),
                ("peft_trainable_percent", real(base.peftTrainablePercent)),
            ])))
        }
        return .object(members)
    }

    static func real(_ value: Double) -> JSONValue {
        value.isFinite ? .number(value, literal: "\(value)") : .null
    }

    static func file(_ file: CheckpointInspection.File) -> JSONValue {
        .object([
            ("name", .string(file.name)),
            ("size", integer(file.size)),
            ("header_length", integer(file.headerLength)),
            ("tensor_count", integer(file.tensorCount)),
            ("metadata", file.metadata.map(stringObject) ?? .null),
        ])
    }

    static func index(_ index: CheckpointInspection.Index) -> JSONValue {
        .object([
            ("name", .string(index.name)),
            ("metadata", .object(index.metadata)),
        ])
    }

    static func tensor(_ tensor: CheckpointInspection.Tensor, statistics: Bool) -> JSONValue {
        var members: [(key: String, value: JSONValue)] = [
            ("name", .string(tensor.name)),
            ("dtype", .string(tensor.dtype.rawValue)),
            ("shape", .array(tensor.shape.map(integer))),
            ("parameters", integer(tensor.elementCount)),
            ("bytes", integer(tensor.byteCount)),
            ("file", .string(tensor.fileName)),
        ]
        if statistics {
            members.append(("stats", tensor.statistics.map(self.statistics) ?? .null))
        }
        return .object(members)
    }

    static func statistics(_ stats: TensorStatistics) -> JSONValue {
        .object([
            ("finite", integer(stats.finiteCount)),
            ("nan", integer(stats.nanCount)),
            ("inf", integer(stats.infinityCount)),
            ("min", stats.minimum.map(number) ?? .null),
            ("max", stats.maximum.map(number) ?? .null),
            ("mean", stats.mean.map(number) ?? .null),
            ("std", stats.standardDeviation.map(number) ?? .null),
        ])
    }

    // MARK: Values

    static func integer(_ value: Int) -> JSONValue { .integer(Int64(value)) }

    static func stringObject(_ pairs: [(key: String, value: String)]) -> JSONValue {
        .object(pairs.map { ($0.key, .string($0.value)) })
    }

    /// A Float32 as the shortest decimal that reads back as the same Float32 (`0.1`, not `0.10000000149011612`).
    static func number(_ value: Float) -> JSONValue {
        value.isFinite ? .number(Double(value), literal: value.description) : .null
    }

    /// A Double as the shortest decimal that reads back as the same Double. Swift writes `1e-05` and `3.0`, both
    /// valid JSON numbers; non-finite values (never produced by the statistics) would become null.
    static func number(_ value: Double) -> JSONValue {
        value.isFinite ? .number(value, literal: value.description) : .null
    }
}
