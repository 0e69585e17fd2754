import Foundation
import GGUF
import PEFTKit
import SafeTensors

/// `inspect` of a GGUF file (a llama.cpp model or adapter): the key-value pairs and the tensors as the header
/// declares them, checked by the strict reader. The text and JSON reports (schema `peftkit.inspect-gguf/1`,
/// spec/gguf.md) are pure functions of the file.
enum GGUFInspection {
    static let schema = "peftkit.inspect-gguf/1"
    /// Array values shown unless --all.
    static let arrayPreview = 8

    static func render(_ file: GGUFFile, json: Bool, showAll: Bool, statistics: Bool) throws -> String {
        let stats = statistics ? try file.tensors.map { try self.statistics(of: $0, in: file) } : []
        return json ? document(file, showAll: showAll, stats: stats).prettyText(indent: 2) + "\n"
                    : text(file, showAll: showAll, stats: stats)
    }

    /// min, max, mean, std of a tensor peftkit can decode (F32, F16, BF16, Q8_0); nil for other types.
    static func statistics(of tensor: GGUFTensorInfo, in file: GGUFFile) throws -> TensorStatistics? {
        let bytes = try file.bytes(of: tensor)
        switch tensor.type {
        case .f32: return bytes.withUnsafeBytes { TensorStatistics.compute($0, dtype: .f32, count: tensor.elementCount) }
        case .f16: return bytes.withUnsafeBytes { TensorStatistics.compute($0, dtype: .f16, count: tensor.elementCount) }
        case .bf16: return bytes.withUnsafeBytes { TensorStatistics.compute($0, dtype: .bf16, count: tensor.elementCount) }
        case .q8_0:
            let values = Q8_0.dequantize(bytes, count: tensor.elementCount)
            return values.withUnsafeBytes { TensorStatistics.compute($0, dtype: .f32, count: tensor.elementCount) }
        default: return nil
        }
    }

    static func kind(_ file: GGUFFile) -> String { file.value("general.type")?.stringValue ?? "model" }

    static func parameters(_ file: GGUFFile) -> Int { file.tensors.reduce(0) { $0 + $1.elementCount } }

    // MARK: Text

    static func text(_ file: GGUFFile, showAll: Bool, stats: [TensorStatistics?]) -> String {
        let escaped = { (s: String) in TerminalText.escaped(s, limit: 120) }
        let architecture = file.value("general.architecture")?.stringValue.map(escaped) ?? "?"
        let adapterType = file.value("adapter.type")?.stringValue.map { " (\(escaped($0)))" } ?? ""
        var out = "\(TerminalText.escaped(file.path)): GGUF v\(GGUFFile.version) \(escaped(kind(file)))\(adapterType), "
            + "architecture \(architecture)\n"
        let types = Dictionary(grouping: file.tensors, by: \.type.name).map { "\($0.key) \($0.value.count)" }.sorted()
        out += "  \(NumberFormatting.grouped(file.tensors.count)) tensors, \(NumberFormatting.grouped(parameters(file))) "
            + "parameters, \(NumberFormatting.bytes(file.tensors.reduce(0) { $0 + $1.byteCount })) of tensor data"
            + (types.isEmpty ? "" : " (\(types.joined(separator: ", ")))") + "\n"
        out += "  file \(NumberFormatting.grouped(file.fileSize)) bytes, header \(NumberFormatting.grouped(file.headerLength)) "
            + "bytes, data at byte \(NumberFormatting.grouped(file.dataStart)), alignment \(file.alignment)\n\n"

        out += "Key-value pairs (\(file.keyValues.count)):\n"
        var kv = TextTable([.init(title: "key", alignment: .left), .init(title: "type", alignment: .left),
                            .init(title: "value", alignment: .left)])
        for pair in file.keyValues {
            let type = if case .array(let element, let items) = pair.value { "\(element.name)[\(items.count)]" } else { pair.value.type.name }
            kv.append([escaped(pair.key), type, escaped(describe(pair.value, showAll: showAll))])
        }
        out += kv.rendered() + "\n"

        out += "Tensors (\(file.tensors.count)), dimensions in ggml order (numpy's shape reversed):\n"
        var columns: [TextTable.Column] = [.init(title: "name", alignment: .left), .init(title: "type", alignment: .left),
                                           .init(title: "dimensions", alignment: .left), .init(title: "elements", alignment: .right),
                                           .init(title: "bytes", alignment: .right), .init(title: "offset", alignment: .right)]
        if !stats.isEmpty {
            columns += ["min", "max", "mean", "std"].map { .init(title: $0, alignment: .right) }
        }
        var table = TextTable(columns)
        let shown = showAll || file.tensors.count <= 40
            ? Array(file.tensors.indices) : Array(0..<20) + Array((file.tensors.count - 10)..<file.tensors.count)
        for (n, i) in shown.enumerated() {
            if !showAll && file.tensors.count > 40 && n == 20 {
                table.appendNote("  … \(file.tensors.count - 30) more (--all lists every tensor)")
            }
            let t = file.tensors[i]
            var cells = [escaped(t.name), t.type.name, "[" + t.dimensions.map(String.init).joined(separator: ", ") + "]",
                         NumberFormatting.grouped(t.elementCount), NumberFormatting.grouped(t.byteCount),
                         NumberFormatting.grouped(t.offset)]
            if !stats.isEmpty {
                if let s = stats[i] {
                    cells += [s.minimum.map(Double.init), s.maximum.map(Double.init), s.mean, s.standardDeviation]
                        .map { $0.map(NumberFormatting.statistic) ?? "-" }
                } else {
                    cells += ["-", "-", "-", "-"]
                }
            }
            table.append(cells)
        }
        return out + table.rendered()
    }

    static func describe(_ value: GGUFValue, showAll: Bool) -> String {
        switch value {
        case .string(let s): return "\"\(s)\""
        case .float32(let f): return "\(f)"
        case .float64(let d): return "\(d)"
        case .bool(let b): return "\(b)"
        case .array(_, let items):
            let shown = showAll ? items : Array(items.prefix(arrayPreview))
            return "[" + shown.map { describe($0, showAll: true) }.joined(separator: ", ")
                + (shown.count < items.count ? ", … \(items.count - shown.count) more" : "") + "]"
        default: return value.integerValue.map(String.init) ?? "\(value)"
        }
    }

    // MARK: JSON

    static func document(_ file: GGUFFile, showAll: Bool, stats: [TensorStatistics?]) -> JSONValue {
        .object([
            ("schema", .string(schema)),
            ("path", .string(file.path)),
            ("kind", .string("gguf")),
            ("version", .integer(Int64(GGUFFile.version))),
            ("general_type", .string(kind(file))),
            ("architecture", file.value("general.architecture")?.stringValue.map { .string($0) } ?? .null),
            ("file_size", .integer(Int64(file.fileSize))),
            ("header_length", .integer(Int64(file.headerLength))),
            ("alignment", .integer(Int64(file.alignment))),
            ("data_start", .integer(Int64(file.dataStart))),
            ("tensor_count", .integer(Int64(file.tensors.count))),
            ("parameters", .integer(Int64(parameters(file)))),
            ("bytes", .integer(Int64(file.tensors.reduce(0) { $0 + $1.byteCount }))),
            ("statistics", .bool(!stats.isEmpty)),
            ("key_values", .array(file.keyValues.map { pair in
                var members: [(String, JSONValue)] = [("key", .string(pair.key)), ("type", .string(pair.value.type.name))]
                if case .array(let element, let items) = pair.value {
                    let shown = showAll ? items : Array(items.prefix(arrayPreview))
                    members += [("element_type", .string(element.name)), ("count", .integer(Int64(items.count))),
                                ("values", .array(shown.map(json))), ("truncated", .bool(shown.count < items.count))]
                } else {
                    members.append(("value", json(pair.value)))
                }
                return .object(members)
            })),
            ("tensors", .array(file.tensors.enumerated().map { i, t in
                var members: [(String, JSONValue)] = [
                    ("name", .string(t.name)), ("type", .string(t.type.name)),
                    ("dimensions", .array(t.dimensions.map { .integer(Int64($0)) })),
                    ("shape", .array(t.shape.map { .integer(Int64($0)) })),
                    ("elements", .integer(Int64(t.elementCount))), ("bytes", .integer(Int64(t.byteCount))),
                    ("offset", .integer(Int64(t.offset))),
                ]
                if !stats.isEmpty { members.append(("stats", stats[i].map(InspectJSONReport.statistics) ?? .null)) }
                return .object(members)
            })),
        ])
    }

    /// A value as JSON: numbers as numbers (non-finite floats as the strings "nan", "inf", "-inf").
    static func json(_ value: GGUFValue) -> JSONValue {
        func float(_ d: Double) -> JSONValue { d.isFinite ? .number(d, literal: "\(d)") : .string(d.isNaN ? "nan" : d > 0 ? "inf" : "-inf") }
        switch value {
        case .string(let s): return .string(s)
        case .bool(let b): return .bool(b)
        case .float32(let f): return float(Double(f))
        case .float64(let d): return float(d)
        case .uint64(let v): return v <= UInt64(Int64.max) ? .integer(Int64(v)) : .string(String(v))
        case .array(_, let items): return .array(items.map(json))
        default: return .integer(Int64(value.integerValue ?? 0))
        }
    }
}
